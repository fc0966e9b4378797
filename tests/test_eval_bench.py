"""Bench runner end to end on a tiny SAMA-Bench-format set written by the test.

The answers come from `GroundTruthReplayAnswerer` with per-turn corruptions:
a real answerer that replays the ground truth, used here to drive known
predictions through the metric plumbing (the model is not involved). Every
expected number below is worked out by hand in the comments.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from PIL import Image

from sama_agent.evaluation.answerers import Answer, GroundTruthReplayAnswerer, PredictorAnswerer
from sama_agent.evaluation.bench import BenchConfig, BenchRunner, merge, parse_shard
from sama_agent.evaluation.captions import CaptionScorer
from sama_agent.evaluation.cli import bench
from sama_agent.evaluation.data import BenchData, BenchError
from sama_agent.evaluation.judge import ClairJudge
from sama_agent.evaluation.similarity import LexicalOverlapSimilarity, MiniLMSimilarity
from sama_agent.masks import MaskTrack, encode_rle

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T, H, W = 2, 6, 8


def box(y0, y1, x0, x1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


KITE = box(0, 2, 0, 4)  # 8 px per frame, 16 over the clip
MAN = box(3, 6, 4, 8)  # 12 px per frame
HALF_KITE = box(0, 2, 0, 2)  # IoU with KITE = 8 / 16 = 0.5
ELSEWHERE = box(3, 6, 0, 2)  # overlaps neither


def write_video(root: Path, name: str) -> list[str]:
    folder = root / name
    folder.mkdir(parents=True)
    stems = [f"{i:05d}" for i in range(T)]
    for i, stem in enumerate(stems):
        pixels = np.full((H, W, 3), 40 * i, np.uint8)
        pixels[KITE] = (220, 30, 30)
        pixels[MAN] = (30, 30, 220)
        Image.fromarray(pixels).save(folder / f"{stem}.png")
    return stems


def track_rles(mask):
    return [encode_rle(mask) for _ in range(T)]


def write_bench(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    masks = {"1": track_rles(KITE), "2": track_rles(MAN), "3": track_rles(KITE), "5": track_rles(KITE), "6": track_rles(MAN)}
    record_v0 = {
        "video": "videos/v0", "frames": write_video(root, "videos/v0"), "height": H, "width": W, "anno_map": [1, 2],
        "conversation": [
            {"from": "human", "value": "What is <mask> doing?", "question_id": "q0"},
            {"from": "gpt", "value": "<p>The red kite</p> [SEG] drifts to the right."},
            {"from": "human", "value": "Who is near <mask>?", "question_id": "q1"},
            {"from": "gpt", "value": "<p>The old man</p> [SEG] stands below <p>the red kite</p> [SEG]."},
            {"from": "human", "value": "Where does <mask> go?", "question_id": "q2"},
            {"from": "gpt", "value": "<p>The red kite</p> [SEG] leaves the frame."},
            {"from": "human", "value": "Is it windy?", "question_id": "q3"},
            {"from": "gpt", "value": "Yes, it is windy."},
        ],
        "obj_masks": [[3], [3], [3], []],
        "groundtruth": [[[1]], [[2], [1]], [[1]], []],
        "description": {"obj0": "a red kite drifting in the sky", "obj1": "an old man waving"},
    }
    record_v1 = {
        "video": "videos/v1", "frames": write_video(root, "videos/v1"), "height": H, "width": W, "anno_map": [5, 6],
        "conversation": [
            {"from": "human", "value": "Describe <mask>.", "question_id": "q4"},
            {"from": "gpt", "value": "<p>The old man</p> [SEG] waves."},
        ],
        "obj_masks": [[6]],
        "groundtruth": [[[6]]],
        "description": {"obj1": "an old man waving his hand"},
    }
    (root / "records.json").write_text(json.dumps([record_v0, record_v1]))
    (root / "masks.json").write_text(json.dumps(masks))
    return root


def track(mask, label=""):
    return MaskTrack.from_masks({t: mask for t in range(T)}, label=label)


def corrupt_bench_g(conversation, turn, answer):
    if conversation != "0":
        return answer  # video v1: replayed exactly
    if turn == 0:  # half the kite, same phrase: IoU 0.5, similarity 1 -> a hit
        return Answer("<p>The red kite</p> [SEG] drifts right.", ["The red kite"], [track(HALF_KITE)])
    if turn == 1:  # the kite, named; plus a mask elsewhere with an unrelated phrase
        return Answer(answer.text, ["the red kite", "a wooden table"], [track(KITE), track(ELSEWHERE)])
    if turn == 2:  # unanswered: text, no masks
        return Answer("I do not know.", [], [])
    return answer


@pytest.fixture(scope="module")
def captions():
    with CaptionScorer() as scorer:
        yield scorer


@pytest.fixture(scope="module")
def minilm():
    return MiniLMSimilarity()


@pytest.fixture
def bench_dir(tmp_path):
    return write_bench(tmp_path / "bench")


def test_bench_g_end_to_end_hand_computed(bench_dir, tmp_path, captions, minilm):
    data = BenchData(bench_dir, "sama-bench-g")
    runner = BenchRunner(data, GroundTruthReplayAnswerer(data, corrupt_bench_g), tmp_path / "out",
                         similarity=minilm, captions=captions)
    report = runner.run()
    assert len(report.done) == 2 and not report.failed
    summary = merge(tmp_path / "out", data)
    v0 = json.loads(runner.result_path(next(u for u in data.units if u.video == "videos/v0")).read_text())
    turns = v0["items"]
    # turn 0: one prediction at IoU 0.5 -> mIoU 0.5, 1 hit of 1
    assert turns[0]["grounding"]["miou"] == pytest.approx(0.5) and turns[0]["grounding"]["hits"] == 1
    # turn 1: IoU (pred x gt) = [[0, 1], [0, 0]]; Hungarian pairs sum 1 over max(2, 2) -> 0.5; "the red kite"
    # pairs with ground truth 1 -> 1 hit of 2 (a gt x pred similarity matrix would give 0 hits here)
    assert turns[1]["grounding"]["matched_iou"] == [0.0, 1.0] or sorted(turns[1]["grounding"]["matched_iou"]) == [0.0, 1.0]
    assert turns[1]["grounding"]["miou"] == pytest.approx(0.5) and turns[1]["grounding"]["hits"] == 1
    # turn 2: unanswered -> 0; turn 3 has no [SEG] and is not a grounding turn
    assert turns[2]["grounding"]["miou"] == 0.0 and turns[2]["grounding"]["hits"] == 0
    assert "grounding" not in turns[3]
    assert v0["metrics"]["miou"] == pytest.approx(1 / 3)
    assert v0["metrics"]["recall"] == pytest.approx(2 / 4)
    # ROUGE-L per turn: 0.80902 ("the red kite drifts right" vs "... drifts to the right": LCS 5, P 1, R 5/7,
    # beta 1.2), 1, 0, 1 -> mean 0.702255
    assert v0["metrics"]["ROUGE_L"] == pytest.approx((0.8090186 + 1 + 0 + 1) / 4, abs=1e-5)
    # BLEU-1: 17 of 21 candidate tokens match; reference length 25 -> 17/21 * exp(1 - 25/21)
    assert v0["metrics"]["Bleu_1"] == pytest.approx(17 / 21 * np.exp(1 - 25 / 21), abs=1e-6)
    assert v0["metrics"]["SPICE"] is None and "SPICE" in v0["metrics"]["unavailable"]
    # summary: v1 is perfect (mIoU 1, recall 1) -> means over videos, pooled over turns / phrases
    metrics = summary["metrics"]
    assert metrics["miou"] == pytest.approx((1 / 3 + 1) / 2)
    assert metrics["recall"] == pytest.approx((0.5 + 1) / 2)
    assert metrics["recall_pooled"] == pytest.approx(3 / 5)
    assert metrics["miou_pooled"] == pytest.approx((0.5 + 0.5 + 0 + 1) / 4)
    assert metrics["METEOR"] > 0 and metrics["SPICE"] is None
    assert summary["complete"] and "| miou | 0.6667 |" in (tmp_path / "out" / "summary.md").read_text()
    assert "SPICE | unavailable" in (tmp_path / "out" / "summary.md").read_text()


def test_bench_c_end_to_end_with_clair(bench_dir, tmp_path, captions):
    data = BenchData(bench_dir, "sama-bench-c")

    def corrupt(conversation, turn, answer):
        if conversation == "0/obj1":
            return Answer("A man waving.")
        return answer

    replies = ['{"score": 90, "reason": "same kite"}', "Score: 40. Reason: different man", "no idea", "still none", "sorry"]
    judge = ClairJudge(GenericFakeChatModel(messages=iter(AIMessage(r) for r in replies)))
    runner = BenchRunner(data, GroundTruthReplayAnswerer(data, corrupt), tmp_path / "out", captions=captions, judge=judge)
    runner.run()
    summary = merge(tmp_path / "out", data)
    v0 = json.loads(runner.result_path(next(u for u in data.units if u.video == "videos/v0")).read_text())
    assert [i["question"] for i in v0["items"]] == ["Please describe the region <mask> in the video in detail."] * 2
    # obj0 exact (ROUGE-L 1); obj1 "a man waving" vs "an old man waving": LCS 2, P 2/3, R 1/2 -> 0.557078
    assert v0["metrics"]["ROUGE_L"] == pytest.approx((1 + 0.5570776) / 2, abs=1e-5)
    # BLEU-1: 9 of 10 candidate tokens match (7 + "man", "waving"), reference length 11 -> 9/10 * exp(1 - 11/10)
    assert v0["metrics"]["Bleu_1"] == pytest.approx(9 / 10 * np.exp(1 - 11 / 10), abs=1e-6)
    assert v0["metrics"]["CLAIR"] == pytest.approx((0.9 + 0.4) / 2)
    # v1: three replies without a score -> CLAIR missing, not 0
    v1 = json.loads(runner.result_path(next(u for u in data.units if u.video == "videos/v1")).read_text())
    assert v1["metrics"]["CLAIR"] is None and v1["metrics"]["clair_missing"] == 1
    assert summary["metrics"]["CLAIR"] == pytest.approx(0.65)
    assert summary["metrics"]["ROUGE_L"] == pytest.approx(((1 + 0.5570776) / 2 + 1) / 2, abs=1e-5)


def write_refvos(root: Path) -> Path:
    root.mkdir(parents=True)
    record = {
        "video": "videos/v0", "frames": write_video(root, "videos/v0"), "height": H, "width": W,
        "conversation": [
            {"from": "human", "value": "Please segment the red kite."},
            {"from": "gpt", "value": "<p>The red kite</p> [SEG]."},
            {"from": "human", "value": "Please segment the old man."},
            {"from": "gpt", "value": "It is <p>the old man</p> [SEG]."},
        ],
        "groundtruth": [[[1]], [[2]]],
    }
    (root / "records.json").write_text(json.dumps([record]))
    (root / "masks.json").write_text(json.dumps({"1": track_rles(KITE), "2": track_rles(MAN)}))
    return root


def test_refvos_end_to_end_hand_computed(tmp_path):
    data = BenchData(write_refvos(tmp_path / "refvos"), "refvos")

    def corrupt(conversation, turn, answer):
        if turn == 0:  # half the kite: J 0.5; boundary precision 3/3, recall 3/5 at radius 1 -> F 0.75
            return Answer(answer.text, ["the red kite"], [track(HALF_KITE)])
        return Answer("No.", [], [])  # missing prediction: J 0, F 0

    runner = BenchRunner(data, GroundTruthReplayAnswerer(data, corrupt), tmp_path / "out")
    runner.run()
    summary = merge(tmp_path / "out", data)
    assert summary["metrics"]["J"] == pytest.approx(0.25)
    assert summary["metrics"]["F"] == pytest.approx(0.375)
    assert summary["metrics"]["J&F"] == pytest.approx(0.3125)


def test_resume_shards_and_merge(bench_dir, tmp_path, captions):
    data = BenchData(bench_dir, "sama-bench-g")
    lexical = LexicalOverlapSimilarity()
    calls = []

    def counting(conversation, turn, answer):
        calls.append((conversation, turn))
        return answer

    out = tmp_path / "out"
    for shard in ((0, 2), (1, 2)):
        BenchRunner(data, GroundTruthReplayAnswerer(data, counting), out, similarity=lexical, captions=captions).run(shard)
    assert len(calls) == 5  # every turn once over the two shards
    summary = merge(out, data)
    assert summary["complete"] and summary["metrics"]["miou"] == 1.0 and summary["metrics"]["recall"] == 1.0
    # re-running skips finished videos; deleting one result redoes only that video
    runner = BenchRunner(data, GroundTruthReplayAnswerer(data, counting), out, similarity=lexical, captions=captions)
    assert len(runner.run().skipped) == 2 and len(calls) == 5
    runner.result_path(data.units[0]).unlink()
    assert merge(out, data)["missing"] == [data.units[0].key]
    assert runner.run().done == [data.units[0].key]
    # another run's settings in the same folder are refused
    other = BenchRunner(data, GroundTruthReplayAnswerer(data), out, similarity=lexical, config=BenchConfig("sama-bench-g", miou_normalizer="gt"))
    with pytest.raises(BenchError, match="different run.*config"):
        other.run()
    # the grounding hint is appended only where the reference answer is grounded, and recorded in the result
    hinted = BenchRunner(data, GroundTruthReplayAnswerer(data), tmp_path / "hinted", similarity=lexical, captions=captions,
                         config=BenchConfig("sama-bench-g", seg_hint="Please respond with segmentation masks."))
    hinted.run()
    v0 = next(u for u in data.units if u.video == "videos/v0")
    hinted_questions = [i["question"] for i in json.loads(hinted.result_path(v0).read_text())["items"]]
    assert hinted_questions[0] == "What is <mask> doing? Please respond with segmentation masks."
    assert [q.endswith("segmentation masks.") for q in hinted_questions] == [True, True, True, False]  # turn 3 has no [SEG]
    assert json.loads(runner.result_path(v0).read_text())["items"][0]["question"] == "What is <mask> doing?"
    with pytest.raises(BenchError, match="i/n"):
        parse_shard("2")
    with pytest.raises(BenchError, match="0 <= i < n"):
        parse_shard("2/2")


def test_bad_predictions_fail_the_video_naming_file_record_turn(bench_dir, tmp_path, captions):
    data = BenchData(bench_dir, "sama-bench-g")

    def wrong_size(conversation, turn, answer):
        if conversation == "0" and turn == 1:
            return Answer(answer.text, answer.phrases, [MaskTrack.from_masks({0: np.ones((H + 1, W), bool)})])
        return answer

    runner = BenchRunner(data, GroundTruthReplayAnswerer(data, wrong_size), tmp_path / "out", similarity=LexicalOverlapSimilarity(),
                         captions=captions)
    report = runner.run()
    [(key, error)] = report.failed.items()
    assert "records.json, record 0, turn 1" in error and "8x7 but the video is 8x6" in error
    assert len(report.done) == 1  # the other video still ran
    summary = merge(tmp_path / "out", data)
    assert not summary["complete"] and key in summary["failed"] and "INCOMPLETE" in (tmp_path / "out" / "summary.md").read_text()

    def raising(conversation, turn, answer):
        raise RuntimeError("model exploded")

    report = BenchRunner(data, GroundTruthReplayAnswerer(data, raising), tmp_path / "out2", similarity=LexicalOverlapSimilarity(),
                         captions=captions).run()
    assert all("record" in e and "turn 0" in e and "RuntimeError: model exploded" in e for e in report.failed.values())


def test_malformed_bench_files_name_file_record_and_field(tmp_path):
    root = write_bench(tmp_path / "b")
    records = json.loads((root / "records.json").read_text())

    (root / "records.json").write_text('[{"video": "x",')
    with pytest.raises(BenchError, match=r"records.json: not valid JSON \(line 1"):
        BenchData(root, "sama-bench-g")

    broken = json.loads(json.dumps(records))
    del broken[1]["frames"]
    (root / "records.json").write_text(json.dumps(broken))
    with pytest.raises(BenchError, match=r"records.json, record 1, field \(record\): 'frames' is a required property"):
        BenchData(root, "sama-bench-g")

    broken = json.loads(json.dumps(records))
    broken[0]["groundtruth"][1] = [[2]]  # two [SEG] in the answer, one ground-truth entry
    (root / "records.json").write_text(json.dumps(broken))
    with pytest.raises(BenchError, match=r"record 0, field groundtruth\[1\]: 1 entries for 2 \[SEG\]"):
        BenchData(root, "sama-bench-g")

    broken = json.loads(json.dumps(records))
    broken[0]["groundtruth"][0] = [[99]]
    (root / "records.json").write_text(json.dumps(broken))
    with pytest.raises(BenchError, match=r"record 0, field groundtruth\[0\]: mask id 99 is not in the mask dict"):
        BenchData(root, "sama-bench-g")

    broken = json.loads(json.dumps(records))
    broken[0]["description"] = {"obj7": "nothing"}
    (root / "records.json").write_text(json.dumps(broken))
    with pytest.raises(BenchError, match=r"record 0, field description.obj7: anno_map has no mask for object 7"):
        BenchData(root, "sama-bench-c")

    (root / "records.json").write_text(json.dumps(records))
    with pytest.raises(BenchError, match="refvos expressions take no region prompt"):
        BenchData(root, "refvos")

    masks = json.loads((root / "masks.json").read_text())
    masks["1"][1] = {"size": [H, W]}
    (root / "masks.json").write_text(json.dumps(masks))
    with pytest.raises(BenchError, match=r"masks.json, mask 1, field \[1\]: 'counts' is a required property"):
        BenchData(root, "sama-bench-g")


def test_mask_of_wrong_size_in_the_mask_dict_and_empty_region(tmp_path, captions):
    root = write_bench(tmp_path / "b")
    masks = json.loads((root / "masks.json").read_text())
    masks["1"][0] = encode_rle(np.ones((H, W + 2), bool))
    masks["3"] = [encode_rle(np.zeros((H, W), bool))] * T  # the region a question points at is empty
    (root / "masks.json").write_text(json.dumps(masks))
    data = BenchData(root, "sama-bench-g")
    report = BenchRunner(data, GroundTruthReplayAnswerer(data), tmp_path / "out", similarity=LexicalOverlapSimilarity(),
                         captions=captions).run()
    error = report.failed[next(u.key for u in data.units if u.video == "videos/v0")]
    assert "records.json, record 0" in error and "obj_masks[0][0]: mask 3 is empty on every frame" in error
    with pytest.raises(BenchError, match=r"masks.json, mask 1, frame 0 \(used by .*record 0, groundtruth\[0\]\[0\]\): RLE size \[6, 10\]"):
        data.mask_volume([1], 0, "groundtruth[0][0]")


def test_bench_is_a_registered_sama_agent_command():
    from sama_agent.cli import build_cli

    assert build_cli().commands["bench"] is bench


def test_judge_option_loads_a_chat_model_factory(bench_dir, tmp_path, monkeypatch):
    (tmp_path / "my_judge.py").write_text(
        "from langchain_core.language_models.fake_chat_models import FakeListChatModel\n"
        "def make():\n    return FakeListChatModel(responses=['{\"score\": 60}'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    args = ["--suite", "sama-bench-c", "--data", str(bench_dir), "--answerer", "oracle", "--out", str(out), "--judge", "my_judge:make"]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert "| CLAIR | 0.6000 |" in result.output and "| ROUGE_L | 1.0000 |" in result.output
    bad = CliRunner().invoke(bench, args[:-1] + ["my_judge"])
    assert bad.exit_code != 0 and "package.module:factory" in bad.output


def test_cli_oracle_run_and_merge(bench_dir, tmp_path, monkeypatch):
    out = tmp_path / "cli-out"
    runner = CliRunner()
    args = ["--suite", "refvos", "--data", str(write_refvos(tmp_path / "rv")), "--answerer", "oracle", "--out", str(out)]
    result = runner.invoke(bench, args)
    assert result.exit_code == 0, result.output
    assert "| J&F | 1.0000 |" in result.output and (out / "summary.json").exists()
    again = runner.invoke(bench, args)
    assert "0 videos scored, 1 already done" in again.output
    merged = runner.invoke(bench, args + ["--merge"])
    assert merged.exit_code == 0 and "1 of 1 done" in merged.output
    monkeypatch.setenv("SAMA_AGENT_MODEL", str(tmp_path / "no-checkpoint-here"))
    missing_model = runner.invoke(bench, ["--suite", "refvos", "--data", str(tmp_path / "rv"), "--out", str(tmp_path / "o2")])
    assert missing_model.exit_code != 0 and "no trained SAMA checkpoint" in missing_model.output
    bad = runner.invoke(bench, ["--suite", "sama-bench-g", "--data", str(tmp_path / "nowhere"), "--answerer", "oracle"])
    assert bad.exit_code != 0 and "no such data directory" in bad.output


def test_caption_scorer_scores_empty_candidates_zero_and_reports_spice(captions):
    scores = captions.score(["a dog runs across the field", ""], ["a dog runs across the field", ["the old man waves", "a man waving"]])
    # item 0 exact (1), item 1 empty (0): ROUGE-L is the per-item mean; METEOR pools its statistics over the corpus
    assert scores["ROUGE_L"] == pytest.approx(0.5)
    assert 0.0 < scores["METEOR"] < 1.0 and scores["Bleu_1"] < 1.0
    assert scores["SPICE"] is None and "stanford-corenlp" in captions.unavailable["SPICE"]
    with pytest.raises(ValueError, match="2 candidates but 1 reference sets"):
        captions.score(["a", "b"], ["a"])


def test_world_generator_split_scores_one_with_the_oracle(tmp_path):
    """Records written by the training world generator load unchanged (--split) and replaying them scores 1."""
    from sama_agent.training.world.generator import generate_world

    generate_world(tmp_path / "world", 2, "val", 0, 64, (6, 8), objects=(2, 3), turns=(3, 4))
    out = tmp_path / "out"
    args = ["--suite", "sama-bench-g", "--data", str(tmp_path / "world"), "--split", "val", "--answerer", "oracle",
            "--similarity", "lexical", "--out", str(out)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert metrics["miou"] == 1.0 and metrics["recall"] == 1.0 and metrics["ROUGE_L"] == pytest.approx(1.0)
    missing = CliRunner().invoke(bench, [a if a != "val" else "test" for a in args])
    assert missing.exit_code != 0 and "test.json: missing" in missing.output
