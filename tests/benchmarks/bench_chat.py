"""First turn vs later turns of a chat session.

Run: .venv/bin/python -m pytest tests/benchmarks/bench_chat.py --benchmark-enable -s

The first turn opens the session (decodes the video, encodes the context frames
and every frame's SAM2 features) and answers; a later turn only answers, reusing
all of that. Both are a grounding question whose [SEG] is propagated over the
whole clip. The model is loaded once, outside the timings: the claim is about
encoding the video once per session, not about reading weights.

Video: the bundled sample. Model: the shipped default when it is installed,
otherwise the tests' small trained model (`extra_info` says which). `extra_info` also carries process CPU seconds per
round, the figure to trust when other jobs share the cores; SAMA_BENCH_THREADS=1
sets torch threads (two threads on two busy cores slow torch down many times over).
"""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import pytest

from session_helpers import SQUARE_QUESTION, trained_model_dir
from sama_agent.errors import CheckpointError
from sama_agent.session import Session, feature_cache_of

# A later turn skips the session's encoding: it must cost at least this share of that encoding less than the
# first turn. (The answer itself costs about the same on every turn; with a 135M-parameter LLM it dominates.)
ENCODING_SAVED = 0.5
RESULTS: dict[str, dict] = {}
DEFAULT_QUESTION = "Please segment the orange square."  # an object of the bundled sample video




def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sama_agent.defaults import default_model_dir, default_sample_video
    from sama_agent.model.modeling.sama import SamaModel

    video = default_sample_video()
    try:
        model_dir, question, source = default_model_dir(), DEFAULT_QUESTION, "shipped default model"
    except CheckpointError:
        model_dir, question, source = trained_model_dir(), SQUARE_QUESTION, "tests' trained tiny model"
    model = SamaModel.from_pretrained(model_dir)
    return {"model": model, "video": Path(video), "question": question, "source": source,
            "session_dir": tmp_path_factory.mktemp("sessions")}


def _timed(function, walls: list, cpus: list):
    def run():
        wall, cpu = time.perf_counter(), _cpu()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu() - cpu)
        return result
    return run


def _record(benchmark, name: str, walls, cpus, setup) -> None:
    RESULTS[name] = {"wall_median_s": statistics.median(walls), "cpu_median_s": statistics.median(cpus)}
    import torch

    benchmark.extra_info.update({**RESULTS[name], "model": setup["source"], "video": str(setup["video"]),
                                 "torch_threads": torch.get_num_threads()})


def test_first_turn(benchmark, setup):
    walls, cpus = [], []

    def open_and_ask():
        session = Session.open(setup["video"], model=setup["model"], session_dir=setup["session_dir"] / "first", progress=False)
        return session, session.ask(setup["question"])

    session, answer = benchmark.pedantic(_timed(open_and_ask, walls, cpus), rounds=3, iterations=1, warmup_rounds=1)
    assert answer.handles, answer.raw
    benchmark.extra_info["frames"] = session.video.num_frames
    benchmark.extra_info["encode_seconds_last"] = session.encode_seconds
    RESULTS["encode_seconds"] = session.encode_seconds
    _record(benchmark, "first", walls, cpus, setup)


def test_later_turn(benchmark, setup):
    session = Session.open(setup["video"], model=setup["model"], session_dir=setup["session_dir"] / "later", progress=False)
    session.ask(setup["question"])
    cache = feature_cache_of(session.answerer)
    encoded = cache.misses if cache is not None else None
    walls, cpus = [], []
    answer = benchmark.pedantic(_timed(lambda: session.ask(setup["question"]), walls, cpus), rounds=5, iterations=1)
    assert answer.handles, answer.raw
    if cache is not None:
        assert cache.misses == encoded, "a later turn re-encoded frames"
    _record(benchmark, "later", walls, cpus, setup)
    if "first" not in RESULTS:
        pytest.skip("run test_first_turn in the same session to compare")
    first, later, encoding = RESULTS["first"]["wall_median_s"], RESULTS["later"]["wall_median_s"], RESULTS["encode_seconds"]
    benchmark.extra_info.update({"later_over_first_wall": round(later / first, 3), "encode_seconds": round(encoding, 3)})
    print(f"\nfirst turn {first:.2f}s wall, of which encoding {encoding:.2f}s; later turn {later:.2f}s wall ({setup['source']})")
    assert first - later >= ENCODING_SAVED * encoding, (
        f"a later turn ({later:.2f}s) saves {first - later:.2f}s on the first ({first:.2f}s); encoding the video took "
        f"{encoding:.2f}s and at least {ENCODING_SAVED:.0%} of that should be saved")


def test_later_turn_without_the_feature_cache(benchmark, setup):
    """For comparison: the predictor on its own re-encodes every frame for SAM2 on every turn."""
    from sama_agent.model.predictor import SamaPredictor

    session = Session.open(setup["video"], model=SamaPredictor(setup["model"]), session_dir=setup["session_dir"] / "uncached", progress=False)
    assert feature_cache_of(session.answerer) is None
    session.ask(setup["question"])
    walls, cpus = [], []
    answer = benchmark.pedantic(_timed(lambda: session.ask(setup["question"]), walls, cpus), rounds=3, iterations=1)
    assert answer.handles, answer.raw
    _record(benchmark, "later_uncached", walls, cpus, setup)
