"""CLAIR: an LLM judges how likely a candidate caption set and a reference
caption set describe the same thing, on a 0-100 scale (Chan et al., 2023).

`ClairJudge` takes any LangChain chat model (`BaseChatModel`), so a hosted
model, a local one, or a fake one in tests all plug in the same way. The
judge is optional: without one, CLAIR is simply absent from the results.

A reply is read as the first JSON object with a numeric "score"; failing
that, as the first number in the text. A reply that holds no score after
`attempts` tries gives `score=None` (reported as missing), never 0, so a
judge outage cannot pass for a bad caption.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

JUDGE_SYSTEM = "You grade caption similarity. Reply with JSON only."
JUDGE_PROMPT = """Two sets of statements describe something in a video.

Candidate statements:
{candidates}
Reference statements:
{references}
How likely is it, on a scale from 0 to 100, that the candidate statements describe the same object and events as the reference statements?
Answer with a JSON object: {{"score": <number from 0 to 100>, "reason": "<one sentence>"}}"""

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class ClairResult:
    score: float | None  # in [0, 1]; None when the judge gave no usable score
    reason: str | None
    raw: str


class ClairJudge:
    """CLAIR with a pluggable LangChain chat model."""

    def __init__(self, chat_model: BaseChatModel, attempts: int = 3, name: str | None = None):
        if not isinstance(chat_model, BaseChatModel):
            raise TypeError(f"CLAIR needs a LangChain chat model (BaseChatModel), got {type(chat_model).__name__}")
        self.chat_model = chat_model
        self.attempts = max(1, attempts)
        self.name = name or getattr(chat_model, "model_name", None) or type(chat_model).__name__

    def prompt(self, candidates: Sequence[str], references: Sequence[str]) -> list:
        text = JUDGE_PROMPT.format(candidates=_bullets(candidates), references=_bullets(references))
        return [SystemMessage(JUDGE_SYSTEM), HumanMessage(text)]

    def score(self, candidates: Sequence[str] | str, references: Sequence[str] | str) -> ClairResult:
        candidates = [candidates] if isinstance(candidates, str) else list(candidates)
        references = [references] if isinstance(references, str) else list(references)
        messages = self.prompt(candidates, references)
        reply = ""
        for _ in range(self.attempts):
            reply = _text(self.chat_model.invoke(messages))
            parsed = parse_judgement(reply)
            if parsed is not None:
                return ClairResult(parsed[0], parsed[1], reply)
        return ClairResult(None, f"no score in the judge's reply after {self.attempts} attempts", reply)


def parse_judgement(reply: str) -> tuple[float, str | None] | None:
    """(score in [0, 1], reason) from a judge reply, or None."""
    for match in re.finditer(r"\{[^{}]*\}", reply):
        try:
            data = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("score"), (int, float)):
            return _unit(float(data["score"])), (str(data["reason"]) if data.get("reason") is not None else None)
    number = _NUMBER.search(reply)
    if number is None:
        return None
    reason = re.search(r"(?i)reason\W*(.*)", reply)
    return _unit(float(number.group())), (reason.group(1).strip() if reason else None)


def _unit(score: float) -> float:
    """0-100 -> [0, 1], clamped. Values at most 1 are taken as already normalised."""
    if 0 <= score <= 1 and not float(score).is_integer():
        return score
    return min(max(score / 100.0, 0.0), 1.0)


def _bullets(lines: Sequence[str]) -> str:
    return "".join(f"- {line.strip()}\n" for line in lines)


def _text(message) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):  # content blocks
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)
