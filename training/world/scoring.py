"""Is an answer about the synthetic world right? Checks against the facts each record carries.

Every generated record has `meta.turns[t]` = {"kind", "objects", "refers_to", "expect"}, where
`expect` = {"colour", "shape", "texture", "motions"} of the object the turn is about. An answer is
right when it names what the turn asks for and nothing that contradicts it:

    refer, refer_ground                    colour, shape and first motion (and the second, if any)
    followup_action                        the motions ("It moves left."), and no wrong colour or shape
    identify                               colour and shape
    followup_colour / followup_shape       the colour / the shape
    followup_next                          the second motion, or (one motion) that it keeps doing it
    ground, followup_segment               a [SEG] (its mask is scored by IoU / J&F elsewhere) and
                                           the colour and shape in the grounded phrase

"Names the colour" means the right colour word appears and no other colour word does; shapes the
same (plural forms count). Turns of other kinds (refer_two, ground_multi, describe) are not scored
here (caption metrics and mask matching cover them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...conversation import plain_text
from .vocabulary import COLOURS, CONTINUING, PLURALS, SHAPES

REFERRING = ("refer", "identify", "refer_ground")
FOLLOWUPS = ("followup_next", "followup_colour", "followup_shape", "followup_segment", "followup_action")
GROUNDING = ("ground",)


@dataclass
class Verdict:
    correct: bool
    colour: bool | None = None
    shape: bool | None = None
    motion: bool | None = None
    seg: bool | None = None


def check_answer(answer: str, turn: dict) -> Verdict | None:
    """Score one answer against its turn's meta; None for kinds not scored here."""
    kind, expect = turn.get("kind"), turn.get("expect") or {}
    text = " " + " ".join(re.sub(r"[^a-z ]+", " ", plain_text(answer).lower()).split()) + " "
    colour = _names_only(text, expect.get("colour"), {c: [c] for c in COLOURS})
    shape = _names_only(text, expect.get("shape"), {s: [s, PLURALS[s]] for s in SHAPES})
    motions = expect.get("motions") or []
    if kind == "followup_action":  # "What is it doing?": the object is known from the earlier turn
        motion = all(_says(text, m) for m in motions)
        wrong = _names_other(text, expect.get("colour"), COLOURS) or _names_other(text, expect.get("shape"), SHAPES, PLURALS)
        return Verdict(motion and not wrong, motion=motion)
    if kind in ("refer", "refer_ground"):
        motion = all(_says(text, m) for m in motions)
        seg = "[SEG]" in answer if kind == "refer_ground" else None
        return Verdict(colour and shape and motion and seg is not False, colour, shape, motion, seg)
    if kind == "identify":
        return Verdict(colour and shape, colour, shape)
    if kind == "followup_colour":
        return Verdict(colour, colour=colour)
    if kind == "followup_shape":
        return Verdict(shape, shape=shape)
    if kind == "followup_next":
        if len(motions) > 1:
            motion = _says(text, motions[1])
        else:
            motion = _says(text, CONTINUING[motions[0]]) or _says(text, motions[0])
        return Verdict(motion, motion=motion)
    if kind in ("ground", "followup_segment"):
        seg = "[SEG]" in answer
        return Verdict(seg and colour and shape, colour, shape, seg=seg)
    return None


def score_records(records: list[dict], answers: dict[str, str]) -> dict:
    """Accuracy per group over every scored turn whose question_id has an answer.

    answers: {question_id: answer text}. Missing answers count as wrong.
    Returns {"referring": {...}, "followup": {...}, "grounding": {...}} with correct / total / accuracy
    and, for referring, how often each of colour, shape and motion was right."""
    groups = {"referring": REFERRING, "followup": FOLLOWUPS, "grounding": GROUNDING}
    tallies = {name: {"correct": 0, "total": 0, "colour": 0, "shape": 0, "motion": 0, "motion_total": 0} for name in groups}
    for record in records:
        turns = (record.get("meta") or {}).get("turns") or []
        humans = record["conversation"][0::2]
        for turn, human in zip(turns, humans):
            group = next((g for g, kinds in groups.items() if turn["kind"] in kinds), None)
            if group is None or not turn.get("expect"):
                continue
            verdict = check_answer(answers.get(str(human.get("question_id")), ""), turn)
            tally = tallies[group]
            tally["total"] += 1
            tally["correct"] += bool(verdict.correct)
            tally["colour"] += bool(verdict.colour)
            tally["shape"] += bool(verdict.shape)
            if verdict.motion is not None:
                tally["motion"] += bool(verdict.motion)
                tally["motion_total"] += 1
    result = {}
    for name, tally in tallies.items():
        total = max(1, tally["total"])
        result[name] = {"correct": tally["correct"], "total": tally["total"], "accuracy": tally["correct"] / total,
                        "colour": tally["colour"] / total, "shape": tally["shape"] / total,
                        "motion": tally["motion"] / max(1, tally["motion_total"])}
    return result


def _says(text: str, phrase: str) -> bool:
    return f" {phrase} " in text


def _names_other(text: str, wanted: str | None, words, plurals: dict | None = None) -> bool:
    """Does the text name any of `words` other than `wanted` (plural forms too)?"""
    return any(_says(text, form) for w in words if w != wanted for form in [w] + ([plurals[w]] if plurals else []))


def _names_only(text: str, wanted: str | None, words: dict[str, list[str]]) -> bool:
    if wanted is None:
        return False
    right = any(_says(text, w) for w in words[wanted])
    wrong = any(_says(text, w) for key, forms in words.items() if key != wanted for w in forms)
    return right and not wrong
