"""Colour models: how likely a pixel's colour is on the object versus around it.

Colours are binned into a BINS^3 RGB histogram, lightly blurred so unseen
neighbouring shades still count. The object's histogram comes from the
prompted frame and stays fixed (drift cannot teach it the background); the
background's mixes the prompted frame's surroundings with the current frame's,
because the object moves over new background.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BINS = 16
SHIFT = 8 - int(np.log2(BINS))  # uint8 value -> bin index
MIN_PIXELS = 16  # fewer pixels than this make no usable histogram


def histogram(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Blurred, normalised RGB histogram (BINS, BINS, BINS) of the pixels under
    `mask`; None when there are too few of them."""
    if int(np.count_nonzero(mask)) < MIN_PIXELS:
        return None
    indices = _bin_indices(image[mask])
    counts = np.bincount(indices, minlength=BINS**3).astype(np.float32).reshape(BINS, BINS, BINS)
    for axis in range(3):  # [1, 2, 1] / 4 along each colour axis
        padded = np.pad(counts, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        ahead = np.take(padded, range(2, BINS + 2), axis=axis)
        behind = np.take(padded, range(0, BINS), axis=axis)
        counts = 0.5 * counts + 0.25 * (ahead + behind)
    return counts / counts.sum()


def ring(mask: np.ndarray, gap: int, width: int) -> np.ndarray:
    """Pixels between `gap` and `gap + width` pixels outside a mask's edge."""
    as_u8 = mask.astype(np.uint8)
    outer = cv2.dilate(as_u8, _disk(gap + width)) > 0
    inner = cv2.dilate(as_u8, _disk(gap)) > 0 if gap > 0 else mask
    return outer & ~inner


@dataclass
class ColourModel:
    """Object and surrounding-background histograms for one object."""

    foreground: np.ndarray
    background: np.ndarray

    @classmethod
    def learn(cls, image: np.ndarray, mask: np.ndarray) -> "ColourModel | None":
        """From a prompted frame: the object's pixels and a ring around it as wide
        as the object, so the background is the one the object is seen against."""
        size = object_size(mask)
        foreground = histogram(image, mask)
        background = histogram(image, ring(mask, gap=1, width=max(4, int(size))))
        if foreground is None or background is None:
            return None
        return cls(foreground, background)

    def foreground_probability(self, image: np.ndarray, current_background: np.ndarray | None = None) -> np.ndarray:
        """P(object | colour) per pixel of `image` (h, w, 3) -> (h, w) float32."""
        background = self.background if current_background is None else 0.5 * (self.background + current_background)
        indices = _bin_indices(image.reshape(-1, 3))
        fg = self.foreground.ravel()[indices]
        bg = background.ravel()[indices]
        floor = 0.1 / BINS**3  # a colour neither side has seen stays undecided
        return ((fg + floor) / (fg + bg + 2 * floor)).reshape(image.shape[:2]).astype(np.float32)


def object_size(mask: np.ndarray) -> float:
    """A length scale for a mask: the square root of its area."""
    return float(np.sqrt(np.count_nonzero(mask)))


def _bin_indices(pixels: np.ndarray) -> np.ndarray:
    binned = (pixels >> SHIFT).astype(np.int32)
    return (binned[:, 0] * BINS + binned[:, 1]) * BINS + binned[:, 2]


def _disk(radius: int) -> np.ndarray:
    radius = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
