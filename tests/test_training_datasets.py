"""SAMA-239K-layout datasets: samples match the files; bad records raise or are skipped and counted."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sama_agent.errors import RecordError
from sama_agent.masks import decode_rle
from sama_agent.training.datasets import DatasetConfig, SamaDataset, turn_kinds
from sama_agent.training.world import generate_world


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_world(root, 6, "train", seed=11, size=64, frames=(10, 14), objects=(2, 3), turns=(3, 4))
    return root


@pytest.fixture
def data(tmp_path, source):
    """A private copy, free to break."""
    shutil.copytree(source, tmp_path / "data")
    return tmp_path / "data"


def _config(root: Path, **options) -> dict:
    return {"root": str(root), "records": "train.json", "masks": "train_masks.json", "num_frames": 6, **options}


def _edit_records(root: Path, change) -> None:
    path = root / "train.json"
    records = json.loads(path.read_text())
    change(records)
    path.write_text(json.dumps(records))


def test_samples_hold_the_files_frames_and_masks(source):
    dataset = SamaDataset(_config(source))
    records = json.loads((source / "train.json").read_text())
    masks = json.loads((source / "train_masks.json").read_text())
    assert len(dataset) == len(records)
    sample = dataset[2]
    record = records[2]
    count = len(record["frames"])
    assert sample.frame_indices == [int((i + 0.5) * count / 6) for i in range(6)]
    for frame, position in zip(sample.frames, sample.frame_indices):
        path = source / record["video"] / f"{record['frames'][position]}.png"
        assert np.array_equal(frame, np.asarray(Image.open(path).convert("RGB")))
    assert len(sample.turns) == len(record["obj_masks"])
    for t, turn in enumerate(sample.turns):
        assert turn.question == record["conversation"][2 * t]["value"]
        assert turn.answer == record["conversation"][2 * t + 1]["value"]
        assert turn.region_masks.shape == (len(record["obj_masks"][t]), 6, 64, 64)
        assert turn.seg_masks.shape == (len(record["groundtruth"][t]), 6, 64, 64)
        for s, ids in enumerate(record["groundtruth"][t]):
            for i, position in enumerate(sample.frame_indices):
                expected = np.zeros((64, 64), bool)
                for mask_id in ids:
                    rle = masks[str(mask_id)][position]
                    expected |= decode_rle(rle) if rle else False
                assert np.array_equal(turn.seg_masks[s, i], expected)
    assert sample.meta["turn_kinds"] == [t["kind"] for t in record["meta"]["turns"]]


def test_random_frames_depend_on_seed_epoch_and_index_only(source):
    first = SamaDataset(_config(source, sampling="random"), seed=5)
    again = SamaDataset(_config(source, sampling="random"), seed=5)
    assert first.sample(1, epoch=3).frame_indices == again.sample(1, epoch=3).frame_indices
    draws = {tuple(first.sample(1, epoch=e).frame_indices) for e in range(6)}
    assert len(draws) > 1
    for indices in draws:
        assert list(indices) == sorted(indices) and len(set(indices)) == 6


def test_resize_and_turn_filter(source):
    dataset = SamaDataset(_config(source, image_size=[32, 48], turn_kinds=["refer", "identify", "followup_colour", "followup_shape"]))
    records = json.loads((source / "train.json").read_text())
    for entry in dataset.entries:
        meta = entry.record["meta"]["turns"]
        for t in entry.turns:
            assert meta[t]["kind"] in ("refer", "identify", "followup_colour", "followup_shape")
            assert meta[t]["refers_to"] is None or meta[t]["refers_to"] in entry.turns
    assert dataset.filtered + len(dataset) == len(records)
    sample = dataset[0]
    assert sample.frames.shape == (6, 32, 48, 3)
    assert all(t.region_masks.shape[1:] == (6, 32, 48) for t in sample.turns)


def test_object_masks_hold_every_object_of_the_record_in_meta_order(data):
    records = json.loads((data / "train.json").read_text())
    masks = json.loads((data / "train_masks.json").read_text())
    sample = SamaDataset(_config(data, object_masks=True, image_size=32)).sample(1)
    objects = records[1]["meta"]["objects"]
    assert sample.meta["object_masks"].shape == (len(objects), 6, 32, 32)
    full = SamaDataset(_config(data, object_masks=True)).sample(1)
    for volume, facts in zip(full.meta["object_masks"], objects):
        for frame, position in zip(volume, full.frame_indices):
            rle = masks[str(facts["mask_id"])][position]
            assert np.array_equal(frame, decode_rle(rle) if rle else np.zeros((64, 64), bool))
    assert "object_masks" not in SamaDataset(_config(data)).sample(1).meta  # only when asked

    _edit_records(data, lambda records: records[1]["meta"]["objects"][0].update(mask_id=424242))
    with pytest.raises(RecordError, match=r"train.json, record 1, field meta.objects: mask id\(s\) 424242"):
        SamaDataset(_config(data, object_masks=True)).sample(1)
    _edit_records(data, lambda records: records[2].pop("meta"))
    with pytest.raises(RecordError, match="record 2, field meta.objects: object_masks needs"):
        SamaDataset(_config(data, object_masks=True)).sample(2)


def test_kinds_are_inferred_for_records_without_meta():
    record = {"conversation": [
        {"from": "human", "value": "What is <mask> doing?"}, {"from": "gpt", "value": "It runs."},
        {"from": "human", "value": "Segment the dog."}, {"from": "gpt", "value": "Sure, [SEG]."},
        {"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]}
    assert turn_kinds(record) == ["refer", "ground", "chat"]


def test_malformed_record_raises_naming_file_record_and_field(data):
    _edit_records(data, lambda records: records[3]["obj_masks"][0].append(12345))
    with pytest.raises(RecordError, match=r"train\.json, record 3, field obj_masks\[0\]"):
        SamaDataset(_config(data))


def test_malformed_record_is_skipped_and_counted_when_asked(data, caplog):
    _edit_records(data, lambda records: records[1].pop("frames"))
    with caplog.at_level(logging.WARNING, logger="sama_agent.training.datasets"):
        dataset = SamaDataset(_config(data, on_error="skip"))
    assert len(dataset) == 5 and len(dataset.skipped) == 1
    assert dataset.skipped[0].index == 1 and "frames" in dataset.skipped[0].reason
    assert dataset.report()["skipped"] == 1
    assert any("record 1" in message and "frames" in message for message in caplog.messages)


def test_missing_frame_raises_or_is_skipped(data):
    record = json.loads((data / "train.json").read_text())[4]
    (data / record["video"] / f"{record['frames'][5]}.png").unlink()
    with pytest.raises(RecordError, match=r"record 4, field frames\[5\].*missing"):
        SamaDataset(_config(data))
    dataset = SamaDataset(_config(data, on_error="skip"))
    assert len(dataset) == 5 and "frames[5]" in dataset.skipped[0].reason


def test_unreadable_frame_found_while_loading_is_skipped_once(data):
    record = json.loads((data / "train.json").read_text())[0]
    for stem in record["frames"]:
        (data / record["video"] / f"{stem}.png").write_bytes(b"not an image")
    with pytest.raises(RecordError, match=r"record 0, field frames\[\d+\].*not a readable image"):
        SamaDataset(_config(data))[0]
    dataset = SamaDataset(_config(data, on_error="skip"))
    assert dataset[0].video_id == Path(json.loads((data / "train.json").read_text())[1]["video"]).name
    dataset.sample(0, epoch=1)
    assert len(dataset.skipped) == 1


def test_mask_dicts_by_video_substring_and_bad_config(data):
    dataset = SamaDataset(_config(data, masks={"frames/train_": "train_masks.json"}))
    assert len(dataset) == 6
    with pytest.raises(RecordError, match="matches no mask dict"):
        SamaDataset(_config(data, masks={"mevis": "train_masks.json"}))
    with pytest.raises(ValueError, match="on_error"):
        DatasetConfig.from_dict(_config(data, on_error="ignore"))
    with pytest.raises(ValueError, match="unknown option"):
        DatasetConfig.from_dict(_config(data, frames=3))
    with pytest.raises(RecordError, match="records file not found"):
        SamaDataset(_config(data, records="nope.json"))
