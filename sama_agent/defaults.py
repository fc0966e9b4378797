"""Where the shipped defaults live: the trained checkpoint, the sample video and
the folder sessions write to. One place, so every caller agrees."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError, VideoError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL_NAME = "sama-default"
SAMPLE_VIDEO_NAME = "sample.mp4"
TRAIN_HINT = "sama-agent train --config training/configs/sama-default.json"
MODEL_ENV_VAR = "SAMA_AGENT_MODEL"
HOME_ENV_VAR = "SAMA_AGENT_HOME"


def default_model_dir() -> Path:
    """The default checkpoint folder (config.json + safetensors).

    `SAMA_AGENT_MODEL` overrides the bundled one. Raises CheckpointError, with
    the command that trains it, when no checkpoint is there.
    """
    override = os.environ.get(MODEL_ENV_VAR)
    folder = Path(override) if override else ASSETS_DIR / DEFAULT_MODEL_NAME
    if not (folder / "config.json").is_file():
        where = f"${MODEL_ENV_VAR}={override}" if override else str(folder)
        raise CheckpointError(
            f"no trained SAMA checkpoint at {where} (config.json missing). Train one with `{TRAIN_HINT}` "
            f"and pass its output folder with --model DIR (or set {MODEL_ENV_VAR})."
        )
    return folder


def default_sample_video() -> Path:
    """The short clip bundled for demos and end-to-end tests."""
    path = ASSETS_DIR / SAMPLE_VIDEO_NAME
    if not path.is_file():
        raise VideoError(
            f"the bundled sample video {path} is missing; reinstall sama-agent or pass your own video with --video."
        )
    return path


def sessions_root() -> Path:
    """Parent folder of session directories: `$SAMA_AGENT_HOME/sessions`, else `~/.cache/sama-agent/sessions`."""
    home = os.environ.get(HOME_ENV_VAR)
    base = Path(home) if home else Path.home() / ".cache" / "sama-agent"
    return base / "sessions"
