"""The spatio-temporal context aggregator ("st-qformer").

1. Spatial Q-Former: per frame, learned queries cross-attend to that frame's
   patch tokens -> (T, Qs, A).
2. Temporal Q-Former: learned queries attend over all frames' spatial tokens
   (with frame-time embeddings), in windows of `window` frames for long
   videos, conditioned on the current question: the question's token
   embeddings, in which every `<mask>` reference has already been replaced by
   that region's tokens (feature, shape [, motion] [, the model's word
   tokens]), join the queries in
   self-attention -> (W * Qt, A).
3. Context injection: each frame's patch tokens query the temporal output;
   an attention pool over the patches gives one context token per frame for
   this turn -> (T, D).
4. Region tokens: a region's feature is pooled over *every* frame where it is
   visible (weights = its mask on the patch grid; deterministic), plus a shape
   feature from its normalised box and a small canonical crop of its mask
   (and, with `region_cues=True`, its pixel colour and path, region_cues.py;
   `cue_path="box"` keeps the path true while the frame's border cuts the region).
   With `region_motion`, the path's steps go through their own MLP: added to
   the feature token ("feature", or true), or as a third token of their own
   ("token") -> (R, region_token_count, D), placed between `<vp>` and `</vp>`.

A is the aggregator width, D the LLM hidden size, C the encoder channels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .region_cues import CUE_DIM, MOTION_DIM, PATHS, motion_features


class CrossBlock(nn.Module):
    """Pre-norm: optional self-attention over queries (+ extra tokens), cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, self_attend: bool = True, mlp_ratio: float = 2.0):
        super().__init__()
        self.self_attend = self_attend
        if self_attend:
            self.norm_self = nn.LayerNorm(dim)
            self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_query = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """queries (B, Q, A), memory (B, M, A), condition (B, L, A) or None."""
        if self.self_attend:
            count = queries.shape[1]
            tokens = queries if condition is None else torch.cat([queries, condition], dim=1)
            normed = self.norm_self(tokens)
            queries = queries + self.self_attn(normed[:, :count], normed, normed, need_weights=False)[0]
        memory = self.norm_memory(memory)
        queries = queries + self.cross_attn(self.norm_query(queries), memory, memory, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(P,) float positions -> (P, dim) fixed sinusoidal embedding."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=positions.device) / max(half, 1))
    angles = positions.float()[:, None] * frequencies[None]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(embedding, (0, dim - embedding.shape[-1]))


class SpatioTemporalQFormer(nn.Module):
    """See the module docstring. `in_dim` (C) and `out_dim` (D) are filled in by SamaModel."""

    name = "st-qformer"

    def __init__(self, in_dim: int, out_dim: int, dim: int = 128, heads: int = 4, spatial_queries: int = 8,
                 temporal_queries: int = 16, spatial_layers: int = 1, temporal_layers: int = 2,
                 context_layers: int = 1, window: int = 16, grid: tuple[int, int] | list | None = None,
                 shape_size: int = 16, max_frames: int = 256, region_cues: bool = False,
                 region_motion: bool | str = False, cue_path: str = "centroid"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"st-qformer: dim {dim} must be divisible by heads {heads}")
        self.in_dim, self.out_dim, self.dim = in_dim, out_dim, dim
        self.window, self.shape_size, self.max_frames = window, shape_size, max_frames
        self.grid = tuple(grid) if grid is not None else None
        self.patch_in = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.question_in = nn.Sequential(nn.LayerNorm(out_dim), nn.Linear(out_dim, dim))
        self.frame_time = nn.Embedding(max_frames, dim)
        self.spatial_queries = nn.Parameter(torch.randn(spatial_queries, dim) * 0.02)
        self.spatial = nn.ModuleList(CrossBlock(dim, heads, self_attend=True) for _ in range(spatial_layers))
        self.temporal_queries = nn.Parameter(torch.randn(temporal_queries, dim) * 0.02)
        self.temporal = nn.ModuleList(CrossBlock(dim, heads, self_attend=True) for _ in range(temporal_layers))
        self.context = nn.ModuleList(CrossBlock(dim, heads, self_attend=False) for _ in range(context_layers))
        self.context_score = nn.Linear(dim, 1)
        self.context_out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim))
        self.region_feature = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, out_dim))
        self.region_cues = bool(region_cues)
        if cue_path not in PATHS:
            raise ValueError(f"st-qformer: cue_path must be one of {', '.join(PATHS)}, got {cue_path!r}")
        self.cue_path = cue_path  # how SamaModel computes the cues' path (region_cues.py)
        # box, (area, visible fraction), canonical mask crop [, colour and path cues (region_cues.py)]
        shape_inputs = 4 + 2 + shape_size * shape_size + (CUE_DIM if self.region_cues else 0)
        self.region_shape = nn.Sequential(nn.Linear(shape_inputs, dim), nn.GELU(), nn.Linear(dim, out_dim))
        # the path's steps through their own MLP: among 300 shape inputs the 32 path values are learned
        # from too slowly (region_cues.motion_features), and a small LLM trained from scratch reads the
        # feature token, not the shape token (swapping a region's shape token between samples changed its
        # answers' log-probability by 0.02 nats, the feature token by 0.6). Added to the feature token,
        # motion words are learned but colour and shape words stop generalising to unseen
        # colour-shape-motion triples. As a token of its own ("token") the LLM reads it, but its shape
        # words collapsed, with or without attribute heads, until the model's word tokens gave it the
        # shape as a word (the shipped default: "token" + word tokens; README, Training).
        self.motion_mode = _motion_mode(region_motion)
        if self.motion_mode and not self.region_cues:
            raise ValueError("st-qformer: region_motion reads the path in the region cues; build with region_cues=True too.")
        self.region_motion = nn.Sequential(nn.Linear(MOTION_DIM, dim), nn.GELU(), nn.Linear(dim, out_dim)) if self.motion_mode else None
        self.region_token_count = 3 if self.motion_mode == "token" else 2

    # ---- positions ------------------------------------------------------------------------
    def _patch_positions(self, count: int, device) -> torch.Tensor:
        """(N, A) fixed 2-D sinusoidal embedding of the patch grid: tokens know where they are."""
        height, width = self.grid if self.grid and self.grid[0] * self.grid[1] == count else _square(count)
        ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
        half = self.dim // 2
        scale = 8.0  # spread grid coordinates over the sinusoid's range
        return torch.cat([sinusoid(ys.flatten() * scale / height, half), sinusoid(xs.flatten() * scale / width, self.dim - half)], -1)

    def _frame_times(self, count: int, device) -> torch.Tensor:
        if count > self.max_frames:
            raise ValueError(f"st-qformer: {count} frames exceed max_frames={self.max_frames}; sample fewer context frames.")
        return self.frame_time(torch.arange(count, device=device))

    def _patches(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        if patch_tokens.ndim != 3 or patch_tokens.shape[-1] != self.in_dim:
            raise ValueError(f"st-qformer: patch tokens must be (T, N, {self.in_dim}), got {tuple(patch_tokens.shape)}")
        count, patches = patch_tokens.shape[:2]
        tokens = self.patch_in(patch_tokens) + self._patch_positions(patches, patch_tokens.device)[None]
        return tokens + self._frame_times(count, patch_tokens.device)[:, None]

    # ---- the three stages ---------------------------------------------------------------------
    def spatial_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """(T, N, A) projected patches -> (T, Qs, A)."""
        queries = self.spatial_queries[None].expand(patches.shape[0], -1, -1)
        for block in self.spatial:
            queries = block(queries, patches)
        return queries

    def temporal_tokens(self, spatial: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """(T, Qs, A) spatial tokens -> (W * Qt, A): the same queries run over each window of frames."""
        count = spatial.shape[0]
        spatial = spatial + self._frame_times(count, spatial.device)[:, None]
        windows = [spatial[start : start + self.window] for start in range(0, count, self.window)]
        outputs = []
        for window in windows:
            memory = window.reshape(1, -1, self.dim)
            queries = self.temporal_queries[None]
            for block in self.temporal:
                queries = block(queries, memory, condition)
            outputs.append(queries[0])
        return torch.cat(outputs, dim=0)

    def inject(self, patches: torch.Tensor, temporal: torch.Tensor) -> torch.Tensor:
        """Each frame's patches query the temporal output; attention-pool to one token per frame -> (T, A)."""
        memory = temporal[None].expand(patches.shape[0], -1, -1)
        tokens = patches
        for block in self.context:
            tokens = block(tokens, memory)
        weights = self.context_score(tokens).softmax(dim=1)  # (T, N, 1): where this turn's question points
        return (weights * tokens).sum(dim=1)

    # ---- protocol ---------------------------------------------------------------------------------
    def context_tokens(self, patch_tokens: torch.Tensor, question: torch.Tensor, region_feats: torch.Tensor | None = None) -> torch.Tensor:
        """patch_tokens (T, N, C); question (L, D) embeddings of the current question with region tokens
        in place of each `<mask>`; region_feats (R, k, D) or None (also attended) -> (T, D)."""
        patches = self._patches(patch_tokens)
        condition = [question] if question is not None and question.numel() else []
        if region_feats is not None and region_feats.numel():
            condition.append(region_feats.reshape(-1, region_feats.shape[-1]))
        condition = self.question_in(torch.cat(condition, 0))[None] if condition else None
        temporal = self.temporal_tokens(self.spatial_tokens(patches), condition)
        context = self.inject(patches, temporal) + self._frame_times(patch_tokens.shape[0], patch_tokens.device)
        return self.context_out(context)

    def region_tokens(self, patch_tokens: torch.Tensor, region_masks: torch.Tensor, region_boxes: torch.Tensor,
                      shape_masks: torch.Tensor | None = None, cues: torch.Tensor | None = None) -> torch.Tensor:
        """patch_tokens (T, N, C); region_masks (R, T, h, w) in [0, 1] on the patch grid; region_boxes (R, 4)
        normalised; shape_masks (R, S, S) the region's mask cropped to its box (optional); cues (R, CUE_DIM)
        pixel colour and path cues (needed when built with region_cues=True) -> (R, region_token_count, D)."""
        count, patches = patch_tokens.shape[:2]
        regions = region_masks.shape[0]
        if regions == 0:
            return patch_tokens.new_zeros(0, self.region_token_count, self.out_dim)
        if region_masks.shape[1] != count or region_masks.shape[2] * region_masks.shape[3] != patches:
            raise ValueError(
                f"st-qformer: region masks {tuple(region_masks.shape)} do not match patch tokens {tuple(patch_tokens.shape)} "
                "(expected (R, T, h, w) with h * w = N)"
            )
        weights = region_masks.reshape(regions, count * patches).to(patch_tokens.dtype)
        total = weights.sum(dim=1, keepdim=True)
        # A region too small to cover any patch still gets a feature: fall back to uniform weights.
        weights = torch.where(total > 0, weights / total.clamp_min(1e-6), torch.full_like(weights, 1.0 / (count * patches)))
        pooled = weights @ patch_tokens.reshape(count * patches, -1)
        feature = self.region_feature(pooled)
        visible = (region_masks.flatten(2).amax(dim=2) > 0).float().mean(dim=1, keepdim=True)
        area = region_masks.flatten(1).mean(dim=1, keepdim=True)
        if shape_masks is None:
            shape_masks = _crop_to_box(region_masks.amax(dim=1), region_boxes, self.shape_size)
        elif shape_masks.shape[-2:] != (self.shape_size, self.shape_size):
            shape_masks = F.interpolate(shape_masks[:, None].float(), size=(self.shape_size,) * 2, mode="area")[:, 0]
        parts = [region_boxes.to(feature.dtype), area, visible, shape_masks.flatten(1).to(feature.dtype)]
        if self.region_cues:
            if cues is None or tuple(cues.shape) != (regions, CUE_DIM):
                raise ValueError(f"st-qformer was built with region_cues=True: pass cues ({regions}, {CUE_DIM}) "
                                 "from sama_agent.model.modeling.region_cues.region_cues(masks, pixels)")
            parts.append(cues.to(feature.dtype))
        shape_inputs = torch.cat(parts, dim=1)
        shape = self.region_shape(shape_inputs)
        if self.motion_mode is None:
            return torch.stack([feature, shape], dim=1)
        motion = self.region_motion(motion_features(cues.to(feature.dtype)))
        if self.motion_mode == "feature":
            return torch.stack([feature + motion, shape], dim=1)
        return torch.stack([feature, shape, motion], dim=1)


def _motion_mode(value) -> str | None:
    """region_motion: false, true or "feature" (added to the feature token), "token" (a third region token)."""
    if value is False or value is None:
        return None
    if value is True or value == "feature":
        return "feature"
    if value == "token":
        return "token"
    raise ValueError(f"st-qformer: region_motion must be false, true, \"feature\" or \"token\", got {value!r}")


def _square(count: int) -> tuple[int, int]:
    side = int(math.isqrt(count))
    if side * side != count:
        raise ValueError(f"st-qformer: {count} patches are not a square grid; pass grid=(h, w)")
    return side, side


def _crop_to_box(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(R, h, w) masks, (R, 4) normalised boxes -> (R, size, size) crops, resampled with roi-style grid sampling."""
    regions = masks.shape[0]
    steps = (torch.arange(size, device=masks.device, dtype=torch.float32) + 0.5) / size
    x0, y0, x1, y1 = boxes.float().unbind(1)
    xs = x0[:, None] + (x1 - x0)[:, None] * steps[None]  # (R, S)
    ys = y0[:, None] + (y1 - y0)[:, None] * steps[None]
    grid = torch.stack([xs[:, None, :].expand(-1, size, -1), ys[:, :, None].expand(-1, -1, size)], dim=-1) * 2 - 1
    return F.grid_sample(masks[:, None].float(), grid, mode="bilinear", align_corners=False)[:, 0].reshape(regions, size, size)


AGGREGATORS = (SpatioTemporalQFormer,)
