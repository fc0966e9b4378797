"""Key-frame masks: turn a box, points or a mask on one frame into an object
mask with GrabCut.

All arrays here are at the working resolution: images (h, w, 3) uint8, masks
(h, w) bool. GrabCut label maps use OpenCV's codes (GC_BGD, GC_FGD, GC_PR_BGD,
GC_PR_FGD).
"""
from __future__ import annotations

import cv2
import numpy as np

GRABCUT_MODEL_SIZE = 65  # OpenCV packs a 5-component RGB GMM into 65 doubles
MIN_SAMPLES = 25  # pixels per side below which a 5-component mixture cannot be fitted


def disk(radius: int) -> np.ndarray:
    radius = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def band_labels(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Labels for a graph cut near a mask's edge: certain foreground deep inside
    (eroded by `inner`, 0 = none), probable foreground/background on either side
    of the edge, certain background beyond `outer` pixels."""
    as_u8 = mask.astype(np.uint8)
    labels = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    labels[cv2.dilate(as_u8, disk(outer)) > 0] = cv2.GC_PR_BGD
    labels[mask] = cv2.GC_PR_FGD
    if inner > 0:
        labels[cv2.erode(as_u8, disk(inner)) > 0] = cv2.GC_FGD
    return labels


def initial_labels(shape, box=None, points=(), point_labels=(), mask=None) -> np.ndarray:
    """GrabCut's starting labels from whatever prompts a region carries.

    A mask gives a band around its edge; a box makes everything outside it
    certain background; points alone mark a probable-foreground disk around
    each positive point. Points are then stamped as certain seeds.
    """
    height, width = shape
    side = min(height, width)
    if mask is not None:
        size = np.sqrt(mask.sum())
        labels = band_labels(mask, inner=int(0.15 * size), outer=max(3, int(0.2 * size)))
    elif box is not None:
        labels = np.full(shape, cv2.GC_BGD, np.uint8)
        x0, y0, x1, y1 = _box_pixels(box, shape)
        labels[y0:y1, x0:x1] = cv2.GC_PR_FGD
    else:
        labels = np.full(shape, cv2.GC_PR_BGD, np.uint8)
        for (x, y), positive in zip(points, point_labels):
            if positive:
                cv2.circle(labels, (int(x), int(y)), max(3, int(0.12 * side)), int(cv2.GC_PR_FGD), -1)
    if box is not None and mask is not None:
        x0, y0, x1, y1 = _box_pixels(box, shape)
        outside = np.ones(shape, bool)
        outside[y0:y1, x0:x1] = False
        labels[outside] = cv2.GC_BGD
    seed = max(1, int(0.02 * side))
    for (x, y), positive in zip(points, point_labels):
        cv2.circle(labels, (int(x), int(y)), seed, int(cv2.GC_FGD if positive else cv2.GC_BGD), -1)
    return labels


def grabcut(image: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray:
    """Run GrabCut from a label map on the smallest crop that holds every
    undecided pixel plus a margin of known background; returns a bool mask."""
    result = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    undecided = np.isin(labels, (cv2.GC_PR_FGD, cv2.GC_PR_BGD, cv2.GC_FGD))
    if not undecided.any():
        return result
    y0, y1, x0, x1 = _crop_around(undecided, margin=8)
    crop_labels = labels[y0:y1, x0:x1].copy()
    _ensure_both_sides(crop_labels)
    foreground = np.isin(crop_labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if min(foreground.sum(), (~foreground).sum()) < MIN_SAMPLES:
        return result  # too few pixels to fit a colour mixture: keep the prompt as it is
    cv2.grabCut(np.ascontiguousarray(image[y0:y1, x0:x1]), crop_labels, None, _empty_model(), _empty_model(), iterations, cv2.GC_INIT_WITH_MASK)
    result[y0:y1, x0:x1] = np.isin(crop_labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    return result


def key_mask(image, box=None, points=(), point_labels=(), mask=None, refine_masks=False, iterations=5) -> np.ndarray:
    """The object mask on a prompted frame.

    A mask is used as given unless `refine_masks` (or points that correct it)
    ask for GrabCut. When GrabCut finds nothing, the prompt's own probable
    foreground (the box, the disks round the points) is kept rather than
    losing the object.
    """
    shape = image.shape[:2]
    if mask is not None and not refine_masks and not points:
        return mask.copy()
    labels = initial_labels(shape, box, points, point_labels, mask)
    found = grabcut(image, labels, iterations)
    positives = [p for p, positive in zip(points, point_labels) if positive]
    if mask is None and box is None and positives:
        found = _components_touching(found, positives)
    if not found.any():
        found = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    return found


def _components_touching(mask: np.ndarray, points) -> np.ndarray:
    """Keep the connected parts of `mask` that hold a positive point."""
    count, parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = {int(parts[int(y), int(x)]) for x, y in points} - {0}
    return np.isin(parts, list(keep)) if keep else np.zeros_like(mask)


def _box_pixels(box, shape) -> tuple[int, int, int, int]:
    height, width = shape
    x0, y0, x1, y1 = box
    x0, y0 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1))
    x1, y1 = int(np.clip(np.ceil(x1), x0 + 1, width)), int(np.clip(np.ceil(y1), y0 + 1, height))
    return x0, y0, x1, y1


def _crop_around(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    span = max(ys.max() - ys.min(), xs.max() - xs.min())
    margin = max(margin, int(0.25 * span))
    return (max(0, ys.min() - margin), min(height, ys.max() + 1 + margin), max(0, xs.min() - margin), min(width, xs.max() + 1 + margin))


def _ensure_both_sides(labels: np.ndarray) -> None:
    """GrabCut cannot fit a background mixture without background pixels: when
    a prompt covers the whole crop, treat the crop's outer ring as background."""
    if not np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).any():
        labels[[0, -1], :] = cv2.GC_PR_BGD
        labels[:, [0, -1]] = cv2.GC_PR_BGD
    if not np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any():
        labels[labels.shape[0] // 2, labels.shape[1] // 2] = cv2.GC_PR_FGD


def _empty_model() -> np.ndarray:
    return np.zeros((1, GRABCUT_MODEL_SIZE), np.float64)
