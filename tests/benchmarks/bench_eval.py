"""Evaluation benchmarks: video decoding, J&F (ours vs vos-benchmark), Bench-G
grounding scores, caption metrics, phrase similarity.

Run them all (writes a JSON report):

    pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json

The J&F pair shares the group "jf-100x480p-3obj"; the vos-benchmark test
stores ours/reference mean time in its extra_info and fails if ours is slower.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRAMES, HEIGHT, WIDTH, OBJECTS = 100, 480, 854, 3
_means: dict[str, float] = {}


def label_volume(seed: int, jitter: int) -> np.ndarray:
    """(T, H, W) uint8 labels of OBJECTS moving, rotating ellipses (no overlap by construction of labels)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((FRAMES, HEIGHT, WIDTH), np.uint8)
    for t in range(FRAMES):
        for n in range(OBJECTS):
            centre = (int(150 + 250 * n + 0.8 * t + jitter * rng.integers(-6, 7)),
                      int(240 + 60 * np.sin(t / 10 + n) + jitter * rng.integers(-6, 7)))
            axes = (40 + 10 * n + jitter * int(rng.integers(0, 8)), 30 + jitter * int(rng.integers(0, 8)))
            cv2.ellipse(labels[t], centre, axes, t, 0, 360, n + 1, -1)
    return labels


@pytest.fixture(scope="module")
def jf_masks():
    gt, pred = label_volume(0, 0), label_volume(1, 1)
    as_objects = lambda labels: np.stack([labels == n + 1 for n in range(OBJECTS)])  # noqa: E731
    return pred, gt, as_objects(pred), as_objects(gt)


def vos_benchmark_scores(pred_labels, gt_labels):
    from vos_benchmark.evaluator import Evaluator

    evaluator = Evaluator()
    for pred, gt in zip(pred_labels, gt_labels):
        evaluator.feed_frame(pred, gt)
    return evaluator.conclude()


@pytest.mark.benchmark(group="jf-100x480p-3obj")
def test_jf_ours(benchmark, jf_masks):
    from sama_agent.evaluation.metrics import j_and_f

    _, _, pred, gt = jf_masks
    scores = benchmark.pedantic(j_and_f, args=(pred, gt), rounds=5, iterations=1, warmup_rounds=1)
    _means["ours"] = benchmark.stats.stats.mean
    benchmark.extra_info["J&F"] = scores.mean_jf


@pytest.mark.benchmark(group="jf-100x480p-3obj")
def test_jf_vos_benchmark(benchmark, jf_masks):
    from sama_agent.evaluation.metrics import j_and_f

    pred_labels, gt_labels, pred, gt = jf_masks
    ious, boundaries = benchmark.pedantic(vos_benchmark_scores, args=(pred_labels, gt_labels), rounds=3, iterations=1)
    reference_mean = benchmark.stats.stats.mean
    ours = j_and_f(pred, gt)
    assert np.abs(ours.j - np.array([ious[k] / 100 for k in sorted(ious)])).max() < 1e-3
    assert np.abs(ours.f - np.array([boundaries[k] / 100 for k in sorted(boundaries)])).max() < 1e-3
    if "ours" not in _means:  # run alone: time ours here
        started = time.perf_counter()
        j_and_f(pred, gt)
        _means["ours"] = time.perf_counter() - started
    ratio = _means["ours"] / reference_mean
    benchmark.extra_info["ours_over_reference"] = ratio
    assert ratio <= 1.0, f"our J&F takes {ratio:.2f}x the time of vos-benchmark"


@pytest.fixture(scope="module")
def mp4_480p(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
    labels = label_volume(0, 0)
    for t in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
        frame[labels[t] > 0] = (40 * labels[t][labels[t] > 0])[:, None]
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.benchmark(group="video-decode")
def test_decode_100_frames_480p(benchmark, mp4_480p):
    from sama_agent.video import Video

    def decode_all():
        video = Video(mp4_480p)
        count = 0
        for _, frame in video.iter_frames(batch=8):
            count += 1
        return count, frame.shape

    count, shape = benchmark.pedantic(decode_all, rounds=3, iterations=1)
    assert count == FRAMES and shape == (HEIGHT, WIDTH, 3)
    benchmark.extra_info["frames_per_second"] = FRAMES / benchmark.stats.stats.mean


@pytest.mark.benchmark(group="bench-g-grounding")
def test_grounding_scores_32_frames_480p(benchmark, jf_masks):
    """One Bench-G turn: 3 predicted vs 3 ground-truth volumes of 32 frames at 480p."""
    from sama_agent.evaluation.metrics import grounding_scores

    _, _, pred, gt = jf_masks
    preds, gts = list(pred[:, :32]), list(gt[:, :32])
    sims = np.eye(OBJECTS)
    scores = benchmark(grounding_scores, preds[::-1], gts, sims[::-1])
    assert scores.hits == OBJECTS


@pytest.fixture(scope="module")
def caption_scorer():
    from sama_agent.evaluation.captions import CaptionScorer

    with CaptionScorer() as scorer:
        scorer.score(["warm up"], ["warm up the java processes"])
        yield scorer


@pytest.mark.benchmark(group="caption-metrics")
def test_caption_metrics_50_pairs(benchmark, caption_scorer):
    rng = np.random.default_rng(0)
    words = "the a red blue old young man woman kite dog runs walks left right slowly quickly across field".split()
    references = [" ".join(rng.choice(words, 12)) for _ in range(50)]
    candidates = [" ".join(rng.choice(words, 10)) for _ in range(50)]
    scores = benchmark.pedantic(caption_scorer.score, args=(candidates, references), rounds=3, iterations=1)
    assert 0 < scores["Bleu_1"] < 1 and scores["SPICE"] is None


@pytest.mark.benchmark(group="phrase-similarity")
def test_minilm_similarity_20x20(benchmark):
    from sama_agent.evaluation.similarity import MiniLMSimilarity

    similarity = MiniLMSimilarity()
    phrases = [f"the {c} {o}" for c in ("red", "blue", "green", "old", "small") for o in ("kite", "man", "dog", "car")]

    def fresh_matrix():
        similarity._cache.clear()  # time the embedding, not the cache
        return similarity.matrix(phrases, phrases)

    matrix = benchmark(fresh_matrix)
    assert matrix.shape == (20, 20) and np.allclose(np.diag(matrix), 1, atol=1e-4)
