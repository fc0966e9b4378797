"""SamaConfig: which plugins make up a SAMA model, their options, sizes and losses.

Hugging Face style: a plain object with `to_dict` / `to_json_string` /
`to_json_file` / `from_dict` / `from_json_file`. Parts are named by plugin
name (`sama-agent plugins` lists them) and built through the plugin host, so a
third-party encoder, aggregator, LLM or segmenter is configured exactly like a
built-in one.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sama_agent.errors import CheckpointError
from sama_agent.jsonfile import read_json

CONFIG_VERSION = 1


def check_attributes(attributes: Mapping) -> list[str]:
    """Problems with a region_attributes config, as sentences (empty when it is valid)."""
    problems = []
    if not isinstance(attributes, Mapping):
        return ["'region_attributes' must be a JSON object of {name: {field, index, values, absent, tokens}}"]
    for name, spec in attributes.items():
        where = f"region_attributes.{name}"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("field"), str):
            problems.append(f"'{where}' needs a 'field' naming the key of a turn's expect")
            continue
        values = spec.get("values")
        problems += _values_problems(where, values)
        unknown = sorted(set(spec) - {"field", "index", "values", "absent", "tokens"})
        if unknown:
            problems.append(f"'{where}' has unknown key(s) {', '.join(unknown)}; use field, index, values, absent and tokens")
        if "tokens" in spec and not _token_indices(spec["tokens"]):
            problems.append(f"'{where}.tokens' must be a list of distinct token indices (0, 1, ...), got {spec['tokens']!r}")
        if "absent" in spec and not (isinstance(values, list) and spec["absent"] in values):
            problems.append(f"'{where}.absent' must be one of its values (the label when the field's list is too short)")
        if "index" in spec and not (isinstance(spec["index"], int) and spec["index"] >= 0):
            problems.append(f"'{where}.index' must be a non-negative integer")
    return problems


def _check_cell_motion(spec) -> list[str]:
    if spec == {}:
        return []
    if not isinstance(spec, Mapping) or not isinstance(spec.get("field"), str):
        return ["'cell_motion' must be {} or a JSON object with a 'field' naming an object's motion fact, 'values' and optional 'dim'"]
    problems = _values_problems("cell_motion", spec.get("values"))
    if "dim" in spec and not (type(spec["dim"]) is int and spec["dim"] > 0):
        problems.append(f"'cell_motion.dim' must be a positive integer, got {spec['dim']!r}")
    unknown = sorted(set(spec) - {"field", "values", "dim"})
    if unknown:
        problems.append(f"'cell_motion' has unknown key(s) {', '.join(unknown)}; use field, values and dim")
    return problems


def _values_problems(where: str, values) -> list[str]:
    """A classifier's values: at least two strings."""
    if isinstance(values, list) and len(values) >= 2 and all(isinstance(v, str) for v in values):
        return []
    return [f"'{where}.values' must list at least two strings"]


def _token_indices(value) -> bool:
    """A non-empty list of distinct non-negative ints (booleans are not indices)."""
    return (isinstance(value, list) and bool(value) and len(set(value)) == len(value)
            and all(type(t) is int and t >= 0 for t in value))


def _is_share(value) -> bool:
    """A number from 0 to 1 (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


@dataclass
class SamaConfig:
    """Everything needed to rebuild a SamaModel (weights aside).

    Parameter names inside SamaModel start with `encoder.`, `aggregator.`,
    `projector.`, `llm.`, `seg_head.`, `sam2.` or `region_heads.`; `freeze` lists name
    prefixes whose parameters are not trained (e.g. "encoder", "llm.base",
    "sam2.image_encoder.trunk").
    """

    model_type: str = "sama"
    config_version: int = CONFIG_VERSION

    encoder: str = "vit-tiny"
    encoder_options: dict = field(default_factory=dict)
    aggregator: str = "st-qformer"
    aggregator_options: dict = field(default_factory=dict)
    llm: str = "qwen2-tiny"
    llm_options: dict = field(default_factory=dict)
    # The model's own SAM2 (C1's Sam2Grounding): trained with the rest, used for
    # decoding [SEG] prompts. `segmenter` is the plugin that propagates masks to
    # every frame at inference ("sam2" wraps this same SAM2).
    sam2_options: dict = field(default_factory=dict)
    segmenter: str = "sam2"
    segmenter_options: dict = field(default_factory=dict)
    seg_head_options: dict = field(default_factory=dict)

    # Frames: up to `num_context_frames` evenly sampled give one context token each;
    # `num_key_frames` of them (evenly spaced) give pooled patch tokens and SAM2 masks.
    num_context_frames: int = 8
    num_key_frames: int = 2
    key_frame_grid: int = 2  # key-frame patch tokens are pooled to grid x grid per frame

    freeze: list = field(default_factory=list)

    lm_loss_weight: float = 1.0
    bce_loss_weight: float = 2.0
    dice_loss_weight: float = 0.5
    where_loss_weight: float = 1.0  # the grounding head's where-map (seg_head_options.where), if it has one
    # Whether a dense prompt - a [SEG]'s where-map, or the coarse box a followed region is prompted with -
    # is also added to SAM2's mask logits (true) or SAM2's own logits are the mask. The sum suits a SAM2
    # that has not learnt to follow dense prompts; one that has gives sharper masks alone.
    where_logits: bool = True
    # At inference a [SEG] mask keeps, on each frame, only its connected parts holding at least this share of
    # the where-map mass of its heaviest part (0: all parts). A where-map that gives a look-alike a little mass
    # otherwise lights it up too; a phrase naming several objects spreads its mass over them all, so they stay.
    # Needs where-maps and per-frame propagation.
    seg_part_share: float = 0.0
    # Auxiliary heads reading labelled attributes off region tokens (region_attributes.py); {} builds none.
    region_attributes: dict = field(default_factory=dict)
    region_attribute_loss_weight: float = 0.5
    # Which of a region's tokens the heads read, by index (null: all of them); an attribute's own `tokens`
    # overrides it. [2] with a motion token keeps the heads' gradient out of the feature and shape tokens.
    region_attribute_tokens: list | None = None
    # Word tokens: each attribute head's softmax over its values, as the mean input embedding of each
    # value's words, follows the region's own tokens (true: one token per attribute; region_attributes.py),
    # or "text": each head's most likely value, written out as its words (ordinary text tokens).
    region_word_tokens: bool | str = False
    # Training only, with "text" word tokens: the share of labelled single-region questions whose words
    # are the region's true values instead of the heads' guesses: the LLM learns from its first step that
    # the words are right, rather than from the early heads' mistakes that they may be ignored.
    region_word_teacher: float = 0.0
    # Cell motion (cell_motion.py): {"field": "motions", "values": [...], "dim": 64} adds a motion description
    # to each key-frame cell's token, learnt from labelled objects (the cell_motion objective); {} builds none.
    cell_motion: dict = field(default_factory=dict)
    mask_points: int = 1024  # point-sampled mask loss: points per mask
    mask_oversample: float = 3.0
    mask_importance: float = 0.75

    max_new_tokens: int = 48
    # Inference: follow a user's region (given on one frame) to the context frames with
    # the segmenter so its feature pools over every frame where it is visible.
    region_propagation: bool = True
    # How a [SEG] reaches every frame with the model's own SAM2: "memory" (SAM2 memory propagation
    # from the key-frame prompts) or "per_frame" (every frame decoded on its own with the prompt of
    # its nearest key frame; no memory modules needed, streamed).
    propagation: str = "memory"

    def __post_init__(self):
        self.validate()

    # ---- checks ----------------------------------------------------------------------
    def validate(self) -> "SamaConfig":
        problems = []
        for name in ("encoder", "aggregator", "llm", "segmenter"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                problems.append(f"'{name}' must name a plugin (a non-empty string)")
        for name in ("encoder_options", "aggregator_options", "llm_options", "sam2_options", "segmenter_options", "seg_head_options"):
            if not isinstance(getattr(self, name), dict):
                problems.append(f"'{name}' must be a JSON object")
        if self.num_context_frames < 1:
            problems.append("'num_context_frames' must be at least 1")
        if not 1 <= self.num_key_frames <= self.num_context_frames:
            problems.append("'num_key_frames' must be between 1 and num_context_frames")
        if self.key_frame_grid < 1:
            problems.append("'key_frame_grid' must be at least 1")
        if not isinstance(self.freeze, list) or not all(isinstance(p, str) for p in self.freeze):
            problems.append("'freeze' must be a list of parameter-name prefixes")
        if self.propagation not in ("memory", "per_frame"):
            problems.append(f"'propagation' must be 'memory' or 'per_frame', got '{self.propagation}'")
        if not _is_share(self.seg_part_share):
            problems.append(f"'seg_part_share' must be a share between 0 and 1, got {self.seg_part_share!r}")
        elif self.seg_part_share > 0 and not (self.seg_head_options.get("where") and self.propagation == "per_frame"):
            problems.append("'seg_part_share' weighs a mask's parts by its where-map: it needs seg_head_options.where "
                            "and propagation 'per_frame'")
        if self.mask_points < 1:
            problems.append("'mask_points' must be at least 1")
        problems += check_attributes(self.region_attributes)
        tokens = self.region_attribute_tokens
        if tokens is not None and not _token_indices(tokens):
            problems.append(f"'region_attribute_tokens' must be null or a list of distinct token indices (0, 1, ...), got {tokens!r}")
        if not isinstance(self.region_word_tokens, bool) and self.region_word_tokens != "text":
            problems.append(f"'region_word_tokens' must be true, false or \"text\", got {self.region_word_tokens!r}")
        elif self.region_word_tokens and not self.region_attributes:
            problems.append("'region_word_tokens' needs 'region_attributes': the word tokens are the attribute heads' predictions")
        if not _is_share(self.region_word_teacher):
            problems.append(f"'region_word_teacher' must be a share between 0 and 1, got {self.region_word_teacher!r}")
        elif self.region_word_teacher and self.region_word_tokens != "text":
            problems.append("'region_word_teacher' writes true values as region words: it needs 'region_word_tokens': \"text\"")
        problems += _check_cell_motion(self.cell_motion)
        if problems:
            raise ValueError("invalid SAMA config: " + "; ".join(problems) + ".")
        return self

    # ---- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict:
        return copy.deepcopy(asdict(self))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json_string())
        return path

    # HF-style aliases
    to_json = to_json_string

    @classmethod
    def from_dict(cls, data: dict, **overrides: Any) -> "SamaConfig":
        if not isinstance(data, dict):
            raise CheckpointError(f"a SAMA config must be a JSON object, got {type(data).__name__}.")
        data = {**copy.deepcopy(data), **overrides}
        data.pop("pretrained_sources", None)  # written by save_pretrained, checked by the model
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"unknown SAMA config field(s): {', '.join(unknown)}. Known fields: {', '.join(sorted(known))}."
            )
        if data.get("model_type", "sama") != "sama":
            raise CheckpointError(f"config model_type is '{data['model_type']}', expected 'sama'.")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(str(exc)) from None

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> "SamaConfig":
        data = read_json(path, CheckpointError, missing="no such config file.", expected=dict, expected_what="a JSON object of config fields")
        return cls.from_dict(data, **overrides)

    from_json = from_json_file

    @classmethod
    def from_named(cls, name: str, **overrides: Any) -> "SamaConfig":
        """A config shipped in model/configs (e.g. "sama-tiny", "sama-smol")."""
        path = Path(__file__).parent / "configs" / f"{name}.json"
        if not path.is_file():
            shipped = sorted(p.stem for p in path.parent.glob("*.json"))
            raise CheckpointError(f"no shipped config named '{name}'; shipped configs: {', '.join(shipped)}.")
        return cls.from_json_file(path, **overrides)
