"""Conversations about a rendered scene, in SAMA-239K form.

Turn kinds (recorded per turn in the record's `meta.turns`, so evaluators and
curricula can select them):

    refer            "What is <mask> doing?"          -> "The red striped disc moves left."
    identify         "What is <mask>?"                -> "It is a red striped disc."
    refer_ground     "What is <mask> doing? ...masks" -> "<p>the red striped disc</p> [SEG] moves left."
    refer_two        "What are <mask> and <mask> doing?"
    ground           "Please segment the blue star that bounces." -> "Sure, <p>the blue star</p> [SEG]."
    ground_multi     "Please segment all the discs."  -> "Sure, <p>the discs</p> [SEG]." (one [SEG], masks unioned)
    describe         "Describe the video. ..."        -> "<p>the red disc</p> [SEG] moves left while ..."
    followup_next    "What does it do after that?"    (the object of the previous turn)
    followup_colour  "What colour is the object you just segmented?" / "What colour is it?"
    followup_shape   "What shape is it?"
    followup_segment "Can you segment it?"            (after a region question)
    followup_action  "What is it doing?"              (after a grounding request)

Each turn's meta also carries `expect`: the colour, shape and motions the
answer must name, for referring and follow-up accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .scene import ObjectSpec
from .vocabulary import CONTINUING, PLURALS

BASE_KINDS = ("refer", "identify", "refer_ground", "refer_two", "ground", "ground_multi", "describe")
FOLLOWUP_KINDS = ("followup_next", "followup_colour", "followup_shape", "followup_segment", "followup_action")
TURN_KINDS = BASE_KINDS + FOLLOWUP_KINDS
SEG_SUFFIX = " Please respond with segmentation masks."

REFER_QUESTIONS = ("What is <mask> doing?", "What does <mask> do in the video?", "How does <mask> move?", "Describe what <mask> is doing.")
IDENTIFY_QUESTIONS = ("What is <mask>?", "What object is <mask>?", "Can you tell me what <mask> is?")
REFER_TWO_QUESTIONS = ("What are <mask> and <mask> doing?", "How do <mask> and <mask> move?")
GROUND_QUESTIONS = ("Please segment {}.", "Can you segment {}?", "Segment {}.", "Where is {}? Please respond with a segmentation mask.")
GROUND_MULTI_QUESTIONS = ("Please segment all the {}.", "Can you segment every one of the {}?")
DESCRIBE_QUESTIONS = (
    "Describe the video." + SEG_SUFFIX,
    "What happens in this video?" + SEG_SUFFIX,
    "Give a grounded description of the video.",
)
NEXT_QUESTIONS = ("What does it do after that?", "And what does it do next?", "What happens to it after that?")
ACTION_QUESTIONS = ("What is it doing?", "And what does it do?", "How does it move?")
SEGMENT_IT_QUESTIONS = ("Can you segment it?", "Please segment that object.")


@dataclass
class ObjectFacts:
    """What the language side needs to know about one object."""

    spec: ObjectSpec
    entered: bool
    left: bool
    visible_frames: list[int]

    @property
    def mask_id(self) -> int:
        return self.spec.mask_id

    @property
    def name(self) -> str:
        return self.spec.appearance.name

    def action(self) -> str:
        """'enters the frame and moves right, then moves up and leaves the frame'."""
        motions = self.spec.motions
        text = motions[0] if len(motions) == 1 else f"{motions[0]}, then {motions[1]}"
        if self.entered:
            text = "enters the frame and " + text
        if self.left:
            text += " and leaves the frame"
        return text

    def next_action(self) -> str:
        motions = self.spec.motions
        return motions[1] if len(motions) > 1 else CONTINUING[motions[0]]

    def expect(self) -> dict:
        return {"colour": self.spec.colour, "shape": self.spec.shape, "texture": self.spec.texture, "motions": list(self.spec.motions)}


@dataclass
class Conversation:
    turns: list[dict] = field(default_factory=list)  # {"from", "value"} alternating
    obj_masks: list[list[int]] = field(default_factory=list)
    groundtruth: list[list[list[int]]] = field(default_factory=list)
    meta: list[dict] = field(default_factory=list)

    def add(self, question: str, answer: str, regions: list[int], segs: list[list[int]], kind: str, objects, refers_to=None, expect=None):
        self.turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        self.obj_masks.append(list(regions))
        self.groundtruth.append([list(s) for s in segs])
        self.meta.append({"kind": kind, "objects": [o.mask_id for o in objects], "refers_to": refers_to, "expect": expect})


def make_conversation(rng: np.random.Generator, objects: list[ObjectFacts], num_turns: int) -> Conversation:
    """A multi-turn conversation mixing region, grounding and description turns with follow-ups."""
    conversation = Conversation()
    focus: ObjectFacts | None = None
    focus_kind = ""
    described = False
    for index in range(num_turns):
        if focus is not None and rng.random() < 0.5:
            kind = _pick_followup(rng, focus, focus_kind)
            focus, focus_kind = _followup_turn(rng, conversation, kind, focus, focus_kind, index - 1)
            continue
        choices = [k for k in BASE_KINDS if _base_possible(k, objects, described)]
        kind = choices[int(rng.integers(len(choices)))]
        described |= kind == "describe"
        focus, focus_kind = _base_turn(rng, conversation, kind, objects)
    return conversation


# ---- base turns ------------------------------------------------------------------
def _base_possible(kind: str, objects: list[ObjectFacts], described: bool) -> bool:
    if kind == "describe":
        return not described
    if kind == "refer_two":
        return len(objects) >= 2
    if kind == "ground_multi":
        return bool(_groups(objects))
    return True


def _base_turn(rng, conversation: Conversation, kind: str, objects: list[ObjectFacts]):
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    target = pick(objects)
    if kind == "refer":
        conversation.add(pick(REFER_QUESTIONS), _sentence(target.name, target.action()), [target.mask_id], [], kind, [target], expect=target.expect())
        return target, kind
    if kind == "identify":
        answer = f"It is {_with_article(target.name[len('the '):])}."
        conversation.add(pick(IDENTIFY_QUESTIONS), answer, [target.mask_id], [], kind, [target], expect=target.expect())
        return target, kind
    if kind == "refer_ground":
        answer = f"<p>{target.name}</p> [SEG] {target.action()}."
        conversation.add(pick(REFER_QUESTIONS) + SEG_SUFFIX, answer, [target.mask_id], [[target.mask_id]], kind, [target], expect=target.expect())
        return target, kind
    if kind == "refer_two":
        first, second = [objects[i] for i in rng.choice(len(objects), 2, replace=False)]
        if rng.random() < 0.5:
            answer = f"<p>{first.name}</p> [SEG] {first.action()} and <p>{second.name}</p> [SEG] {second.action()}."
            question, segs = pick(REFER_TWO_QUESTIONS) + SEG_SUFFIX, [[first.mask_id], [second.mask_id]]
        else:
            answer = _sentence(first.name, f"{first.action()} and {second.name} {second.action()}")
            question, segs = pick(REFER_TWO_QUESTIONS), []
        conversation.add(question, answer, [first.mask_id, second.mask_id], segs, kind, [first, second])
        return None, kind
    if kind == "ground":
        expression = pick(_expressions(target, objects))
        conversation.add(pick(GROUND_QUESTIONS).format(expression), f"Sure, <p>{target.name}</p> [SEG].", [], [[target.mask_id]], kind, [target], expect=target.expect())
        return target, kind
    if kind == "ground_multi":
        asked, said, members = pick(_groups(objects))
        conversation.add(pick(GROUND_MULTI_QUESTIONS).format(asked), f"Sure, <p>{said}</p> [SEG].", [], [[o.mask_id for o in members]], kind, members)
        return None, kind
    if kind == "describe":
        ordered = sorted(objects, key=lambda o: (o.visible_frames[0], o.mask_id))
        clauses = [f"<p>{o.name}</p> [SEG] {o.action()}" for o in ordered]
        text = f"{clauses[0]} while {clauses[1]}" if len(clauses) == 2 else ", ".join(clauses[:-1]) + f" and {clauses[-1]}"
        if len(clauses) == 1:
            text = clauses[0]
        conversation.add(pick(DESCRIBE_QUESTIONS), text + ".", [], [[o.mask_id] for o in ordered], kind, ordered)
        return None, kind
    raise ValueError(kind)


def _expressions(target: ObjectFacts, objects: list[ObjectFacts]) -> list[str]:
    """Referring expressions that pick out `target` and nothing else in the video."""
    spec = target.spec
    others = [o.spec for o in objects if o is not target]
    first = spec.motions[0]
    found = [f"the {spec.colour} {spec.shape}", f"the {spec.colour} {spec.shape} that {first}"]
    if all(o.shape != spec.shape or o.motions[0] != first for o in others):
        found.append(f"the {spec.shape} that {first}")
    if all(o.motions[0] != first for o in others):
        found.append(f"the object that {first}")
    if all(o.colour != spec.colour for o in others):
        found.append(f"the {spec.colour} object")
    if all(o.shape != spec.shape for o in others):
        found.append(f"the {spec.shape}")
    return found


def _groups(objects: list[ObjectFacts]) -> list[tuple[str, str, list[ObjectFacts]]]:
    """(asked, answered phrase, members) for every shape or colour shared by two or more objects."""
    groups = []
    for shape in sorted({o.spec.shape for o in objects}):
        members = [o for o in objects if o.spec.shape == shape]
        if len(members) >= 2:
            groups.append((PLURALS[shape], f"the {PLURALS[shape]}", members))
    for colour in sorted({o.spec.colour for o in objects}):
        members = [o for o in objects if o.spec.colour == colour]
        if len(members) >= 2:
            groups.append((f"{colour} objects", f"the {colour} objects", members))
    return groups


# ---- follow-ups --------------------------------------------------------------------
def _pick_followup(rng, focus: ObjectFacts, focus_kind: str) -> str:
    choices = ["followup_next", "followup_colour", "followup_shape"]
    if focus_kind in ("refer", "identify"):
        choices.append("followup_segment")
    if focus_kind in ("ground", "followup_segment"):
        choices.append("followup_action")
    return choices[int(rng.integers(len(choices)))]


def _followup_turn(rng, conversation: Conversation, kind: str, focus: ObjectFacts, focus_kind: str, previous: int):
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    segmented = focus_kind in ("ground", "refer_ground", "followup_segment")
    expect = focus.expect()
    if kind == "followup_next":
        question, answer, segs = pick(NEXT_QUESTIONS), f"It {focus.next_action()}.", []
    elif kind == "followup_colour":
        question = "What colour is the object you just segmented?" if segmented else "What colour is it?"
        answer, segs = f"It is {focus.spec.colour}.", []
    elif kind == "followup_shape":
        question = "What shape is the object you just segmented?" if segmented else "What shape is it?"
        answer, segs = f"It is {_with_article(focus.spec.shape)}.", []
    elif kind == "followup_segment":
        question, answer, segs = pick(SEGMENT_IT_QUESTIONS), f"Sure, <p>{focus.name}</p> [SEG].", [[focus.mask_id]]
    elif kind == "followup_action":
        question, answer, segs = pick(ACTION_QUESTIONS), f"It {focus.action()}.", []
    else:
        raise ValueError(kind)
    conversation.add(question, answer, [], segs, kind, [focus], refers_to=previous, expect=expect)
    return focus, kind


# ---- text helpers -------------------------------------------------------------------
def _sentence(subject: str, predicate: str) -> str:
    text = f"{subject} {predicate}."
    return text[0].upper() + text[1:]


def _with_article(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def world_texts() -> list[str]:
    """Every template and attribute phrase the generator can write: a word vocabulary built from
    these (e.g. `build_word_vocab(world_texts())` for the word-level `qwen2-tiny`) covers every
    question and answer of every split, whatever the seed."""
    from .vocabulary import COLOURS, MOTIONS, SHAPES, TEXTURES

    texts = list(REFER_QUESTIONS + IDENTIFY_QUESTIONS + REFER_TWO_QUESTIONS + GROUND_QUESTIONS + GROUND_MULTI_QUESTIONS
                 + DESCRIBE_QUESTIONS + NEXT_QUESTIONS + ACTION_QUESTIONS + SEGMENT_IT_QUESTIONS)
    texts += ["What colour is the object you just segmented?", "What colour is it?", "What shape is the object you just segmented?",
              "What shape is it?", "Sure, <p>the</p> [SEG].", "It is a an the object objects.", "enters the frame and , then and leaves the frame",
              " while , and that"]
    texts += list(COLOURS) + list(SHAPES) + list(PLURALS.values()) + list(TEXTURES) + list(MOTIONS) + list(CONTINUING.values())
    return [t.replace("{}", " ") for t in texts]
