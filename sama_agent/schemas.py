"""JSON Schemas for SAMA-239K / SAMA-Bench records and their mask dicts.

A record (one video conversation):
    video          frame folder, relative to the data root
    frames         frame file stems, in order
    height, width  frame size in pixels
    anno_map       mask ids of the annotated objects (-1 = none)
    conversation   alternating {"from": "human" | "gpt", "value": str}; human
                   turns may carry "question_id"
    obj_masks      per human turn: one mask id per `<mask>` in the question
    groundtruth    per human turn: per `[SEG]` in the answer, a list of mask ids (unioned)
    description    optional {"objN": text}; description_id optional
Mask dict: {mask_id: [per-frame COCO RLE or null]} with one entry per frame.
"""
from __future__ import annotations

from typing import Any, Mapping

import jsonschema

from .errors import RecordError

RLE_SCHEMA = {
    "type": "object",
    "required": ["size", "counts"],
    "properties": {
        "size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
        "counts": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer", "minimum": 0}}]},
    },
}

RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SAMA-239K / SAMA-Bench record",
    "type": "object",
    "required": ["video", "frames", "height", "width", "conversation"],
    "properties": {
        "video": {"type": "string", "minLength": 1},
        "frames": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        "height": {"type": "integer", "minimum": 1},
        "width": {"type": "integer", "minimum": 1},
        "anno_map": {"type": "array", "items": {"type": ["integer", "string"]}},
        "conversation": {
            "type": "array",
            "minItems": 2,
            "items": {
                "type": "object",
                "required": ["from", "value"],
                "properties": {
                    "from": {"enum": ["human", "gpt"]},
                    "value": {"type": "string"},
                    "question_id": {"type": ["integer", "string"]},
                },
            },
        },
        "obj_masks": {"type": "array", "items": {"type": "array", "items": {"type": ["integer", "string"]}}},
        "groundtruth": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "array", "items": {"type": ["integer", "string"]}}},
        },
        "description": {"type": "object", "additionalProperties": {"type": "string"}},
        "description_id": {"type": ["integer", "string", "array", "object"]},
    },
}

MASK_DICT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SAMA-239K mask dict",
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"anyOf": [{"type": "null"}, RLE_SCHEMA]}},
}

_RECORD_VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA)
_MASK_VALIDATOR = jsonschema.Draft202012Validator(MASK_DICT_SCHEMA)


def validate_record(record: Any, *, file: str = "<memory>", index: int | str = 0, masks: Mapping | None = None) -> dict:
    """Check one record against the schema and its own internal consistency.

    Raises RecordError naming the file, the record and the field.
    """
    where = f"{file}, record {index}"
    error = _first_error(_RECORD_VALIDATOR, record)
    if error is not None:
        field = _field(error.absolute_path) or "(record)"
        raise RecordError(f"{where}, field {field}: {error.message}")
    turns = record["conversation"]
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise RecordError(f"{where}, field conversation[{i}].from: expected '{expected}' (turns alternate, human first), got '{turn['from']}'")
    humans = turns[0::2]
    for key in ("obj_masks", "groundtruth"):
        if key in record and len(record[key]) != len(humans):
            raise RecordError(f"{where}, field {key}: has {len(record[key])} entries but the conversation has {len(humans)} human turns")
    for t, human in enumerate(humans):
        if "obj_masks" in record and human["value"].count("<mask>") != len(record["obj_masks"][t]):
            raise RecordError(
                f"{where}, field obj_masks[{t}]: {len(record['obj_masks'][t])} mask ids for "
                f"{human['value'].count('<mask>')} <mask> in the question"
            )
        if "groundtruth" in record and 2 * t + 1 < len(turns):
            segs = turns[2 * t + 1]["value"].count("[SEG]")
            if segs != len(record["groundtruth"][t]):
                raise RecordError(f"{where}, field groundtruth[{t}]: {len(record['groundtruth'][t])} entries for {segs} [SEG] in the answer")
    if masks is not None:
        _check_mask_refs(record, masks, where)
    return record


def validate_mask_dict(masks: Any, *, file: str = "<memory>") -> dict:
    error = _first_error(_MASK_VALIDATOR, masks)
    if error is not None:
        path = list(error.absolute_path)
        mask_id = path[0] if path else "(dict)"
        raise RecordError(f"{file}, mask {mask_id}, field {_field(path[1:]) or '(mask list)'}: {error.message}")
    return masks


def _check_mask_refs(record: Mapping, masks: Mapping, where: str) -> None:
    frames = len(record["frames"])
    refs = [("obj_masks", i, m) for i, ids in enumerate(record.get("obj_masks", [])) for m in ids]
    refs += [("groundtruth", i, m) for i, segs in enumerate(record.get("groundtruth", [])) for ids in segs for m in ids]
    for key, turn, mask_id in refs:
        if str(mask_id) == "-1":
            continue
        if str(mask_id) not in masks:
            raise RecordError(f"{where}, field {key}[{turn}]: mask id {mask_id} is not in the mask dict")
        if len(masks[str(mask_id)]) != frames:
            raise RecordError(
                f"{where}, field {key}[{turn}]: mask {mask_id} has {len(masks[str(mask_id)])} frames, the record has {frames}"
            )


def _first_error(validator, instance):
    """The most specific error: inside anyOf/oneOf, the branch that got furthest."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    while error is not None and error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return error


def _field(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
