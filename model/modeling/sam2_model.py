"""SAM2 for SAMA's grounding: config, builder, and the grounding wrapper.

`build_sam2` returns sam2's own `SAM2Base`, built from sam2's YAML configs for
the official variants (`sam2.1_hiera_t/s/b+/l`) or from our CPU config
(`model/configs/sam2_cpu_small.yaml`: a light pretrained trunk, a smaller memory).

`Sam2Grounding` drives that model for SAMA:
- `encode_frames` + `decode_masks`: differentiable single-frame decoding from a
  `[SEG]` sparse prompt (and/or box, points, mask) - what training supervises;
- `track_logits`: differentiable memory propagation over a short clip;
- `propagate`: streaming SAM2 memory propagation over a whole video with a
  bounded memory bank, forward and backward from the prompted frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sama_agent.errors import CheckpointError, RegionError
from sama_agent.regions import Region, box_mask, prompt_mask

from .sam2_memory import FramePrompt, ObjectMemory, frame_prompt
from .sam2_trunks import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD

OFFICIAL_VARIANTS = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
CPU_SMALL = "cpu_small"
VARIANTS = (*OFFICIAL_VARIANTS, CPU_SMALL)
TRUNKS = ("efficientnet_lite0", "cnn")
NO_OBJECT_SCORE = -1024.0  # sam2's logit for "object absent"


# ---- config -----------------------------------------------------------------------
@dataclass
class Sam2Config:
    """Which SAM2 to build and how it runs.

    variant: an official SAM2.1 config or "cpu_small".
    image_size: side of the square frames SAM2 sees (a multiple of 32); 256 suits CPU.
    checkpoint: optional weights - an official `.pt` ({"model": state_dict}, read
        with weights_only), a `.safetensors` file, or a save_pretrained directory.
    trunk / pretrained_trunk / cnn_channels: the cpu_small image trunk.
    num_maskmem: memory frames (None keeps the variant's value).
    encode_batch: frames decoded and encoded at once while streaming.
    overrides: extra "key=value" settings for the model config (hydra style,
        e.g. "model.memory_attention.num_layers=1").
    """

    variant: str = CPU_SMALL
    image_size: int = 256
    checkpoint: str | None = None
    trunk: str = "efficientnet_lite0"
    pretrained_trunk: bool = True
    cnn_channels: tuple[int, ...] = (32, 64, 128, 256)
    num_maskmem: int | None = None
    encode_batch: int = 4
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown SAM2 variant '{self.variant}'; choose one of {', '.join(VARIANTS)}.")
        if not isinstance(self.image_size, int) or self.image_size < 64 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 and at least 64, got {self.image_size!r}.")
        if self.trunk not in TRUNKS:
            raise ValueError(f"unknown cpu_small trunk '{self.trunk}'; choose one of {', '.join(TRUNKS)}.")
        if self.encode_batch < 1:
            raise ValueError("encode_batch must be at least 1.")
        self.cnn_channels = tuple(int(c) for c in self.cnn_channels)
        self.overrides = list(self.overrides)
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["cnn_channels"] = list(self.cnn_channels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "Sam2Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Sam2Config field(s): {', '.join(unknown)}; known fields are {', '.join(sorted(known))}.")
        return cls(**dict(data))

    @classmethod
    def coerce(cls, config: "Sam2Config | Mapping | None") -> "Sam2Config":
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise TypeError(f"expected a Sam2Config or a dict, got {type(config).__name__}")


# ---- building ---------------------------------------------------------------------
def build_sam2(config: Sam2Config | Mapping | None = None):
    """A `sam2.modeling.sam2_base.SAM2Base` in eval mode; random weights unless a checkpoint is given."""
    from hydra.utils import instantiate

    config = Sam2Config.coerce(config)
    model = instantiate(model_config(config).model, _recursive_=True)
    if config.checkpoint:
        load_sam2_checkpoint(model, config.checkpoint)
    return model.eval()


def model_config(config: Sam2Config):
    """The resolved OmegaConf config `build_sam2` instantiates."""
    from omegaconf import OmegaConf

    feat_size = config.image_size // 16
    settings = [f"model.image_size={config.image_size}"]
    if config.num_maskmem is not None:
        settings.append(f"model.num_maskmem={config.num_maskmem}")
    if config.variant == CPU_SMALL:
        cfg = _cpu_small_config(config, feat_size)
    else:
        cfg = _official_config(config.variant)
        for attention in ("self_attention", "cross_attention"):
            settings.append(f"model.memory_attention.layer.{attention}.feat_sizes=[{feat_size},{feat_size}]")
    settings += [item[2:] if item.startswith("++") else item.lstrip("+") for item in config.overrides]
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(settings))
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ValueError(f"bad SAM2 config override in {config.overrides}: {exc}") from None
    return cfg


def _official_config(variant: str):
    import sam2  # noqa: F401  (importing sam2 registers its config module with hydra)
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    return compose(config_name=OFFICIAL_VARIANTS[variant])


def _cpu_small_config(config: Sam2Config, feat_size: int):
    from omegaconf import OmegaConf

    from ..configs import CONFIG_DIR

    cfg = OmegaConf.load(CONFIG_DIR / "sam2_cpu_small.yaml")
    cfg.sama.image_size, cfg.sama.feat_size = config.image_size, feat_size
    encoder = cfg.model.image_encoder
    if config.trunk == "cnn":
        encoder.trunk = {"_target_": "sama_agent.model.modeling.sam2_trunks.SmallCnnTrunk", "channels": list(config.cnn_channels)}
        encoder.neck.backbone_channel_list = list(reversed(config.cnn_channels))
    else:
        # a checkpoint overwrites the trunk anyway; skip reading ImageNet weights then
        encoder.trunk.pretrained = bool(config.pretrained_trunk and not config.checkpoint)
    return cfg


def load_sam2_checkpoint(model: nn.Module, checkpoint: str | Path) -> nn.Module:
    """Load an official `.pt`, a `.safetensors` file or a save_pretrained directory, strictly."""
    from ..checkpoint import check_state_dict, load_official_sam2_pt, load_state_dict_strict, read_pretrained

    path = Path(checkpoint)
    if path.is_dir():
        _, path = read_pretrained(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such SAM2 checkpoint.")
    if path.suffix in (".pt", ".pth"):
        state = load_official_sam2_pt(path)
        check_state_dict(model, state, source=str(path))
        model.load_state_dict(state, strict=True)
        return model
    return load_state_dict_strict(model, path)


# ---- features and head outputs ------------------------------------------------------
@dataclass
class FrameFeatures:
    """SAM2 backbone features of T frames, flattened the way SAM2Base uses them.

    vision_feats / vision_pos: per level (high to low resolution) (H_l*W_l, T, C);
    feat_sizes: per level (H_l, W_l).
    """

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return self.vision_feats[-1].shape[1]

    def select(self, indices: Sequence[int] | slice) -> "FrameFeatures":
        index = indices if isinstance(indices, slice) else torch.as_tensor(list(indices), dtype=torch.long)
        return FrameFeatures([x[:, index] for x in self.vision_feats], [x[:, index] for x in self.vision_pos], list(self.feat_sizes))

    def frame(self, i: int) -> "FrameFeatures":
        return self.select(slice(i, i + 1))

    def expand(self, batch: int) -> "FrameFeatures":
        """One frame's features repeated for `batch` objects."""
        if len(self) != 1:
            raise ValueError("expand() needs the features of exactly one frame")
        return FrameFeatures([x.expand(-1, batch, -1) for x in self.vision_feats], [x.expand(-1, batch, -1) for x in self.vision_pos], list(self.feat_sizes))

    def maps(self) -> list[torch.Tensor]:
        """Per level (B, C, H_l, W_l)."""
        return [x.permute(1, 2, 0).reshape(x.shape[1], x.shape[2], *size) for x, size in zip(self.vision_feats, self.feat_sizes)]


@dataclass
class HeadOutput:
    low_res_masks: torch.Tensor  # (B, 1, S/4, S/4) logits
    high_res_masks: torch.Tensor  # (B, 1, S, S) logits
    ious: torch.Tensor  # (B, M)
    obj_ptr: torch.Tensor  # (B, C)
    object_score_logits: torch.Tensor  # (B, 1)


FOLLOW_MARGIN = 0.15  # share of a box's size added on each side when following a region frame to frame
FOLLOW_PROMPTS = ("box", "coarse", "dense")
FOLLOW_PROMPT = "coarse"


def _grown_box(mask: np.ndarray, margin: float, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The tight box of a mask, grown by `margin` of its size on each side and kept in the frame."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    height, width = size
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(width), x1 + dx), min(float(height), y1 + dy)


# ---- the grounding wrapper --------------------------------------------------------------
class Sam2Grounding(nn.Module):
    """SAM2 driven for SAMA: [SEG]-prompted decoding, clip tracking, streaming propagation."""

    def __init__(self, sam2: nn.Module | None = None, config: Sam2Config | Mapping | None = None):
        super().__init__()
        self.config = Sam2Config.coerce(config)
        self.sam2 = build_sam2(self.config) if sam2 is None else sam2
        trunk = self.sam2.image_encoder.trunk
        mean = getattr(trunk, "pixel_mean", IMAGENET_PIXEL_MEAN)
        std = getattr(trunk, "pixel_std", IMAGENET_PIXEL_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.last_stats: dict[str, int] = {}

    @property
    def image_size(self) -> int:
        return int(self.sam2.image_size)

    @property
    def prompt_dim(self) -> int:
        """Width of a sparse prompt token (256 for every SAM2)."""
        return int(self.sam2.sam_prompt_embed_dim)

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4

    # ---- checkpoints ----
    def save_pretrained(self, directory: str | Path) -> Path:
        from ..checkpoint import save_pretrained

        self._check_config_matches_model()
        config = self.config.to_dict()
        config["checkpoint"] = None
        return save_pretrained(directory, {"model_type": "sam2_grounding", **config}, self.sam2.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "Sam2Grounding":
        from ..checkpoint import read_pretrained

        config, weights = read_pretrained(directory)
        config.pop("model_type", None)
        config["checkpoint"] = str(weights)
        return cls(config=config)

    def _check_config_matches_model(self) -> None:
        """A saved config must rebuild this model; catch a SAM2 built elsewhere under a default config."""
        trunk = type(self.sam2.image_encoder.trunk).__name__
        official = self.config.variant in OFFICIAL_VARIANTS
        expected = "Hiera" if official else {"efficientnet_lite0": "EfficientNetLiteTrunk", "cnn": "SmallCnnTrunk"}[self.config.trunk]
        if trunk != expected or self.image_size != self.config.image_size:
            raise CheckpointError(
                f"this Sam2Grounding holds a {trunk} SAM2 at {self.image_size} px but its config says "
                f"{self.config.variant} ({expected}) at {self.config.image_size} px; pass the config the model was built "
                "with (Sam2Grounding(sam2, config=...)) before saving."
            )

    # ---- encoding ----
    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) RGB in [0, 1] -> (T, 3, S, S) normalised for the trunk."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (T, 3, H, W) RGB, got shape {tuple(frames.shape)}")
        frames = frames.to(self.pixel_mean.device, torch.float32)
        size = (self.image_size, self.image_size)
        if tuple(frames.shape[-2:]) != size:
            shrinking = frames.shape[-2] > size[0] or frames.shape[-1] > size[1]
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
        return (frames - self.pixel_mean) / self.pixel_std

    def encode_frames(self, frames: torch.Tensor) -> FrameFeatures:
        """(T, 3, H, W) float RGB in [0, 1] -> SAM2 backbone features of the T frames."""
        backbone_out = self.sam2.forward_image(self.preprocess(frames))
        _, feats, pos, sizes = self.sam2._prepare_backbone_features(backbone_out)
        return FrameFeatures(feats, pos, [tuple(s) for s in sizes])

    def encode_uint8(self, frames: np.ndarray) -> FrameFeatures:
        """(T, H, W, 3) uint8 RGB, as `Video.frames` returns them."""
        tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        return self.encode_frames(tensor)

    # ---- single-frame decoding (training) ----
    def decode_masks(
        self,
        features: FrameFeatures,
        sparse: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_inputs: torch.Tensor | None = None,
        orig_hw: tuple[int, int] | None = None,
        return_object_scores: bool = False,
    ):
        """Mask logits (T, 1, S/4, S/4) for T frames, each decoded on its own (no memory).

        sparse (T, K, 256): grounding embeddings, appended to the prompt encoder's sparse tokens.
        boxes (T, 4): pixel x0, y0, x1, y1 in the original frame size `orig_hw`.
        points: (coords (T, P, 2) pixel x, y in `orig_hw`; labels (T, P), 1 positive, 0 negative).
        mask_inputs (T, 1, h, w): float mask prompts (any size), fed as dense prompts.
        Logits are not gated by the object score, so BCE/dice reach the mask decoder everywhere.
        """
        count = len(features)
        pix = self._without_memory(features)
        point_coords, point_labels = self._point_tensors(count, boxes, points, orig_hw)
        point_inputs = None if point_coords is None else {"point_coords": point_coords, "point_labels": point_labels}
        if sparse is not None:
            sparse = self._check_sparse(sparse, count)
        head = self.sam_heads(pix, features.maps()[:-1] or None, point_inputs, mask_inputs, sparse, multimask=False, gate=False)
        if return_object_scores:
            return head.low_res_masks, head.object_score_logits
        return head.low_res_masks

    @property
    def coarse_grid(self) -> tuple[int, int]:
        """Where a coarse dense prompt is pooled: half the mask-prompt size, so SAM2 sharpens what it is given."""
        return tuple(max(1, int(v) // 2) for v in self.sam2.sam_prompt_encoder.mask_input_size)

    @property
    def where_channels(self) -> int:
        """Channels of `where_features`: the mask decoder's two high-resolution maps and the top level."""
        dim, levels = self.prompt_dim, self.sam2.num_feature_levels
        if self.sam2.use_high_res_features_in_sam:
            return dim // 8 + dim // 4 + dim * (levels - 2)
        return dim * levels

    def where_features(self, features: FrameFeatures) -> torch.Tensor:
        """(T, C, h, w) every feature level of T frames brought to the finest (stride 4): colour and edges
        from the high-resolution maps, what the object is from the top level."""
        maps = features.maps()
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]], dim=1)

    def upsample(self, logits: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(T, 1, h, w) logits -> (T, 1, H, W) logits at the original frame size."""
        return F.interpolate(logits, size=tuple(orig_hw), mode="bilinear", align_corners=False)

    def _without_memory(self, features: FrameFeatures) -> torch.Tensor:
        """Top-level features as SAM2 conditions a prompted frame that has no memory yet."""
        return self.sam2._prepare_memory_conditioned_features(
            frame_idx=0,
            is_init_cond_frame=True,
            current_vision_feats=features.vision_feats[-1:],
            current_vision_pos_embeds=features.vision_pos[-1:],
            feat_sizes=features.feat_sizes[-1:],
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            num_frames=1,
        )

    def _point_tensors(self, count, boxes, points, orig_hw):
        if boxes is None and points is None:
            return None, None
        if orig_hw is None:
            raise ValueError("orig_hw=(H, W) is needed to scale box and point prompts")
        height, width = orig_hw
        scale = torch.tensor([self.image_size / width, self.image_size / height], device=self.pixel_mean.device)
        coords, labels = [], []
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=scale.device)
            if boxes.shape != (count, 4):
                raise ValueError(f"boxes must be ({count}, 4) pixel x0, y0, x1, y1, got {tuple(boxes.shape)}")
            coords.append(boxes.view(count, 2, 2))
            labels.append(torch.tensor([[2, 3]], dtype=torch.int32, device=scale.device).expand(count, 2))
        if points is not None:
            point_xy, point_labels = (torch.as_tensor(t, device=scale.device) for t in points)
            if point_xy.ndim != 3 or point_xy.shape[0] != count or point_xy.shape[2] != 2 or point_labels.shape != point_xy.shape[:2]:
                raise ValueError(f"points must be (coords ({count}, P, 2), labels ({count}, P)), got {tuple(point_xy.shape)} and {tuple(point_labels.shape)}")
            coords.append(point_xy.float())
            labels.append(point_labels.to(torch.int32))
        return torch.cat(coords, dim=1) * scale, torch.cat(labels, dim=1)

    def _check_sparse(self, sparse: torch.Tensor, count: int) -> torch.Tensor:
        if sparse.ndim == 2:
            sparse = sparse.unsqueeze(1)
        if sparse.ndim != 3 or sparse.shape[0] != count or sparse.shape[2] != self.prompt_dim:
            raise ValueError(f"sparse prompts must be ({count}, K, {self.prompt_dim}), got {tuple(sparse.shape)}")
        return sparse

    # ---- SAM heads with extra sparse tokens ----
    def sam_heads(
        self,
        pix_feat: torch.Tensor,
        high_res_features: list[torch.Tensor] | None,
        point_inputs: dict | None = None,
        mask_inputs: torch.Tensor | None = None,
        sparse: torch.Tensor | None = None,
        multimask: bool = False,
        gate: bool = True,
    ) -> HeadOutput:
        """SAM2's prompt encoder + mask decoder on (B, C, h, w) features.

        Does what `SAM2Base._forward_sam_heads` does, and also takes `sparse`
        (B, K, C) tokens appended to the prompt encoder's sparse embeddings -
        how a `[SEG]` embedding prompts SAM2. `gate=False` leaves logits of frames
        the occlusion head calls empty as they are (for training losses).
        """
        sam2 = self.sam2
        batch = pix_feat.shape[0]
        if point_inputs is None:  # SAM pads "no point" with label -1
            coords = pix_feat.new_zeros(batch, 1, 2)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=pix_feat.device)
        else:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        dense_mask = None
        if mask_inputs is not None:
            dense_mask = mask_inputs.float()
            if tuple(dense_mask.shape[-2:]) != tuple(sam2.sam_prompt_encoder.mask_input_size):
                dense_mask = F.interpolate(dense_mask, size=sam2.sam_prompt_encoder.mask_input_size, mode="bilinear", align_corners=False, antialias=True)
        sparse_embeddings, dense_embeddings = sam2.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=dense_mask)
        if sparse is not None:
            sparse_embeddings = torch.cat([sparse_embeddings, sparse.to(sparse_embeddings.dtype)], dim=1)
        masks, ious, tokens, object_scores = sam2.sam_mask_decoder(
            image_embeddings=pix_feat,
            image_pe=sam2.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res_features,
        )
        present = object_scores > 0
        if sam2.pred_obj_scores and gate:
            masks = torch.where(present[:, None, None], masks, NO_OBJECT_SCORE)
        masks = masks.float()
        token = tokens[:, 0]
        if multimask:  # keep the candidate the IoU head rates best
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=masks.device)
            masks = masks[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        high_res = F.interpolate(masks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        obj_ptr = sam2.obj_ptr_proj(token)
        if sam2.pred_obj_scores:
            weight = object_scores.sigmoid() if sam2.soft_no_obj_ptr else present.float()
            if sam2.fixed_no_obj_ptr:
                obj_ptr = weight * obj_ptr
            obj_ptr = obj_ptr + (1 - weight) * sam2.no_obj_ptr
        return HeadOutput(masks, high_res, ious, obj_ptr, object_scores)

    # ---- one tracking step ----
    def track_step(self, features: FrameFeatures, frame_idx: int, memory: ObjectMemory, num_frames: int, prompt: FramePrompt | None = None, reverse: bool = False) -> dict:
        """Segment one frame (B objects, features expanded to B) from a prompt or from memory.

        A prompted frame is decoded without memory (as SAM2 does for prompts given
        before propagation); any other frame attends to the object's memory.
        Returns a SAM2 frame output: pred_masks, obj_ptr, maskmem_features, maskmem_pos_enc, object_score_logits.
        """
        sam2 = self.sam2
        maps = features.maps()
        high_res = maps[:-1] or None
        point_inputs = prompt.point_inputs if prompt is not None else None
        if prompt is not None and prompt.mask_only and sam2.use_mask_input_as_output_without_sam:
            outputs = sam2._use_mask_as_output(maps[-1], high_res, prompt.mask)
            head = HeadOutput(outputs[3], outputs[4], outputs[2], outputs[5], outputs[6])
        else:
            pix = sam2._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=prompt is not None,
                current_vision_feats=features.vision_feats[-1:],
                current_vision_pos_embeds=features.vision_pos[-1:],
                feat_sizes=features.feat_sizes[-1:],
                output_dict=memory.output_dict(),
                num_frames=num_frames,
                track_in_reverse=reverse,
            )
            sparse = prompt.sparse if prompt is not None else None
            multimask = sparse is None and sam2._use_multimask(prompt is not None, point_inputs)
            mask = prompt.mask if prompt is not None else None
            head = self.sam_heads(pix, high_res, point_inputs, mask, sparse, multimask=multimask, gate=True)
        maskmem, maskmem_pos = sam2._encode_new_memory(
            current_vision_feats=features.vision_feats,
            feat_sizes=features.feat_sizes,
            pred_masks_high_res=head.high_res_masks,
            object_score_logits=head.object_score_logits,
            is_mask_from_pts=point_inputs is not None,
        )
        return {
            "pred_masks": head.low_res_masks,
            "obj_ptr": head.obj_ptr,
            "maskmem_features": maskmem,
            "maskmem_pos_enc": maskmem_pos,
            "object_score_logits": head.object_score_logits,
        }

    # ---- differentiable clip tracking (training) ----
    def track_logits(
        self,
        features: FrameFeatures,
        prompt_frame: int = 0,
        sparse: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        orig_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Mask logits (T, B, S/4, S/4) for B objects over the T frames of one clip.

        The objects are prompted on `prompt_frame` (sparse (B, K, 256), boxes (B, 4)
        pixel xyxy in `orig_hw`, or mask_inputs (B, 1, h, w)); the other frames are
        tracked through SAM2's memory, forward then backward, with gradients.
        """
        count = len(features)
        if not 0 <= prompt_frame < count:
            raise ValueError(f"prompt_frame {prompt_frame} is outside the {count} frames")
        given = [t for t in (sparse, boxes, mask_inputs) if t is not None]
        if not given:
            raise ValueError("track_logits needs a prompt: sparse, boxes or mask_inputs")
        batch = given[0].shape[0]
        prompt = FramePrompt()
        if boxes is not None:
            prompt.point_coords, prompt.point_labels = self._point_tensors(batch, boxes, None, orig_hw)
        if sparse is not None:
            prompt.sparse = self._check_sparse(sparse, batch)
        if mask_inputs is not None:
            prompt.mask = F.interpolate(mask_inputs.float(), size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        memory = ObjectMemory.for_model(self.sam2)
        logits: list[torch.Tensor | None] = [None] * count
        first = self.track_step(features.frame(prompt_frame).expand(batch), prompt_frame, memory, count, prompt)
        memory.cond[prompt_frame] = first
        logits[prompt_frame] = first["pred_masks"]
        for order, reverse in ((range(prompt_frame + 1, count), False), (range(prompt_frame - 1, -1, -1), True)):
            bank = memory.seeded({})
            for t in order:
                out = self.track_step(features.frame(t).expand(batch), t, bank, count, reverse=reverse)
                bank.add(t, out)
                logits[t] = out["pred_masks"]
        return torch.cat(logits, dim=1).transpose(0, 1)

    # ---- following a region and streaming propagation over a video ----
    @torch.inference_mode()
    def follow(self, video, region: Region, frames: Sequence[int] | None = None, margin: float = FOLLOW_MARGIN,
               prompt: str = FOLLOW_PROMPT) -> dict[int, np.ndarray]:
        """{frame: (H, W) bool} for the requested frames: one region followed without SAM2 memory.

        The region is decoded on its frame; every next frame (forwards, then backwards from the
        region's frame) is prompted with the mask before it - as its box grown by `margin` of its size
        on each side (prompt="box"), or as a coarse dense prompt of that grown box's pixels, the kind
        of prompt a where-map gives, also added to the logits (prompt="coarse") or not, for a SAM2
        trained to follow dense prompts (prompt="dense"). Each needs only a
        decoder trained on prompts, while memory propagation needs trained memory attention. Where
        the object is lost, the last prompt is kept, so it is found again when it comes back.
        """
        if prompt not in FOLLOW_PROMPTS:
            raise ValueError(f"unknown follow prompt '{prompt}'; choose one of {', '.join(FOLLOW_PROMPTS)}")
        if not region.kinds & {"box", "points", "mask"}:
            raise RegionError(f"{region.to_text()}: following a region needs its box, points or mask on its frame.")
        from sama_agent.segmenters import requested_frames

        size = (video.height, video.width)
        wanted = set(requested_frames(video, frames))
        if not wanted:
            return {}
        start = video.check_index(region.frame)
        added = prompt == "coarse"
        if prompt == "box":
            first = self._decode_prompt(self.encode_uint8(video.frames([start])), frame_prompt([region], size, self.image_size, self.prompt_dim), size)
        else:
            first = self._decode_coarse(self.encode_uint8(video.frames([start])), prompt_mask(region, *size), size, added)
        found = {start: first}
        for step in (1, -1):
            stop = max(wanted) + 1 if step > 0 else min(wanted) - 1
            box = _grown_box(first, margin, size)
            for frame in range(start + step, stop, step):
                features = self.encode_uint8(video.frames([frame]))
                mask = self._decode_box(features, box, size) if prompt == "box" else self._decode_coarse_box(features, box, size, added)
                if frame in wanted:
                    found[frame] = mask
                if mask.any():
                    box = _grown_box(mask, margin, size)
        return {f: found[f] for f in sorted(wanted)}

    def _decode_prompt(self, features: FrameFeatures, prompt, size: tuple[int, int]) -> np.ndarray:
        points = None if prompt.point_coords is None else {"point_coords": prompt.point_coords, "point_labels": prompt.point_labels}
        mask = prompt.mask
        if mask is not None and points is None and prompt.sparse is None:
            return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy() >= 0.5
        pix = self._without_memory(features)
        head = self.sam_heads(pix, features.maps()[:-1] or None, points, mask, prompt.sparse, multimask=False)
        return (self.upsample(head.low_res_masks, tuple(size))[0, 0] > 0).cpu().numpy()

    def _decode_coarse(self, features: FrameFeatures, mask: np.ndarray, size: tuple[int, int], added: bool = True) -> np.ndarray:
        from .grounding_head import coarse_where_prompt

        dense = coarse_where_prompt(torch.from_numpy(np.ascontiguousarray(mask))[None], self.coarse_grid)
        logits = self.decode_masks(features, mask_inputs=dense, orig_hw=tuple(size))
        if added:
            logits = logits + F.interpolate(dense, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return (self.upsample(logits, tuple(size))[0, 0] > 0).cpu().numpy()

    def _decode_coarse_box(self, features: FrameFeatures, box: tuple[float, float, float, float] | None, size: tuple[int, int],
                           added: bool = True) -> np.ndarray:
        if box is None:
            return np.zeros(size, bool)
        return self._decode_coarse(features, box_mask(box, *size), size, added)

    def _decode_box(self, features: FrameFeatures, box: tuple[float, float, float, float] | None, size: tuple[int, int]) -> np.ndarray:
        if box is None:
            return np.zeros(size, bool)
        logits = self.decode_masks(features, boxes=torch.tensor([box], dtype=torch.float32), orig_hw=tuple(size))
        return (self.upsample(logits, tuple(size))[0, 0] > 0).cpu().numpy()

    def propagate(self, video, prompts: Mapping[int, Sequence[Region]], frames: Sequence[int] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield (frame_index, {object_id: (H, W) bool}) once for every requested frame.

        Frames are decoded as they are needed (`encode_batch` at a time) and each
        object's memory bank is bounded, so memory does not grow with the clip.
        Each object is tracked forward from its first prompted frame and backward
        from it to the start. When objects are first prompted on different
        frames, the frames between those get their masks in two passes; the
        finished part is kept as compressed RLE until the frame is complete.
        """
        from .sam2_propagation import Propagation

        return Propagation(self, video, prompts, frames).run()
