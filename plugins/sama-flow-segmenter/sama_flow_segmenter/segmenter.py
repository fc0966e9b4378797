"""FlowSegmenter: GrabCut on the prompted frames, optical flow plus colour
re-segmentation everywhere else, streamed in both directions.

How a clip is walked (K = the prompted frames of all objects):

1. Backward pass, from the last prompted frame down to the first requested
   frame. Frames at or before the earliest prompt are final here and are
   yielded at once; later frames that also need the forward estimate keep
   this pass's mask as compact RLE (only frames between prompts, so this is
   bounded by how far apart the prompts are, never by the clip length).
2. Forward pass, from the earliest prompt to the last requested frame; each
   frame is yielded as soon as it is computed. Between two prompts of one
   object the two estimates are blended, the nearer prompt weighing more.

Each pass restarts an object's mask at each of its prompted frames and keeps
only the current and previous frame (plus one decode chunk) in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import cv2
import numpy as np

from sama_agent.errors import RegionError
from sama_agent.masks import decode_rle, encode_rle
from sama_agent.regions import Region
from sama_agent.segmenters import Prompts, SegmenterBase, requested_frames

from .colour import ColourModel
from .keyframe import key_mask
from .tracking import FLOW_METHODS, FlowEstimator, refine, warp


@dataclass
class _Track:
    """One object's current mask in one pass, and the prompted frame it came from."""

    mask: np.ndarray  # (h, w) bool at the working resolution
    model: ColourModel | None
    key_frame: int


@dataclass
class _Key:
    mask: np.ndarray  # working resolution
    model: ColourModel | None
    exact: dict | None  # RLE of a full-resolution mask prompt used as given


class FlowSegmenter(SegmenterBase):
    """A segmenter that needs no trained weights.

    Options (all keyword, all optional):
      work_size: longest side, in pixels, that frames are shrunk to for flow
          and graph cuts (masks come back at full size). Default 480.
      flow: "dis" (OpenCV's DIS flow, default) or "farneback".
      band: how far, as a fraction of the object's size (sqrt of its area),
          the colour graph cut may move the carried edge. Default 0.2.
      refine_masks: also run GrabCut on mask prompts (default: use them as given).
      grabcut_iterations: GrabCut iterations on prompted frames. Default 5.
      chunk: frames decoded at a time. Default 8.
      seed: seeds OpenCV's k-means so runs repeat exactly. Default 0.
    """

    name = "flow"
    prompt_kinds = frozenset({"box", "points", "mask"})

    def __init__(self, work_size: int = 480, flow: str = "dis", band: float = 0.2, refine_masks: bool = False,
                 grabcut_iterations: int = 5, chunk: int = 8, seed: int = 0):
        _check_option(isinstance(work_size, int) and work_size >= 32, "work_size", work_size, "a whole number of pixels >= 32")
        _check_option(flow in FLOW_METHODS, "flow", flow, " or ".join(repr(m) for m in FLOW_METHODS))
        _check_option(isinstance(band, (int, float)) and 0 < band <= 1, "band", band, "a fraction in (0, 1]")
        _check_option(isinstance(grabcut_iterations, int) and grabcut_iterations >= 1, "grabcut_iterations", grabcut_iterations, "a whole number >= 1")
        _check_option(isinstance(chunk, int) and chunk >= 1, "chunk", chunk, "a whole number of frames >= 1")
        self.work_size = work_size
        self.flow = flow
        self.band = float(band)
        self.refine_masks = bool(refine_masks)
        self.grabcut_iterations = grabcut_iterations
        self.chunk = chunk
        self.seed = int(seed)

    # ---- the contract --------------------------------------------------------
    def propagate(self, video, prompts: Prompts, frames: Sequence[int] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Check the prompts now (errors surface before any decoding), then stream."""
        self.check_prompts(video, prompts)
        run = _Run(self, video, _prepared(video, prompts), requested_frames(video, frames))
        return run.stream()


class _Run:
    """One propagate() call: the plan, the key-frame cache and both passes."""

    def __init__(self, segmenter: FlowSegmenter, video, prompts: dict[int, dict[int, list[Region]]], wanted: list[int]):
        self.segmenter, self.video, self.prompts, self.wanted = segmenter, video, prompts, wanted
        self.wanted_set = set(wanted)
        self.first = {oid: min(by_frame) for oid, by_frame in prompts.items()}
        self.last = {oid: max(by_frame) for oid, by_frame in prompts.items()}
        self.earliest, self.latest = min(self.first.values()), max(self.last.values())
        scale = min(1.0, segmenter.work_size / max(video.height, video.width))
        self.scale = scale
        self.work_shape = (max(1, round(video.height * scale)), max(1, round(video.width * scale)))
        self.keys: dict[tuple[int, int], _Key] = {}
        self.flow = FlowEstimator(segmenter.flow)

    def stream(self):
        if not self.wanted:
            return
        backward_ran = self.wanted[0] < self.latest
        stash: dict[int, dict[int, tuple[dict, int]]] = {}
        if backward_ran:
            yield from self._backward(stash)
        yield from self._forward(stash, yield_earliest=not backward_ran)

    # ---- the two passes ------------------------------------------------------
    def _backward(self, stash):
        for t, tracks in self._walk(self._frames_down(self.latest, self.wanted[0])):
            if t not in self.wanted_set:
                continue
            if t <= self.earliest:  # nothing comes from the forward pass here
                yield t, {oid: self._output(oid, t, tracks[oid]) for oid in self.prompts}
            else:
                stash[t] = {oid: (encode_rle(tracks[oid].mask), tracks[oid].key_frame)
                            for oid in self.prompts if t < self.last[oid] and t not in self.prompts[oid]}

    def _forward(self, stash, yield_earliest: bool):
        for t, tracks in self._walk(self._frames_up(self.earliest, self.wanted[-1])):
            if t not in self.wanted_set or (t == self.earliest and not yield_earliest):
                continue
            from_later = stash.pop(t, {})
            yield t, {oid: self._combine(oid, t, tracks.get(oid), from_later.get(oid)) for oid in self.prompts}

    def _walk(self, frames):
        """Carry every object's mask frame to frame in one direction; restart at prompts."""
        tracks: dict[int, _Track] = {}
        previous_gray = None
        for t, image in frames:
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            flow = None
            for oid, by_frame in self.prompts.items():
                if t in by_frame:
                    key = self._key(oid, t, image)
                    tracks[oid] = _Track(key.mask, key.model, t)
                elif oid in tracks:
                    if flow is None:
                        flow = self.flow(gray, previous_gray)
                    track = tracks[oid]
                    carried = warp(track.mask, flow)
                    tracks[oid] = replace(track, mask=refine(image, carried, track.model, self.segmenter.band))
            previous_gray = gray
            yield t, tracks

    # ---- frames, streamed ----------------------------------------------------
    def _frames_up(self, start: int, stop: int):
        for t, frame in self.video.iter_frames(range(start, stop + 1), batch=self.segmenter.chunk):
            yield t, self._to_work(frame)

    def _frames_down(self, start: int, stop: int):
        """Frames start, start-1, ..., stop, decoded in ascending chunks (decoders
        seek forward well) and handed out in reverse."""
        high = start
        while high >= stop:
            low = max(stop, high - self.segmenter.chunk + 1)
            chunk = [self._to_work(frame) for frame in self.video.frames(list(range(low, high + 1)))]
            for offset in range(len(chunk) - 1, -1, -1):
                yield low + offset, chunk[offset]
            high = low - 1

    # ---- key frames and output ----------------------------------------------
    def _key(self, oid: int, t: int, image: np.ndarray) -> _Key:
        if (oid, t) not in self.keys:
            self.keys[oid, t] = self._make_key(self.prompts[oid][t], image)
        return self.keys[oid, t]

    def _make_key(self, regions: list[Region], image: np.ndarray) -> _Key:
        cv2.setRNGSeed(self.segmenter.seed)  # GrabCut's k-means: same prompt, same mask
        mask = np.zeros(self.work_shape, bool)
        exact = None
        for region in regions:
            small = self._region_to_work(region)
            mask |= key_mask(image, refine_masks=self.segmenter.refine_masks, iterations=self.segmenter.grabcut_iterations, **small)
        as_given = [r.mask for r in regions if r.mask is not None and not r.points and not self.segmenter.refine_masks]
        if len(as_given) == len(regions):
            exact = encode_rle(np.logical_or.reduce(as_given))
        return _Key(mask, ColourModel.learn(image, mask), exact)

    def _output(self, oid: int, t: int, track: _Track) -> np.ndarray:
        if t in self.prompts[oid]:
            key = self.keys[oid, t]
            if key.exact is not None:
                return decode_rle(key.exact)
        return self._to_full(track.mask)

    def _combine(self, oid: int, t: int, forward: _Track | None, later: tuple[dict, int] | None) -> np.ndarray:
        if t in self.prompts[oid] or later is None:
            return self._output(oid, t, forward)
        backward = decode_rle(later[0])
        if forward is None:
            return self._to_full(backward)
        earlier, next_key = forward.key_frame, later[1]
        weight = (next_key - t) / (next_key - earlier)  # the nearer prompt counts more
        blended = weight * forward.mask + (1.0 - weight) * backward
        return self._to_full(blended >= 0.5)

    # ---- resolution ----------------------------------------------------------
    def _to_work(self, frame: np.ndarray) -> np.ndarray:
        if self.scale == 1.0:
            return frame
        return cv2.resize(frame, self.work_shape[::-1], interpolation=cv2.INTER_AREA)

    def _to_full(self, mask: np.ndarray) -> np.ndarray:
        if self.scale == 1.0:
            return mask.astype(bool, copy=True)
        full = cv2.resize(mask.astype(np.float32), (self.video.width, self.video.height), interpolation=cv2.INTER_LINEAR)
        return full >= 0.5

    def _region_to_work(self, region: Region) -> dict:
        s = self.scale
        small: dict = {}
        if region.box is not None:
            small["box"] = tuple(v * s for v in region.box)
        if region.points:
            small["points"] = tuple((x * s, y * s) for x, y in region.points)
            small["point_labels"] = _labels_of(region)
        if region.mask is not None:
            small["mask"] = _shrink_mask(region.mask, self.work_shape)
        return small


def _prepared(video, prompts: Prompts) -> dict[int, dict[int, list[Region]]]:
    """Resolve mask references and group each object's regions by frame."""
    grouped: dict[int, dict[int, list[Region]]] = {}
    for oid, regions in prompts.items():
        by_frame: dict[int, list[Region]] = {}
        for region in regions:
            if region.mask is None and region.mask_ref is not None:
                region = region.resolve().validate(video.height, video.width, video.num_frames)
            if region.points and region.box is None and region.mask is None and not any(_labels_of(region)):
                raise RegionError(
                    f"{region.to_text()}: every point is negative, so there is nothing to segment; "
                    "add a positive point (+x,y) or a box around the object."
                )
            by_frame.setdefault(region.frame, []).append(region)
        grouped[oid] = by_frame
    return grouped


def _labels_of(region: Region) -> tuple[int, ...]:
    """Point labels, positive where none were given."""
    return tuple(region.labels) if region.labels else (1,) * len(region.points)


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask.astype(bool)
    small = cv2.resize(mask.astype(np.float32), shape[::-1], interpolation=cv2.INTER_AREA) >= 0.5
    if not small.any():  # a sliver thinner than one working pixel: keep where it touches
        small = cv2.resize(mask.astype(np.float32), shape[::-1], interpolation=cv2.INTER_AREA) > 0
    return small


def _check_option(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"flow segmenter option {name}={value!r} is not valid; give {expected}.")
