"""Region prompts and the text syntax the CLI and the tools share.

    <region frame=12 box=40,30,120,200>          a box x0,y0,x1,y1 in pixels
    <region frame=3 points=+64,40;-10,12>        points, + positive (default), - negative
    <region frame=0 mask=mask-0123456789ab>      a mask: a handle from the store ...
    <region frame=0 mask=masks/cat.png>          ... or a PNG file (non-zero = inside)

Several kinds may be combined in one region. In a question each region is
replaced by the placeholder `<mask>`, as in SAMA-239K records.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RegionError

REGION_PATTERN = re.compile(r"<region\b([^<>]*)>", re.IGNORECASE)
PLACEHOLDER = "<mask>"
PROMPT_KINDS = ("box", "points", "mask", "embedding")
_KEYS = ("frame", "box", "points", "mask")


@dataclass(frozen=True, eq=False)
class Region:
    """A prompt on one frame. Coordinates are pixels of the original video.

    box: (x0, y0, x1, y1); points: ((x, y), ...) with labels 1 = positive, 0 = negative;
    mask: (H, W) bool; mask_ref: the handle or path the mask came from;
    embedding: a (256,) float tensor, the SAM2-style sparse prompt a grounding head makes;
    track: the object's masks over many frames (a `MaskTrack`: a mask handle's whole track, or a
    dataset masklet). A model that reads a region over the whole video uses it as is, instead of
    following the one-frame prompt through the video; frames the track lacks count as not visible.
    """

    frame: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    mask: np.ndarray | None = None
    mask_ref: str | None = None
    embedding: Any = None
    track: Any = None
    meta: dict = field(default_factory=dict)

    @property
    def kinds(self) -> set[str]:
        present = {"box": self.box is not None, "points": bool(self.points), "embedding": self.embedding is not None}
        present["mask"] = self.mask is not None or self.mask_ref is not None
        return {k for k, v in present.items() if v}

    def to_text(self) -> str:
        parts = [f"frame={self.frame}"]
        if self.box is not None:
            parts.append("box=" + ",".join(_num(v) for v in self.box))
        if self.points:
            parts.append("points=" + ";".join(f"{'+' if l else '-'}{_num(x)},{_num(y)}" for (x, y), l in zip(self.points, self.labels)))
        if self.mask_ref:
            parts.append(f"mask={self.mask_ref}")
        return "<region " + " ".join(parts) + ">"

    def validate(self, height: int, width: int, num_frames: int) -> "Region":
        """Check the region fits a video of this size; returns self."""
        text = self.to_text()
        if not 0 <= self.frame < num_frames:
            raise RegionError(f"{text}: frame {self.frame} is out of range; the video has frames 0 to {num_frames - 1}.")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (x0 < x1 and y0 < y1):
                raise RegionError(f"{text}: box must be x0,y0,x1,y1 with x0 < x1 and y0 < y1.")
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise RegionError(f"{text}: box lies outside the {width}x{height} frame; keep 0 <= x <= {width} and 0 <= y <= {height}.")
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise RegionError(f"{text}: point ({_num(x)},{_num(y)}) lies outside the {width}x{height} frame.")
        if self.mask is not None:
            if self.mask.shape != (height, width):
                raise RegionError(f"{text}: mask is {self.mask.shape[1]}x{self.mask.shape[0]}, the video is {width}x{height}.")
            if not self.mask.any():
                raise RegionError(f"{text}: the mask is empty on frame {self.frame}; choose a frame where the object is visible.")
        if not self.kinds:
            raise RegionError(f"{text}: give a box, points or a mask.")
        if self.track is not None and (self.track.height, self.track.width) != (height, width):
            raise RegionError(f"{text}: its track is {self.track.width}x{self.track.height}, the video is {width}x{height}.")
        return self

    def resolve(self, store=None) -> "Region":
        """Load the mask a `mask=` reference names (a handle from `store`, or a PNG path)."""
        if self.mask_ref is None or self.mask is not None:
            return self
        if self.mask_ref.startswith("mask-"):
            if store is None:
                raise RegionError(f"{self.to_text()}: a mask handle needs a session with a mask store.")
            track = store.get(self.mask_ref)
            if self.frame not in track.rles:
                raise RegionError(
                    f"{self.to_text()}: mask {self.mask_ref} has no mask on frame {self.frame}; "
                    f"it covers frames {track.frames_present[:8]}."
                )
            return replace(self, mask=track.mask(self.frame), track=track)
        path = Path(self.mask_ref)
        if not path.exists():
            raise RegionError(f"{self.to_text()}: mask file {path} does not exist.")
        from PIL import Image

        with Image.open(path) as image:
            return replace(self, mask=np.asarray(image.convert("L")) > 0)

    def box_or_mask_box(self) -> tuple[float, float, float, float]:
        """The box, else the mask's tight box, else the points' extent."""
        if self.box is not None:
            return self.box
        if self.mask is not None:
            from .masks import mask_box

            found = mask_box(self.mask)
            if found is not None:
                return found
        if self.points:
            xs, ys = zip(*self.points)
            return min(xs), min(ys), max(xs) + 1, max(ys) + 1
        raise RegionError(f"{self.to_text()}: has no box, mask or points to take a box from.")


def parse_region(text: str) -> Region:
    """Parse one `<region ...>` tag."""
    match = REGION_PATTERN.fullmatch(text.strip())
    if not match:
        raise RegionError(f"'{text}' is not a region; write it like <region frame=12 box=40,30,120,200>.")
    return _parse_body(match.group(1), text, match.start(1))


def parse_question(text: str) -> tuple[str, list[Region]]:
    """Replace each `<region ...>` in a question by `<mask>`; return the text and the regions."""
    regions = [_parse_body(m.group(1), text, m.start(1)) for m in REGION_PATTERN.finditer(text)]
    opened = text.lower().count("<region")
    if opened != len(regions):
        column = text.lower().find("<region", 0)
        raise RegionError(_point_at(text, column, column + 7, "a <region ...> tag is not closed with '>'"))
    return REGION_PATTERN.sub(PLACEHOLDER, text), regions


def _parse_body(body: str, full: str, offset: int) -> Region:
    fields: dict[str, Any] = {}
    for item in re.finditer(r"\S+", body):
        token, start, end = item.group(), offset + item.start(), offset + item.end()
        key, sep, value = token.partition("=")
        key = key.lower()
        if not sep or key not in _KEYS:
            raise RegionError(_point_at(full, start, end, f"unknown field '{token}'; use frame=, box=, points= or mask="))
        if key in fields:
            raise RegionError(_point_at(full, start, end, f"'{key}' is given twice"))
        try:
            fields[key] = _FIELD_PARSERS[key](value)
        except ValueError as exc:
            raise RegionError(_point_at(full, start, end, str(exc))) from None
    if "frame" not in fields:
        fields["frame"] = 0
    if not {"box", "points", "mask"} & fields.keys():
        lead = len(body) - len(body.lstrip())
        raise RegionError(_point_at(full, offset + lead, offset + len(body.rstrip()), "a region needs box=, points= or mask="))
    points, labels = fields.pop("points", ((), ()))
    mask_ref = fields.pop("mask", None)
    return Region(points=points, labels=labels, mask_ref=mask_ref, **fields)


def _parse_frame(value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"frame must be a non-negative whole number, got '{value}'")
    return int(value)


def _parse_box(value: str) -> tuple[float, float, float, float]:
    numbers = _numbers(value, "box")
    if len(numbers) != 4:
        raise ValueError(f"box needs 4 numbers x0,y0,x1,y1, got {len(numbers)} ('{value}')")
    return tuple(numbers)


def _parse_points(value: str):
    points, labels = [], []
    for part in filter(None, value.split(";")):
        label = 0 if part.startswith("-") else 1
        numbers = _numbers(part.lstrip("+-"), "points")
        if len(numbers) != 2:
            raise ValueError(f"each point is x,y with an optional + or - in front, got '{part}'")
        points.append(tuple(numbers))
        labels.append(label)
    if not points:
        raise ValueError("points needs at least one x,y")
    return tuple(points), tuple(labels)


def _parse_mask(value: str) -> str:
    if not value:
        raise ValueError("mask needs a handle (mask-...) or a PNG path")
    return value


_FIELD_PARSERS = {"frame": _parse_frame, "box": _parse_box, "points": _parse_points, "mask": _parse_mask}


def _numbers(value: str, what: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v != ""]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got '{value}'") from None


def _point_at(text: str, start: int, end: int, message: str) -> str:
    caret = " " * start + "^" * max(1, end - start)
    return f"bad region: {message}\n  {text}\n  {caret}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def box_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels of a box x0, y0, x1, y1 (rounded, at least one pixel, clipped to the frame)."""
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    mask[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)] = True
    return mask


def prompt_mask(region: Region, height: int, width: int) -> np.ndarray:
    """The region's own pixels on its frame: its mask, else its box, else small discs at positive points."""
    if region.mask is not None:
        return np.asarray(region.mask, bool)
    if region.box is not None:
        return box_mask(region.box, height, width)
    mask = np.zeros((height, width), bool)
    radius = max(2, min(height, width) // 32)
    ys, xs = np.ogrid[:height, :width]
    for (x, y), label in zip(region.points, region.labels or (1,) * len(region.points)):
        if label:
            mask |= (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
    return mask
