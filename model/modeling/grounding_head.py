"""The grounding head and the mask losses.

Each `[SEG]` token's last hidden state goes through an MLP to a 256-d sparse
prompt for SAM2. With `per_frame=True` the prompt is refined per key frame
from that frame's pooled visual tokens (a prompt can then say "the one on the
left *in this frame*"); otherwise every key frame gets the same prompt.

With `where=True` the head also says *where* on each frame: the [SEG] state is
matched against that frame's SAM2 features (all levels brought to the finest,
stride 4), giving a map of log-probabilities that sum to one per frame. The map
is learnt directly against the ground-truth mask pooled to its grid
(`where_loss`: the best map spreads evenly over the object), handed to SAM2 as
a dense mask prompt at SAM2's own mask-prompt size, and added to SAM2's mask
logits (SamaModel.decode_seg): SAM2 outlines, the map says which object. A
small SAM2 learns to pick one object from a sparse embedding slowly on CPU (it
first learns to light up every object); the map gives it the location and
leaves it the outline, which it learns quickly.

Losses follow SAMA: sigmoid BCE and dice on point-sampled mask logits, with
importance sampling toward uncertain points (as in Mask2Former / PointRend).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroundingHead(nn.Module):
    """(S, D) [SEG] hidden states (+ (K, D) key-frame summaries) -> (S, K, prompt_dim) sparse prompts."""

    def __init__(self, hidden_size: int, prompt_dim: int = 256, hidden: int = 256, per_frame: bool = False, dropout: float = 0.0,
                 where: bool = False, feature_dim: int | None = None, where_dim: int = 64):
        super().__init__()
        self.per_frame = per_frame
        self.prompt_dim = prompt_dim
        self.where = bool(where)
        if self.where:
            if not feature_dim:
                raise ValueError("GroundingHead(where=True) needs feature_dim, the channels of the feature maps it reads")
            self.where_query = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, where_dim))
            self.where_key = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, where_dim))
            self.where_scale = where_dim ** -0.5
        self.mlp = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, prompt_dim))
        if per_frame:
            self.frame_mlp = nn.Sequential(nn.LayerNorm(2 * hidden_size), nn.Linear(2 * hidden_size, hidden), nn.GELU(),
                                           nn.Linear(hidden, prompt_dim))
            nn.init.zeros_(self.frame_mlp[-1].weight)  # start as the frame-independent prompt
            nn.init.zeros_(self.frame_mlp[-1].bias)

    def forward(self, seg_hidden: torch.Tensor, frame_summaries: torch.Tensor) -> torch.Tensor:
        """seg_hidden (S, D); frame_summaries (K, D) -> (S, K, prompt_dim)."""
        frames = frame_summaries.shape[0]
        prompts = self.mlp(seg_hidden)[:, None].expand(-1, frames, -1)
        if self.per_frame:
            pairs = torch.cat([seg_hidden[:, None].expand(-1, frames, -1), frame_summaries[None].expand(seg_hidden.shape[0], -1, -1)], -1)
            prompts = prompts + self.frame_mlp(pairs)
        return prompts

    def where_maps(self, seg_hidden: torch.Tensor, feature_maps: torch.Tensor) -> torch.Tensor:
        """seg_hidden (S, D); feature_maps (T, C, h, w) of T frames -> (S, T, h, w) log-probabilities
        over each frame's grid of where the [SEG] object is."""
        return self.where_maps_from_keys(seg_hidden, self.where_keys(feature_maps), feature_maps.shape[-2:])

    def where_keys(self, feature_maps: torch.Tensor) -> torch.Tensor:
        """(T, C, h, w) -> (T, h*w, A): the query-independent half of a where-map (a session can keep it)."""
        if not self.where:
            raise ValueError("this grounding head was built without where=True")
        return self.where_key(feature_maps.flatten(2).transpose(1, 2))

    def where_maps_from_keys(self, seg_hidden: torch.Tensor, keys: torch.Tensor, grid) -> torch.Tensor:
        query = self.where_query(seg_hidden)  # (S, A)
        scores = torch.einsum("sa,tna->stn", query, keys) * self.where_scale
        return scores.log_softmax(dim=-1).reshape(seg_hidden.shape[0], keys.shape[0], *grid)


def where_loss(log_maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy of (B, h, w) where-maps against (B, H, W) masks pooled to the grid (the share of
    the object in each cell); frames where the object does not show are left out -> (mean, count)."""
    grid = log_maps.shape[-2:]
    pooled = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0].flatten(1)  # (B, h*w)
    total = pooled.sum(dim=1)
    shown = total > 0
    if not bool(shown.any()):
        return log_maps.new_zeros(()), 0
    target = pooled[shown] / total[shown, None]
    return -(target * log_maps.flatten(1)[shown]).sum(dim=1).mean(), int(shown.sum())


def dense_prompt(log_maps: torch.Tensor) -> torch.Tensor:
    """(B, h, w) where-map log-probabilities -> (B, 1, h, w) dense mask prompt for SAM2: about 0 at
    the most likely cell, falling with its log-probability, clamped so the scale stays small."""
    peak = log_maps.flatten(1).amax(dim=1)[:, None, None]
    return (log_maps - peak).clamp_min(-8.0)[:, None] + 4.0


def coarse_where_prompt(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) masks -> (B, 1, h, w) dense prompts as a good where-map would give: each mask's share
    per grid cell as a distribution, mixed with a little uniform mass, through `dense_prompt`."""
    pooled = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]
    share = pooled / pooled.flatten(1).sum(1).clamp_min(1e-6)[:, None, None]
    cells = grid[0] * grid[1]
    return dense_prompt((0.9 * share + 0.1 / cells).log())


# ---- point-sampled mask losses ----------------------------------------------------------------
def sample_points(logits: torch.Tensor, count: int, oversample: float = 3.0, importance: float = 0.75,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, h, w) logits -> (B, count, 2) points in [0, 1] (x, y): a share `importance` of them
    where the prediction is least certain (|logit| smallest), the rest uniform."""
    batch = logits.shape[0]
    candidates = int(count * oversample)
    points = torch.rand(batch, candidates, 2, device=logits.device, generator=generator)
    with torch.no_grad():
        values = point_sample(logits.detach(), points)[:, 0]  # (B, candidates)
        uncertain = int(importance * count)
        chosen = (-values.abs()).topk(uncertain, dim=1).indices
    picked = torch.gather(points, 1, chosen[..., None].expand(-1, -1, 2))
    uniform = torch.rand(batch, count - uncertain, 2, device=logits.device, generator=generator)
    return torch.cat([picked, uniform], dim=1)


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) maps at (B, P, 2) points in [0, 1] -> (B, C, P), bilinear."""
    grid = (points * 2 - 1)[:, :, None]  # (B, P, 1, 2)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False)[..., 0]


def mask_losses(logits: torch.Tensor, targets: torch.Tensor, count: int, oversample: float = 3.0, importance: float = 0.75,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean sigmoid BCE and mean dice over B masks.

    logits (B, 1, h, w) low-res mask logits; targets (B, 1, H, W) {0, 1} ground truth at any size
    (both are sampled at the same normalised points, so their sizes need not match).
    """
    points = sample_points(logits, count, oversample, importance, generator)
    predicted = point_sample(logits, points)[:, 0]
    truth = point_sample(targets.float(), points)[:, 0]
    bce = F.binary_cross_entropy_with_logits(predicted, truth, reduction="none").mean(dim=1)
    probability = predicted.sigmoid()
    dice = 1 - (2 * (probability * truth).sum(1) + 1) / (probability.sum(1) + truth.sum(1) + 1)
    return bce.mean(), dice.mean()
