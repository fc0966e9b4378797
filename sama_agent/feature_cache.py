"""Encode each frame once per session for the SAM2 segmenter.

Every grounded turn propagates masks over the whole clip, and SAM2 propagation
starts by running the image encoder on every frame it visits. Without a cache a
session would re-encode the video on every turn. `CachedEncoding` stands in for
the model's SAM2 (the `grounding=` a `Sam2Segmenter` takes): everything is
delegated to the real module except `encode_uint8`, which looks frames up by
content and encodes only those it has not seen, and `propagate`, which runs the
real module's propagation with this object in its place. The cache holds at most
`budget_bytes` (least recently used frames are dropped first), so long clips
stay bounded and are simply re-encoded where they no longer fit.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

DEFAULT_BUDGET_BYTES = 2 << 30  # 2 GiB of float32 features


class CachedEncoding:
    """A Sam2Grounding whose per-frame image features are remembered."""

    _own = ("_grounding", "_features", "_sizes", "budget_bytes", "hits", "misses")

    def __init__(self, grounding: Any, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        object.__setattr__(self, "_grounding", grounding)
        object.__setattr__(self, "_features", OrderedDict())
        object.__setattr__(self, "_sizes", {})
        object.__setattr__(self, "budget_bytes", int(budget_bytes))
        object.__setattr__(self, "hits", 0)
        object.__setattr__(self, "misses", 0)

    # everything else is the real module's (config, sam2, track_step, train/eval, last_stats, ...)
    def __getattr__(self, name: str) -> Any:
        return getattr(self._grounding, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self._grounding, name, value)

    def propagate(self, video, prompts, frames=None):
        """The real module's propagation, run with this object as its module so every
        frame it encodes goes through `encode_uint8` below."""
        return type(self._grounding).propagate(self, video, prompts, frames)

    def follow(self, video, region, frames=None, **options):
        """The real module's frame-to-frame following, encoding through the cache like `propagate`."""
        return type(self._grounding).follow(self, video, region, frames, **options)

    @property
    def cached_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._features)

    def encode_uint8(self, frames: np.ndarray):
        """(T, H, W, 3) uint8 -> the features of those frames, encoding only unseen frames."""
        keys = [_digest(frame) for frame in frames]
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        if missing:
            unique = list(dict.fromkeys(keys[i] for i in missing))
            first = {key: next(i for i in missing if keys[i] == key) for key in unique}
            with torch.no_grad():  # cached for inference: keep no autograd graph alive
                encoded = self._grounding.encode_uint8(np.stack([frames[first[key]] for key in unique]))
            for position, key in enumerate(unique):
                self._store(key, _own_copy(encoded.frame(position)))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        parts = []
        for key in keys:
            self._features.move_to_end(key)
            parts.append(self._features[key])
        result = _concatenate(parts)
        self._evict()
        return result

    def warm(self, video, batch: int | None = None, progress=None) -> int:
        """Encode every frame of `video` now if the whole clip fits the budget; returns frames encoded.

        `progress(count)` is called after each batch."""
        batch = batch or int(getattr(self._grounding.config, "encode_batch", 4))
        first = video.frames([0])
        probe = self.encode_uint8(first)
        per_frame = _nbytes(probe)
        if per_frame * video.num_frames > self.budget_bytes:
            return 1
        if progress:
            progress(1)
        indices = list(range(1, video.num_frames))
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            self.encode_uint8(video.frames(chunk))
            if progress:
                progress(len(chunk))
        return video.num_frames

    def clear(self) -> None:
        self._features.clear()
        self._sizes.clear()

    def _store(self, key: str, features) -> None:
        self._features[key] = features
        self._sizes[key] = _nbytes(features)

    def _evict(self) -> None:
        while len(self._features) > 1 and self.cached_bytes > self.budget_bytes:
            key, _ = self._features.popitem(last=False)
            self._sizes.pop(key, None)


def _digest(frame: np.ndarray) -> str:
    data = np.ascontiguousarray(frame)
    return hashlib.blake2b(data.tobytes(), digest_size=16, person=str(data.shape).encode()[:16]).hexdigest()


def _tensors(features):
    return list(features.vision_feats) + list(features.vision_pos)


def _nbytes(features) -> int:
    return sum(t.element_size() * t.nelement() for t in _tensors(features))


def _own_copy(features):
    """A frame's features in their own storage, so the batch they came from can be freed."""
    return type(features)([t.clone() for t in features.vision_feats], [t.clone() for t in features.vision_pos], list(features.feat_sizes))


def _concatenate(parts: list):
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    levels = len(first.vision_feats)
    feats = [torch.cat([p.vision_feats[level] for p in parts], dim=1) for level in range(levels)]
    pos = [torch.cat([p.vision_pos[level] for p in parts], dim=1) for level in range(levels)]
    return type(first)(feats, pos, list(first.feat_sizes))
