import copy

import numpy as np
import pytest

from sama_agent.errors import RecordError
from sama_agent.masks import encode_rle
from sama_agent.schemas import validate_mask_dict, validate_record

MASK = encode_rle(np.eye(4, dtype=bool))
RECORD = {
    "video": "vid0001",
    "frames": ["00000", "00001"],
    "height": 4,
    "width": 4,
    "anno_map": [0, 1, -1],
    "conversation": [
        {"from": "human", "value": "What is <mask> doing?", "question_id": 7},
        {"from": "gpt", "value": "It moves left."},
        {"from": "human", "value": "Segment the red disc."},
        {"from": "gpt", "value": "<p>the red disc</p> [SEG]"},
    ],
    "obj_masks": [[0], []],
    "groundtruth": [[], [[0, 1]]],
    "description": {"obj0": "a red disc"},
}
MASKS = {"0": [MASK, None], "1": [None, MASK]}


def test_a_valid_record_and_mask_dict_pass():
    assert validate_record(copy.deepcopy(RECORD), masks=MASKS)
    assert validate_mask_dict(MASKS)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.pop("frames"), "field (record): 'frames' is a required property"),
        (lambda r: r.__setitem__("height", "4"), "field height"),
        (lambda r: r["conversation"][1].__setitem__("from", "bot"), "field conversation[1].from"),
        (lambda r: r["conversation"].__setitem__(1, {"from": "human", "value": "x"}), "field conversation[1].from: expected 'gpt'"),
        (lambda r: r["obj_masks"].__setitem__(0, []), "field obj_masks[0]: 0 mask ids for 1 <mask>"),
        (lambda r: r["groundtruth"].__setitem__(1, []), "field groundtruth[1]: 0 entries for 1 [SEG]"),
        (lambda r: r["groundtruth"].pop(), "field groundtruth: has 1 entries but the conversation has 2 human turns"),
    ],
)
def test_bad_records_name_file_record_and_field(change, field):
    record = copy.deepcopy(RECORD)
    change(record)
    with pytest.raises(RecordError) as info:
        validate_record(record, file="train.json", index=12)
    assert str(info.value).startswith("train.json, record 12, ")
    assert field in str(info.value)


def test_mask_references_are_checked():
    record = copy.deepcopy(RECORD)
    record["groundtruth"][1] = [[5]]
    with pytest.raises(RecordError, match="field groundtruth\\[1\\]: mask id 5 is not in the mask dict"):
        validate_record(record, file="f.json", index=0, masks=MASKS)
    with pytest.raises(RecordError, match="mask 1 has 1 frames, the record has 2"):
        validate_record(copy.deepcopy(RECORD), masks={"0": [MASK, None], "1": [MASK]})


def test_bad_mask_dict_names_mask_and_field():
    with pytest.raises(RecordError, match=r"masks.json, mask 1, field \[0\].size"):
        validate_mask_dict({"0": [MASK], "1": [{"size": [4], "counts": "x"}]}, file="masks.json")
