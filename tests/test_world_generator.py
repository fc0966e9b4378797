"""The synthetic world: determinism, exact masks, occlusion, the held-out split, valid records."""
from __future__ import annotations

import filecmp
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sama_agent.conversation import grounded_phrases
from sama_agent.masks import decode_rle
from sama_agent.schemas import validate_mask_dict, validate_record
from sama_agent.training.world import (
    COLOURS, MOTIONS, SHAPES, BackgroundSpec, ObjectSpec, Phase, VideoSpec, combos, generate_world, is_heldout, load_spec,
    render, render_background, render_video_mp4, shape_mask,
)
from sama_agent.training.world.scene import shade_of
from sama_agent.video import Video

SMALL = dict(size=64, frames=(8, 12), objects=(2, 3), turns=(2, 4))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    for split, count in (("train", 12), ("val", 4), ("heldout", 8)):
        generate_world(root, count, split, seed=7, **SMALL)
    return root


def _load(root: Path, split: str):
    return json.loads((root / f"{split}.json").read_text()), json.loads((root / f"{split}_masks.json").read_text())


def _frames(root: Path, record: dict) -> np.ndarray:
    return np.stack([np.asarray(Image.open(root / record["video"] / f"{stem}.png").convert("RGB")) for stem in record["frames"]])


def test_same_seed_writes_the_same_bytes_in_one_or_two_processes(tmp_path):
    generate_world(tmp_path / "a", 5, "train", seed=3, **SMALL)
    generate_world(tmp_path / "b", 5, "train", seed=3, workers=2, **SMALL)
    comparison = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    for video in (tmp_path / "a" / "frames").iterdir():
        files = sorted(p.name for p in video.iterdir())
        match, mismatch, errors = filecmp.cmpfiles(video, tmp_path / "b" / "frames" / video.name, files, shallow=False)
        assert len(match) == len(files) and not mismatch and not errors
    for name in ("train.json", "train_masks.json", "train_manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    generate_world(tmp_path / "c", 5, "train", seed=4, **SMALL)
    assert (tmp_path / "a" / "train.json").read_bytes() != (tmp_path / "c" / "train.json").read_bytes()


def test_masks_are_exactly_the_pixels_each_object_owns(world):
    records, masks = _load(world, "train")
    for record in records:
        frames = _frames(world, record)
        spec = load_spec(world / "train_manifest.json", Path(record["video"]).name)
        background = render_background(spec.background, spec.height, spec.width)
        owned = np.zeros(frames.shape[:3], int)
        for obj in spec.objects:
            track = masks[str(obj.mask_id)]
            assert len(track) == len(record["frames"])
            volume = np.stack([decode_rle(r) if r is not None else np.zeros(frames.shape[1:3], bool) for r in track])
            assert all((r is None) == (not m.any()) for r, m in zip(track, volume))  # null exactly when empty
            tones = {COLOURS[obj.colour], shade_of(COLOURS[obj.colour])}
            colours_inside = {tuple(int(v) for v in c) for c in frames[volume]}
            assert colours_inside <= tones, (record["video"], obj.mask_id, colours_inside - tones)
            owned += volume
        assert owned.max() <= 1, "two objects claim one pixel"
        assert np.array_equal(frames[owned == 0], np.broadcast_to(background, frames.shape)[owned == 0])
        assert np.array_equal(render(spec).frames, frames)  # the manifest re-renders the very same frames


def test_occluded_object_loses_exactly_the_covered_pixels():
    back = ObjectSpec(0, "red", "disc", "flat", "large", (30.0, 32.0), [Phase("stays still", 0, 4)], depth=0)
    front = ObjectSpec(1, "blue", "square", "striped", "large", (20.0, 32.0),
                       [Phase("moves right", 0, 4, speed=4.0, direction=(1.0, 0.0))], depth=1)
    spec = VideoSpec("occlusion", 64, 64, 4, BackgroundSpec("solid", [(128, 128, 128)]), [back, front])
    rendered = render(spec)
    radius = back.radius(64, 64)
    for frame in range(4):
        back_shape = shape_mask("disc", (30.0, 32.0), radius, 0.0, 64, 64)
        front_shape = shape_mask("square", (20.0 + 4.0 * frame, 32.0), radius, 0.0, 64, 64)
        assert (back_shape & front_shape).any()  # they do overlap in every frame
        assert np.array_equal(rendered.masks[1, frame], front_shape)
        assert np.array_equal(rendered.masks[0, frame], back_shape & ~front_shape)
    # painted the other way round, the disc covers the square instead
    back.depth, front.depth = 2, 1
    swapped = render(spec)
    assert np.array_equal(swapped.masks[0, 0], shape_mask("disc", (30.0, 32.0), radius, 0.0, 64, 64))


def test_heldout_triples_never_appear_in_training(world):
    assert combos(True) and combos(False)
    # every pair of attributes still occurs in training: only the triple is new
    train = combos(False)
    assert {(c, s) for c, s, _ in train} == {(c, s) for c in COLOURS for s in SHAPES}
    assert {(c, m) for c, _, m in train} == {(c, m) for c in COLOURS for m in MOTIONS}
    assert {(s, m) for _, s, m in train} == {(s, m) for s in SHAPES for m in MOTIONS}
    for split in ("train", "val"):
        for record in _load(world, split)[0]:
            for obj in record["meta"]["objects"]:
                assert not any(is_heldout(obj["colour"], obj["shape"], m) for m in obj["motions"]), obj
    for record in _load(world, "heldout")[0]:
        for obj in record["meta"]["objects"]:
            assert is_heldout(obj["colour"], obj["shape"], obj["motions"][0]), obj


def test_every_record_validates_and_talks_about_the_right_objects(world):
    kinds = set()
    for split in ("train", "val", "heldout"):
        records, masks = _load(world, split)
        validate_mask_dict(masks, file=f"{split}_masks.json")
        ids = [m for r in records for m in r["anno_map"]]
        assert len(ids) == len(set(ids))
        for index, record in enumerate(records):
            validate_record(record, file=f"{split}.json", index=index, masks=masks)
            objects = {o["mask_id"]: o for o in record["meta"]["objects"]}
            for t, meta in enumerate(record["meta"]["turns"]):
                kinds.add(meta["kind"])
                question, answer = record["conversation"][2 * t]["value"], record["conversation"][2 * t + 1]["value"]
                assert len(grounded_phrases(answer)) == answer.count("[SEG]")
                for seg, phrase in zip(record["groundtruth"][t], grounded_phrases(answer)):
                    if len(seg) == 1:
                        assert phrase == objects[seg[0]]["name"]
                if meta["expect"]:
                    obj = objects[meta["objects"][0]]
                    if meta["kind"] in ("refer", "identify", "refer_ground", "ground"):
                        assert obj["colour"] in answer and obj["shape"] in answer
                    if meta["kind"] in ("refer", "refer_ground"):
                        assert obj["motions"][0] in answer
                if meta["kind"].startswith("followup"):
                    assert meta["refers_to"] == t - 1 and "<mask>" not in question
                if meta["kind"] == "followup_next" and len(objects[meta["objects"][0]]["motions"]) > 1:
                    assert objects[meta["objects"][0]]["motions"][1] in answer
                if meta["kind"] == "ground":  # the request must pick out that object alone
                    expression = re.sub(r"^(Please segment |Can you segment |Segment |Where is )", "", question)
                    expression = re.sub(r"(\?.*|\.)$", "", expression)
                    matching = [o for o in objects.values() if _fits(expression, o)]
                    assert [o["mask_id"] for o in matching] == meta["objects"], (expression, matching)
    assert {"refer", "identify", "ground", "describe", "refer_ground"} <= kinds
    assert any(k.startswith("followup") for k in kinds)


def _fits(expression: str, obj: dict) -> bool:
    words = expression.removeprefix("the ").split(" that ")
    noun = words[0].split()
    motion = words[1] if len(words) > 1 else None
    if motion is not None and obj["motions"][0] != motion:
        return False
    if noun[-1] == "object":
        return len(noun) == 1 or noun[0] == obj["colour"]
    return noun[-1] == obj["shape"] and (len(noun) == 1 or noun[0] == obj["colour"])


def test_bad_settings_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        generate_world(tmp_path, 1, "test")
    with pytest.raises(ValueError, match="too small"):
        generate_world(tmp_path, 1, "train", size=16)


def test_jpeg_frames_and_an_mp4_sample_read_back(tmp_path):
    generate_world(tmp_path / "jpg", 2, "val", seed=1, image_format="jpg", **SMALL)
    record = json.loads((tmp_path / "jpg" / "val.json").read_text())[0]
    video = Video(tmp_path / "jpg" / record["video"], frames=record["frames"])
    assert video.num_frames == len(record["frames"]) and video.size == (64, 64)

    sample = render_video_mp4(tmp_path / "sample.mp4", seed=0, split="heldout", index=2, size=64, frames=10,
                              record_path=tmp_path / "sample.json")
    mp4 = Video(tmp_path / "sample.mp4")
    assert mp4.num_frames == 10 and mp4.size == (64, 64)
    saved = json.loads((tmp_path / "sample.json").read_text())
    assert saved["record"] == sample["record"]
    validate_record(saved["record"], masks=saved["masks"])
    # the MP4 is lossy but shows the same scene: the first frame is close to the exact render
    exact = render(VideoSpec.from_json(saved["spec"])).frames[0].astype(int)
    assert np.abs(mp4.frame(0).astype(int) - exact).mean() < 12


def test_scoring_accepts_the_reference_answers_and_catches_wrong_ones(world):
    from sama_agent.training.world import check_answer, score_records

    records = _load(world, "train")[0] + _load(world, "heldout")[0]
    truth = {h["question_id"]: a["value"] for r in records for h, a in zip(r["conversation"][0::2], r["conversation"][1::2])}
    scores = score_records(records, truth)
    assert scores["referring"]["total"] > 0 and scores["followup"]["total"] > 0
    assert all(group["accuracy"] == 1.0 for group in scores.values() if group["total"])
    assert score_records(records, {})["referring"]["accuracy"] == 0.0

    turn = {"kind": "refer", "expect": {"colour": "red", "shape": "disc", "texture": "flat", "motions": ["moves left", "stays still"]}}
    assert check_answer("The red disc moves left, then stays still.", turn).correct
    assert not check_answer("The red disc moves left.", turn).correct  # the second motion is missing
    wrong = check_answer("The red or blue disc moves left, then stays still.", turn)
    assert not wrong.correct and wrong.colour is False and wrong.shape is True
    follow = {"kind": "followup_next", "expect": {"colour": "red", "shape": "disc", "texture": "flat", "motions": ["bounces"]}}
    assert check_answer("It keeps bouncing.", follow).correct and not check_answer("It moves up.", follow).correct
    ground = {"kind": "ground", "expect": {"colour": "blue", "shape": "star", "texture": "dotted", "motions": ["bounces"]}}
    assert check_answer("Sure, <p>the blue dotted star</p> [SEG].", ground).correct
    assert not check_answer("Sure, the blue dotted star.", ground).correct


def test_world_texts_cover_every_word_the_generator_writes(world):
    from sama_agent.model.modeling.llm import build_word_vocab, words_of
    from sama_agent.training.world import world_texts

    vocabulary = set(build_word_vocab(world_texts()))
    written = {w for split in ("train", "val", "heldout") for r in _load(world, split)[0] for t in r["conversation"] for w in words_of(t["value"])}
    assert written and written <= vocabulary, written - vocabulary
