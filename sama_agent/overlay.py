"""Drawing masks over frames, for overlay PNGs and animated previews."""
from __future__ import annotations

from typing import Sequence

import numpy as np

PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240], [245, 130, 48], [240, 50, 230]],
    np.float32,
)


def overlay_masks(frame: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend each mask in its palette colour over an RGB frame and outline it."""
    image = frame.astype(np.float32).copy()
    for index, mask in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)]
        mask = mask.astype(bool)
        image[mask] = (1 - alpha) * image[mask] + alpha * colour
        image[_outline(mask)] = colour
    return image.clip(0, 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    interior = mask.copy()
    interior[1:] &= mask[:-1]
    interior[:-1] &= mask[1:]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    return mask & ~interior
