"""`sama-agent train`: the training runner's command (registered by sama_agent/cli.py).

    sama-agent train --config training/configs/sama-tiny.json
    sama-agent train --config FILE --resume                 # continue an interrupted run
    torchrun --nproc_per_node 2 -m sama_agent.training --config FILE
"""
from __future__ import annotations

import json
import logging

import click

from ..errors import SamaError
from .config import ConfigError


@click.command("train")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Training config JSON (see training/configs/).")
@click.option("--resume", is_flag=True, help="Continue the run in the output folder from its latest checkpoint.")
@click.option("--max-steps", type=int, default=None, help="Run length in steps (overrides the config).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder for checkpoints and metrics (overrides the config's out_dir).")
@click.option("--stop-after-step", type=int, default=None,
              help="Stop with a checkpoint after this step, as an interruption would; continue later with --resume.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs and metrics.jsonl are still written).")
def train_command(config_path, resume, max_steps, out_dir, stop_after_step, no_progress):
    """Train a SAMA model as a config file says (single process, or one per torchrun worker)."""
    from .config import TrainConfig
    from .runner import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = TrainConfig.from_file(config_path)
        summary = train(config, resume=resume, max_steps=max_steps, out_dir=out_dir, stop_after_step=stop_after_step,
                        progress=not no_progress)
    except (ConfigError, SamaError) as exc:
        raise click.ClickException(str(exc)) from None
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        click.echo(json.dumps(summary, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()


train = train_command
