"""One propagation step: carry a mask from one frame to the next with dense
optical flow, then re-segment a band around the carried edge by weighing the
flow's answer against the object's colour model (the flow drifts; colour
pulls the edge back onto the object)."""
from __future__ import annotations

import cv2
import numpy as np

from .colour import MIN_PIXELS, ColourModel, histogram, object_size, ring

FLOW_METHODS = ("dis", "farneback")
COLOUR_LIMIT = 4.0  # colour log-odds are capped: P(object | colour) in [0.018, 0.982]


class FlowEstimator:
    """Dense flow from a target frame back to a source frame, so a mask on the
    source can be sampled at every target pixel (backward warping leaves no holes)."""

    def __init__(self, method: str = "dis"):
        if method not in FLOW_METHODS:
            raise ValueError(f"unknown flow method '{method}'; choose one of {', '.join(FLOW_METHODS)}.")
        self.method = method
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    def __call__(self, target_gray: np.ndarray, source_gray: np.ndarray) -> np.ndarray:
        """(h, w) uint8 pair -> (h, w, 2) float32: target pixel p matches source pixel p + flow[p]."""
        if self._dis is not None:
            return self._dis.calc(target_gray, source_gray, None)
        return cv2.calcOpticalFlowFarneback(target_gray, source_gray, None, 0.5, 4, 15, 3, 5, 1.2, 0)


def warp(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample a source-frame mask at the flow's matches: (h, w) float32 in [0, 1].

    Only target pixels whose match can land on the mask are sampled: the mask's
    box grown by the largest displacement in the frame.
    """
    carried = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return carried
    reach = int(np.ceil(np.abs(flow).max())) + 2
    y0, y1, x0, x1 = _window(mask, margin=reach)
    grid_y, grid_x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    local = flow[y0:y1, x0:x1]
    carried[y0:y1, x0:x1] = cv2.remap(mask.astype(np.float32), grid_x + local[..., 0], grid_y + local[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return carried


def refine(image: np.ndarray, carried: np.ndarray, model: ColourModel | None, band: float) -> np.ndarray:
    """Re-segment near the carried mask's edge, weighing flow against colour.

    image (h, w, 3) uint8; carried (h, w) float in [0, 1] -> (h, w) bool.
    Each pixel's log-odds of being on the object add a flow term (signed
    distance to the carried edge) and a colour term (bounded). The colour term
    can move the edge by at most `band` x the object's size, so ambiguous
    colours leave the flow's answer alone and a colour mix-up far from the
    edge cannot grab background or eat the object.
    """
    mask = carried >= 0.5
    size = object_size(mask)
    if model is None or size * size < MIN_PIXELS:
        return mask
    reach = max(2.0, band * size)
    context = max(4, int(size / 2))
    y0, y1, x0, x1 = _window(mask, margin=int(reach) + context + 2)
    patch, near = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    here = histogram(patch, ring(near, gap=int(reach) + 1, width=context))
    colour = model.foreground_probability(patch, here)
    colour_logit = np.clip(np.log(colour / (1.0 - colour)), -COLOUR_LIMIT, COLOUR_LIMIT)
    flow_logit = _signed_distance(near) * (COLOUR_LIMIT / reach)
    logit = cv2.GaussianBlur(flow_logit + colour_logit, (0, 0), 1.0)
    refined = np.zeros_like(mask)
    refined[y0:y1, x0:x1] = _drop_specks(logit > 0)
    return refined


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Pixels to the mask's edge: positive inside, negative outside."""
    as_u8 = mask.astype(np.uint8)
    inside = cv2.distanceTransform(as_u8, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - as_u8, cv2.DIST_L2, 3)
    return inside - outside


def _drop_specks(mask: np.ndarray) -> np.ndarray:
    """Remove islands under a tenth of the largest part (colour noise in the band)."""
    count, parts, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= 0.1 * areas.max()) + 1
    return np.isin(parts, keep)


def _window(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    return max(0, ys.min() - margin), min(height, ys.max() + 1 + margin), max(0, xs.min() - margin), min(width, xs.max() + 1 + margin)
