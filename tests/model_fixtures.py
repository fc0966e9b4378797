"""Shared builders for the SAMA model tests (tests/test_model_*.py) and benchmarks.

A tiny but complete SamaModel (ViT, st-qformer, Qwen2, SAM2 with a small CNN
trunk), a real mp4 written with OpenCV, and a conversation about it with exact
masks, so tests train and run the real model end to end in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sama_agent.conversation import ConversationSample, Turn

TURN1_Q = "segment the red square"
TURN1_A = "sure, <p>the red square</p> [SEG] moves right."
TURN2_Q = "what is <mask> doing?"
TURN2_A = "<p>the red square</p> [SEG] moves right, then stays still."
CORPUS = [TURN1_Q, TURN1_A, TURN2_Q, TURN2_A, "the blue disc moves left and up"]


def tiny_config(**overrides):
    from sama_agent.model.configuration import SamaConfig
    from sama_agent.model.modeling.llm import build_word_vocab

    options = dict(
        encoder="vit-tiny",
        encoder_options=dict(image_size=64, patch_size=16, dim=48, depth=1, heads=2),
        aggregator_options=dict(dim=48, heads=2, spatial_queries=4, temporal_queries=6, window=4),
        llm_options=dict(vocab=build_word_vocab(CORPUS), hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=128),
        sam2_options=dict(image_size=64, trunk="cnn", cnn_channels=[8, 16, 24, 32]),
        seg_head_options=dict(hidden=64, per_frame=True),
        num_context_frames=6,
        num_key_frames=2,
        key_frame_grid=2,
        mask_points=128,
        max_new_tokens=24,
    )
    options.update(overrides)
    return SamaConfig(**options)


def square_frames(count: int = 16, size=(48, 64), side: int = 12):
    """A red square moving right for the first half, then still, on a grey textured background.
    Returns (frames (T, H, W, 3) uint8, masks (T, H, W) bool)."""
    height, width = size
    rng = np.random.default_rng(0)
    background = (100 + rng.integers(-15, 15, (height, width, 1))).repeat(3, axis=2).astype(np.uint8)
    frames, masks = [], np.zeros((count, height, width), bool)
    for t in range(count):
        x0 = 4 + 3 * min(t, count // 2)
        y0 = height // 2 - side // 2
        masks[t, y0 : y0 + side, x0 : x0 + side] = True
        frame = background.copy()
        frame[masks[t]] = (220, 30, 30)
        frames.append(frame)
    return np.stack(frames), masks


def write_square_mp4(path: Path, count: int = 16, size=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Write the square clip as an mp4 with OpenCV; returns the frames and masks written."""
    import cv2

    frames, masks = square_frames(count, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (size[1], size[0]))
    for frame in frames:
        writer.write(frame[:, :, ::-1].copy())
    writer.release()
    return frames, masks


def square_sample(frames: np.ndarray, masks: np.ndarray) -> ConversationSample:
    """Two turns: ground the square, then ask about it by region."""
    count = len(frames)
    none = np.zeros((0, count, *frames.shape[1:3]), bool)
    turns = [
        Turn(TURN1_Q, TURN1_A, none, masks[None]),
        Turn(TURN2_Q, TURN2_A, masks[None], masks[None]),
    ]
    return ConversationSample("square", frames, list(range(count)), turns)


def overfit(model, sample, steps: int = 60, lr: float = 3e-3, seed: int = 0):
    """Train `model` on one sample until it has memorised it; returns the loss history."""
    import torch

    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    history = []
    for _ in range(steps):
        output = model(sample)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        history.append(float(output.loss.detach()))
    model.eval()
    return history


class one_thread:
    """Run torch on one thread inside the block: tiny models gain nothing from more, and on a
    shared machine extra OpenMP threads spin and slow everything down many times over."""

    def __enter__(self):
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.previous)
        return False
