"""Checkpoint I/O: safetensors only, strict loading, and the one official SAM2 exception.

Our checkpoints are safetensors files (plus `config.json` in a Hugging Face
style directory). Pickles can run code when loaded, so they are refused; the
only `.pt` files we read are official SAM2 checkpoints (`{"model": state_dict}`),
and those only through `torch.load(..., weights_only=True)`, the restricted
loader `sam2.build_sam` uses too, which cannot run code.

Every safetensors file we write carries a SHA-256 digest of its tensors in the
header metadata, so a file whose tensor bytes were altered after saving is
refused instead of silently loaded.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from sama_agent.errors import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DIGEST_KEY = "sama_agent.sha256"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_LISTED = 8  # tensor names quoted in one error message


# ---- saving -----------------------------------------------------------------------
def save_safetensors(module_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write a module's state dict (or a state dict) as safetensors with a tensor digest."""
    from safetensors.torch import save_file

    state = module_or_state_dict.state_dict() if isinstance(module_or_state_dict, nn.Module) else module_or_state_dict
    tensors = _standalone_tensors(state)
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    header[DIGEST_KEY] = tensor_digest(tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)
    return path


def _standalone_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no storage (safetensors refuses tied tensors;
    a tied module gets the same values into both names when loaded back)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"state entry '{name}' is a {type(tensor).__name__}, not a tensor; only tensors can be saved.")
        tensor = tensor.detach().cpu().contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---- reading ----------------------------------------------------------------------
def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking it is one; verify its digest when it has one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    metadata = _check_safetensors_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the safetensors file is corrupt ({exc}). Re-save or re-download it.") from None
    expected = metadata.get(DIGEST_KEY)
    if expected is not None and tensor_digest(tensors) != expected:
        raise CheckpointError(
            f"{path}: the tensor data does not match the digest recorded when it was saved; "
            "the file was modified or damaged. Re-save it from the original model or re-download it."
        )
    return tensors


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata in a safetensors header (after checking the format)."""
    return _check_safetensors_header(Path(path))


def _check_safetensors_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: the file is {size} bytes long, too short to be a safetensors checkpoint.")
        refused = _pickle_kind(head)
        if refused:
            raise CheckpointError(
                f"{path}: this is a {refused}, not safetensors. Pickle checkpoints are refused because loading them can "
                "run arbitrary code. Convert it once where you trust the file, e.g. "
                "`python -c \"import torch; from safetensors.torch import save_file; "
                "save_file(torch.load('in.pt', weights_only=True), 'out.safetensors')\"`; "
                "an official SAM2 .pt converts with sama_agent.model.checkpoint.convert_sam2_pt_to_safetensors."
            )
        (header_len,) = struct.unpack("<Q", head)
        if header_len <= 0 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path}: not a valid safetensors file (header length {header_len} does not fit a {size}-byte file); "
                "it is corrupt, truncated or another format. Re-save or re-download it."
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON; the file is corrupt. Re-save or re-download it.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object; the file is corrupt.")
    data_len = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{path}: tensor '{name}' points outside the file's data (truncated or tampered). Re-save or re-download it.")
    metadata = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()}


def _pickle_kind(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "zip archive (torch.save / pickle checkpoint)"
    if head[:1] == b"\x80" and head[1:2] in {bytes([p]) for p in range(2, 6)}:
        return "pickle file (torch.save legacy format)"
    return None


# ---- strict loading ---------------------------------------------------------------
def load_state_dict_strict(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file into `module`; every tensor must match by name and shape."""
    path = Path(path)
    state = read_safetensors(path)
    check_state_dict(module, state, source=str(path))
    module.load_state_dict(state, strict=True)
    return module


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming every missing, extra or mis-shaped tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} (checkpoint {tuple(state[name].shape)}, model {tuple(expected[name].shape)})"
        for name in sorted(set(expected) & set(state))
        if tuple(state[name].shape) != tuple(expected[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s): {_listing(extra)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: " + "; ".join(problems)
            + ". Check that the checkpoint was saved from a model with the same config."
        )


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


# ---- official SAM2 .pt --------------------------------------------------------------
def load_official_sam2_pt(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official SAM2 checkpoint, read with the restricted loader."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such SAM2 checkpoint file.")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises several types
        raise CheckpointError(
            f"{path}: could not be read as an official SAM2 checkpoint with torch.load(weights_only=True) "
            f"({_first_line(exc)}). Only plain tensor checkpoints are accepted; objects that need code to load are refused."
        ) from None
    if not isinstance(payload, dict) or "model" not in payload:
        keys = sorted(payload)[:_LISTED] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: an official SAM2 checkpoint is a dict with the state dict under 'model'; this file holds {keys}."
        )
    state = payload["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the 'model' entry is not a state dict of tensors.")
    return state


def convert_sam2_pt_to_safetensors(src: str | Path, dst: str | Path) -> Path:
    """Convert an official SAM2 `.pt` checkpoint to safetensors, once, without unpickling code."""
    state = load_official_sam2_pt(src)
    return save_safetensors(state, dst, metadata={"format": "pt", "converted_from": Path(src).name})


# ---- Hugging Face style directories -----------------------------------------------
def save_pretrained(directory: str | Path, config_dict: Mapping, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write `config.json` and `model.safetensors` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(dict(config_dict), indent=2, sort_keys=True) + "\n")
    save_safetensors(state_dict, directory / WEIGHTS_NAME, metadata={"format": "pt", **(metadata or {})})
    return directory


def read_pretrained(directory: str | Path) -> tuple[dict, Path]:
    """(config dict, path of the safetensors weights) of a `save_pretrained` directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory. Give a folder made by save_pretrained.")
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: {CONFIG_NAME} is missing; a checkpoint directory needs {CONFIG_NAME} and {WEIGHTS_NAME}.")
    if not weights_path.is_file():
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" It holds {', '.join(pickles)}: pickle weights are refused; convert them to safetensors." if pickles else ""
        raise CheckpointError(f"{directory}: {WEIGHTS_NAME} is missing.{hint}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: must hold a JSON object.")
    return config, weights_path


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else exc.__class__.__name__
