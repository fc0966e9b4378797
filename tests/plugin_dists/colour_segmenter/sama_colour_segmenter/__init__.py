"""A colour-matching segmenter: the object is every pixel close to the mean colour
of the prompted region on its frame. Tiny, but a real segmenter for tests."""
import click
import numpy as np

from sama_agent.hookspecs import hookimpl
from sama_agent.segmenters import SegmenterBase, requested_frames


class ColourSegmenter(SegmenterBase):
    name = "colour"
    prompt_kinds = frozenset({"box", "mask"})

    def propagate(self, video, prompts, frames=None):
        self.check_prompts(video, prompts)
        colours = {oid: self._colour(video, regions[0]) for oid, regions in prompts.items()}
        for index, frame in video.iter_frames(requested_frames(video, frames)):
            pixels = frame.astype(np.float32)
            yield index, {oid: np.abs(pixels - c).sum(axis=2) < 60 for oid, c in colours.items()}

    @staticmethod
    def _colour(video, region):
        frame = video.frame(region.frame).astype(np.float32)
        if region.mask is not None:
            inside = region.mask
        else:
            x0, y0, x1, y1 = (int(round(v)) for v in region.box)
            inside = np.zeros(frame.shape[:2], bool)
            inside[y0:y1, x0:x1] = True
        return np.median(frame[inside], axis=0)


@click.command(name="colour-hello")
def hello():
    """Say hello from a plugin command."""
    click.echo("hello from the colour plugin")


@hookimpl
def register_segmenters(register):
    register(ColourSegmenter)


@hookimpl
def register_commands(register):
    register(hello)
