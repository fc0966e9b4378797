"""Pixel-level cues of a region: its colour and its path through the video.

A region's pooled encoder feature blurs a small object into its patch (at
128 px with 16 px patches a 17 px disc covers about one patch), and pooling
over frames throws away where it went. These cues keep both, read straight
from the frames and the masks:

- colour: mean and standard deviation of RGB under the mask, over every
  frame where the region shows (6 values);
- path: the region sampled at `PATH_SLOTS` evenly spaced context frames -
  centre x and y relative to where it first shows, area, and whether it
  shows (4 values per slot), plus where it first shows (2 values).

The centre is the mask's centroid (`path="centroid"`) or, with `path="box"`,
the centroid except where the frame's border cuts the region: there the
centroid of the visible part lags behind the object, so the centre is put
half the region's full width (or height) in from its edge inside the frame.
The full size is the largest extent the region has while clear of the border.

The aggregator's region shape token reads them (st-qformer `region_cues=True`).
"""
from __future__ import annotations

import torch

PATH_SLOTS = 8
PATH_START = 6 + 2  # the path follows the colour (6) and where the region first shows (2)
CUE_DIM = PATH_START + 4 * PATH_SLOTS


PATHS = ("centroid", "box")


def region_cues(masks: torch.Tensor, pixels: torch.Tensor, path: str = "centroid") -> torch.Tensor:
    """masks (R, T, H, W) in [0, 1]; pixels (T, 3, H, W) in [0, 1] -> (R, CUE_DIM)."""
    if path not in PATHS:
        raise ValueError(f"region cues: path must be one of {', '.join(PATHS)}, got {path!r}")
    regions, frames, height, width = masks.shape
    if pixels.shape[0] != frames or tuple(pixels.shape[-2:]) != (height, width):
        raise ValueError(f"region cues: masks {tuple(masks.shape)} and pixels {tuple(pixels.shape)} must cover the same frames and size")
    if regions == 0:
        return masks.new_zeros(0, CUE_DIM)
    masks = masks.to(pixels.dtype)
    weight = masks.sum(dim=(1, 2, 3)).clamp_min(1.0)[:, None]  # (R, 1)
    colour_sum = torch.einsum("rthw,tchw->rc", masks, pixels)
    square_sum = torch.einsum("rthw,tchw->rc", masks, pixels * pixels)
    mean = colour_sum / weight
    std = (square_sum / weight - mean * mean).clamp_min(0).sqrt()

    ys = (torch.arange(height, dtype=pixels.dtype, device=pixels.device) + 0.5) / height
    xs = (torch.arange(width, dtype=pixels.dtype, device=pixels.device) + 0.5) / width
    area = masks.sum(dim=(2, 3))  # (R, T) pixels
    shown = (area > 0).to(pixels.dtype)
    cx = torch.einsum("rthw,w->rt", masks, xs) / area.clamp_min(1.0)
    cy = torch.einsum("rthw,h->rt", masks, ys) / area.clamp_min(1.0)
    if path == "box":
        cx = _clear_of_border(cx, masks.amax(dim=2), shown)
        cy = _clear_of_border(cy, masks.amax(dim=3), shown)
    slots = torch.linspace(0, frames - 1, PATH_SLOTS, device=pixels.device).round().long()
    first = torch.where(shown.any(dim=1), shown.argmax(dim=1), torch.zeros(regions, dtype=torch.long, device=pixels.device))
    rows = torch.arange(regions, device=pixels.device)
    start_x, start_y = cx[rows, first], cy[rows, first]
    # where the region does not show, its path holds at the start (no jump to 0)
    path_x = torch.where(shown[:, slots] > 0, cx[:, slots] - start_x[:, None], torch.zeros_like(cx[:, slots]))
    path_y = torch.where(shown[:, slots] > 0, cy[:, slots] - start_y[:, None], torch.zeros_like(cy[:, slots]))
    relative_area = area[:, slots] / (height * width)
    # offsets are a few hundredths of the frame per step: scale them to unit-ish size for the MLP
    track = torch.stack([path_x * 4, path_y * 4, relative_area * 10, shown[:, slots]], dim=2).flatten(1)
    return torch.cat([mean, std, start_x[:, None], start_y[:, None], track], dim=1)


def _clear_of_border(centre: torch.Tensor, profile: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
    """centre (R, T) along one axis, as a fraction of the frame; profile (R, T, L) the mask's extent
    along that axis -> the centre, moved where the region touches one end of the axis to half its
    full length in from its inner edge."""
    length = profile.shape[-1]
    inside = profile > 0.5
    positions = torch.arange(length, device=profile.device)
    low = torch.where(inside, positions, length).amin(dim=-1)  # (R, T) first covered cell
    high = torch.where(inside, positions + 1, 0).amax(dim=-1)  # one past the last
    extent = (high - low).clamp_min(0).to(centre.dtype)
    at_low, at_high = (low == 0) & inside.any(-1), (high == length) & inside.any(-1)
    clear = (shown > 0) & ~at_low & ~at_high
    # the full length: the largest extent while clear of the border (else while shown at all)
    full = torch.where(clear, extent, 0).amax(dim=1)
    full = torch.where(clear.any(dim=1), full, torch.where(shown > 0, extent, 0).amax(dim=1))[:, None]
    from_high = (high.to(centre.dtype) - full / 2) / length
    from_low = (low.to(centre.dtype) + full / 2) / length
    moved = torch.where(at_low & ~at_high, from_high, torch.where(at_high & ~at_low, from_low, centre))
    return torch.where(shown > 0, moved, centre)


MOTION_DIM = 2 * (PATH_SLOTS - 1) + 6


def motion_features(cues: torch.Tensor) -> torch.Tensor:
    """(R, CUE_DIM) cues -> (R, MOTION_DIM) the path as steps: where it went between slots, on
    average in the first and second half, and how fast in each half.

    The path holds positions; a motion word is about steps (their direction, sign changes, growth).
    An MLP can learn the difference, but slowly from a few thousand examples; given the steps it
    learns motion words several times faster. A step counts only where the region shows at both ends.
    """
    path = cues[:, PATH_START:].reshape(cues.shape[0], PATH_SLOTS, 4)
    shown = path[:, 1:, 3] * path[:, :-1, 3]
    steps = (path[:, 1:, :2] - path[:, :-1, :2]) * shown[..., None] * 4  # (R, S-1, 2), unit-ish
    half = (PATH_SLOTS - 1) // 2
    first, second = steps[:, :half], steps[:, -half:]
    first_mean, second_mean = first.mean(1), second.mean(1)
    first_speed, second_speed = first.norm(dim=2).mean(1, keepdim=True), second.norm(dim=2).mean(1, keepdim=True)
    return torch.cat([steps.flatten(1), first_mean, second_mean, first_speed, second_speed], dim=1)
