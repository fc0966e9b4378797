"""SAM2 grounding speed on CPU: build time, per-frame encoding, per-frame streaming propagation.

Run: .venv/bin/python -m pytest tests/benchmarks/bench_sam2_propagation.py --benchmark-enable -s

Propagation is timed end to end the way the segmenter runs it: decoding a real
mp4 (480x640) with decord, encoding, memory attention, mask decoding and
resizing every mask to the video size; one object, a box on the middle frame
(so both the forward and the backward pass run). `extra_info` carries the
seconds per frame, wall clock and process CPU time (the CPU figure is the one to
trust when other jobs share the cores; SAMA_BENCH_THREADS=1 sets torch threads).
"""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch

from sama_agent.model.modeling.sam2_model import Sam2Grounding, build_sam2
from sama_agent.regions import Region
from sama_agent.video import Video

FRAMES = 32
SIZE = (480, 640)




def cpu_timed(function, cpu_seconds: list):
    def run():
        start = time.process_time()
        result = function()
        cpu_seconds.append(time.process_time() - start)
        return result

    return run


def write_clip(path, frames: int = FRAMES, size=SIZE) -> None:
    """An mpeg4 file of a red disc moving over a noisy grey scene."""
    height, width = size
    rng = np.random.default_rng(0)
    scene = (110 + rng.integers(-25, 25, (height, width, 1))).repeat(3, axis=2).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    for t in range(frames):
        frame = scene.copy()
        cv2.circle(frame, (160 + 8 * t, 240), 80, (30, 30, 220), -1)  # BGR red
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_sam2") / "clip.mp4"
    write_clip(path)
    return Video(path)


def test_build_cpu_small(benchmark):
    model = benchmark.pedantic(build_sam2, args=({"variant": "cpu_small", "image_size": 256},), rounds=3, iterations=1)
    benchmark.extra_info["parameters_millions"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


@pytest.mark.parametrize("variant", ["cpu_small", "sam2.1_hiera_t"])
@pytest.mark.parametrize("image_size", [128, 256])
def test_encode_per_frame(benchmark, image_size, variant):
    grounding = Sam2Grounding(config={"variant": variant, "image_size": image_size})
    frames = torch.rand(4, 3, *SIZE)

    def encode():
        with torch.inference_mode():
            grounding.encode_frames(frames)

    cpu_seconds: list[float] = []
    benchmark.pedantic(cpu_timed(encode, cpu_seconds), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["seconds_per_frame"] = round(benchmark.stats.stats.median / len(frames), 4)
    benchmark.extra_info["cpu_seconds_per_frame"] = round(float(np.median(cpu_seconds[1:])) / len(frames), 4)


@pytest.mark.parametrize("variant", ["cpu_small", "sam2.1_hiera_t"])
@pytest.mark.parametrize("image_size", [128, 256])
def test_propagate_per_frame(benchmark, clip, image_size, variant):
    grounding = Sam2Grounding(config={"variant": variant, "image_size": image_size})
    prompts = {1: [Region(frame=FRAMES // 2, box=(208.0, 160.0, 368.0, 320.0))]}

    def propagate():
        count = 0
        for _, masks in grounding.propagate(clip, prompts):
            assert masks[1].shape == SIZE
            count += 1
        return count

    cpu_seconds: list[float] = []
    count = benchmark.pedantic(cpu_timed(propagate, cpu_seconds), rounds=2, iterations=1, warmup_rounds=1)
    assert count == FRAMES
    benchmark.extra_info["seconds_per_frame"] = round(benchmark.stats.stats.median / FRAMES, 4)
    benchmark.extra_info["cpu_seconds_per_frame"] = round(float(np.median(cpu_seconds[1:])) / FRAMES, 4)
    benchmark.extra_info["peak_memory_frames"] = grounding.last_stats["peak_memory_frames"]
    assert np.isfinite(benchmark.stats.stats.median)
