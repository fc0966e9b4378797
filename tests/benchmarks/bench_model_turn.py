"""SAMA model speed per turn, shipped sama-tiny config, a 32-frame 256x256 mp4.

Run: .venv/bin/python -m pytest tests/benchmarks/bench_model_turn.py --benchmark-enable -s
     (SAMA_BENCH_THREADS=1 sets torch threads; SAMA_BENCH_CONFIG=sama-smol benchmarks the other config.)

- forward per turn: the teacher-forced forward of a one-turn conversation (8 context frames,
  2 key frames, one [SEG]), i.e. what training pays per turn, without and with backward;
- answer per turn: SamaPredictor.ask on the encoded video - greedy generation with the KV
  cache, then SAM2 propagation of every [SEG] over all 32 frames. Weights are untrained, so the
  answer is arbitrary: extra_info records how many tokens and [SEG]s the timed answer had.
- set_video: decoding and encoding the video once per session.
`extra_info` holds the process CPU seconds too (trust those when other jobs share the cores).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_fixtures import square_frames, write_square_mp4  # noqa: E402

from sama_agent.conversation import ConversationSample, Turn  # noqa: E402
from sama_agent.model.configuration import SamaConfig  # noqa: E402
from sama_agent.model.modeling.sama import SamaModel  # noqa: E402
from sama_agent.model.predictor import SamaPredictor  # noqa: E402
from sama_agent.video import Video  # noqa: E402

FRAMES, SIZE = 32, (256, 256)




@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SamaModel(SamaConfig.from_named(os.environ.get("SAMA_BENCH_CONFIG", "sama-tiny"), max_new_tokens=24))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "square.mp4"
    write_square_mp4(path, count=FRAMES, size=SIZE)
    return Video(path)


@pytest.fixture(scope="module")
def one_turn():
    frames, masks = square_frames(FRAMES, SIZE, side=40)
    turn = Turn("please segment the red square.", "sure, <p>the red square</p> [SEG] moves right.", np.zeros((0, *masks.shape), bool), masks[None])
    return ConversationSample("bench", frames, list(range(FRAMES)), [turn])


def _run(benchmark, function, rounds=3):
    cpu = []

    def timed():
        start = time.process_time()
        result = function()
        cpu.append(time.process_time() - start)
        return result

    result = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info["cpu_seconds_mean"] = round(float(np.mean(cpu)), 4)
    benchmark.extra_info["threads"] = torch.get_num_threads()
    return result


def test_forward_per_turn(benchmark, model, one_turn):
    model.train()
    with torch.no_grad():
        output = _run(benchmark, lambda: model(one_turn))
    benchmark.extra_info["answer_tokens"] = output.num_answer_tokens


def test_forward_backward_per_turn(benchmark, model, one_turn):
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        output = model(one_turn)
        output.loss.backward()
        return output

    _run(benchmark, step)


def test_set_video(benchmark, model, video):
    predictor = SamaPredictor(model)
    _run(benchmark, lambda: predictor.set_video(video))
    benchmark.extra_info["context_frames"] = len(predictor.context_frames)


def test_answer_per_turn(benchmark, model, video):
    predictor = SamaPredictor(model)
    predictor.set_video(video)

    def ask():
        predictor.reset()
        return predictor.ask("please segment the red square.", [])

    result = _run(benchmark, ask)
    benchmark.extra_info["answer_tokens"] = len(predictor.model.llm.encode_text(result.raw))
    benchmark.extra_info["segs"] = len(result.tracks)
    assert all(t.to_array(FRAMES).shape == (FRAMES, *SIZE) for t in result.tracks)


def test_ground_one_seg_over_all_frames(benchmark, model, video):
    """One [SEG] embedding -> SAM2 prompts on the key frames -> memory propagation to all 32 frames."""
    predictor = SamaPredictor(model)
    predictor.set_video(video)
    seg_hidden = torch.randn(1, model.llm.hidden_size)
    with torch.no_grad():
        tracks = _run(benchmark, lambda: predictor._tracks(seg_hidden, ["the red square"]))
    assert len(tracks) == 1 and tracks[0].frames == list(range(FRAMES))
