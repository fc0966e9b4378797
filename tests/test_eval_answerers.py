"""The bench runner driving the real SAMA model (tiny config, random weights) through
`sama-agent bench --model DIR`: checks the adapter and the plumbing, not the model's quality."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

from sama_agent.evaluation.answerers import PredictorAnswerer, load_model_answerer
from sama_agent.evaluation.cli import bench

from test_eval_bench import H, T, W, write_refvos

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from sama_agent.model.configs import CONFIG_DIR
    from sama_agent.model.modeling.sama import SamaModel

    config = json.loads((CONFIG_DIR / "sama-tiny.json").read_text())
    config["max_new_tokens"] = 8
    torch.manual_seed(0)
    return SamaModel(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "sama-tiny-random")


def test_bench_cli_runs_the_model_checkpoint(tiny_checkpoint, tmp_path):
    data_dir = write_refvos(tmp_path / "rv")
    records = json.loads((data_dir / "records.json").read_text())
    records[0]["conversation"] = records[0]["conversation"][:2]  # one expression keeps it short
    records[0]["groundtruth"] = records[0]["groundtruth"][:1]
    (data_dir / "records.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    result = CliRunner().invoke(bench, ["--suite", "refvos", "--data", str(data_dir), "--model", str(tiny_checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["answerer"] == "sama-tiny-random"
    [video] = list((out / "videos").glob("*.json"))
    item = json.loads(video.read_text())["items"][0]
    assert isinstance(item["answer"], str)
    assert 0.0 <= item["J&F"] <= 1.0 and item["J&F"] == pytest.approx((item["J"] + item["F"]) / 2)


def test_predictor_answerer_reuses_the_encoding_and_returns_full_size_tracks(tiny_checkpoint, tmp_path):
    from sama_agent.evaluation.data import BenchData

    answerer = load_model_answerer(tiny_checkpoint)
    assert isinstance(answerer, PredictorAnswerer)
    data = BenchData(write_refvos(tmp_path / "rv"), "refvos")
    video = data.video(0)
    answerer.start(video, "0@0")
    context = answerer.predictor.context
    answerer.start(data.video(0), "0@1")  # same frames: the conversation resets, the encoding stays
    assert answerer.predictor.context is context and answerer.predictor.history == []
    first_predictor = answerer.predictor
    answer = answerer.ask("Please segment the red kite.", [])
    assert len(answer.tracks) == len(answer.phrases)
    for track in answer.tracks:
        assert (track.height, track.width) == (H, W) and set(track.frames) <= set(range(T))
    other = write_refvos(tmp_path / "rv2")
    answerer.start(BenchData(other, "refvos").video(0), "0@0")  # another video: a fresh predictor (and feature cache)
    assert answerer.predictor is not first_predictor and answerer.predictor.video.path == other / "videos" / "v0"
