"""A small real SAMA model for the session, chat and tool tests.

A randomly initialised model rarely writes `[SEG]`, so the plumbing (masks
stored, handles resolving, files written) would go untested. Instead the tiny
config is trained for real, briefly, on one conversation about a moving red
square, until its greedy answers ground `<p>the red square</p> [SEG]`; then it
is saved with save_pretrained and loaded back by the code under test.

Training takes about a minute on 2 idle cores, so the result is kept in
`$SAMA_AGENT_TEST_CACHE` (default ~/.cache/sama-agent/test-models) under a key
made of the config and the training recipe; a cached model that no longer loads
(the model code changed shape) is retrained. `SAMA_AGENT_TEST_RETRAIN=1` forces it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

SQUARE_QUESTION = "please segment the red square ."
REGION_QUESTION = "what is <mask> doing ?"
GROUNDED_ANSWER = "<p>the red square</p> [SEG] ."
REGION_ANSWER = "<p>the red square</p> [SEG] moves right ."
CLIP_FRAMES, CLIP_SIZE = 12, (96, 128)
TRAIN_STEPS = 60
LEARNING_RATE = 2e-3

_CACHE: dict[str, Path] = {}


def square_clip_mp4(path: Path, frames: int = CLIP_FRAMES, size=CLIP_SIZE) -> tuple[Path, np.ndarray, np.ndarray]:
    """An mp4 of the moving red square (sama_agent.testing's clip); returns (path, frames, masks)."""
    import cv2

    from sama_agent.testing import write_square_clip

    folder = Path(tempfile.mkdtemp(prefix="square-"))
    video, masks = write_square_clip(folder, frames=frames, size=size)
    pixels = video.frames(range(video.num_frames))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size[1], size[0]))
    for frame in pixels:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return path, pixels, masks


def tiny_config():
    from sama_agent.model.configuration import SamaConfig

    base = SamaConfig.from_named("sama-tiny")
    return SamaConfig.from_dict(base.to_dict(), **{
        "encoder_options": {**base.encoder_options, "image_size": 64, "depth": 2},
        "sam2_options": {**base.sam2_options, "image_size": 128},
        "num_context_frames": 4,
        "max_new_tokens": 12,
    })


def _sample(frames: np.ndarray, masks: np.ndarray):
    from sama_agent.conversation import ConversationSample, Turn

    none = np.zeros((0, *masks.shape), bool)
    turns = [
        Turn(SQUARE_QUESTION, GROUNDED_ANSWER, none, masks[None]),
        Turn(REGION_QUESTION, REGION_ANSWER, masks[None], masks[None]),
    ]
    return ConversationSample("square", frames, list(range(len(frames))), turns)


def trained_model_dir() -> Path:
    """Folder of a tiny SamaModel that grounds 'the red square' (trained once, then cached)."""
    if "dir" in _CACHE:
        return _CACHE["dir"]
    folder = _cache_root() / _recipe_key()
    if os.environ.get("SAMA_AGENT_TEST_RETRAIN") == "1" and folder.exists():
        shutil.rmtree(folder)
    if (folder / "config.json").is_file() and not _loads(folder):
        shutil.rmtree(folder)  # the model code changed shape since it was trained
    if not (folder / "config.json").is_file():
        scratch = Path(tempfile.mkdtemp(prefix="sama-session-model-", dir=_cache_root()))
        _train(scratch)
        if folder.exists():  # another process finished first
            shutil.rmtree(scratch)
        else:
            scratch.replace(folder)
    _CACHE["dir"] = folder
    return folder


def _loads(folder: Path) -> bool:
    from sama_agent.errors import CheckpointError
    from sama_agent.model.modeling.sama import SamaModel

    try:
        SamaModel.from_pretrained(folder)
    except (CheckpointError, ValueError, KeyError, RuntimeError):
        return False
    return True


def _cache_root() -> Path:
    root = Path(os.environ.get("SAMA_AGENT_TEST_CACHE", Path.home() / ".cache" / "sama-agent" / "test-models"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _recipe_key() -> str:
    """Digest of everything the trained weights depend on."""
    import torch

    digest = hashlib.sha256()
    recipe = {"config": tiny_config().to_dict(), "steps": TRAIN_STEPS, "lr": LEARNING_RATE, "clip": [CLIP_FRAMES, CLIP_SIZE],
              "turns": [SQUARE_QUESTION, GROUNDED_ANSWER, REGION_QUESTION, REGION_ANSWER]}
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(torch.__version__.encode())
    return "square-" + digest.hexdigest()[:16]


def _train(out: Path) -> Path:
    import torch

    from sama_agent.model.modeling.sama import SamaModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    _, frames, masks = square_clip_mp4(out / "train.mp4")
    model = SamaModel(tiny_config())
    sample = _sample(frames, masks)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    model.train()
    for _ in range(TRAIN_STEPS):
        optimiser.zero_grad()
        model(sample).loss.backward()
        optimiser.step()
    model.eval()
    (out / "train.mp4").unlink()
    return model.save_pretrained(out)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and two threads on two cores that other
    jobs also use slow torch down many times over; restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
