"""Mask metrics: J&F against vos-benchmark, hand-computed boundary F, Bench-G matching and recall."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
from vos_benchmark.evaluator import Evaluator  # independent DAVIS-style reference from PyPI

from sama_agent.evaluation.metrics import (
    MaskShapeError,
    boundary_map,
    boundary_radius,
    grounding_scores,
    iou_matrix,
    j_and_f,
    recall_hits,
    turn_miou,
    volume_iou,
)


def moving_ellipses(rng, objects, frames, height, width, jitter):
    """Non-overlapping label volume (T, H, W) of moving, rotating ellipses; jitter perturbs a prediction."""
    labels = np.zeros((frames, height, width), np.uint8)
    for t in range(frames):
        for n in range(objects):
            cx = int(width * (0.2 + 0.3 * n) + 0.8 * t + jitter * rng.integers(-6, 7))
            cy = int(height * 0.5 + height * 0.12 * np.sin(t / 9 + n) + jitter * rng.integers(-6, 7))
            axes = (int(width * 0.05) + 10 * n + jitter * int(rng.integers(0, 8)), int(height * 0.07) + jitter * int(rng.integers(0, 8)))
            cv2.ellipse(labels[t], (cx, cy), axes, 3 * t, 0, 360, n + 1, -1)
    return labels


def reference_scores(pred_labels, gt_labels):
    evaluator = Evaluator()
    for pred, gt in zip(pred_labels, gt_labels):
        evaluator.feed_frame(pred, gt)
    ious, boundaries = evaluator.conclude()
    return np.array([ious[k] / 100 for k in sorted(ious)]), np.array([boundaries[k] / 100 for k in sorted(boundaries)])


def to_objects(labels, objects):
    return np.stack([labels == n + 1 for n in range(objects)])


@pytest.mark.parametrize("size,seed", [((120, 200), 0), ((97, 131), 1), ((240, 427), 2)])
def test_j_and_f_matches_vos_benchmark(size, seed):
    rng = np.random.default_rng(seed)
    height, width = size
    gt = moving_ellipses(rng, 3, 12, height, width, jitter=0)
    pred = moving_ellipses(rng, 3, 12, height, width, jitter=1)
    # an object that vanishes in the prediction for two frames, and one predicted empty where it exists
    pred[4:6][pred[4:6] == 2] = 0
    ref_j, ref_f = reference_scores(pred, gt)
    ours = j_and_f(to_objects(pred, 3), to_objects(gt, 3))
    assert np.abs(ours.j - ref_j).max() < 1e-3
    assert np.abs(ours.f - ref_f).max() < 1e-3
    assert 0.3 < ours.mean_jf < 0.99  # a real, imperfect prediction


def test_boundary_f_hand_computed():
    # 6x8 frame, diagonal 10 -> radius ceil(0.08) = 1 (a plus-shaped disk)
    gt = np.zeros((1, 6, 8), bool)
    gt[0, 0:2, 0:4] = True  # boundary: (0,3), (1,0..3) -> 5 pixels
    pred = np.zeros((1, 6, 8), bool)
    pred[0, 0:2, 0:2] = True  # boundary: (0,1), (1,0), (1,1) -> 3 pixels, all within 1 px of gt's
    assert boundary_radius(6, 8) == 1
    assert sorted(zip(*np.nonzero(boundary_map(gt[0])))) == [(0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    scores = j_and_f(pred, gt)
    # precision 3/3, recall 3/5 -> F = 2 * 0.6 / 1.6
    assert scores.f[0] == pytest.approx(0.75)
    assert scores.j[0] == pytest.approx(0.5)


def test_empty_masks_follow_davis_conventions():
    gt = np.zeros((3, 10, 10), bool)
    gt[1, 2:5, 2:5] = True
    pred = np.zeros_like(gt)
    scores = j_and_f(pred, gt)
    # frames 0 and 2: both empty -> 1; frame 1: object missed -> 0
    assert scores.j_frames[0].tolist() == [1.0, 0.0, 1.0]
    assert scores.f_frames[0].tolist() == [1.0, 0.0, 1.0]
    # a false positive on an empty frame is 0 as well
    pred[0, 0:2, 0:2] = True
    assert j_and_f(pred, gt).j_frames[0, 0] == 0.0


def test_wrong_size_masks_are_refused():
    with pytest.raises(MaskShapeError, match=r"prediction \(2, 10, 12\), ground truth \(2, 10, 10\)"):
        j_and_f(np.zeros((2, 10, 12), bool), np.zeros((2, 10, 10), bool))
    with pytest.raises(MaskShapeError):
        volume_iou(np.zeros((2, 4, 4), bool), np.zeros((3, 4, 4), bool))


def box_volume(frames, height, width, y0, y1, x0, x1):
    volume = np.zeros((frames, height, width), bool)
    volume[:, y0:y1, x0:x1] = True
    return volume


def test_hungarian_matching_and_normalizers():
    a = box_volume(2, 6, 8, 0, 2, 0, 4)   # 16 px
    b = box_volume(2, 6, 8, 3, 6, 4, 8)   # 24 px
    half_a = box_volume(2, 6, 8, 0, 2, 0, 2)  # IoU with a: 8/16
    far = box_volume(2, 6, 8, 3, 6, 0, 2)     # overlaps nothing
    ious = iou_matrix([b, half_a, far], [a, b])
    assert ious.shape == (3, 2)  # rows are predictions
    assert ious[0].tolist() == [0.0, 1.0] and ious[1, 0] == 0.5
    score, matched, values = turn_miou(ious, "max")
    assert sorted(matched) == [(0, 1), (1, 0)]
    assert score == pytest.approx((1.0 + 0.5) / 3)  # the spurious third prediction counts as 0
    assert turn_miou(ious, "gt")[0] == pytest.approx(0.75)
    assert turn_miou(ious, "matched")[0] == pytest.approx(0.75)
    assert turn_miou(np.zeros((0, 2)), "max")[0] == 0.0  # unanswered turn
    # greedy matching would take the 0.6 pair first and end with 0.6 + 0.0; the optimum is 0.5 + 0.5
    assert turn_miou(np.array([[0.6, 0.5], [0.5, 0.0]]), "gt")[0] == pytest.approx(0.5)


def test_recall_uses_prediction_by_ground_truth_orientation():
    # prediction 0 overlaps ground truth 1 and names it; prediction 1 overlaps nothing
    ious = np.array([[0.0, 0.9], [0.0, 0.0]])
    sims = np.array([[0.2, 0.9], [0.1, 0.3]])  # (predictions, ground truth)
    assert recall_hits(ious, sims) == 1
    # indexing with a (ground truth, predictions) matrix, as the SAMA script does, loses the hit
    assert recall_hits(ious, sims.T) == 0
    with pytest.raises(ValueError, match="predictions, ground truth"):
        recall_hits(np.zeros((3, 2)), np.zeros((2, 3)))


def test_recall_maximises_hit_count_not_iou():
    # the largest-IoU pairing (0-0) leaves one hit; pairing 0-1 and 1-0 gives two
    ious = np.array([[0.95, 0.6], [0.55, 0.1]])
    sims = np.ones_like(ious)
    assert recall_hits(ious, sims) == 2


def test_grounding_scores_thresholds():
    a = box_volume(2, 6, 8, 0, 2, 0, 4)
    half_a = box_volume(2, 6, 8, 0, 2, 0, 2)
    scores = grounding_scores([half_a], [a], np.array([[0.5]]))
    assert scores.miou == 0.5 and scores.hits == 1  # both thresholds are inclusive
    assert grounding_scores([half_a], [a], np.array([[0.49]])).hits == 0
    empty = np.zeros_like(a)
    scores = grounding_scores([empty], [a], np.array([[1.0]]))
    assert scores.miou == 0.0 and scores.hits == 0  # an empty predicted mask scores 0
