"""What a benchmark run spends per video with the SAMA model: encoding a video
once (`set_video`) and answering one turn (`ask`, including [SEG] -> tracks).

Uses the shipped tiny config (`sama-tiny.json`) with random weights: the cost
is the architecture's, not a trained checkpoint's. Run with the other
benchmarks:

    pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRAMES, HEIGHT, WIDTH = 32, 240, 320


@pytest.fixture(scope="module")
def predictor():
    from sama_agent.model.configs import CONFIG_DIR
    from sama_agent.model.modeling.sama import SamaModel
    from sama_agent.model.predictor import SamaPredictor

    config = json.loads((CONFIG_DIR / "sama-tiny.json").read_text())
    torch.manual_seed(0)
    return SamaPredictor(SamaModel(config))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from sama_agent.video import Video

    path = tmp_path_factory.mktemp("model") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (WIDTH, HEIGHT))
    for t in range(FRAMES):
        frame = np.full((HEIGHT, WIDTH, 3), 50, np.uint8)
        cv2.circle(frame, (40 + 7 * t, 120), 30, (40, 40, 220), -1)
        writer.write(frame)
    writer.release()
    return Video(path)


@pytest.mark.benchmark(group="sama-tiny")
def test_encode_video_32_frames(benchmark, predictor, clip):
    benchmark.pedantic(predictor.set_video, args=(clip,), rounds=3, iterations=1)
    assert predictor.context is not None
    benchmark.extra_info["context_frames"] = len(predictor.context_frames)


@pytest.mark.benchmark(group="sama-tiny")
def test_one_chat_turn(benchmark, predictor, clip):
    from sama_agent.regions import Region

    predictor.set_video(clip)
    region = Region(frame=0, box=(10, 90, 70, 150))

    def turn():
        predictor.reset()
        return predictor.ask("what is <mask> doing?", [region])

    result = benchmark.pedantic(turn, rounds=3, iterations=1)
    assert isinstance(result.text, str)
    benchmark.extra_info["tracks"] = len(result.tracks)
