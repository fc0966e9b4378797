"""Small real video files for tests (shared by conftest and test modules)."""
from pathlib import Path

import numpy as np


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
