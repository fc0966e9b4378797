"""Mask metrics: DAVIS J&F for video object segmentation, and the SAMA-Bench-G
grounding scores (volume mIoU with one-to-one matching, and recall).

All scores are fractions in [0, 1] (DAVIS tables print them x100).

J&F follows the DAVIS 2017 definitions:
- J (region similarity): intersection over union of the predicted and the
  ground-truth mask, per frame; a frame where both are empty scores 1.
- F (boundary F-measure): both masks are reduced to 1-pixel boundaries (the
  DAVIS `seg2bmap` rule: a pixel is on the boundary when it differs from its
  right, lower or lower-right neighbour), each boundary is dilated with a disk
  of radius ceil(0.008 x image diagonal), and a boundary pixel counts as
  matched when it lies in the other mask's dilated boundary. Precision and
  recall are the matched fractions; an empty boundary on both sides scores 1,
  an empty boundary on one side only scores 0.
- Per object, J and F are averaged over all frames; J&F is (J + F) / 2; the
  sequence score averages the objects.

Speed: the boundary work is done per frame on the bounding box of the two
masks (plus one pixel), which gives exactly the full-frame result because
nothing outside that box can be a boundary pixel, and is far cheaper on
objects smaller than the frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

BOUNDARY_TOLERANCE = 0.008  # DAVIS: fraction of the image diagonal
IOU_THRESHOLD = 0.5
SIMILARITY_THRESHOLD = 0.5
MIOU_NORMALIZERS = ("max", "gt", "matched")


class MaskShapeError(ValueError):
    """Predicted and ground-truth masks do not have the same shape."""


# ---- J&F -------------------------------------------------------------------------
@dataclass(frozen=True)
class JFScores:
    """Per-object J and F (fractions), with per-frame values kept for inspection.

    j, f: (N,) one per object; j_frames, f_frames: (N, T).
    """

    j_frames: np.ndarray
    f_frames: np.ndarray

    @property
    def j(self) -> np.ndarray:
        return self.j_frames.mean(axis=1)

    @property
    def f(self) -> np.ndarray:
        return self.f_frames.mean(axis=1)

    @property
    def jf(self) -> np.ndarray:
        return (self.j + self.f) / 2

    @property
    def mean_j(self) -> float:
        return float(self.j.mean())

    @property
    def mean_f(self) -> float:
        return float(self.f.mean())

    @property
    def mean_jf(self) -> float:
        return (self.mean_j + self.mean_f) / 2

    def to_json(self) -> dict:
        return {
            "J&F": self.mean_jf,
            "J": self.mean_j,
            "F": self.mean_f,
            "objects": [{"J&F": float(jf), "J": float(j), "F": float(f)} for jf, j, f in zip(self.jf, self.j, self.f)],
        }


def boundary_radius(height: int, width: int, tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Dilation radius in pixels: `tolerance` >= 1 is taken as pixels, otherwise a fraction of the diagonal."""
    if tolerance >= 1:
        return int(tolerance)
    return int(math.ceil(tolerance * math.hypot(height, width)))


def disk(radius: int) -> np.ndarray:
    """Disk structuring element, (2r+1, 2r+1) uint8: x^2 + y^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a (..., H, W) bool mask by the DAVIS rule (offset half a pixel towards the origin)."""
    seg = seg.astype(bool, copy=False)
    right = np.zeros_like(seg)
    below = np.zeros_like(seg)
    diagonal = np.zeros_like(seg)
    right[..., :, :-1] = seg[..., :, 1:]
    below[..., :-1, :] = seg[..., 1:, :]
    diagonal[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ right) | (seg ^ below) | (seg ^ diagonal)
    bmap[..., -1, :] = seg[..., -1, :] ^ right[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ below[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def frame_boundary_f(pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> float:
    """Boundary F-measure of one (H, W) frame pair with a given dilation kernel."""
    pred_boundary = boundary_map(pred)
    gt_boundary = boundary_map(gt)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    pred_dilated = cv2.dilate(pred_boundary.view(np.uint8), kernel)
    gt_dilated = cv2.dilate(gt_boundary.view(np.uint8), kernel)
    precision = np.count_nonzero(pred_boundary & gt_dilated.view(bool)) / n_pred
    recall = np.count_nonzero(gt_boundary & pred_dilated.view(bool)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _crop_box(rows: np.ndarray, cols: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of the occupied rows/cols, grown by one pixel (boundary pixels sit just outside a mask)."""
    ys = np.flatnonzero(rows)
    if ys.size == 0:
        return None
    xs = np.flatnonzero(cols)
    return (
        slice(max(ys[0] - 1, 0), min(ys[-1] + 2, rows.size)),
        slice(max(xs[0] - 1, 0), min(xs[-1] + 2, cols.size)),
    )


def object_j_and_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of one object: pred, gt (T, H, W) bool -> two (T,) arrays."""
    _check_same_shape(pred, gt, "object")
    frames, height, width = gt.shape
    kernel = disk(boundary_radius(height, width, tolerance))
    either = pred | gt
    occupied_rows = either.any(axis=2)
    occupied_cols = either.any(axis=1)
    j = np.ones(frames)
    f = np.ones(frames)
    for t in range(frames):
        box = _crop_box(occupied_rows[t], occupied_cols[t])
        if box is None:  # both empty: a correct "not here"
            continue
        p, g = pred[t][box], gt[t][box]
        union = np.count_nonzero(p | g)
        j[t] = np.count_nonzero(p & g) / union
        f[t] = frame_boundary_f(p, g, kernel)
    return j, f


def j_and_f(pred: np.ndarray, gt: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> JFScores:
    """DAVIS J&F of N objects: pred, gt (N, T, H, W) or (T, H, W) bool, object i of pred scored against object i of gt."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(pred, gt, "sequence")
    if gt.ndim == 3:
        pred, gt = pred[None], gt[None]
    if gt.ndim != 4:
        raise MaskShapeError(f"J&F needs (N, T, H, W) or (T, H, W) masks, got shape {gt.shape}")
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    per_object = [object_j_and_f(p, g, tolerance) for p, g in zip(pred, gt)]
    return JFScores(np.stack([j for j, _ in per_object]), np.stack([f for _, f in per_object]))


def _check_same_shape(pred: np.ndarray, gt: np.ndarray, what: str) -> None:
    if pred.shape != gt.shape:
        raise MaskShapeError(
            f"{what} masks differ in shape: prediction {tuple(pred.shape)}, ground truth {tuple(gt.shape)}; "
            "predict at the ground truth's frame count and size"
        )


# ---- Bench-G: volume IoU, one-to-one matching, recall ------------------------------
def volume_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two (T, H, W) bool volumes; two empty volumes agree perfectly (1.0)."""
    _check_same_shape(pred, gt, "volume")
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def iou_matrix(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> np.ndarray:
    """(P, G) volume IoUs, rows = predictions, columns = ground truth."""
    matrix = np.zeros((len(preds), len(gts)))
    for i, pred in enumerate(preds):
        for k, gt in enumerate(gts):
            matrix[i, k] = volume_iou(pred, gt)
    return matrix


@dataclass(frozen=True)
class GroundingScores:
    """One turn's grounding scores.

    miou: matched IoU sum / normalizer (see `turn_miou`); matched: (pred, gt) index pairs;
    hits: predictions matching a ground truth with IoU >= 0.5 and phrase similarity >= 0.5 (one-to-one);
    num_gt / num_pred: counts. Recall of a set of turns is sum(hits) / sum(num_gt).
    """

    miou: float
    matched: list[tuple[int, int]]
    matched_iou: list[float]
    hits: int
    num_gt: int
    num_pred: int

    def to_json(self) -> dict:
        return {
            "miou": self.miou,
            "matched": [list(pair) for pair in self.matched],
            "matched_iou": self.matched_iou,
            "hits": self.hits,
            "num_gt": self.num_gt,
            "num_pred": self.num_pred,
        }


def match_one_to_one(ious: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of a (P, G) IoU matrix maximising total IoU -> (pred indices, gt indices)."""
    if ious.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    return linear_sum_assignment(ious, maximize=True)


def turn_miou(ious: np.ndarray, normalizer: str = "max") -> tuple[float, list[tuple[int, int]], list[float]]:
    """mIoU of one turn from its (P, G) IoU matrix after one-to-one matching.

    normalizer: "max" (default) divides the matched IoU sum by max(P, G), so a
    missed object and a spurious prediction each count as IoU 0; "gt" divides
    by G (spurious predictions are free); "matched" averages the matched pairs
    with IoU > 0 only, which is how the SAMA/GLaMM scripts count (there with a
    greedy matching). No prediction at all scores 0 under every normalizer.
    """
    if normalizer not in MIOU_NORMALIZERS:
        raise ValueError(f"unknown mIoU normalizer '{normalizer}'; choose one of {', '.join(MIOU_NORMALIZERS)}")
    num_pred, num_gt = ious.shape
    if num_gt == 0 or num_pred == 0:
        return 0.0, [], []
    rows, cols = match_one_to_one(ious)
    matched = [(int(r), int(c)) for r, c in zip(rows, cols)]
    values = [float(ious[r, c]) for r, c in matched]
    if normalizer == "max":
        score = sum(values) / max(num_pred, num_gt)
    elif normalizer == "gt":
        score = sum(values) / num_gt
    else:
        positive = [v for v in values if v > 0]
        score = sum(positive) / len(positive) if positive else 0.0
    return score, matched, values


def recall_hits(ious: np.ndarray, similarities: np.ndarray, iou_threshold: float = IOU_THRESHOLD,
                similarity_threshold: float = SIMILARITY_THRESHOLD) -> int:
    """Largest number of one-to-one (pred, gt) pairs with IoU >= and phrase similarity >= their thresholds.

    Both matrices are (P, G): rows are predictions, columns ground truth (the
    SAMA script pairs a (P, G) IoU matrix with a (G, P) similarity matrix; we
    check the orientation instead).
    """
    if ious.shape != similarities.shape:
        raise ValueError(
            f"IoU matrix {ious.shape} and phrase-similarity matrix {similarities.shape} must both be (predictions, ground truth)"
        )
    if ious.size == 0:
        return 0
    eligible = (ious >= iou_threshold) & (similarities >= similarity_threshold)
    if not eligible.any():
        return 0
    # Maximise the number of eligible pairs; IoU only breaks ties (its total stays below 1).
    weights = eligible * (1.0 + ious / (min(ious.shape) + 1))
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return int(eligible[rows, cols].sum())


def grounding_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], similarities: np.ndarray | None,
                     *, normalizer: str = "max", iou_threshold: float = IOU_THRESHOLD,
                     similarity_threshold: float = SIMILARITY_THRESHOLD) -> GroundingScores:
    """Scores of one turn: predicted and ground-truth (T, H, W) volumes, and the (P, G) phrase similarities."""
    ious = iou_matrix(preds, gts)
    miou, matched, values = turn_miou(ious, normalizer)
    similarities = np.ones_like(ious) if similarities is None else np.asarray(similarities, float)
    hits = recall_hits(ious, similarities, iou_threshold, similarity_threshold)
    return GroundingScores(miou, matched, values, hits, len(gts), len(preds))
