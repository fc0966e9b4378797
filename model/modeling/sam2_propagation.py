"""Streaming SAM2 propagation over a video, one bounded memory bank per object.

Passes:
1. conditioning - decode only the prompted frames; each object's prompts become
   its conditioning outputs (decoded without memory, as SAM2 does for prompts
   given before propagation);
2. forward - from the earliest first-prompted frame to the last requested frame,
   each object tracked from its own first prompt on;
3. backward - from the latest first-prompted frame down to the first requested
   frame, each object tracked back from its first prompt, its bank seeded with
   the frames just after that prompt (as SAM2's reverse pass reuses them).

A frame is yielded as soon as every object has its mask there. Only frames
between different objects' first prompts wait, as RLE, for the backward pass.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sama_agent.masks import decode_rle, encode_rle
from sama_agent.regions import Region
from sama_agent.segmenters import requested_frames

from .sam2_memory import ObjectMemory, frame_prompt


class Propagation:
    def __init__(self, grounding, video, prompts: Mapping[int, Sequence[Region]], frames: Sequence[int] | None):
        self.grounding = grounding
        self.video = video
        self.orig_hw = (video.height, video.width)
        self.wanted = set(requested_frames(video, frames))
        self.batch = grounding.config.encode_batch
        self.prompts = {oid: self._by_frame(regions) for oid, regions in prompts.items()}
        self.first = {oid: min(by_frame) for oid, by_frame in self.prompts.items()}
        self.memory = {oid: ObjectMemory.for_model(grounding.sam2) for oid in self.prompts}
        self.seeds: dict[int, dict[int, dict]] = {oid: {} for oid in self.prompts}
        self.pending: dict[int, dict[int, dict]] = {}  # frame -> {object: RLE} waiting for the backward pass
        self.stats = {"peak_memory_frames": 0, "peak_encoded_frames": 0, "peak_pending_frames": 0, "frames_encoded": 0}

    def _by_frame(self, regions: Sequence[Region]) -> dict:
        by_frame: dict[int, list[Region]] = {}
        for region in regions:
            by_frame.setdefault(int(region.frame), []).append(region)
        g = self.grounding
        return {f: frame_prompt(rs, self.orig_hw, g.image_size, g.prompt_dim) for f, rs in by_frame.items()}

    # ---- the generator ----
    def run(self) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        if not self.prompts or not self.wanted:
            return iter(())
        return self._stream()

    @torch.inference_mode()
    def _stream(self):
        module = self.grounding
        was_training = module.training
        module.eval()
        module.last_stats = self.stats  # live while streaming, final afterwards
        try:
            self._condition()
            yield from self._forward()
            yield from self._backward()
        finally:
            module.train(was_training)

    def _condition(self) -> None:
        prompted = sorted({f for by_frame in self.prompts.values() for f in by_frame})
        for index, features in self._encoded(prompted):
            for oid, by_frame in self.prompts.items():
                if index in by_frame:
                    out = self.grounding.track_step(features, index, self.memory[oid], self.video.num_frames, prompt=by_frame[index])
                    self.memory[oid].cond[index] = _slim(out)

    def _forward(self):
        start, stop = min(self.first.values()), max(self.wanted)
        for index, features in self._encoded(range(start, stop + 1)):
            masks = {}
            for oid in self.prompts:
                if self.first[oid] > index:
                    continue
                out = self._track(oid, index, features, reverse=False)
                if index - self.first[oid] < self.memory[oid].window and index not in self.memory[oid].cond:
                    self.seeds[oid][index] = out
                if index in self.wanted:
                    masks[oid] = self._mask(out)
            if index in self.wanted:
                yield from self._emit(index, masks)

    def _backward(self):
        start, stop = max(self.first.values()) - 1, min(self.wanted)
        for oid in self.prompts:  # each object continues back from its first prompt
            self.memory[oid] = self.memory[oid].seeded(self.seeds.pop(oid))
        for index, features in self._encoded(range(start, stop - 1, -1)):
            masks = {}
            for oid in self.prompts:
                if self.first[oid] <= index:
                    continue
                out = self._track(oid, index, features, reverse=True)
                if index in self.wanted:
                    masks[oid] = self._mask(out)
            if index in self.wanted:
                yield from self._emit(index, masks)

    # ---- pieces ----
    def _track(self, oid: int, index: int, features, reverse: bool) -> dict:
        memory = self.memory[oid]
        if index in memory.cond:
            return memory.cond[index]
        out = _slim(self.grounding.track_step(features, index, memory, self.video.num_frames, reverse=reverse))
        memory.add(index, out)
        self.stats["peak_memory_frames"] = max(self.stats["peak_memory_frames"], sum(len(m) for m in self.memory.values()))
        return out

    def _emit(self, index: int, masks: dict[int, np.ndarray]):
        """Yield the frame when every object has its mask; otherwise park what we have as RLE."""
        parked = self.pending.pop(index, {})
        if len(masks) + len(parked) == len(self.prompts):
            masks.update({oid: decode_rle(rle) for oid, rle in parked.items()})
            yield index, {oid: masks[oid] for oid in self.prompts}
        else:
            parked.update({oid: encode_rle(mask) for oid, mask in masks.items()})
            self.pending[index] = parked
            self.stats["peak_pending_frames"] = max(self.stats["peak_pending_frames"], len(self.pending))

    def _mask(self, out: dict) -> np.ndarray:
        logits = F.interpolate(out["pred_masks"], size=self.orig_hw, mode="bilinear", align_corners=False)
        return (logits[0, 0] > 0).cpu().numpy()

    def _encoded(self, indices):
        """Decode and encode frames `batch` at a time; yield (index, one frame's features)."""
        indices = list(indices)
        for start in range(0, len(indices), self.batch):
            chunk = indices[start : start + self.batch]
            features = self.grounding.encode_uint8(self.video.frames(chunk))
            self.stats["frames_encoded"] += len(chunk)
            self.stats["peak_encoded_frames"] = max(self.stats["peak_encoded_frames"], len(chunk))
            for position, index in enumerate(chunk):
                yield index, features.frame(position)


def _slim(out: dict) -> dict:
    """Keep what later frames read from a frame output (SAM2 keeps the same keys)."""
    return {key: out[key] for key in ("pred_masks", "obj_ptr", "maskmem_features", "maskmem_pos_enc", "object_score_logits")}
