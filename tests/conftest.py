"""Shared fixtures. Everything runs offline: no model hub is reachable."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_mp4(path: Path, frames: int = 20, size=(48, 64), fps: float = 10.0) -> np.ndarray:
    """Write an mp4 (mpeg4) of a white bar moving right; returns the frames written (T, H, W, 3) RGB."""
    import cv2

    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    written = []
    for t in range(frames):
        frame = np.full((height, width, 3), 40, np.uint8)
        frame[:, (2 * t) % width : (2 * t) % width + 8] = 255
        frame[: height // 4, :, 2] = 200  # a blue-ish band (RGB) to check channel order
        writer.write(frame[:, :, ::-1].copy())  # OpenCV writes BGR
        written.append(frame)
    writer.release()
    return np.stack(written)


@pytest.fixture
def mp4_video(tmp_path):
    path = tmp_path / "clip.mp4"
    frames = write_mp4(path)
    return path, frames


@pytest.fixture
def frame_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (6, 20, 30, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t}.png")  # natural order: 2 before 10
    return folder, frames
