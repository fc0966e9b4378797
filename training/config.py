"""Training configuration: one JSON file says everything a run does.

    {
      "name": "sama-tiny",
      "seed": 0,
      "out_dir": "runs/sama-tiny",
      "model": {"named": "sama-tiny", "overrides": {...}}      # or {"config": {SamaConfig fields}}
                                                              # or {"from_pretrained": "path/to/model", "overrides": {...}}
      "world": {"out_dir": "data/world", "seed": 0, "size": 128, "frames": [16, 32],
                "videos": {"train": 2000, "heldout": 100}},   # optional: generated first if missing
      "data": {DatasetConfig fields},                         # training data (training/datasets.py)
      "eval": {"every": 200, "max_samples": 32, "data": {DatasetConfig fields}},
      "optim": {"lr": 5e-4, "weight_decay": 0.01, "betas": [0.9, 0.95], "warmup_steps": 50,
                "min_lr_ratio": 0.1, "grad_clip": 1.0, "batch_size": 4},
      "max_steps": 2000,
      "phases": [                                             # curriculum, run in order
        {"name": "segmenter", "steps": 300, "model_phase": "mask_prompt",
         "turn_kinds": ["ground", "refer_ground"], "train": ["sam2.", "seg_head."]},
        {"name": "full", "steps": 1700}
      ],
      "log_every": 10, "checkpoint_every": 200, "keep_checkpoints": 2, "num_threads": null
    }

Relative paths are relative to the working directory the run starts in.
`max_steps` ends the run; phases fill it in order and the last phase takes
whatever the earlier ones leave, so `--max-steps` shortens or lengthens the
last phase (the learning-rate schedule follows it).
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..jsonfile import read_json
from .datasets import DatasetConfig


class ConfigError(ValueError):
    """A training config is malformed; the message names the option."""


def _from_dict(cls, data: Mapping[str, Any] | None, where: str):
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float | None = 1.0
    batch_size: int = 4  # samples per step on each process (gradients are accumulated)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.lr <= 0 or self.batch_size < 1 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("optim: need lr > 0, batch_size >= 1, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1.")


@dataclass
class PhaseConfig:
    """One curriculum stage.

    steps: optimizer steps in this phase (the last phase takes the remainder of max_steps).
    turn_kinds: train only on these turn kinds (null: all).
    model_phase: handed to the model's `set_training_phase(phase)` (e.g. "mask_prompt": the
        segmenter is prompted with boxes/masks from the ground truth; "seg": [SEG] prompts; "full").
    train / freeze: parameter-name prefixes trained / held fixed in this phase (train null: all
        trainable parameters). Parameters the model itself freezes are never trained.
    lr_scale: multiplies optim.lr; warmup_steps: overrides optim.warmup_steps for this phase.
    loss_weights: the model's loss weights in this phase, e.g. {"lm": 0.0}: handed to the model's
        `set_training_phase`, or else set as `model.config.<name>_loss_weight` (restored after the phase).
    objectives: what the phase optimises, name -> weight (training/objectives.py): "model" (the
        model's own loss, the default), "segmenter_prompts" (SAM2 from box / point prompts),
        "region_attributes" (the attribute heads on every labelled object, no LLM) and "cell_motion"
        (the key-frame cells' motion head).
    batch_size: samples per step on each process in this phase (null: optim.batch_size); a cheap
        objective can see more samples per step.
    prompts: options of the segmenter_prompts objective (training/objectives.py PromptOptions):
        {"kinds": [...], "frames": N} (null: its defaults).
    """

    name: str = "full"
    steps: int | None = None
    turn_kinds: list[str] | None = None
    model_phase: str | None = None
    train: list[str] | None = None
    freeze: list[str] = field(default_factory=list)
    lr_scale: float = 1.0
    warmup_steps: int | None = None
    loss_weights: dict | None = None
    objectives: dict | None = None
    batch_size: int | None = None
    prompts: dict | None = None

    def __post_init__(self):
        from .objectives import OBJECTIVES

        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"phase '{self.name}': batch_size must be a whole number >= 1 (or null for optim.batch_size), got {self.batch_size!r}.")

        self.objectives = dict(self.objectives or {"model": 1.0})
        unknown = sorted(set(self.objectives) - set(OBJECTIVES))
        if unknown:
            raise ConfigError(f"phase '{self.name}': unknown objective(s) {', '.join(unknown)}; known: {', '.join(OBJECTIVES)}.")
        if not any(self.objectives.values()):
            raise ConfigError(f"phase '{self.name}': every objective has weight 0.")
        self.prompt_options = self._prompt_options()

    def _prompt_options(self):
        from .objectives import PromptOptions

        if self.prompts is None:
            return None
        if not isinstance(self.prompts, dict):
            raise ConfigError(f"phase '{self.name}': prompts must be an object like {{\"kinds\": [\"where\", \"coarse_box\"], \"frames\": 2}}, got {self.prompts!r}.")
        if not self.objectives.get("segmenter_prompts"):
            raise ConfigError(f"phase '{self.name}': prompts configure the segmenter_prompts objective, which this phase does not use.")
        try:
            return _from_dict(PromptOptions, self.prompts, f"phase '{self.name}'.prompts")
        except ConfigError:
            raise
        except ValueError as exc:  # PromptOptions' own checks
            raise ConfigError(f"phase '{self.name}': {exc}.") from exc


@dataclass
class EvalConfig:
    """Held-out evaluation every `every` steps (0: only at the end; null data: none)."""

    every: int = 0
    max_samples: int = 32
    data: dict | None = None
    threshold: float = 0.0  # mask logits above this count as foreground


@dataclass
class WorldConfig:
    """Generate the synthetic world before training (skipped when its files exist)."""

    out_dir: str = "data/world"
    seed: int = 0
    size: int | list[int] = 128
    frames: int | list[int] = field(default_factory=lambda: [16, 32])
    objects: int | list[int] = field(default_factory=lambda: [2, 4])
    turns: int | list[int] = field(default_factory=lambda: [2, 5])
    videos: dict = field(default_factory=lambda: {"train": 1000, "heldout": 100})
    workers: int = 1


@dataclass
class TrainConfig:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs/run"
    model: dict = field(default_factory=dict)
    world: WorldConfig | None = None
    data: DatasetConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 1000
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    num_threads: int | None = None
    save_model: bool = True  # also write model.save_pretrained() into each checkpoint and final/

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> "TrainConfig":
        data = copy.deepcopy(dict(data))
        parts: dict[str, Any] = {}
        if data.get("world") is not None:
            parts["world"] = _from_dict(WorldConfig, data.pop("world"), f"{where}.world")
        else:
            data.pop("world", None)
        if data.get("data") is None:
            raise ConfigError(f"{where}: 'data' (the training dataset) is required.")
        try:
            parts["data"] = DatasetConfig.from_dict(data.pop("data"), where=f"{where}.data")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        parts["eval"] = _from_dict(EvalConfig, data.pop("eval", None), f"{where}.eval")
        if parts["eval"].data is not None:
            try:
                DatasetConfig.from_dict(parts["eval"].data, where=f"{where}.eval.data")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        parts["optim"] = _from_dict(OptimConfig, data.pop("optim", None), f"{where}.optim")
        phases = data.pop("phases", None) or [{}]
        parts["phases"] = [_from_dict(PhaseConfig, p, f"{where}.phases[{i}]") for i, p in enumerate(phases)]
        config = _from_dict(cls, {**data, **parts}, where)
        config.check(where)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        data = read_json(path, ConfigError, missing="no such training config file.")
        return cls.from_dict(data, where=str(path))

    def check(self, where: str = "config") -> None:
        if self.max_steps < 1:
            raise ConfigError(f"{where}.max_steps must be at least 1.")
        if self.log_every < 1 or self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError(f"{where}: log_every >= 1, checkpoint_every >= 0 and keep_checkpoints >= 1 are required.")
        if not self.model:
            raise ConfigError(f"{where}.model: say which model to train: {{'named': ...}}, {{'config': {{...}}}} or {{'from_pretrained': ...}}.")
        for i, phase in enumerate(self.phases[:-1]):
            if phase.steps is None or phase.steps < 1:
                raise ConfigError(f"{where}.phases[{i}].steps: every phase but the last needs a positive step count.")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def digest(self, ignore: tuple[str, ...] = ("max_steps", "out_dir", "eval", "log_every", "checkpoint_every", "keep_checkpoints", "num_threads")) -> str:
        """What a resumed run must share with the interrupted one."""
        data = {k: v for k, v in self.to_dict().items() if k not in ignore}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    # ---- the curriculum as step ranges ---------------------------------------------------
    def phase_bounds(self) -> list[tuple[int, int]]:
        """[start, end) step range of each phase; the last phase ends at max_steps.
        Phases that would start at or after max_steps get an empty range."""
        bounds, start = [], 0
        for index, phase in enumerate(self.phases):
            last = index == len(self.phases) - 1
            end = self.max_steps if last else min(self.max_steps, start + int(phase.steps))
            bounds.append((start, max(start, end)))
            start = max(start, end)
        return bounds

    def phase_at(self, step: int) -> int:
        for index, (start, end) in enumerate(self.phase_bounds()):
            if start <= step < end:
                return index
        return len(self.phases) - 1
