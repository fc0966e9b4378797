"""A bounded SAM2 memory bank for one object, and the prompt one frame gives it.

SAM2's `_prepare_memory_conditioned_features` reads an `output_dict` with
`cond_frame_outputs` (prompted frames, always attended) and
`non_cond_frame_outputs` (tracked frames). It only ever looks back
`num_maskmem - 1` memory frames (times the eval stride) and
`max_obj_ptrs_in_encoder - 1` object pointers, so everything farther from the
current frame can be dropped: the bank never grows with the clip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sama_agent.errors import RegionError
from sama_agent.regions import Region


class ObjectMemory:
    """Conditioning outputs plus a sliding window of recent tracked outputs."""

    def __init__(self, num_maskmem: int, max_obj_ptrs: int, temporal_stride: int = 1):
        # the farthest frame the next step reads: memories up to (num_maskmem - 1) * stride
        # back, object pointers up to max_obj_ptrs - 1 back
        self.window = max((num_maskmem - 1) * max(temporal_stride, 1), max_obj_ptrs - 1, 1)
        self.cond: dict[int, dict] = {}
        self.recent: dict[int, dict] = {}

    @classmethod
    def for_model(cls, sam2) -> "ObjectMemory":
        ptrs = sam2.max_obj_ptrs_in_encoder if sam2.use_obj_ptrs_in_encoder else 0
        return cls(sam2.num_maskmem, ptrs, sam2.memory_temporal_stride_for_eval)

    def output_dict(self) -> dict:
        return {"cond_frame_outputs": self.cond, "non_cond_frame_outputs": self.recent}

    def add(self, frame: int, output: dict) -> None:
        """Remember a tracked frame and forget those out of reach of the frames to come
        (the next frame is one step farther from each of them)."""
        self.recent[frame] = output
        for old in [t for t in self.recent if abs(t - frame) >= self.window]:
            del self.recent[old]

    def seeded(self, outputs: dict[int, dict]) -> "ObjectMemory":
        """A copy with the same conditioning frames and `outputs` as recent frames."""
        copy = ObjectMemory.__new__(ObjectMemory)
        copy.window, copy.cond, copy.recent = self.window, self.cond, dict(outputs)
        return copy

    def __len__(self) -> int:
        return len(self.cond) + len(self.recent)


@dataclass
class FramePrompt:
    """Everything one object is told on one frame, in SAM2 input units (image_size pixels).

    point_coords (1, P, 2) / point_labels (1, P): boxes as corner pairs (labels 2, 3)
    then clicks (1 positive, 0 negative); mask (1, 1, S, S) float in {0, 1};
    sparse (1, K, C): grounding embeddings fed as extra sparse prompt tokens.
    """

    point_coords: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    sparse: torch.Tensor | None = None

    @property
    def point_inputs(self) -> dict | None:
        if self.point_coords is None:
            return None
        return {"point_coords": self.point_coords, "point_labels": self.point_labels}

    @property
    def mask_only(self) -> bool:
        return self.mask is not None and self.point_coords is None and self.sparse is None


def frame_prompt(regions: Sequence[Region], orig_hw: tuple[int, int], image_size: int, prompt_dim: int) -> FramePrompt:
    """Merge one object's regions on one frame into a FramePrompt."""
    height, width = orig_hw
    scale = torch.tensor([image_size / width, image_size / height])
    coords, labels, masks, sparse = [], [], [], []
    for region in regions:
        if region.box is not None:
            x0, y0, x1, y1 = region.box
            coords += [[x0, y0], [x1, y1]]
            labels += [2, 3]
        for (x, y), label in zip(region.points, region.labels or (1,) * len(region.points)):
            coords.append([x, y])
            labels.append(1 if label else 0)
        if region.mask is not None:
            masks.append(np.asarray(region.mask, dtype=bool))
        elif region.mask_ref is not None:
            raise RegionError(f"{region.to_text()}: the mask reference is not loaded; call Region.resolve(store) first.")
        if region.embedding is not None:
            sparse.append(_embedding(region, prompt_dim))
    prompt = FramePrompt()
    if coords:
        prompt.point_coords = (torch.tensor(coords, dtype=torch.float32) * scale).unsqueeze(0)
        prompt.point_labels = torch.tensor(labels, dtype=torch.int32).unsqueeze(0)
    if masks:
        union = torch.from_numpy(np.logical_or.reduce(masks)).float()[None, None]
        resized = F.interpolate(union, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        prompt.mask = (resized >= 0.5).float()
    if sparse:
        prompt.sparse = torch.stack(sparse).unsqueeze(0)
    return prompt


def _embedding(region: Region, prompt_dim: int) -> torch.Tensor:
    embedding = torch.as_tensor(region.embedding).detach().float().cpu()
    if embedding.shape != (prompt_dim,):
        raise RegionError(
            f"region on frame {region.frame}: an embedding prompt must be a ({prompt_dim},) tensor "
            f"(the grounding head's sparse prompt), got shape {tuple(embedding.shape)}."
        )
    if not torch.isfinite(embedding).all():
        raise RegionError(f"region on frame {region.frame}: the embedding prompt holds NaN or infinite values.")
    return embedding
