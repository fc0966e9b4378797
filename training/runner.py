"""The training runner, readable top to bottom.

    sama-agent train --config training/configs/sama-tiny.json [--resume] [--max-steps N] [--out DIR]
    torchrun --nproc_per_node 2 -m sama_agent.training --config ...      # data parallel on CPU (gloo)

One step: every process draws `batch_size` samples (the phase's, else optim's) of
the step's global batch, computes the phase's objectives on each
(training/objectives.py: the model's own loss, SAM2 box/point-prompt pretraining,
the attribute heads alone) and accumulates gradients; the
processes average their gradients (one all-reduce), clip, and take an AdamW
step with warm-up + cosine learning rate (restarted per curriculum phase). The
step's samples depend only on (seed, phase, step), never on what ran before,
so a resumed run reads exactly the data the interrupted one would have.

A checkpoint (every `checkpoint_every` steps, on SIGTERM / first Ctrl-C, and at
the end) holds, without pickle: trained weights and buffers (safetensors), the
model in `save_pretrained` form, AdamW moments (safetensors) with its scalars
(JSON), each process's torch / numpy / Python RNG state, and the step.
`--resume` restores all of it and continues as if never stopped.

The model contract: `model(sample: ConversationSample)` returns an object with a
scalar `.loss`; other scalars named `*loss*` (or a `losses` dict) are logged.
Optional: `model.set_training_phase(phase: dict)` is called at the start of every
curriculum phase (else phase `loss_weights` set `model.config.<name>_loss_weight`);
`output.pred_masks` (per turn, (S, T, H, W) logits) or SamaModel's
`output.mask_logits` (key frames) let the held-out evaluation score grounding
IoU and J&F; a `model.sam2` segmenter also gets a box-prompt IoU.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError
from .config import ConfigError, PhaseConfig, TrainConfig
from .datasets import DatasetConfig, SamaDataset
from .objectives import box_prompt_iou, combined_loss, has_segmenter

logger = logging.getLogger("sama_agent.training")
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"


# =============================================================================
# processes
# =============================================================================
def setup_distributed() -> tuple[int, int]:
    """(rank, world_size); joins the torchrun process group (gloo) when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world_size


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_named(values: dict[str, float]) -> dict[str, float]:
    """Sum named values over processes. Processes may name different values (one clip had a [SEG] to
    score, another none): a name a process lacks counts as 0 there, so the all-reduce always agrees in size."""
    if not dist.is_initialized():
        return dict(values)
    names = sorted(set().union(*_all_gather_json(sorted(values))))
    return dict(zip(names, all_reduce_sum([values.get(name, 0.0) for name in names])))


def _all_gather_json(value) -> list:
    """Every process's JSON-able `value` (no pickle between processes either)."""
    data = torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)
    longest = torch.tensor([data.numel()])
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    padded = torch.cat([data, torch.full((int(longest) - data.numel(),), ord(" "), dtype=torch.uint8)])
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, padded)
    return [json.loads(bytes(t.tolist()).decode()) for t in gathered]


def sync_buffers(model: nn.Module, world_size: int) -> None:
    """Every process takes rank 0's buffers (e.g. norm running statistics), as DDP does."""
    if world_size > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Data-parallel gradient averaging in one all-reduce. A parameter with no gradient on some
    process counts as zero there; one with no gradient anywhere keeps none (AdamW skips it)."""
    if world_size == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params])
    flat = torch.cat([g.reshape(-1) for g in grads] + [present])
    dist.all_reduce(flat)
    offset = 0
    for param, count in zip(params, flat[-len(params):].tolist()):
        size = param.numel()
        param.grad = flat[offset:offset + size].view_as(param) / world_size if count > 0 else None
        offset += size


# =============================================================================
# model
# =============================================================================
def build_model(config: TrainConfig) -> nn.Module:
    """A SamaModel from its SamaConfig (whose parts the plugin host builds)."""
    from ..model.configuration import SamaConfig
    from ..model.modeling.sama import SamaModel

    spec = _with_world_vocabulary(dict(config.model))
    if "from_pretrained" in spec:
        return SamaModel.from_pretrained(spec["from_pretrained"], **spec.get("overrides", {}))
    if "named" in spec:
        sama_config = SamaConfig.from_named(spec["named"], **spec.get("overrides", {}))
    elif "config" in spec:
        sama_config = SamaConfig.from_dict(spec["config"], **spec.get("overrides", {}))
    elif "config_file" in spec:
        sama_config = SamaConfig.from_json_file(spec["config_file"], **spec.get("overrides", {}))
    else:
        raise ConfigError("model: give 'named', 'config', 'config_file' or 'from_pretrained'.")
    return SamaModel(sama_config)


def _with_world_vocabulary(spec: dict) -> dict:
    """`"llm_options": {"vocab": "world"}` stands for every word the synthetic world can write,
    so a word-level LLM's vocabulary never depends on which videos were generated."""
    import copy

    spec = copy.deepcopy(spec)
    for options in (spec.get("config", {}).get("llm_options"), spec.get("overrides", {}).get("llm_options")):
        if isinstance(options, dict) and options.get("vocab") == "world":
            from ..model.modeling.llm import build_word_vocab
            from .world.language import world_texts

            options["vocab"] = build_word_vocab(world_texts())
    return spec


def _matches(name: str, prefixes) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def apply_phase(model: nn.Module, trainable: dict[str, nn.Parameter], phase: PhaseConfig) -> list[str]:
    """Set which trainable parameters learn in this phase; tell the model about the phase."""
    active = []
    for name, param in trainable.items():
        on = (phase.train is None or _matches(name, phase.train)) and not _matches(name, phase.freeze)
        param.requires_grad_(on)
        if on:
            active.append(name)
    if not active:
        raise ConfigError(f"phase '{phase.name}' trains no parameter: check its train / freeze prefixes.")
    if hasattr(model, "set_training_phase"):
        model.set_training_phase(asdict(phase))
    else:
        _set_loss_weights(model, phase.loss_weights or {})
    return active


def _set_loss_weights(model: nn.Module, weights: dict) -> None:
    """Phase loss weights as `model.config.<name>_loss_weight`, the model's own values outside them."""
    config = getattr(model, "config", None)
    if config is None:
        if weights:
            raise ConfigError("phase loss_weights need a model with set_training_phase() or a config with *_loss_weight fields.")
        return
    defaults = model.__dict__.setdefault("_runner_loss_weights", {k: v for k, v in vars(config).items() if k.endswith("_loss_weight")})
    for key, value in defaults.items():
        setattr(config, key, value)
    for name, value in weights.items():
        key = name if name.endswith("_loss_weight") else f"{name}_loss_weight"
        if key not in defaults:
            raise ConfigError(f"loss weight '{name}' is not one of the model's: {', '.join(sorted(defaults))}.")
        setattr(config, key, float(value))


def loss_parts(output) -> dict[str, float]:
    """Scalar loss terms an output carries besides `.loss`, for the log."""
    if isinstance(output, Mapping):
        items = dict(output)
    elif hasattr(output, "__dict__"):
        items = dict(vars(output))
    else:
        items = {}
    for key in ("losses", "parts"):
        if isinstance(items.get(key), Mapping):
            items.update({f"{k}" if "loss" in str(k) else f"{k}_loss": v for k, v in items.pop(key).items()})
    parts = {}
    for key, value in items.items():
        if key == "loss" or "loss" not in key:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            parts[key] = float(value.detach())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts[key] = float(value)
    return parts


# =============================================================================
# data
# =============================================================================
def phase_dataset_config(config: TrainConfig, phase: PhaseConfig) -> DatasetConfig:
    if phase.turn_kinds is None:
        return config.data
    return replace(config.data, turn_kinds=list(phase.turn_kinds))


def step_samples(num_samples: int, phase_index: int, phase_step: int, batch_size: int, world_size: int, rank: int, seed: int) -> tuple[int, list[int]]:
    """(epoch, this process's sample indices) for a step: a fresh permutation per (seed, phase, epoch),
    cut into global batches; process r takes the r-th slice (DistributedSampler-style, no padding)."""
    per_step = batch_size * world_size
    steps_per_epoch = num_samples // per_step
    if steps_per_epoch == 0:
        raise ConfigError(f"the dataset has {num_samples} samples, fewer than one global batch ({batch_size} x {world_size} processes).")
    epoch, within = divmod(phase_step, steps_per_epoch)
    order = np.random.default_rng([seed, phase_index, epoch]).permutation(num_samples)
    chunk = order[within * per_step:(within + 1) * per_step]
    return epoch, [int(i) for i in chunk[rank * batch_size:(rank + 1) * batch_size]]


def ensure_world(config: TrainConfig, rank: int) -> None:
    """Generate the configured synthetic world once (rank 0), unless it is already on disk."""
    world = config.world
    if world is None:
        return
    if rank == 0:
        from .world import generate_world

        for split, count in world.videos.items():
            manifest = Path(world.out_dir) / f"{split}_manifest.json"
            wanted = {"seed": world.seed, "num_videos": int(count)}
            if manifest.exists():
                found = json.loads(manifest.read_text())
                if any(found.get(k) != v for k, v in wanted.items()):
                    raise ConfigError(
                        f"{manifest} was generated with seed {found.get('seed')} and {found.get('num_videos')} videos, the config asks "
                        f"for seed {world.seed} and {count}; delete {world.out_dir} or point world.out_dir elsewhere."
                    )
                continue
            logger.info("generating %d %s videos in %s", count, split, world.out_dir)
            generate_world(world.out_dir, int(count), split, world.seed, world.size, world.frames,
                           objects=world.objects, turns=world.turns, workers=world.workers, progress=True)
    barrier()


# =============================================================================
# optimizer and learning rate
# =============================================================================
def make_optimizer(trainable: dict[str, nn.Parameter], optim) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW; matrices decay, vectors (biases, norms, embeddings' scales) do not. Returns the
    optimizer and the parameter names in the optimizer's own index order."""
    decay = [n for n, p in trainable.items() if p.dim() >= 2]
    no_decay = [n for n, p in trainable.items() if p.dim() < 2]
    groups = [
        {"params": [trainable[n] for n in decay], "weight_decay": optim.weight_decay},
        {"params": [trainable[n] for n in no_decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, foreach=False)
    return optimizer, decay + no_decay


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio, restarted in each phase."""
    index = config.phase_at(step)
    phase = config.phases[index]
    start, end = config.phase_bounds()[index]
    peak = config.optim.lr * phase.lr_scale
    floor = peak * config.optim.min_lr_ratio
    warmup = config.optim.warmup_steps if phase.warmup_steps is None else phase.warmup_steps
    warmup = min(warmup, max(0, end - start - 1))
    i = step - start
    if i < warmup:
        return peak * (i + 1) / (warmup + 1)
    progress = (i - warmup) / max(1, end - start - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


# =============================================================================
# checkpoints (no pickle anywhere)
# =============================================================================
def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from ..model.checkpoint import save_safetensors

    save_safetensors(tensors, path)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from ..model.checkpoint import read_safetensors

    return read_safetensors(path)


def save_checkpoint(folder: Path, model: nn.Module, trainable: dict[str, nn.Parameter], optimizer, names: list[str],
                    state: dict, rank: int, save_model: bool) -> None:
    """Write one checkpoint into `folder` (every process writes its RNG; rank 0 the rest)."""
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    _save_tensors({"torch": torch_state, "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64))}, folder / f"rng_rank{rank}.safetensors")
    (folder / f"rng_rank{rank}.json").write_text(json.dumps({
        "numpy": [numpy_state[0], int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }))
    if rank != 0:
        return
    buffers = {n for n, _ in model.named_buffers()}
    weights = {k: v for k, v in model.state_dict().items() if k in trainable or k in buffers}
    _save_tensors(weights, folder / "trainable.safetensors")
    optimizer_state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{names[index]}::{key}"] = value
            else:
                scalars[f"{names[index]}::{key}"] = value
    _save_tensors(tensors, folder / "optimizer.safetensors")
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"} | {"params": [names[i] for i in g["params"]]}
              for g in optimizer_state["param_groups"]]
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": groups, "scalars": scalars}, indent=1))
    if save_model and hasattr(model, "save_pretrained"):
        model.save_pretrained(folder / "model")
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))


def load_checkpoint(folder: Path, model: nn.Module, trainable: dict[str, nn.Parameter], optimizer, names: list[str], rank: int) -> dict:
    """Restore weights, AdamW state and this process's RNG from `folder`; returns the trainer state."""
    state = json.loads((folder / STATE_FILE).read_text())
    weights = _load_tensors(folder / "trainable.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    frozen = set(model.state_dict()) - set(trainable) - {n for n, _ in model.named_buffers()}
    if unexpected or set(missing) - frozen:
        raise CheckpointError(
            f"{folder}: the checkpoint does not fit the model (missing {sorted(set(missing) - frozen)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}). Resume with the config the run was started with."
        )
    index = {name: i for i, name in enumerate(names)}
    saved = json.loads((folder / "optimizer.json").read_text())
    optimizer_state: dict = {"state": {}, "param_groups": []}
    for key, value in _load_tensors(folder / "optimizer.safetensors").items():
        name, field_name = key.rsplit("::", 1)
        optimizer_state["state"].setdefault(index[name], {})[field_name] = value
    for key, value in saved["scalars"].items():
        name, field_name = key.rsplit("::", 1)
        optimizer_state["state"].setdefault(index[name], {})[field_name] = value
    for group in saved["param_groups"]:
        group = dict(group)
        group["params"] = [index[n] for n in group["params"]]
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        optimizer_state["param_groups"].append(group)
    optimizer.load_state_dict(optimizer_state)
    rng_file = folder / f"rng_rank{rank}.safetensors"
    if not rng_file.exists():
        raise CheckpointError(f"{folder}: no RNG state for process {rank}; resume with the number of processes the run used.")
    rng = _load_tensors(rng_file)
    rng_json = json.loads((folder / f"rng_rank{rank}.json").read_text())
    torch.set_rng_state(rng["torch"])
    kind, position, has_gauss, cached = rng_json["numpy"]
    np.random.set_state((kind, rng["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = rng_json["python"]
    random.setstate((version, tuple(internal), gauss))
    return state


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / LATEST_FILE
    if not pointer.exists():
        return None
    folder = out_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / STATE_FILE).exists() else None


def _publish_checkpoint(out_dir: Path, scratch: Path, step: int, keep: int) -> Path:
    """Make a fully written checkpoint visible atomically, then drop the oldest beyond `keep`."""
    root = out_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)
    pointer = root / (LATEST_FILE + ".tmp")
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST_FILE)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


# =============================================================================
# held-out evaluation
# =============================================================================
@contextmanager
def _rng_untouched():
    """Evaluation must not change the training run's random streams."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def predicted_masks(model: nn.Module, sample, output) -> list[tuple[np.ndarray, list[int]]] | None:
    """Per turn: ((S, F, H, W) mask logits for the turn's [SEG] targets, the F frame positions they are on).

    Read from `output.pred_masks` (per turn, (S, T, H, W) on every sampled frame) or, for SamaModel,
    from `output.mask_logits` (per sample, (S_all, K, 1, h, w) on its key frames, teacher-forced)."""
    import torch.nn.functional as F

    height, width = sample.frames.shape[1:3]
    everything = list(range(len(sample.frames)))
    per_turn = getattr(output, "pred_masks", None)
    if per_turn is not None:
        return [(torch.as_tensor(p).float(), everything) for p in per_turn]
    logits = getattr(output, "mask_logits", None)
    if logits is None or not hasattr(model, "frame_positions"):
        return None
    context, keys = model.frame_positions(len(sample.frames))
    positions = [context[k] for k in keys]
    counts = [t.seg_masks.shape[0] for t in sample.turns]
    stacked = logits[0] if logits and logits[0] is not None else torch.zeros(0, len(positions), 1, 1, 1)
    stacked = stacked.reshape(-1, len(positions), *stacked.shape[-2:]).float()
    if stacked.shape[0]:
        stacked = F.interpolate(stacked, size=(height, width), mode="bilinear", align_corners=False)
    turns, start = [], 0
    for count in counts:
        turns.append((stacked[start:start + count], positions))
        start += count
    return turns


def evaluate(model: nn.Module, dataset: SamaDataset, max_samples: int, threshold: float, rank: int, world_size: int) -> dict:
    """Held-out loss; grounding IoU and J&F per [SEG] (all, and "segment the ..." turns alone) on the frames
    the model predicts; and, for a model with a SAM2 segmenter, IoU from ground-truth box prompts."""
    import torch.nn.functional as F

    from ..evaluation.metrics import j_and_f, volume_iou

    keys = ("loss", "samples", "iou", "jf", "segs", "jf_ground", "segs_ground", "box_iou", "boxes")
    totals = dict.fromkeys(keys, 0.0)
    was_training = model.training
    model.eval()
    with _rng_untouched(), torch.no_grad():
        for index in range(rank, min(max_samples, len(dataset)), world_size):
            sample = dataset.sample(index)
            output = model(sample)
            totals["loss"] += float(output.loss.detach()) if output.loss is not None else 0.0
            totals["samples"] += 1
            predictions = predicted_masks(model, sample, output)
            if has_segmenter(model):
                context, key_positions = model.frame_positions(len(sample.frames)) if hasattr(model, "frame_positions") else (list(range(len(sample.frames))), None)
                frames = [context[k] for k in key_positions] if key_positions is not None else context
                scores = box_prompt_iou(model, sample, frames)
                totals["box_iou"] += sum(scores)
                totals["boxes"] += len(scores)
            if predictions is None:
                continue
            kinds = sample.meta.get("turn_kinds", [""] * len(sample.turns))
            for turn, kind, (logits, positions) in zip(sample.turns, kinds, predictions):
                for s in range(turn.seg_masks.shape[0]):
                    truth = turn.seg_masks[s][positions]
                    guess = logits[s]
                    if tuple(guess.shape[-2:]) != truth.shape[-2:]:
                        guess = F.interpolate(guess[:, None], size=truth.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                    guess = (guess > threshold).numpy()
                    jf = j_and_f(guess, truth).mean_jf
                    totals["iou"] += volume_iou(guess, truth)
                    totals["jf"] += jf
                    totals["segs"] += 1
                    if kind in ("ground", "ground_multi"):
                        totals["jf_ground"] += jf
                        totals["segs_ground"] += 1
    model.train(was_training)
    totals = dict(zip(keys, all_reduce_sum([totals[k] for k in keys])))
    result = {"eval_loss": totals["loss"] / max(1, totals["samples"]), "eval_samples": int(totals["samples"])}
    if totals["segs"]:
        result.update(eval_iou=totals["iou"] / totals["segs"], eval_jf=totals["jf"] / totals["segs"], eval_segs=int(totals["segs"]))
    if totals["segs_ground"]:
        result["eval_jf_ground"] = totals["jf_ground"] / totals["segs_ground"]
    if totals["boxes"]:
        result["eval_box_iou"] = totals["box_iou"] / totals["boxes"]
    return result


# =============================================================================
# metrics log
# =============================================================================
class MetricsLog:
    """metrics.jsonl: one JSON object per line; only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **entry) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop entries after `step` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.exists():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in lines))


# =============================================================================
# the run
# =============================================================================
def train(config: TrainConfig, *, resume: bool = False, max_steps: int | None = None, out_dir: str | Path | None = None,
          stop_after_step: int | None = None, build: Callable[[TrainConfig], nn.Module] | None = None,
          progress: bool = True) -> dict:
    """Train as the config says; returns a summary (steps done, last loss, last evaluation, data counts).

    max_steps overrides the config's run length (the last phase and its schedule adapt);
    stop_after_step stops early with a checkpoint, as an interruption would (the schedule does not change);
    build makes the model from the config (default: SamaModel).
    """
    if max_steps is not None:
        config = replace(config, max_steps=int(max_steps))
    if out_dir is not None:
        config = replace(config, out_dir=str(out_dir))
    config.check()
    rank, world_size = setup_distributed()
    torch.set_num_threads(config.num_threads or max(1, (os.cpu_count() or 1) // world_size))
    out = Path(config.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and latest_checkpoint(out) is not None:
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    barrier()
    log = MetricsLog(out / "metrics.jsonl", rank == 0)
    ensure_world(config, rank)

    # ---- model, identical on every process -----------------------------------------------
    _seed_everything(config.seed)
    model = (build or build_model)(config)
    model.train()
    if world_size > 1:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ConfigError("the model has no trainable parameter (everything is frozen).")
    optimizer, names = make_optimizer(trainable, config.optim)
    _seed_everything(config.seed + 1 + rank)  # each process's own stream for dropout, point sampling, ...

    # ---- resume ----------------------------------------------------------------------------
    step = 0
    if resume:
        folder = latest_checkpoint(out)
        if folder is None:
            raise CheckpointError(f"--resume: {out} holds no checkpoint to continue from. Start without --resume.")
        state = load_checkpoint(folder, model, trainable, optimizer, names, rank)
        _check_resumable(state, config, world_size, folder)
        step = int(state["step"])
        log.keep_until(step)
        if rank == 0:
            logger.info("resuming from %s at step %d", folder, step)

    # ---- data -------------------------------------------------------------------------------
    datasets: dict[str, SamaDataset] = {}

    def dataset_for(phase: PhaseConfig) -> SamaDataset:
        data_config = phase_dataset_config(config, phase)
        key = json.dumps(asdict(data_config), sort_keys=True)
        if key not in datasets:
            datasets[key] = SamaDataset(data_config, seed=config.seed)
            report = datasets[key].report()
            log.write(event="data", step=step, phase=phase.name, **report)
            if report["skipped"]:
                logger.warning("%s: %d invalid record(s) skipped; first: %s", phase.name, report["skipped"], report["first_skipped"][0])
        return datasets[key]

    eval_set = SamaDataset(DatasetConfig.from_dict(config.eval.data), seed=config.seed) if config.eval.data else None
    if eval_set is not None and eval_set.skipped:
        logger.warning("evaluation data: %d invalid record(s) skipped", len(eval_set.skipped))

    # ---- stop cleanly on SIGTERM: finish the step, checkpoint, exit -------------------------
    stop_requested = {"flag": False}

    def request_stop(signum, _frame):
        stop_requested["flag"] = True
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    bar = _progress_bar(config.max_steps, step, rank == 0 and progress)
    phase_index, active, last_eval, summary_loss = -1, [], {}, None
    bounds = config.phase_bounds()
    try:
        while step < config.max_steps:
            if config.phase_at(step) != phase_index:
                phase_index = config.phase_at(step)
                active = apply_phase(model, trainable, config.phases[phase_index])
                active_params = [trainable[n] for n in active]
                log.write(event="phase", step=step, phase=config.phases[phase_index].name, trained_parameters=len(active))
            phase = config.phases[phase_index]
            dataset = dataset_for(phase)
            started = time.perf_counter()

            # ---- forward / backward over this process's share of the batch -----------------
            lr = learning_rate(config, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch_size = phase.batch_size or config.optim.batch_size
            epoch, indices = step_samples(len(dataset), phase_index, step - bounds[phase_index][0],
                                          batch_size, world_size, rank, config.seed)
            loss_sum, parts_sum = 0.0, {}
            for index in indices:
                loss, parts, output = combined_loss(model, dataset.sample(index, epoch), phase.objectives, phase.prompt_options)
                if loss is not None and loss.requires_grad:
                    (loss / batch_size).backward()
                loss_sum += float(loss.detach()) if loss is not None else 0.0
                for key, value in {**(loss_parts(output) if output is not None else {}), **parts}.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + value

            # ---- average across processes, clip, step --------------------------------------
            average_gradients(active_params, world_size)
            grad_norm = _clip(active_params, config.optim.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync_buffers(model, world_size)
            step += 1

            totals = all_reduce_sum([loss_sum, len(indices), float(stop_requested["flag"])])
            count = max(1.0, totals[1])
            summary_loss = totals[0] / count
            stop = totals[2] > 0 or (stop_after_step is not None and step >= stop_after_step)
            # every process reaches the same decision (step and stop agree), so the parts' sum runs on all or none
            if step % config.log_every == 0 or step == config.max_steps or stop:
                parts_total = all_reduce_named(parts_sum)
                log.write(step=step, phase=phase.name, epoch=epoch, loss=summary_loss, lr=lr, grad_norm=grad_norm,
                          sec_per_step=time.perf_counter() - started, **{k: v / count for k, v in parts_total.items()})
            bar.update(1)
            bar.set_postfix(loss=f"{summary_loss:.4f}", lr=f"{lr:.2e}", phase=phase.name)

            # ---- evaluate, checkpoint -------------------------------------------------------
            finished = step == config.max_steps
            if eval_set is not None and ((config.eval.every and step % config.eval.every == 0) or finished):
                last_eval = evaluate(model, eval_set, config.eval.max_samples, config.eval.threshold, rank, world_size)
                log.write(event="eval", step=step, **last_eval)
                if rank == 0:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in last_eval.items()))
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or finished or stop:
                _checkpoint(out, config, model, trainable, optimizer, names, step, phase_index, epoch, rank, world_size, datasets)
            if stop:
                log.write(event="stopped", step=step, reason="signal" if totals[2] > 0 else "stop_after_step")
                break
    finally:
        bar.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)

    if step == config.max_steps and rank == 0 and config.save_model and hasattr(model, "save_pretrained"):
        model.save_pretrained(out / "final")
    barrier()
    skipped = sum(len(d.skipped) for d in datasets.values())
    return {"step": step, "loss": summary_loss, "eval": last_eval, "out_dir": str(out), "skipped_records": skipped,
            "finished": step == config.max_steps}


def _checkpoint(out: Path, config: TrainConfig, model, trainable, optimizer, names, step: int, phase_index: int, epoch: int,
                rank: int, world_size: int, datasets: dict) -> None:
    scratch = out / "checkpoints" / f".writing_step_{step:07d}"
    if rank == 0:
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
    barrier()
    state = {"step": step, "phase": config.phases[phase_index].name, "phase_index": phase_index, "epoch": epoch,
             "phase_step": step - config.phase_bounds()[phase_index][0],
             "world_size": world_size, "batch_size": config.optim.batch_size, "seed": config.seed,
             "config_digest": config.digest(), "skipped_records": sum(len(d.skipped) for d in datasets.values()),
             "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_checkpoint(scratch, model, trainable, optimizer, names, state, rank, config.save_model)
    barrier()
    if rank == 0:
        _publish_checkpoint(out, scratch, step, config.keep_checkpoints)
    barrier()


def _check_resumable(state: dict, config: TrainConfig, world_size: int, folder: Path) -> None:
    if state.get("config_digest") != config.digest():
        raise CheckpointError(
            f"{folder}: the checkpoint was written by a different config (model, data, optimizer, phases or seed changed). "
            "Resume with the config the run started with; only max_steps, eval, logging and checkpoint settings may change."
        )
    if state.get("world_size") != world_size:
        raise CheckpointError(f"{folder}: the run used {state.get('world_size')} process(es), this one has {world_size}; "
                              "resume with the same number so the data order stays the same.")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _clip(params: list[nn.Parameter], max_norm: float | None) -> float:
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step")
