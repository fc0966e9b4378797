"""Cell motion: how the content of each key-frame cell moves, added to that cell's visual token.

Key-frame tokens are patch tokens pooled to a coarse grid per key frame: they say what is where, but
not how it moves. Asked for "the object that moves to the upper left" with no region given, a small LLM
must then compare two key frames cell by cell, and it rarely names the right object. Here a small 3-D
convolution over the context frames, pooled to a few pixels per cell (time x pixels), describes the motion
around each key frame, pooled to the same cells, and the description is added to the cell's token: appearance and
motion of a place share one token, so matching a motion phrase to an object is one attention step.

A linear head reads a motion label off each cell (`cell_motion_labels`): for every labelled object, the
cell holding its centre on a key frame gets the object's motion at that point of the clip (a list of
motion phases is taken to split the clip evenly; the world's phases switch at 40-60% of it). Cells holding
two labelled centres are left out. Without a direct label the LLM's loss alone does not teach motion
(region_attributes.py). The output projection starts at zero: a model built with cell motion starts
out as the same model without it.

Configured as data (SamaConfig.cell_motion): {"field": "motions", "values": ["moves left", ...], "dim": 64}.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CellMotion(nn.Module):
    def __init__(self, hidden: int, values: Sequence[str], grid: int, dim: int = 64):
        super().__init__()
        self.grid = int(grid)
        self.conv = nn.Sequential(
            nn.Conv3d(3, 32, 3, padding=1), nn.GELU(),
            nn.Conv3d(32, dim, 3, padding=1, stride=(1, 2, 2)), nn.GELU(),
            nn.Conv3d(dim, dim, 3, padding=1, stride=(1, 2, 2)), nn.GELU(),
        )
        self.head = nn.Linear(dim, len(values))
        self.out = nn.Linear(dim, hidden)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def features(self, pixels: torch.Tensor, key_positions: Sequence[int]) -> torch.Tensor:
        """(T, 3, H, W) context frames in [0, 1] -> (K, grid * grid, dim) motion features of the key frames' cells.
        The frames are pooled to 8 x 8 pixels per cell first: a step of a few pixels between context frames
        is then about one pooled pixel, which three 3 x 3 x 3 layers see."""
        small = F.adaptive_avg_pool2d(pixels, (8 * self.grid, 8 * self.grid)) * 2 - 1
        moving = self.conv(small.transpose(0, 1)[None])[0].transpose(0, 1)[list(key_positions)]  # (K, dim, h, w)
        return F.adaptive_avg_pool2d(moving, (self.grid, self.grid)).flatten(2).transpose(1, 2)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(K, cells, dim) -> (K * cells, hidden), added to the key-frame tokens."""
        return self.out(features).reshape(-1, self.out.out_features)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """features (K, cells, dim); labels (K, cells) value index or -100 -> (mean cross-entropy, labelled cells)."""
        count = int((labels >= 0).sum())
        if not count:
            return features.new_zeros(()), 0
        return F.cross_entropy(self.head(features).flatten(0, 1), labels.flatten().to(features.device), ignore_index=-100), count


def cell_motion_labels(object_masks: np.ndarray, objects: Sequence[Mapping], field: str, values: Sequence[str],
                       frames: Sequence[int], total_frames: int, grid: int) -> np.ndarray:
    """(K, grid * grid) value index per key-frame cell, -100 where unknown.

    object_masks (O, T, H, W) over the sample's frames; objects: each one's facts (`field` is a motion or a
    list of motion phases); frames: the sample frame of each key frame; total_frames: the sample's frame count."""
    labels = np.full((len(frames), grid * grid), -100, dtype=np.int64)
    height, width = object_masks.shape[-2:]
    for row, frame in enumerate(frames):
        owners: dict[int, list[int]] = {}
        for volume, facts in zip(object_masks, objects):
            value = _phase_value(facts.get(field), (frame + 0.5) / total_frames)
            ys, xs = np.nonzero(volume[frame])
            if value not in values or len(xs) == 0:
                continue
            cell = min(int(ys.mean() * grid / height), grid - 1) * grid + min(int(xs.mean() * grid / width), grid - 1)
            owners.setdefault(cell, []).append(values.index(value))
        for cell, found in owners.items():
            if len(found) == 1:
                labels[row, cell] = found[0]
    return labels


def _phase_value(value, share: float):
    if isinstance(value, list):
        return value[min(int(share * len(value)), len(value) - 1)] if value else None
    return value
