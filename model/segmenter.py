"""The SAM2 segmenter: SAM2 memory propagation behind the host's segmenter contract."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from sama_agent.regions import Region
from sama_agent.segmenters import SegmenterBase

from .modeling.sam2_model import Sam2Config, Sam2Grounding


class Sam2Segmenter(SegmenterBase):
    """Box, points, mask or grounding-embedding prompts on any frames -> streamed mask tracks.

    With no arguments it builds the CPU config ("cpu_small": pretrained
    EfficientNet-Lite0 trunk, random SAM2 heads unless a checkpoint is given).
    """

    name = "sam2"
    prompt_kinds = frozenset({"box", "points", "mask", "embedding"})

    def __init__(self, config: dict | Sam2Config | None = None, checkpoint: str | None = None, grounding: Sam2Grounding | None = None):
        if grounding is not None:
            if config is not None or checkpoint is not None:
                raise ValueError("give either a ready Sam2Grounding or a config/checkpoint, not both")
            self.grounding = grounding
        elif checkpoint is not None and Path(checkpoint).is_dir() and config is None:
            self.grounding = Sam2Grounding.from_pretrained(checkpoint)
        else:
            config = Sam2Config.coerce(config)
            if checkpoint is not None:
                config = Sam2Config.from_dict({**config.to_dict(), "checkpoint": str(checkpoint)})
            self.grounding = Sam2Grounding(config=config)

    @property
    def config(self) -> Sam2Config:
        return self.grounding.config

    def propagate(self, video, prompts: Mapping[int, Sequence[Region]], frames: Sequence[int] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        self.check_prompts(video, prompts)
        return self.grounding.propagate(video, prompts, frames)
