"""Scenes of the synthetic world: objects, their motion, and exact rendering.

A `VideoSpec` fully describes a video (plain data, JSON round-trip), so a
video can be re-rendered from its manifest entry. Rendering is hard-edged (no
anti-aliasing): each pixel belongs to exactly one object or to the background,
which is what makes the per-frame masks exact. Objects are painted back to
front by `depth`; an object's mask is the set of pixels it owns after
occlusion.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .vocabulary import COLOURS, DIRECTIONS, SIZES, Appearance


# ---- specs ---------------------------------------------------------------------
@dataclass
class Phase:
    """One stretch of motion over frames [start, end)."""

    motion: str
    start: int
    end: int
    speed: float = 0.0  # px per frame (start speed for "speeds up")
    direction: tuple[float, float] = (0.0, 0.0)  # unit vector; "speeds up" uses it too
    accel: float = 0.0  # px per frame^2, "speeds up"
    bounce_height: float = 0.0  # px, "bounces"
    bounce_period: float = 8.0  # frames per hop, "bounces"

    def displacement(self, t: float) -> tuple[float, float]:
        """Offset from the phase's start position after t frames."""
        if self.motion in DIRECTIONS:
            return self.direction[0] * self.speed * t, self.direction[1] * self.speed * t
        if self.motion == "speeds up":
            distance = self.speed * t + 0.5 * self.accel * t * t
            return self.direction[0] * distance, self.direction[1] * distance
        if self.motion == "bounces":
            return 0.0, -self.bounce_height * abs(math.sin(math.pi * t / self.bounce_period))
        return 0.0, 0.0  # stays still


@dataclass
class ObjectSpec:
    mask_id: int
    colour: str
    shape: str
    texture: str
    size: str
    start: tuple[float, float]  # centre (x, y) in pixels at frame 0
    phases: list[Phase]
    depth: int  # painting order, larger is nearer
    rotation: float = 0.0  # radians
    texture_angle: float = 0.0  # stripe direction, radians

    @property
    def appearance(self) -> Appearance:
        return Appearance(self.colour, self.shape, self.texture, self.size)

    @property
    def motions(self) -> list[str]:
        return [p.motion for p in self.phases]

    def radius(self, height: int, width: int) -> float:
        return SIZES[self.size] * min(height, width)

    def centres(self, num_frames: int) -> np.ndarray:
        """(T, 2) centre (x, y) per frame; phases chain continuously."""
        centres = np.zeros((num_frames, 2))
        origin = np.asarray(self.start, float)
        for phase in self.phases:
            for frame in range(phase.start, min(phase.end, num_frames)):
                centres[frame] = origin + phase.displacement(frame - phase.start)
            origin = origin + phase.displacement(phase.end - phase.start)
        return centres


@dataclass
class BackgroundSpec:
    kind: str  # solid | gradient | noise
    colours: list[tuple[int, int, int]]
    angle: float = 0.0
    noise_seed: int = 0
    grid: int = 4


@dataclass
class VideoSpec:
    video_id: str
    height: int
    width: int
    num_frames: int
    background: BackgroundSpec
    objects: list[ObjectSpec] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "VideoSpec":
        objects = []
        for item in data["objects"]:
            item = dict(item)
            item["start"] = tuple(item["start"])
            item["phases"] = [Phase(**{**p, "direction": tuple(p["direction"])}) for p in item["phases"]]
            objects.append(ObjectSpec(**item))
        background = BackgroundSpec(**{**data["background"], "colours": [tuple(c) for c in data["background"]["colours"]]})
        return cls(data["video_id"], data["height"], data["width"], data["num_frames"], background, objects)


# ---- shapes --------------------------------------------------------------------
def shape_mask(shape: str, centre: tuple[float, float], radius: float, rotation: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool: the pixels whose centres fall inside the shape."""
    mask = np.zeros((height, width), bool)
    cx, cy = centre
    x0, x1 = max(0, int(math.floor(cx - radius)) - 1), min(width, int(math.ceil(cx + radius)) + 2)
    y0, y1 = max(0, int(math.floor(cy - radius)) - 1), min(height, int(math.ceil(cy + radius)) + 2)
    if x0 >= x1 or y0 >= y1:
        return mask
    ys, xs = np.mgrid[y0:y1, x0:x1]
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    cos, sin = math.cos(rotation), math.sin(rotation)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # shape-local coordinates
    mask[y0:y1, x0:x1] = _inside(shape, u, v, radius)
    return mask


def _inside(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    d2 = u * u + v * v
    if shape == "disc":
        return d2 <= r * r
    if shape == "ring":
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "cross":
        arm = 0.33 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    if shape == "triangle":  # equilateral, circumradius r, apex up: inside all three edge half-planes
        inside = np.ones(u.shape, bool)
        for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
            inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.5 * r
        return inside
    if shape == "star":  # five points: the boundary radius alternates outer/inner every 36 degrees
        angle = np.mod(np.arctan2(u, -v), 2 * math.pi / 5)  # 0 at a point
        fraction = np.abs(angle - math.pi / 5) / (math.pi / 5)  # 1 at a point, 0 between points
        boundary = 0.45 * r + 0.55 * r * fraction
        return d2 <= boundary * boundary
    raise ValueError(f"unknown shape '{shape}'")


# ---- paint ---------------------------------------------------------------------
def shade_of(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """The second tone of a striped or dotted texture: darker, or lighter for dark colours."""
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    if luminance < 80:
        return tuple(min(255, c + 95) for c in colour)
    return tuple(int(c * 0.55) for c in colour)


def texture_tone(obj: ObjectSpec, centre: tuple[float, float], radius: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool: True where the texture's second tone is painted (moves with the object)."""
    ys, xs = np.mgrid[0:height, 0:width]
    dx, dy = xs + 0.5 - centre[0], ys + 0.5 - centre[1]
    if obj.texture == "striped":
        width_px = max(2.0, 0.35 * radius)
        along = dx * math.cos(obj.texture_angle) + dy * math.sin(obj.texture_angle)
        return np.floor(along / width_px).astype(int) % 2 == 1
    if obj.texture == "dotted":
        period = max(4.0, 0.5 * radius)
        px, py = np.mod(dx, period) - period / 2, np.mod(dy, period) - period / 2
        return px * px + py * py <= (0.3 * period) ** 2
    return np.zeros((height, width), bool)


def render_background(spec: BackgroundSpec, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8, the same for every frame (the camera does not move)."""
    first = np.asarray(spec.colours[0], float)
    if spec.kind == "solid":
        image = np.broadcast_to(first, (height, width, 3)).copy()
    elif spec.kind == "gradient":
        second = np.asarray(spec.colours[1], float)
        ys, xs = np.mgrid[0:height, 0:width]
        along = (xs / max(1, width - 1)) * math.cos(spec.angle) + (ys / max(1, height - 1)) * math.sin(spec.angle)
        along = (along - along.min()) / max(1e-9, along.max() - along.min())
        image = first + (second - first) * along[..., None]
    elif spec.kind == "noise":
        rng = np.random.default_rng(spec.noise_seed)
        # mostly brightness variation with a little tint, so the noise never looks like an object colour
        shift = rng.uniform(-30, 30, (spec.grid, spec.grid, 1)) + rng.uniform(-8, 8, (spec.grid, spec.grid, 3))
        coarse = np.clip(first + shift, 0, 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), float)
        image = smooth + rng.uniform(-5, 5, (height, width, 1))
    else:
        raise ValueError(f"unknown background kind '{spec.kind}'")
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass
class RenderedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8
    masks: np.ndarray  # (N, T, H, W) bool, visible part after occlusion, in spec.objects order
    in_frame: np.ndarray  # (N, T) float, share of the object's full area inside the frame (ignoring occlusion)
    background: np.ndarray  # (H, W, 3) uint8
    full_area: np.ndarray  # (N,) pixel count of each object when wholly inside and unoccluded

    def visible_share(self) -> np.ndarray:
        """(N, T) share of each object's full area that shows after occlusion and clipping."""
        return self.masks.sum(axis=(2, 3)) / self.full_area[:, None]


def render(spec: VideoSpec) -> RenderedVideo:
    """Paint every frame back to front; an object's mask is the pixels it owns at the end."""
    height, width, count = spec.height, spec.width, spec.num_frames
    background = render_background(spec.background, height, width)
    frames = np.repeat(background[None], count, axis=0)
    owner = np.full((count, height, width), -1, np.int16)
    in_frame = np.zeros((len(spec.objects), count))
    full_areas = np.ones(len(spec.objects))
    order = sorted(range(len(spec.objects)), key=lambda i: spec.objects[i].depth)
    for index in order:
        obj = spec.objects[index]
        radius = obj.radius(height, width)
        full_area = full_areas[index] = _full_area(obj, radius)
        base, shade = np.asarray(COLOURS[obj.colour], np.uint8), np.asarray(shade_of(COLOURS[obj.colour]), np.uint8)
        for frame, centre in enumerate(obj.centres(count)):
            mask = shape_mask(obj.shape, tuple(centre), radius, obj.rotation, height, width)
            in_frame[index, frame] = mask.sum() / full_area
            if not mask.any():
                continue
            tone = texture_tone(obj, tuple(centre), radius, height, width)
            frames[frame][mask & ~tone] = base
            frames[frame][mask & tone] = shade
            owner[frame][mask] = index
    masks = np.stack([owner == i for i in range(len(spec.objects))]) if spec.objects else np.zeros((0, count, height, width), bool)
    return RenderedVideo(frames, masks, in_frame, background, full_areas)


def _full_area(obj: ObjectSpec, radius: float) -> int:
    """The shape's pixel count when wholly inside a frame (placed at a pixel-aligned centre)."""
    side = int(2 * radius) + 6
    return max(1, int(shape_mask(obj.shape, (side / 2, side / 2), radius, obj.rotation, side, side).sum()))
