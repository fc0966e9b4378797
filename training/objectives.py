"""Training objectives a curriculum phase can mix (`phase.objectives`, name -> weight).

    model              the model's own loss: `model(sample).loss` (LM + [SEG] mask losses for SamaModel)
    segmenter_prompts  the model's SAM2 learns to segment from box and point prompts taken from the
                       ground-truth masks (no LLM involved), and - when the model's grounding head makes
                       where-maps - from the coarse dense prompt such a map gives (the mask pooled to half
                       SAM2's mask-prompt size), so it learns to outline the object a where-map points at. On CPU a randomly initialised segmenter
                       barely learns from [SEG] prompts alone (DESIGN.md section 8); learning masks from
                       geometric prompts first gives its decoder and trunk something they can learn
                       quickly, which [SEG] grounding then builds on. A phase's `prompts` options
                       (PromptOptions) choose the prompt kinds and how many frames are prompted.
    region_attributes  the attribute heads on every labelled object of a clip (no LLM, no SAM2)
    cell_motion        the key-frame cells' motion head on the cells holding a labelled object's centre

An objective returns (loss, {name: float} parts for the log, model output or None).
Its randomness comes from torch's global generator, which checkpoints save and restore.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..conversation import ConversationSample
from ..regions import box_mask

OBJECTIVES = ("model", "segmenter_prompts", "region_attributes", "cell_motion")
PROMPTS_PER_SAMPLE = 4
BOX_JITTER = 0.1  # share of the box size each side may move
MIN_SHOWN_PIXELS = 4  # fewer pixels of an object on a frame give no prompt there
# box: corner points; points: 1-3 positive clicks; where: the mask pooled to the coarse grid (what a
# where-map gives); coarse_box: a jittered box's pixels pooled the same way (what following a region
# from a box hands SAM2, Sam2Grounding.follow).
PROMPT_KINDS = ("box", "points", "where", "coarse_box")


@dataclass
class PromptOptions:
    """How the segmenter_prompts objective prompts SAM2 (a phase's `prompts`).

    kinds: the prompt kinds, drawn in equal shares (null: box and points, and where when the
        model's grounding head makes where-maps).
    frames: prompt every object visible on this many random frames of the clip - all objects
        the record lists when the data loads `object_masks`, else those its turns mention; a
        frame's encoding is the costly part, so this gives many prompts for little time
        (null: PROMPTS_PER_SAMPLE random object-frame pairs).
    Measured on the world: a fresh SAM2 decoder ignores its prompts for its first few hundred
    steps; dense prompts (where, coarse_box) with every object of two frames get it past that in
    about 500 steps, sparse boxes alone take about three times as long.
    """

    kinds: list[str] | None = None
    frames: int | None = None

    def __post_init__(self):
        if self.kinds is not None:
            unknown = sorted(set(self.kinds) - set(PROMPT_KINDS))
            if unknown or not self.kinds:
                raise ValueError(f"prompt kinds must be a non-empty list from {', '.join(PROMPT_KINDS)}; got {self.kinds!r}")
        if self.frames is not None and (isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1):
            raise ValueError(f"prompts.frames must be a whole number >= 1 (or null), got {self.frames!r}")


def model_objective(model: nn.Module, sample: ConversationSample):
    output = model(sample)
    return output.loss, None, output


def segmenter_prompt_objective(model: nn.Module, sample: ConversationSample, count: int = PROMPTS_PER_SAMPLE,
                               options: PromptOptions | None = None):
    """SAM2 mask loss from prompts made from the truth, the kinds drawn in equal shares (PromptOptions)."""
    from ..model.modeling.grounding_head import coarse_where_prompt, mask_losses

    options = options or PromptOptions()
    sam2 = _segmenter_of(model)
    if options.frames:
        chosen = _objects_on_frames(sample, options.frames)
    else:
        pairs = _visible_pairs(sample)
        chosen = [pairs[int(i)] for i in torch.randperm(len(pairs))[:count]]
    if not chosen:
        return None, {"prompt_bce_loss": 0.0, "prompt_dice_loss": 0.0}, None
    frames_needed = sorted({frame for _, frame in chosen})
    pixels = torch.from_numpy(np.ascontiguousarray(sample.frames[frames_needed])).permute(0, 3, 1, 2).float().div_(255)
    features = sam2.encode_frames(pixels.to(next(model.parameters()).device))
    height, width = sample.frames.shape[1:3]
    masks = [torch.from_numpy(np.ascontiguousarray(volume[frame])) for volume, frame in chosen]
    slots = [frames_needed.index(frame) for _, frame in chosen]
    grid = _where_grid(model)
    kinds = tuple(options.kinds) if options.kinds else (("box", "points", "where") if grid else ("box", "points"))
    grid = grid or sam2.coarse_grid
    drawn = torch.randint(0, len(kinds), (len(chosen),))
    logits, targets = [], []
    for number, kind in enumerate(kinds):
        members = [i for i in range(len(chosen)) if int(drawn[i]) == number]
        if not members:
            continue
        selected = features.select([slots[i] for i in members])
        if kind == "box":
            boxes = torch.stack([_jittered_box(masks[i], height, width) for i in members])
            logits.append(sam2.decode_masks(selected, boxes=boxes, orig_hw=(height, width)))
        elif kind == "points":
            points, labels = _positive_points([masks[i] for i in members])
            logits.append(sam2.decode_masks(selected, points=(points, labels), orig_hw=(height, width)))
        elif kind == "where":
            dense = coarse_where_prompt(torch.stack([masks[i] for i in members]), grid)
            logits.append(sam2.decode_masks(selected, mask_inputs=dense, orig_hw=(height, width)))
        else:  # coarse_box
            boxes = torch.stack([torch.from_numpy(box_mask(tuple(_jittered_box(masks[i], height, width).tolist()), height, width)).float()
                                 for i in members])
            logits.append(sam2.decode_masks(selected, mask_inputs=coarse_where_prompt(boxes, grid), orig_hw=(height, width)))
        targets += [masks[i] for i in members]
    logits = torch.cat(logits)
    targets = torch.stack(targets)[:, None].float()
    config = getattr(model, "config", None)
    points = getattr(config, "mask_points", 1024)
    bce, dice = mask_losses(logits, targets, points, getattr(config, "mask_oversample", 3.0), getattr(config, "mask_importance", 0.75))
    loss = getattr(config, "bce_loss_weight", 2.0) * bce + getattr(config, "dice_loss_weight", 0.5) * dice
    return loss, {"prompt_bce_loss": float(bce.detach()), "prompt_dice_loss": float(dice.detach())}, None


def region_attribute_objective(model: nn.Module, sample: ConversationSample, model_output=None):
    """`model_output`: this sample's output of the model objective; its encoded video is reused (the
    encoder is deterministic, so the loss is the same and the step does not encode the clip twice)."""
    if not hasattr(model, "region_attribute_loss"):
        raise ValueError("the region_attributes objective needs a model with region_attribute_loss(sample) (SamaModel with region_attributes).")
    return _on_encoded_clip(model.region_attribute_loss, sample, model_output, "region_attribute_loss", "attribute_labels")


def cell_motion_objective(model: nn.Module, sample: ConversationSample, model_output=None):
    """The cell-motion head's loss (SamaModel.cell_motion_loss); reuses the model objective's encoded clip."""
    if not hasattr(model, "cell_motion_loss") or getattr(model, "cell_motion", None) is None:
        raise ValueError("the cell_motion objective needs a SamaModel with cell_motion in its config.")
    return _on_encoded_clip(model.cell_motion_loss, sample, model_output, "cell_motion_loss", "motion_cells")


def _on_encoded_clip(loss_of, sample: ConversationSample, model_output, loss_name: str, count_name: str):
    """loss_of(sample, video=...) with the clip the model objective encoded, if it ran -> an objective's result."""
    videos = getattr(model_output, "videos", None)
    loss, count = loss_of(sample, video=videos[0] if videos else None)
    if not count:  # the same log keys on every process: the runner sums them in one all-reduce
        return None, {loss_name: 0.0, count_name: 0}, None
    return loss, {loss_name: float(loss.detach()), count_name: count}, None


def combined_loss(model: nn.Module, sample: ConversationSample, weights: dict[str, float], prompts: PromptOptions | None = None):
    """(weighted loss or None, parts, the model's output if the model objective ran); `prompts`
    configures the segmenter_prompts objective."""
    total, parts, output = None, {}, None
    for name, weight in sorted(weights.items(), key=lambda item: item[0] != "model"):  # the model first: others reuse its output
        if not weight:
            continue
        if name == "model":
            loss, extra, output = model_objective(model, sample)
        elif name == "segmenter_prompts":
            loss, extra, _ = segmenter_prompt_objective(model, sample, options=prompts)
        elif name == "region_attributes":
            loss, extra, _ = region_attribute_objective(model, sample, output)
        elif name == "cell_motion":
            loss, extra, _ = cell_motion_objective(model, sample, output)
        else:
            raise ValueError(f"unknown objective '{name}'; known: {', '.join(OBJECTIVES)}")
        parts.update(extra or {})
        if loss is not None:
            total = weight * loss if total is None else total + weight * loss
    return total, parts, output


@torch.no_grad()
def box_prompt_iou(model: nn.Module, sample: ConversationSample, frames: list[int]) -> list[float]:
    """IoU of the segmenter's masks from each [SEG] target's tight box, per target and frame where it is visible."""
    sam2 = _segmenter_of(model)
    height, width = sample.frames.shape[1:3]
    pixels = torch.from_numpy(np.ascontiguousarray(sample.frames[frames])).permute(0, 3, 1, 2).float().div_(255)
    features = sam2.encode_frames(pixels.to(next(model.parameters()).device))
    scores = []
    for turn in sample.turns:
        for volume in turn.seg_masks:
            slots = [i for i, f in enumerate(frames) if volume[f].any()]
            if not slots:
                continue
            masks = [torch.from_numpy(np.ascontiguousarray(volume[frames[i]])) for i in slots]
            boxes = torch.stack([_tight_box(m) for m in masks])
            logits = sam2.decode_masks(features.select(slots), boxes=boxes, orig_hw=(height, width))
            guess = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[:, 0] > 0
            for predicted, truth in zip(guess, masks):
                union = (predicted | truth).sum().item()
                scores.append((predicted & truth).sum().item() / union if union else 1.0)
    return scores


def _where_grid(model: nn.Module) -> tuple[int, int] | None:
    """The grid coarse where-prompts are pooled to (Sam2Grounding.coarse_grid), or None when the
    model's grounding head makes no where-maps."""
    if not getattr(getattr(model, "seg_head", None), "where", False):
        return None
    return model.sam2.coarse_grid


def has_segmenter(model: nn.Module) -> bool:
    sam2 = getattr(model, "sam2", None)
    return sam2 is not None and hasattr(sam2, "decode_masks") and hasattr(sam2, "encode_frames")


def _segmenter_of(model: nn.Module):
    if not has_segmenter(model):
        raise ValueError("the segmenter_prompts objective needs a model with a `sam2` part offering encode_frames / decode_masks (SamaModel).")
    return model.sam2


def _turn_objects(sample: ConversationSample) -> list[np.ndarray]:
    """Every ground-truth or region mask volume the turns hold, each object once, in order of mention."""
    objects = {}
    for turn in sample.turns:
        for volume in list(turn.seg_masks) + list(turn.region_masks):
            objects.setdefault(volume.tobytes().__hash__(), volume)
    return list(objects.values())


def _shown(volume: np.ndarray) -> np.ndarray:
    """(T,) bool: the frames where an object shows (at least MIN_SHOWN_PIXELS pixels)."""
    return volume.reshape(volume.shape[0], -1).sum(axis=1) >= MIN_SHOWN_PIXELS


def _visible_pairs(sample: ConversationSample) -> list[tuple[np.ndarray, int]]:
    """(object volume, frame) for every ground-truth or region mask and frame where it shows, each object once."""
    return [(volume, int(frame)) for volume in _turn_objects(sample) for frame in np.flatnonzero(_shown(volume))]


def _objects_on_frames(sample: ConversationSample, count: int) -> list[tuple[np.ndarray, int]]:
    """(object volume, frame) for every object shown on `count` random frames where any shows."""
    objects = sample.meta.get("object_masks") if isinstance(sample.meta, dict) else None
    objects = list(objects) if objects is not None else _turn_objects(sample)
    if not objects:
        return []
    shown = np.stack([_shown(volume) for volume in objects])  # (objects, T)
    candidates = np.flatnonzero(shown.any(axis=0))
    frames = sorted(int(candidates[int(i)]) for i in torch.randperm(len(candidates))[:count])
    return [(volume, frame) for frame in frames for volume, seen in zip(objects, shown) if seen[frame]]


def _tight_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def _jittered_box(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    box = _tight_box(mask)
    size = torch.stack([box[2] - box[0], box[3] - box[1], box[2] - box[0], box[3] - box[1]])
    box = box + (torch.rand(4) * 2 - 1) * BOX_JITTER * size
    box = torch.stack([box[0].clamp(0, width - 1), box[1].clamp(0, height - 1), box[2].clamp(1, width), box[3].clamp(1, height)])
    return torch.stack([box[0], box[1], torch.maximum(box[2], box[0] + 1), torch.maximum(box[3], box[1] + 1)])


def _positive_points(masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-3 positive points inside each mask (the same count for the batch), as pixel (x, y) centres."""
    count = int(torch.randint(1, 4, ()))
    coords = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        picks = torch.randint(0, len(xs), (count,))
        coords.append(torch.stack([xs[picks].float() + 0.5, ys[picks].float() + 0.5], dim=1))
    return torch.stack(coords), torch.ones(len(masks), count, dtype=torch.int32)
