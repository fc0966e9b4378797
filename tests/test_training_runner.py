"""The training runner: schedule, sharding, checkpoints without pickle, exact resume, curriculum, evaluation.

`TinyGrounder` is a small real network with the SamaModel contract (forward(sample) -> .loss,
.pred_masks; save_pretrained; set_training_phase). It keeps these tests independent of the
model's own tests and fast; tests/test_training_sama.py runs the runner on SamaModel itself.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sama_agent.errors import CheckpointError
from sama_agent.training.config import ConfigError, TrainConfig
from sama_agent.training.runner import learning_rate, step_samples, train
from sama_agent.training.world import generate_world

TESTS = Path(__file__).parent


# ---- a small real model with the SamaModel contract -----------------------------------------------
@dataclass
class TinyOutput:
    loss: torch.Tensor
    mask_loss: torch.Tensor
    pred_masks: list


class TinyGrounder(nn.Module):
    """Hashed bag-of-words question embedding modulating a 3-layer CNN that predicts the [SEG] masks."""

    def __init__(self, dropout: float = 0.1, width: int = 16, step_delay: float = 0.0):
        super().__init__()
        self.words = nn.EmbeddingBag(256, width, mode="mean")
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(width, 1, 1))
        self.norm = nn.BatchNorm2d(width)  # a buffer-carrying layer: running stats must survive resume
        self.phases: list[str] = []
        self.step_delay = step_delay

    def set_training_phase(self, phase: dict) -> None:
        self.phases.append(phase["name"])

    def forward(self, sample) -> TinyOutput:
        if self.step_delay:
            time.sleep(self.step_delay)
        frames = torch.as_tensor(sample.frames).permute(0, 3, 1, 2).float() / 255
        features = self.norm(self.backbone(frames))
        losses, predictions = [], []
        for turn in sample.turns:
            ids = torch.tensor([[hash_word(w) for w in turn.question.lower().split()] or [0]])
            condition = self.words(ids)[0][None, :, None, None]
            logits = self.head(features * condition)[:, 0]  # (T, H, W)
            predictions.append(logits[None].expand(turn.seg_masks.shape[0], *logits.shape))
            for target in turn.seg_masks:
                losses.append(nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(target).float()))
        loss = torch.stack(losses).mean() if losses else features.sum() * 0
        return TinyOutput(loss, loss.detach(), predictions)

    def save_pretrained(self, folder) -> None:
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(folder) / "model.safetensors"))
        (Path(folder) / "config.json").write_text(json.dumps({"model_type": "tiny-grounder"}))


def hash_word(word: str) -> int:
    return sum(ord(c) * (i + 1) for i, c in enumerate(word)) % 256


def build_tiny(config: TrainConfig) -> TinyGrounder:
    return TinyGrounder(**config.model.get("options", {}))


# ---- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    generate_world(root, 16, "train", seed=2, size=32, frames=(6, 8), objects=(2, 2), turns=(2, 3))
    generate_world(root, 4, "heldout", seed=2, size=32, frames=(6, 8), objects=(2, 2), turns=(2, 3))
    return root


def make_config(world: Path, out: Path, **overrides) -> TrainConfig:
    data = {
        "name": "tiny",
        "seed": 3,
        "out_dir": str(out),
        "model": {"options": {"dropout": 0.1}},
        "data": {"root": str(world), "records": "train.json", "masks": "train_masks.json", "num_frames": 4, "sampling": "random"},
        "eval": {"every": 0, "max_samples": 4, "data": {"root": str(world), "records": "heldout.json", "masks": "heldout_masks.json", "num_frames": 4}},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "batch_size": 2},
        "max_steps": 10,
        "log_every": 1,
        "checkpoint_every": 4,
        "num_threads": 1,
    }
    data.update(overrides)
    return TrainConfig.from_dict(data)


def losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e and "event" not in e}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ---- schedule and sharding -------------------------------------------------------------------------
def test_learning_rate_warms_up_then_decays_per_phase(world, tmp_path):
    config = make_config(world, tmp_path, max_steps=100, optim={"lr": 1e-3, "warmup_steps": 10, "min_lr_ratio": 0.1},
                         phases=[{"name": "a", "steps": 40}, {"name": "b", "lr_scale": 0.5, "warmup_steps": 0}])
    assert config.phase_bounds() == [(0, 40), (40, 100)]
    rates = [learning_rate(config, s) for s in range(100)]
    assert rates[0] < rates[5] < rates[9] <= 1e-3
    assert rates[10] == pytest.approx(1e-3) and rates[39] == pytest.approx(1e-4, rel=0.2)
    assert all(a >= b for a, b in zip(rates[10:40], rates[11:40]))
    assert rates[40] == pytest.approx(5e-4) and rates[99] == pytest.approx(5e-5, rel=0.2)
    shorter = make_config(world, tmp_path, max_steps=30, phases=[{"name": "a", "steps": 40}, {"name": "b"}])
    assert shorter.phase_bounds() == [(0, 30), (30, 30)]


def test_processes_share_each_global_batch_without_overlap():
    for step in range(12):
        _, single = step_samples(25, 0, step, batch_size=4, world_size=1, rank=0, seed=9)
        _, left = step_samples(25, 0, step, batch_size=2, world_size=2, rank=0, seed=9)
        _, right = step_samples(25, 0, step, batch_size=2, world_size=2, rank=1, seed=9)
        assert left + right == single and not set(left) & set(right)
    epoch_zero = [i for s in range(6) for i in step_samples(25, 0, s, 4, 1, 0, 9)[1]]
    assert len(set(epoch_zero)) == 24 and step_samples(25, 0, 6, 4, 1, 0, 9)[0] == 1
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        step_samples(3, 0, 0, 2, 2, 0, 9)


# ---- a run, its files, and exact resume ------------------------------------------------------------
def test_run_writes_metrics_and_pickle_free_checkpoints(world, tmp_path):
    out = tmp_path / "run"
    summary = train(make_config(world, out, eval={"every": 5, "max_samples": 4, "data": {
        "root": str(world), "records": "heldout.json", "masks": "heldout_masks.json", "num_frames": 4}}), build=build_tiny, progress=False)
    assert summary["finished"] and summary["step"] == 10
    assert sorted(losses(out)) == list(range(1, 11))
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in entries if e.get("event") == "eval"]
    assert [e["step"] for e in evals] == [5, 10]
    assert 0 <= evals[-1]["eval_iou"] <= 1 and 0 <= evals[-1]["eval_jf"] <= 1 and evals[-1]["eval_segs"] > 0
    assert all("mask_loss" in e for e in entries if "loss" in e and "event" not in e)
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert checkpoints == ["step_0000008", "step_0000010"]  # keep_checkpoints=2 pruned step 4
    files = {p.name for p in (out / "checkpoints" / "step_0000010").rglob("*") if p.is_file()}
    assert {"trainable.safetensors", "optimizer.safetensors", "optimizer.json", "rng_rank0.safetensors", "trainer_state.json"} <= files
    assert all(name.endswith((".safetensors", ".json")) for name in files)
    assert (out / "final" / "model.safetensors").exists()


def test_stop_and_resume_reproduces_the_uninterrupted_run(world, tmp_path):
    straight = tmp_path / "straight"
    train(make_config(world, straight), build=build_tiny, progress=False)
    broken = tmp_path / "broken"
    first = train(make_config(world, broken), stop_after_step=6, build=build_tiny, progress=False)
    assert first["step"] == 6 and not first["finished"]
    assert sorted(losses(broken)) == list(range(1, 7))
    train(make_config(world, broken), resume=True, build=build_tiny, progress=False)
    expected, got = losses(straight), losses(broken)
    assert sorted(got) == sorted(expected) == list(range(1, 11))
    assert np.allclose([got[s] for s in expected], list(expected.values()), rtol=0, atol=1e-6)
    for name, tensor in weights(straight / "final").items():
        assert torch.allclose(tensor, weights(broken / "final")[name], atol=1e-6), name


def _subprocess_train(world: Path, out: Path, steps: int, delay: float) -> subprocess.Popen:
    script = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_training_runner import build_tiny, make_config
from sama_agent.training.runner import train
from pathlib import Path
config = make_config(Path({str(world)!r}), Path({str(out)!r}), max_steps={steps}, checkpoint_every=3,
                     model={{"options": {{"dropout": 0.1, "step_delay": {delay}}}}})
train(config, build=build_tiny, progress=False)
"""
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pointer = out / "checkpoints" / "latest"
    while time.monotonic() < deadline:
        if pointer.exists() and int(pointer.read_text().strip().split("_")[1]) >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"training exited early:\n{process.stdout.read()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("no checkpoint appeared in time")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_onto_the_same_curve(world, tmp_path, how):
    steps, delay = 14, 0.05
    straight = tmp_path / "straight"
    train(make_config(world, straight, max_steps=steps, checkpoint_every=3, model={"options": {"dropout": 0.1, "step_delay": 0.0}}),
          build=build_tiny, progress=False)
    killed = tmp_path / "killed"
    process = _subprocess_train(world, killed, steps, delay)
    _wait_for_checkpoint(killed, process, at_least=6)
    os.kill(process.pid, how)
    process.wait(timeout=60)
    assert not (killed / "final").exists(), "the run finished before it could be interrupted"
    if how == signal.SIGTERM:  # graceful: it checkpoints the step it was on and says why it stopped
        events = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
        assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "signal"
    train(make_config(world, killed, max_steps=steps, checkpoint_every=3, model={"options": {"dropout": 0.1, "step_delay": delay}}),
          resume=True, build=build_tiny, progress=False)
    expected, got = losses(straight), losses(killed)
    assert sorted(got) == list(range(1, steps + 1))
    assert np.allclose([got[s] for s in expected], list(expected.values()), rtol=0, atol=1e-6)


def test_resume_refuses_a_changed_config_and_a_fresh_start_refuses_an_existing_run(world, tmp_path):
    out = tmp_path / "run"
    train(make_config(world, out), stop_after_step=4, build=build_tiny, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(make_config(world, out), build=build_tiny, progress=False)
    with pytest.raises(CheckpointError, match="different config"):
        train(make_config(world, out, optim={"lr": 1e-2, "batch_size": 2}), resume=True, build=build_tiny, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(make_config(world, tmp_path / "empty"), resume=True, build=build_tiny, progress=False)


# ---- curriculum and data problems ------------------------------------------------------------------
def test_curriculum_phases_train_chosen_parts_on_chosen_turns(world, tmp_path):
    out = tmp_path / "curriculum"
    config = make_config(world, out, max_steps=6, phases=[
        {"name": "head-only", "steps": 3, "train": ["head"], "turn_kinds": ["ground", "refer_ground"]},
        {"name": "all"}])
    model_holder = {}

    def build(config):
        model_holder["model"] = build_tiny(config)
        model_holder["start"] = {k: v.clone() for k, v in model_holder["model"].state_dict().items()}
        return model_holder["model"]

    train(config, stop_after_step=3, build=build, progress=False)
    model = model_holder["model"]
    assert model.phases == ["head-only"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, model_holder["start"][k]) and "running" not in k and "tracked" not in k}
    assert changed and all(k.startswith("head.") for k in changed)
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    data_event = next(e for e in entries if e.get("event") == "data")
    assert data_event["phase"] == "head-only" and data_event["records"] <= 16
    train(config, resume=True, build=build, progress=False)
    assert model_holder["model"].phases == ["all"]


def test_a_phase_can_draw_its_own_batch_size(world, tmp_path):
    config = make_config(world, tmp_path / "wide", max_steps=3, phases=[{"name": "wide", "steps": 2, "batch_size": 5}, {"name": "rest"}])
    seen = []

    def build(config):
        model = build_tiny(config)
        forward = model.forward
        model.forward = lambda sample: (model.training and seen.append((model.phases[-1], sample.video_id)), forward(sample))[1]
        return model

    train(config, build=build, progress=False)
    assert [phase for phase, _ in seen] == ["wide"] * 10 + ["rest"] * 2  # 5 a step in the wide phase, then optim's 2 (evaluation not counted)
    assert len({video for phase, video in seen[:5]}) == 5  # five different samples in one step
    with pytest.raises(ConfigError, match="phase 'wide': batch_size must be a whole number >= 1"):
        make_config(world, tmp_path / "bad", phases=[{"name": "wide", "batch_size": 0}])



def test_a_phase_configures_its_segmenter_prompts(world, tmp_path):
    objectives = {"segmenter_prompts": 1.0}
    config = make_config(world, tmp_path / "ok", phases=[{"name": "outline", "objectives": objectives, "prompts": {"kinds": ["where", "coarse_box"], "frames": 2}}])
    options = config.phases[0].prompt_options
    assert options.kinds == ["where", "coarse_box"] and options.frames == 2
    assert config.to_dict()["phases"][0]["prompts"] == {"kinds": ["where", "coarse_box"], "frames": 2}  # saved with the run
    with pytest.raises(ConfigError, match="phase 'outline': prompt kinds must be a non-empty list from box, points, where, coarse_box"):
        make_config(world, tmp_path / "bad", phases=[{"name": "outline", "objectives": objectives, "prompts": {"kinds": ["lasso"]}}])
    with pytest.raises(ConfigError, match=r"phase 'outline'\.prompts: unknown option\(s\) count; known: frames, kinds\."):
        make_config(world, tmp_path / "bad", phases=[{"name": "outline", "objectives": objectives, "prompts": {"count": 3}}])
    with pytest.raises(ConfigError, match="phase 'talk': prompts configure the segmenter_prompts objective, which this phase does not use"):
        make_config(world, tmp_path / "bad", phases=[{"name": "talk", "prompts": {"frames": 2}}])


def test_invalid_records_are_counted_in_the_log_when_skipped(world, tmp_path):
    broken_world = tmp_path / "world"
    import shutil

    shutil.copytree(world, broken_world)
    records = json.loads((broken_world / "train.json").read_text())
    records[0]["groundtruth"] = records[0]["groundtruth"][:-1]
    records[5]["conversation"][1]["from"] = "human"
    (broken_world / "train.json").write_text(json.dumps(records))
    config = make_config(broken_world, tmp_path / "run", max_steps=2)
    with pytest.raises(Exception, match=r"train\.json, record 0, field groundtruth"):
        train(config, build=build_tiny, progress=False)
    config.data.on_error = "skip"
    summary = train(make_config(broken_world, tmp_path / "run2", max_steps=2, data={**json.loads(json.dumps(config.to_dict()["data"]))}),
                    build=build_tiny, progress=False)
    assert summary["skipped_records"] == 2
    data_event = next(json.loads(line) for line in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines() if '"data"' in line)
    assert data_event["skipped"] == 2 and data_event["records"] == 14
    assert any("record 5" in reason for reason in data_event["first_skipped"])


@pytest.mark.parametrize("recipe", sorted(Path(__file__).resolve().parents[1].glob("training/configs/*.json")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses_and_names_a_valid_model(recipe):
    from sama_agent.model.configuration import SamaConfig
    from sama_agent.training.world import COLOURS, MOTIONS, SHAPES, TEXTURES

    config = TrainConfig.from_file(recipe)
    spec = config.model
    world_values = {"colour": list(COLOURS), "shape": list(SHAPES), "texture": list(TEXTURES), "motions": list(MOTIONS)}
    if "named" in spec:
        model = SamaConfig.from_named(spec["named"], **spec.get("overrides", {}))
        for attribute in model.region_attributes.values():  # heads name the world's own words, plus an absent value
            absent = [attribute["absent"]] if "absent" in attribute else []
            assert attribute["values"] == world_values[attribute["field"]] + absent
