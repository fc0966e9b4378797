"""The runner on the real SamaModel (a tiny config): curriculum, held-out evaluation, save_pretrained, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sama_agent.training.config import TrainConfig
from sama_agent.training.runner import train
from sama_agent.training.world import generate_world

TINY_MODEL = {
    "encoder": "vit-tiny", "encoder_options": {"image_size": 64, "patch_size": 16, "dim": 32, "depth": 1, "heads": 2},
    "llm": "qwen2-tiny",
    "llm_options": {"vocab": "world", "hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1, "intermediate_size": 64},
    "aggregator_options": {"dim": 32, "heads": 2},
    "sam2_options": {"image_size": 64, "trunk": "cnn", "pretrained_trunk": False, "cnn_channels": [8, 16, 32, 64]},
    "num_context_frames": 4, "num_key_frames": 1, "mask_points": 64,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, 6, "train", seed=4, size=64, frames=(6, 8), objects=(2, 2), turns=(2, 3))
    generate_world(root, 2, "heldout", seed=4, size=64, frames=(6, 8), objects=(2, 2), turns=(2, 3))
    return root


def config(world, out) -> TrainConfig:
    data = lambda split: {"root": str(world), "records": f"{split}.json", "masks": f"{split}_masks.json", "num_frames": 4}  # noqa: E731
    return TrainConfig.from_dict({
        "name": "sama-test", "seed": 1, "out_dir": str(out),
        "model": {"config": TINY_MODEL},
        "data": {**data("train"), "sampling": "random"},
        "eval": {"every": 0, "max_samples": 2, "data": data("heldout")},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "batch_size": 1},
        "max_steps": 4, "log_every": 1, "checkpoint_every": 2, "num_threads": 1,
        "phases": [
            {"name": "segmenter", "steps": 2, "objectives": {"segmenter_prompts": 1.0}, "train": ["sam2"]},
            {"name": "full", "turn_kinds": ["ground", "refer_ground", "refer", "identify", "followup_colour", "followup_shape"]},
        ],
    })


def step_losses(out) -> dict[int, float]:
    entries = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return {e["step"]: e["loss"] for e in entries if "loss" in e and "event" not in e}


def test_sama_model_trains_evaluates_saves_and_resumes_exactly(world, tmp_path):
    from sama_agent.model.modeling.sama import SamaModel
    from sama_agent.training.runner import build_model

    straight = tmp_path / "straight"
    summary = train(config(world, straight), progress=False)
    assert summary["finished"]
    entries = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    trained = {e["step"]: e for e in entries if "loss" in e and "event" not in e}
    assert "prompt_bce_loss" in trained[1] and "lm_loss" not in trained[1]  # segmenter phase: prompts only
    assert {"lm_loss", "bce_loss", "dice_loss"} <= set(trained[4])
    evaluation = summary["eval"]
    assert {"eval_loss", "eval_iou", "eval_jf", "eval_box_iou"} <= set(evaluation)
    assert 0 <= evaluation["eval_jf"] <= 1 and 0 <= evaluation["eval_box_iou"] <= 1
    reloaded = SamaModel.from_pretrained(straight / "final")
    assert len(reloaded.llm.tokenizer) > 90  # the world vocabulary went into the saved tokenizer
    fine_tune = config(world, tmp_path / "fine-tune")
    fine_tune.model = {"from_pretrained": str(straight / "final"), "overrides": {"max_new_tokens": 7}}
    assert build_model(fine_tune).config.max_new_tokens == 7  # a fine-tune may change settings of the saved model

    resumed = tmp_path / "resumed"
    first = train(config(world, resumed), stop_after_step=3, progress=False)
    assert first["step"] == 3
    train(config(world, resumed), resume=True, progress=False)
    expected, got = step_losses(straight), step_losses(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    assert np.allclose([got[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)], rtol=0, atol=1e-5)


def test_train_command_runs_the_smoke_config_from_scratch(tmp_path, monkeypatch):
    """`sama-agent train --config training/configs/smoke.json`: generates its world, trains, evaluates, checkpoints."""
    from pathlib import Path

    from click.testing import CliRunner

    from sama_agent.training.cli import train_command

    smoke = Path(__file__).parents[1] / "training" / "configs" / "smoke.json"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(train_command, ["--config", str(smoke), "--max-steps", "3", "--out", "runs/smoke", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["finished"] and summary["step"] == 3
    assert (tmp_path / "data" / "world-smoke" / "train.json").exists()
    assert (tmp_path / "runs" / "smoke" / "final" / "config.json").exists()
    again = CliRunner().invoke(train_command, ["--config", str(smoke), "--max-steps", "3", "--out", "runs/smoke"])
    assert again.exit_code != 0 and "--resume" in again.output
    missing = CliRunner().invoke(train_command, ["--config", "nope.json"])
    assert missing.exit_code != 0 and "no such training config" in missing.output
