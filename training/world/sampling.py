"""Random scenes: which objects, how they look, where they start and how they move.

Everything is drawn from one `numpy.random.Generator`, so a (seed, split,
index) triple always gives the same video.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

from .scene import BackgroundSpec, ObjectSpec, Phase, RenderedVideo, VideoSpec, render
from .vocabulary import COLOURS, DIRECTIONS, MOTIONS, SHAPES, SIZES, TEXTURES, is_heldout

AXES = ("moves left", "moves right", "moves up", "moves down")
MIN_VISIBLE_SHARE = 0.2  # an object counts as visible in a frame when this share of it shows
MAX_ATTEMPTS = 40


class SceneError(RuntimeError):
    """No valid scene found with these settings (for example a frame too small for the objects)."""


def sample_scene(rng: np.random.Generator, video_id: str, split: str, height: int, width: int, num_frames: int, num_objects: int) -> tuple[VideoSpec, RenderedVideo]:
    """Draw scenes until every object is visible long enough to be talked about."""
    background = _background(rng)
    for _ in range(MAX_ATTEMPTS):
        objects = _objects(rng, split, height, width, num_frames, num_objects)
        spec = VideoSpec(video_id, height, width, num_frames, background, objects)
        rendered = render(spec)
        if all(_visible_enough(obj, rendered, index) for index, obj in enumerate(objects)):
            return spec, rendered
    raise SceneError(
        f"{video_id}: no scene with {num_objects} objects in which each stays visible for half of the "
        f"{num_frames} frames of {width}x{height} after {MAX_ATTEMPTS} attempts; use fewer objects or larger frames."
    )


def visible_frames(rendered: RenderedVideo, index: int) -> list[int]:
    """Frames where at least MIN_VISIBLE_SHARE of the object shows (after occlusion and clipping)."""
    return [int(f) for f in np.nonzero(rendered.visible_share()[index] >= MIN_VISIBLE_SHARE)[0]]


def _visible_enough(obj: ObjectSpec, rendered: RenderedVideo, index: int) -> bool:
    shown = set(visible_frames(rendered, index))
    if len(shown) < max(3, rendered.frames.shape[0] // 2):
        return False
    # each motion phase must be seen, or a follow-up about it could not be answered from the frames
    return all(len(shown & set(range(p.start, p.end))) >= 3 for p in obj.phases)


# ---- objects -------------------------------------------------------------------------
def _objects(rng, split: str, height: int, width: int, num_frames: int, count: int) -> list[ObjectSpec]:
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(pairs), count, replace=False)  # colour-shape pairs are unique within a video
    depths = rng.permutation(count)
    objects = []
    for k, pair_index in enumerate(chosen):
        colour, shape = pairs[pair_index]
        motions = _motions(rng, split, colour, shape)
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        obj = ObjectSpec(
            mask_id=k,
            colour=colour,
            shape=shape,
            texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
            size=size,
            start=(0.0, 0.0),
            phases=_phases(rng, motions, num_frames, height, width),
            depth=int(depths[k]),
            rotation=float(rng.uniform(0, 2 * math.pi)) if shape in ("square", "cross", "star", "triangle") else 0.0,
            texture_angle=float(rng.uniform(0, math.pi)),
        )
        obj.start = _start(rng, obj, objects, height, width, num_frames)
        objects.append(obj)
    return objects


def _motions(rng, split: str, colour: str, shape: str) -> list[str]:
    """First-phase motion on the split's side of the rule; later phases always from training triples' side
    in train/val (so no held-out triple is ever shown in training)."""
    if split == "heldout":
        first_choices = [m for m in MOTIONS if is_heldout(colour, shape, m)]
    else:
        first_choices = [m for m in MOTIONS if not is_heldout(colour, shape, m)]
    first = first_choices[int(rng.integers(len(first_choices)))]
    if rng.random() >= 0.4:
        return [first]
    second_choices = [m for m in MOTIONS if m != first and (split == "heldout" or not is_heldout(colour, shape, m))]
    return [first, second_choices[int(rng.integers(len(second_choices)))]]


def _phases(rng, motions: list[str], num_frames: int, height: int, width: int) -> list[Phase]:
    bounds = [0, num_frames] if len(motions) == 1 else [0, int(round(num_frames * rng.uniform(0.4, 0.6))), num_frames]
    scale = min(height, width) / 128
    phases = []
    for motion, start, end in zip(motions, bounds[:-1], bounds[1:]):
        phase = Phase(motion, start, end)
        if motion in DIRECTIONS:
            phase.direction = DIRECTIONS[motion]
            phase.speed = float(rng.uniform(1.0, 2.2) * scale)
        elif motion == "speeds up":
            phase.direction = DIRECTIONS[AXES[int(rng.integers(len(AXES)))]]
            phase.speed = float(rng.uniform(0.1, 0.4) * scale)
            final = float(rng.uniform(2.6, 4.0) * scale)
            phase.accel = (final - phase.speed) / max(1, end - start)
        elif motion == "bounces":
            phase.bounce_height = float(rng.uniform(0.15, 0.28) * height)
            phase.bounce_period = float(rng.uniform(6, 10))
        phases.append(phase)
    return phases


def _start(rng, obj: ObjectSpec, placed: list[ObjectSpec], height: int, width: int, num_frames: int) -> tuple[float, float]:
    """Where the object is at frame 0: inside the frame, just outside it (so it enters), or set up to
    cross an object already placed (so one occludes the other)."""
    radius = obj.radius(height, width)
    path = obj.centres(num_frames)  # with start (0, 0): the offsets along its path
    if placed and rng.random() < 0.4:
        other = placed[int(rng.integers(len(placed)))]
        meet = int(rng.integers(num_frames // 4, max(num_frames // 4 + 1, 3 * num_frames // 4)))
        target = other.centres(num_frames)[meet]
        return float(target[0] - path[meet][0]), float(target[1] - path[meet][1])
    inside = (float(rng.uniform(radius, width - radius)), float(rng.uniform(radius, height - radius)))
    first = obj.phases[0]
    if first.motion == "bounces":  # the floor it hops from is in the lower part of the frame
        low = min(height - radius, max(radius + first.bounce_height, 0.45 * height))
        return inside[0], float(rng.uniform(low, height - radius))
    moving = first.motion in DIRECTIONS or first.motion == "speeds up"
    if moving and rng.random() < 0.3:  # step back along the path until fully outside: it enters
        dx, dy = first.direction
        x, y = inside
        while -radius <= x <= width + radius and -radius <= y <= height + radius:
            x, y = x - dx * radius * 0.5, y - dy * radius * 0.5
        return float(x), float(y)
    return inside


def _background(rng) -> BackgroundSpec:
    kind = ("solid", "gradient", "noise")[int(rng.integers(3))]
    colours = [_muted_colour(rng), _muted_colour(rng)]
    return BackgroundSpec(kind, colours, angle=float(rng.uniform(0, 2 * math.pi)), noise_seed=int(rng.integers(2**31)), grid=int(rng.integers(3, 9)))


def _muted_colour(rng) -> tuple[int, int, int]:
    """Low saturation and middle brightness, so every object colour (white and black too) stands out."""
    r, g, b = colorsys.hsv_to_rgb(float(rng.uniform()), float(rng.uniform(0, 0.25)), float(rng.uniform(0.35, 0.7)))
    return int(r * 255), int(g * 255), int(b * 255)
