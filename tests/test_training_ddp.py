"""torchrun smoke test: two CPU processes (gloo) train exactly like one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sama_agent.training.runner import train
from sama_agent.training.world import generate_world
from test_training_runner import build_tiny, losses, make_config, weights

TESTS = Path(__file__).parent
TORCHRUN = Path(sys.executable).parent / "torchrun"


def test_torchrun_two_processes_match_one_process(tmp_path):
    world = tmp_path / "world"
    generate_world(world, 12, "train", seed=5, size=32, frames=(6, 8), objects=(2, 2), turns=(2, 3))
    generate_world(world, 4, "heldout", seed=5, size=32, frames=(6, 8), objects=(2, 2), turns=(2, 3))
    options = dict(max_steps=5, checkpoint_every=5, model={"options": {"dropout": 0.0}},
                   eval={"every": 5, "max_samples": 4, "data": {"root": str(world), "records": "heldout.json",
                                                              "masks": "heldout_masks.json", "num_frames": 4}})
    script = tmp_path / "ddp_train.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from pathlib import Path
from test_training_runner import build_tiny, make_config
from sama_agent.training.runner import train
config = make_config(Path({str(world)!r}), Path({str(tmp_path / 'ddp')!r}), optim={{"lr": 3e-3, "warmup_steps": 2, "batch_size": 2}},
                     **{options!r})
summary = train(config, build=build_tiny, progress=False)
import torch.distributed as dist
dist.destroy_process_group()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    single = tmp_path / "single"
    train(make_config(world, single, optim={"lr": 3e-3, "warmup_steps": 2, "batch_size": 4}, **options), build=build_tiny, progress=False)
    ddp_losses, single_losses = losses(tmp_path / "ddp"), losses(single)
    assert sorted(ddp_losses) == list(range(1, 6))
    assert np.allclose([ddp_losses[s] for s in single_losses], list(single_losses.values()), atol=1e-5)
    for name, tensor in weights(single / "final").items():
        if "running_" in name or "num_batches" in name:
            continue  # norm statistics are rank 0's own batches' under data parallelism, as with DDP
        assert torch.allclose(tensor, weights(tmp_path / "ddp" / "final")[name], atol=1e-4), name
    checkpoint = tmp_path / "ddp" / "checkpoints" / "step_0000005"
    assert (checkpoint / "rng_rank0.safetensors").exists() and (checkpoint / "rng_rank1.safetensors").exists()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    evals = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and evals[-1]["eval_samples"] == 4  # both processes' shares were summed


def test_processes_that_log_different_parts_sum_them_by_name(tmp_path):
    """One process scored a [SEG] and the other none: their logs differ, the sums still line up by name."""
    script = tmp_path / "named.py"
    script.write_text("""
import json, os
import torch.distributed as dist
from sama_agent.training.runner import all_reduce_named
dist.init_process_group("gloo")
rank = dist.get_rank()
mine = {"lm_loss": 1.0 + rank, "bce_loss": 0.5} if rank == 0 else {"lm_loss": 2.0, "cells": 3.0}
summed = all_reduce_named(mine)
open(os.path.join(os.environ["OUT"], f"rank{rank}.json"), "w").write(json.dumps(summed))
dist.destroy_process_group()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT": str(tmp_path)}
    result = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):  # a file each: two processes' prints can interleave on one line
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"bce_loss": 0.5, "cells": 3.0, "lm_loss": 3.0}
