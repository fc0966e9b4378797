"""Conversation data shared by the dataset loaders (producers), the model
(consumer) and the evaluators. Plain arrays so every side can use them.

T = sampled frames, H x W = the sampled frames' size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

SEG_TOKEN = "[SEG]"
PHRASE_PATTERN = re.compile(r"<p>(.*?)</p>\s*\[SEG\]", re.DOTALL)


@dataclass
class Turn:
    """One question and its answer.

    question: text with one `<mask>` per referenced region.
    answer: text; grounded phrases written `<p>phrase</p> [SEG]`.
    region_masks: (R, T, H, W) bool, one per `<mask>` in the question, over the sampled frames.
    seg_masks: (S, T, H, W) bool, the ground truth for each `[SEG]` in the answer.
    """

    question: str
    answer: str
    region_masks: np.ndarray
    seg_masks: np.ndarray
    question_id: str | None = None


@dataclass
class ConversationSample:
    """A video's sampled frames and a multi-turn conversation about it."""

    video_id: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    frame_indices: list[int]  # positions of the sampled frames in the original video
    turns: list[Turn]
    meta: dict = field(default_factory=dict)


def grounded_phrases(answer: str) -> list[str]:
    """The phrases of `<p>phrase</p> [SEG]`, in order."""
    return [p.strip() for p in PHRASE_PATTERN.findall(answer)]


def plain_text(answer: str) -> str:
    """The answer without markup: `<p>the red disc</p> [SEG] moves` -> `the red disc moves`."""
    text = answer.replace("<p>", "").replace("</p>", "").replace(SEG_TOKEN, "")
    return re.sub(r"\s+", " ", text).strip()
