"""Issue 5's world bars (evaluation/world.py) on a tiny generated held-out split.

The split is real world-generator output (3 videos, seed 1, 64x64, 8 frames,
4-5 turns). Its turns, fixed by the seed (asserted below so a generator change
shows up here first):

    record 0: ground_multi, ground, refer_two, refer_ground
    record 1: ground, ground, followup_action*, followup_next*, refer
    record 2: refer, followup_shape*, followup_colour*, refer_two      (* refers back)

so 3 grounding turns, 3 referring turns (refer_ground, refer, refer) and 4
follow-ups. Answers come from the ground-truth replay oracle, with per-turn
corruptions whose effect is worked out by hand, and from a real tiny SamaModel.
"""
import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from sama_agent.evaluation.answerers import Answer, GroundTruthReplayAnswerer, load_model_answerer
from sama_agent.evaluation.cli import bench
from sama_agent.evaluation.data import BenchError
from sama_agent.evaluation.world import WorldConfig, WorldEvaluation, load_world, run_world, summarize
from sama_agent.masks import MaskTrack
from sama_agent.training.world import COLOURS, generate_world

from session_helpers import one_torch_thread, trained_model_dir  # noqa: F401  (fixture: one torch thread)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KINDS = [
    ["ground_multi", "ground", "refer_two", "refer_ground"],
    ["ground", "ground", "followup_action", "followup_next", "refer"],
    ["refer", "followup_shape", "followup_colour", "refer_two"],
]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, 3, split="heldout", seed=1, size=64, frames=8, turns=(4, 5))
    return root


@pytest.fixture(scope="module")
def data(world_dir):
    return load_world(world_dir, "heldout")


def test_split_has_the_expected_turns(data):
    assert [[t["kind"] for t in r["meta"]["turns"]] for r in data.records] == KINDS


def test_oracle_scores_one_on_every_bar(data):
    summary = summarize(WorldEvaluation(data, GroundTruthReplayAnswerer(data)).run())
    assert summary["metrics"] == {"grounding_jf": 1.0, "referring_accuracy": 1.0, "multiturn_accuracy": 1.0}
    assert summary["counts"] == {"records": 3, "turns": 13, "grounding_turns": 3, "referring_turns": 3, "multiturn_turns": 4}
    assert all(summary["passed"].values())
    assert summary["per_kind"]["ground"]["turns"] == 3 and summary["per_kind"]["refer_two"]["scored"] == 0


def _swap_colour(text: str, colour: str) -> str:
    other = next(c for c in COLOURS if c != colour)
    swapped = re.sub(rf"\b{colour}\b", other, text)
    assert swapped != text
    return swapped


def test_corrupted_answers_score_what_was_worked_out_by_hand(data):
    def corrupt(conversation: str, turn: int, answer: Answer) -> Answer:
        meta = data.records[int(conversation)]["meta"]["turns"][turn]
        if (conversation, turn) == ("1", 0):  # ground: no [SEG] at all -> 0
            return Answer("I cannot see it.", [], [])
        if (conversation, turn) == ("1", 1):  # ground: a [SEG] with an empty mask on every frame
            empty = MaskTrack.from_masks({f: np.zeros((64, 64), bool) for f in range(8)})
            return Answer(answer.text, answer.phrases, [empty])
        if (conversation, turn) == ("2", 0):  # refer: the wrong colour
            return Answer(_swap_colour(answer.text, meta["expect"]["colour"]), answer.phrases, answer.tracks)
        if (conversation, turn) == ("1", 3):  # followup_next: no motion named
            return Answer("I do not know.", [], [])
        if (conversation, turn) == ("2", 2):  # followup_colour: the wrong colour
            return Answer(_swap_colour(answer.text, meta["expect"]["colour"]), [], [])
        return answer

    summary = summarize(WorldEvaluation(data, GroundTruthReplayAnswerer(data, corrupt)).run())
    # An empty prediction is right (J = F = 1) exactly on the frames where the object does not show.
    target = data.mask_volume(data.records[1]["groundtruth"][1][0], 1, "test")
    absent_share = float(np.mean(~target.reshape(8, -1).any(axis=1)))
    assert summary["metrics"]["grounding_jf"] == pytest.approx((1.0 + 0.0 + absent_share) / 3)
    assert summary["metrics"]["referring_accuracy"] == pytest.approx(2 / 3)
    assert summary["metrics"]["multiturn_accuracy"] == pytest.approx(2 / 4)
    assert summary["per_kind"]["ground"]["missing_segs"] == 1
    assert not any(summary["passed"].values())


def test_first_frame_regions_point_where_the_object_first_shows(data):
    evaluation = WorldEvaluation(data, GroundTruthReplayAnswerer(data), WorldConfig(region_frame="first"))
    mask_id = data.records[2]["obj_masks"][0][0]
    region = evaluation.region(mask_id, 2, "test")
    volume = data.mask_volume([mask_id], 2, "test")
    first = int(np.argmax(volume.reshape(8, -1).any(axis=1)))
    assert region.frame == first and np.array_equal(region.mask, volume[first])


def test_cli_oracle_writes_records_and_summary(world_dir, tmp_path):
    out = tmp_path / "out"
    args = ["--suite", "world", "--data", str(world_dir), "--split", "heldout", "--answerer", "oracle", "--out", str(out), "--limit", "2"]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert "| grounding_jf | 1.0000 | 3 |" in result.output
    written = json.loads((out / "summary.json").read_text())
    assert [r["index"] for r in written["records"]] == [0, 1]
    assert written["summary"]["counts"]["records"] == 2
    assert sorted(p.name for p in (out / "records").iterdir()) == ["000000.json", "000001.json"]
    again = CliRunner().invoke(bench, args)  # finished records are kept, not re-asked
    assert again.exit_code == 0 and "record 0" not in again.output


def test_cli_needs_a_split_and_refuses_other_data(world_dir, tmp_path):
    result = CliRunner().invoke(bench, ["--suite", "world", "--data", str(world_dir), "--answerer", "oracle"])
    assert result.exit_code != 0 and "--split" in result.output
    result = CliRunner().invoke(bench, ["--suite", "world", "--data", str(world_dir), "--split", "train", "--answerer", "oracle"])
    assert result.exit_code != 0 and "train.json" in result.output
    with pytest.raises(BenchError, match="--limit 0"):
        WorldConfig(limit=0)


def test_real_tiny_model_runs_conversations_with_their_history(data, tmp_path):
    answerer = load_model_answerer(trained_model_dir())
    summary = run_world(data, answerer, tmp_path / "out", WorldConfig(limit=2))
    for value in summary["metrics"].values():  # records 0 and 1 hold all three kinds of turn
        assert value is not None and 0.0 <= value <= 1.0
    assert summary["counts"]["turns"] == 9
    # The last record's five turns were asked in one conversation: the predictor kept every answer.
    assert len(answerer.predictor.history) == 5
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    answers = [i["answer"] for i in written["records"][1]["items"]]
    assert answers == [turn.raw for turn in answerer.predictor.history]
