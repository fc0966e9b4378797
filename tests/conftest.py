"""Shared fixtures. Everything runs offline: no model hub is reachable."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from video_files import write_mp4  # noqa: E402


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waiting when the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
