"""Flow segmenter plugin: speed, and memory on a clip and on one ten times longer.

Run: pytest tests/benchmarks/bench_flow_memory.py -o addopts='' -s   (about 4 minutes)

Each measurement runs in a fresh Python process, samples its RSS after every
frame, prompts a box on the middle frame, so both the
backward and the forward pass run, and consumes the stream the way the host
does (each frame's masks are encoded to RLE and kept).

Frame folders measure the segmenter itself: 48 frames against 480. Through
decord (mp4), RSS climbs by a few hundred MB over the first hundred or two
frames of a run (decord's buffers interleaved with OpenCV's) and then levels
off; the mp4 benchmark checks that it does level off.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

pytest.importorskip("sama_flow_segmenter", reason="pip install -e plugins/sama-flow-segmenter")

SIZE = (480, 640)  # height, width: VGA, a common real-footage size


def write_clip(path, frames: int, size=SIZE, radius: int = 60) -> tuple[float, float, float, float]:
    """An mpeg4 file of a dotted disc circling over a textured scene; returns the
    disc's box on the middle frame."""
    height, width = size
    rng = np.random.default_rng(3)
    coarse = rng.uniform(40, 200, (6, 8, 3)).astype(np.float32)
    scene = np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 15, (height, width, 1)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    dots = ((xx // 8 + yy // 8) % 2).astype(bool)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    middle_box = None
    for t in range(frames):
        phase = 2 * np.pi * (t % 96) / 96  # the same motion per 96 frames, however long the clip
        cx, cy = width / 2 + 0.3 * width * np.cos(phase), height / 2 + 0.25 * height * np.sin(2 * phase)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        frame = scene.copy()
        frame[disc & dots] = (40, 40, 210)
        frame[disc & ~dots] = (60, 20, 160)
        writer.write(frame)
        if t == frames // 2:
            middle_box = (cx - radius, cy - radius, cx + radius + 1, cy + radius + 1)
    writer.release()
    return middle_box


MEASURE = textwrap.dedent(
    """
    import json, sys, time, tracemalloc
    import psutil
    from sama_agent.masks import encode_rle
    from sama_agent.regions import Region
    from sama_agent.video import Video
    from sama_flow_segmenter import FlowSegmenter

    path, box = sys.argv[1], tuple(json.loads(sys.argv[2]))
    video = Video(path, fps=25)
    process = psutil.Process()  # ru_maxrss would carry the parent's peak across fork/exec
    imports_mb = process.memory_info().rss / 2**20
    peak_mb = imports_mb
    tracemalloc.start()
    start = time.perf_counter()
    kept, samples = {}, []
    stream = FlowSegmenter().propagate(video, {1: [Region(frame=video.num_frames // 2, box=box)]})
    for count, (index, masks) in enumerate(stream):
        kept[index] = encode_rle(masks[1])
        rss_mb = process.memory_info().rss / 2**20
        peak_mb = max(peak_mb, rss_mb)
        if count % max(1, video.num_frames // 8) == 0:
            samples.append(round(rss_mb))
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    print(json.dumps({
        "frames": video.num_frames,
        "seconds": seconds,
        "imports_rss_mb": imports_mb,
        "peak_rss_mb": peak_mb,
        "rss_along_stream_mb": samples,
        "traced_peak_mb": traced_peak / 2**20,
        "rle_kb": sum(len(r["counts"]) for r in kept.values()) / 1024,
        "frames_seen": len(kept),
    }))
    """
)


def measure(path, box) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path), json.dumps(box)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def to_frame_folder(video_path, folder):
    from PIL import Image

    from sama_agent.video import Video

    folder.mkdir()
    for index, frame in Video(video_path).iter_frames():
        Image.fromarray(frame).save(folder / f"{index:05d}.png", compress_level=1)
    return folder


def report(label, run):
    print(f"{label}: {run['frames']:4d} frames 640x480 in {run['seconds']:.1f} s ({run['frames'] / run['seconds']:.1f} frames/s); "
          f"peak RSS {run['peak_rss_mb']:.0f} MB (after imports {run['imports_rss_mb']:.0f} MB, sampled each frame); "
          f"RSS along the stream {run['rss_along_stream_mb']} MB; traced Python/numpy peak {run['traced_peak_mb']:.1f} MB; "
          f"kept RLE {run['rle_kb']:.0f} KB")


def test_segmenter_memory_is_flat_on_a_ten_times_longer_clip(benchmark, tmp_path):
    """Frame folders (PIL decoding): the segmenter's own memory, 48 frames against 480."""
    short_box = write_clip(tmp_path / "short.mp4", 48)
    long_box = write_clip(tmp_path / "long.mp4", 480)
    short_folder = to_frame_folder(tmp_path / "short.mp4", tmp_path / "short")
    long_folder = to_frame_folder(tmp_path / "long.mp4", tmp_path / "long")
    short = benchmark.pedantic(measure, args=(short_folder, short_box), rounds=1, iterations=1)
    long = measure(long_folder, long_box)
    benchmark.extra_info.update({"short": short, "long": long})
    report("frame folder", short)
    report("frame folder", long)
    assert short["frames_seen"] == 48 and long["frames_seen"] == 480
    # ten times the frames; only the kept RLE (a few hundred bytes a frame) may grow
    assert long["traced_peak_mb"] <= 1.25 * short["traced_peak_mb"] + long["rle_kb"] / 1024
    assert long["peak_rss_mb"] - long["imports_rss_mb"] <= 1.25 * (short["peak_rss_mb"] - short["imports_rss_mb"]) + 10


def test_mp4_memory_levels_off(benchmark, tmp_path):
    """An mp4 through decord: RSS rises while decord and OpenCV settle in, then stays put."""
    box = write_clip(tmp_path / "long.mp4", 480)
    run = benchmark.pedantic(measure, args=(tmp_path / "long.mp4", box), rounds=1, iterations=1)
    benchmark.extra_info.update({"mp4": run})
    report("mp4", run)
    samples = run["rss_along_stream_mb"]
    assert run["frames_seen"] == 480
    settled = samples[-3:]  # the last three eighths of the stream
    assert max(settled) <= 1.05 * min(settled), samples
