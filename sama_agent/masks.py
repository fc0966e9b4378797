"""Mask tracks, COCO RLE, and the mask store that hands out persistent handles.

A `MaskTrack` is one object's masks over the frames of a video, kept as COCO
RLE so long clips stay small. A `MaskStore` persists tracks in a session
directory and names each by a `MaskHandle` (`mask-` + 12 hex digits), so a
handle given to a user or another tool still resolves after a restart.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from .errors import MaskHandleError

HANDLE_PATTERN = re.compile(r"^mask-[0-9a-f]{12}$")
EXPORT_FORMATS = ("png", "rle", "overlay")


# ---- COCO RLE ------------------------------------------------------------------
def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 mask -> COCO RLE {"size": [H, W], "counts": str}."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> (H, W) bool mask."""
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return coco_mask.decode(rle).astype(bool)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x0, y0, x1, y1), inclusive-exclusive, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def heavy_parts(mask: np.ndarray, weights: np.ndarray, share: float) -> np.ndarray:
    """The connected parts (4-neighbour) of a bool mask whose summed `weights` (same shape) reach `share` of
    the heaviest part's; share 0 keeps the whole mask."""
    from scipy import ndimage

    if share <= 0:
        return mask.astype(bool, copy=True)
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool, copy=True)
    totals = np.asarray(ndimage.sum(weights, labels, index=np.arange(1, count + 1)))
    return np.isin(labels, 1 + np.nonzero(totals >= share * totals.max())[0])


# ---- tracks --------------------------------------------------------------------
@dataclass
class MaskTrack:
    """One object's masks over frames of a video of size (height, width).

    `rles` maps frame index -> COCO RLE. Frames that are absent were not
    segmented; a frame whose mask is empty means the object is not visible.
    """

    height: int
    width: int
    rles: dict[int, dict] = field(default_factory=dict)
    label: str = ""
    object_id: int = 0

    @classmethod
    def from_masks(cls, masks: Mapping[int, np.ndarray], *, label: str = "", object_id: int = 0) -> "MaskTrack":
        if not masks:
            raise ValueError("a MaskTrack needs at least one frame")
        first = next(iter(masks.values()))
        track = cls(int(first.shape[0]), int(first.shape[1]), {}, label, object_id)
        for index, mask in masks.items():
            track.set(int(index), mask)
        return track

    def set(self, frame: int, mask: np.ndarray) -> None:
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask for frame {frame} is {mask.shape}, expected {(self.height, self.width)}")
        self.rles[int(frame)] = encode_rle(mask)

    @property
    def frames(self) -> list[int]:
        """Segmented frame indices, sorted."""
        return sorted(self.rles)

    @property
    def frames_present(self) -> list[int]:
        """Frames where the mask is non-empty."""
        return [f for f in self.frames if self.area(f) > 0]

    def mask(self, frame: int) -> np.ndarray:
        if frame not in self.rles:
            raise KeyError(f"frame {frame} was not segmented; segmented frames: {self.frames[:5]}...")
        return decode_rle(self.rles[frame])

    def area(self, frame: int) -> int:
        return int(coco_mask.area(_coco(self.rles[frame])))

    def box(self, frame: int) -> tuple[int, int, int, int] | None:
        return mask_box(self.mask(frame))

    def to_array(self, num_frames: int | None = None) -> np.ndarray:
        """(T, H, W) bool volume; unsegmented frames are empty."""
        count = num_frames if num_frames is not None else (max(self.rles) + 1 if self.rles else 0)
        volume = np.zeros((count, self.height, self.width), bool)
        for index, rle in self.rles.items():
            if index < count:
                volume[index] = decode_rle(rle)
        return volume

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "object_id": self.object_id,
            "height": self.height,
            "width": self.width,
            "frames": {str(k): self.rles[k] for k in self.frames},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> "MaskTrack":
        rles = {int(k): dict(v) for k, v in data["frames"].items()}
        return cls(int(data["height"]), int(data["width"]), rles, data.get("label", ""), int(data.get("object_id", 0)))


def _coco(rle: Mapping) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


# ---- handles and the store -----------------------------------------------------
class MaskHandle(str):
    """A mask's stable id, `mask-` + 12 hex digits. A plain string everywhere."""

    def __new__(cls, value: str):
        value = str(value).strip()
        if not HANDLE_PATTERN.match(value):
            raise MaskHandleError(
                f"'{value}' is not a mask handle. Handles look like 'mask-0123456789ab'; "
                "use one returned by sama_ground or shown in the chat."
            )
        return super().__new__(cls, value)


class MaskStore:
    """Mask tracks persisted under `<session_dir>/masks/<handle>.json`."""

    def __init__(self, session_dir: str | Path):
        self.session_dir = Path(session_dir)
        self.mask_dir = self.session_dir / "masks"
        self.mask_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, MaskTrack] = {}

    def add(self, track: MaskTrack, *, video: str | None = None) -> MaskHandle:
        """Persist a track and return its handle (the same content gives the same handle)."""
        payload = track.to_json()
        payload["video"] = video
        text = json.dumps(payload, sort_keys=True)
        handle = MaskHandle("mask-" + hashlib.sha1(text.encode()).hexdigest()[:12])
        _atomic_write(self.mask_dir / f"{handle}.json", text)
        self._cache[handle] = track
        return handle

    def __contains__(self, handle: str) -> bool:
        try:
            return self._path(handle).exists()
        except MaskHandleError:
            return False

    def handles(self) -> list[MaskHandle]:
        return sorted(MaskHandle(p.stem) for p in self.mask_dir.glob("mask-*.json") if HANDLE_PATTERN.match(p.stem))

    def get(self, handle: str) -> MaskTrack:
        handle = MaskHandle(handle)
        if handle not in self._cache:
            self._cache[handle] = MaskTrack.from_json(self._record(handle))
        return self._cache[handle]

    def video_of(self, handle: str) -> str | None:
        """The video path the mask was made on, if recorded."""
        return self._record(MaskHandle(handle)).get("video")

    def _record(self, handle: MaskHandle) -> dict:
        path = self._path(handle)
        if not path.exists():
            known = ", ".join(self.handles()[:5]) or "none yet"
            raise MaskHandleError(f"unknown mask handle '{handle}' in {self.session_dir}. Known handles: {known}.")
        return json.loads(path.read_text())

    def _path(self, handle: str) -> Path:
        return self.mask_dir / f"{MaskHandle(handle)}.json"

    # ---- export ----------------------------------------------------------
    def export(self, handle: str, out_dir: str | Path, fmt: str = "rle", *, name: str | None = None, video=None) -> list[Path]:
        """Write a track as per-frame PNG masks, one RLE JSON, or overlay PNGs (needs `video`).

        `name` is a file or folder name inside `out_dir`; names that would leave
        `out_dir` (absolute paths, `..`) are refused.
        """
        from .overlay import overlay_masks

        if fmt not in EXPORT_FORMATS:
            raise MaskHandleError(f"unknown export format '{fmt}'; choose one of {', '.join(EXPORT_FORMATS)}.")
        track = self.get(handle)
        target = safe_child(out_dir, name or str(MaskHandle(handle)))
        if fmt == "rle":
            target = target.with_suffix(".json")
            target.parent.mkdir(parents=True, exist_ok=True)
            payload = track.to_json()
            payload["handle"] = str(handle)
            _atomic_write(target, json.dumps(payload))
            return [target]
        if fmt == "overlay" and video is None:
            raise MaskHandleError("overlay export needs the video the mask was made on.")
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for frame in track.frames:
            mask = track.mask(frame)
            if fmt == "png":
                image = Image.fromarray(mask.astype(np.uint8) * 255)
            else:
                image = Image.fromarray(overlay_masks(video.frame(frame), [mask]))
            path = target / f"frame_{frame:05d}.png"
            image.save(path)
            written.append(path)
        return written


def safe_child(base: str | Path, name: str) -> Path:
    """`base/name`, refusing names that are absolute or climb out of `base`."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or name.startswith("~"):
        raise MaskHandleError(
            f"export name '{name}' is not allowed: give a plain relative name inside the output directory (no '..', not absolute)."
        )
    base = Path(base).resolve()
    target = (base / name).resolve()
    if not target.is_relative_to(base):
        raise MaskHandleError(f"export name '{name}' would leave the output directory {base}.")
    return target


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def stack_tracks(tracks: Iterable[MaskTrack], num_frames: int) -> np.ndarray:
    """(N, T, H, W) bool volume of several tracks."""
    return np.stack([t.to_array(num_frames) for t in tracks])
