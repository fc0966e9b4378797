"""Shared machinery for segmenters: collecting streams, checking prompts, and
the host's fallback from grounding embeddings to key-frame masks."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import RegionError
from .masks import MaskTrack
from .regions import Region

Prompts = Mapping[int, Sequence[Region]]


class SegmenterBase:
    """Inherit to get `segment` (collects `propagate`) and `check_prompts`."""

    name: str = ""
    prompt_kinds: frozenset = frozenset()

    def propagate(self, video, prompts: Prompts, frames: Sequence[int] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        raise NotImplementedError

    def segment(self, video, prompts: Prompts, frames: Sequence[int] | None = None) -> dict[int, MaskTrack]:
        tracks = {oid: MaskTrack(video.height, video.width, object_id=oid) for oid in prompts}
        for index, masks in self.propagate(video, prompts, frames):
            for oid, mask in masks.items():
                tracks[oid].set(index, mask)
        return tracks

    def check_prompts(self, video, prompts: Prompts) -> None:
        """Raise RegionError for an empty prompt set, a kind this segmenter does not
        accept, or a region that does not fit the video."""
        if not prompts:
            raise RegionError(f"segmenter '{self.name}' got no prompts; give at least one object with a region.")
        for oid, regions in prompts.items():
            if not regions:
                raise RegionError(f"object {oid} has no prompt regions.")
            for region in regions:
                unsupported = region.kinds - set(self.prompt_kinds)
                if unsupported:
                    raise RegionError(
                        f"segmenter '{self.name}' does not accept {', '.join(sorted(unsupported))} prompts; "
                        f"it accepts {', '.join(sorted(self.prompt_kinds))}."
                    )
                if region.embedding is None:
                    region.validate(video.height, video.width, video.num_frames)
                else:
                    video.check_index(region.frame)


def requested_frames(video, frames: Sequence[int] | None) -> list[int]:
    if frames is None:
        return list(range(video.num_frames))
    return sorted({video.check_index(f) for f in frames})


def adapt_prompts(segmenter, video, prompts: Prompts, decode_embedding: Callable[[object, Region], np.ndarray]) -> dict[int, list[Region]]:
    """Give a segmenter only prompt kinds it accepts.

    An `embedding` prompt to a segmenter that does not take embeddings is
    decoded into a key-frame mask by `decode_embedding(video, region)` (the
    model's own grounding head) and handed over as a `mask` prompt.
    """
    accepted = set(segmenter.prompt_kinds)
    adapted: dict[int, list[Region]] = {}
    for oid, regions in prompts.items():
        adapted[oid] = []
        for region in regions:
            if region.embedding is not None and "embedding" not in accepted:
                if "mask" not in accepted:
                    raise RegionError(
                        f"segmenter '{segmenter.name}' accepts neither embedding nor mask prompts, "
                        "so it cannot follow the model's grounding; choose another segmenter."
                    )
                mask = decode_embedding(video, region)
                if not mask.any():
                    continue  # the head sees nothing on this key frame; other key frames may
                region = replace(region, embedding=None, mask=mask)
            adapted[oid].append(region)
    return adapted


def segment(segmenter, video, prompts: Prompts, frames=None, decode_embedding=None) -> dict[int, MaskTrack]:
    """Run a segmenter with the embedding fallback applied where needed."""
    if decode_embedding is not None:
        prompts = adapt_prompts(segmenter, video, prompts, decode_embedding)
    return segmenter.segment(video, prompts, frames)
