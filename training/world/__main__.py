"""python -m sama_agent.training.world OUT_DIR [--videos N] [--split train|val|heldout] ..."""
import click

from .generator import generate_world, render_video_mp4
from .vocabulary import SPLITS


def _pair(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high or low)


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--videos", "num_videos", default=100, show_default=True, help="Number of videos to generate.")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=128, show_default=True, help="Frame side in pixels (square frames).")
@click.option("--frames", default="16-32", show_default=True, help="Frames per video: N or LOW-HIGH.")
@click.option("--objects", default="2-4", show_default=True, help="Objects per video: N or LOW-HIGH.")
@click.option("--turns", default="2-5", show_default=True, help="Conversation turns per video: N or LOW-HIGH.")
@click.option("--format", "image_format", type=click.Choice(["png", "jpg"]), default="png", show_default=True,
              help="Frame files; png keeps colours exact.")
@click.option("--workers", default=1, show_default=True, help="Processes (the output is the same for any number).")
@click.option("--mp4", "mp4_index", type=int, default=None,
              help="Instead: render video INDEX of the split to OUT_DIR/<split>_<index>.mp4 with its record.")
def main(out_dir, num_videos, split, seed, size, frames, objects, turns, image_format, workers, mp4_index):
    """Generate the synthetic video world in the SAMA-239K layout."""
    if mp4_index is not None:
        from pathlib import Path

        stem = Path(out_dir) / f"{split}_{mp4_index:05d}"
        render_video_mp4(stem.with_suffix(".mp4"), seed=seed, split=split, index=mp4_index, size=size, frames=_pair(frames),
                         objects=_pair(objects), turns=_pair(turns), record_path=stem.with_suffix(".json"))
        click.echo(f"wrote {stem}.mp4 and {stem}.json")
        return
    paths = generate_world(out_dir, num_videos, split, seed, size, _pair(frames), objects=_pair(objects), turns=_pair(turns),
                           image_format=image_format, workers=workers, progress=True)
    for name, path in paths.items():
        click.echo(f"{name}: {path}")


if __name__ == "__main__":
    main()
