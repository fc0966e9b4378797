"""The typed contracts each kind of component meets.

A plugin registers a *class* (a factory); the host builds instances with
`cls(**options)`. The class must carry a `name` and the methods below; the
host checks that when the class is registered and checks the built instance
against the same protocol. Shapes use T frames, N patches, C encoder
channels, D LLM hidden size, L tokens, R regions, B batch.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

KINDS = ("encoder", "aggregator", "llm", "segmenter", "tool", "command")
SEGMENTER_PROMPT_KINDS = frozenset({"box", "points", "mask", "embedding"})


@runtime_checkable
class Encoder(Protocol):
    """Frames -> patch tokens.

    Attributes: `embed_dim` (C), `image_size` (frames are resized to a square of
    this side before encoding), `grid` ((h, w) patches, N = h * w).
    `encode(frames)`: frames (T, 3, H, W) float32 RGB in [0, 1] -> (T, N, C) float32.
    """

    name: str
    embed_dim: int
    image_size: int

    def encode(self, frames: Any) -> Any: ...


@runtime_checkable
class Aggregator(Protocol):
    """The spatio-temporal context aggregator.

    `context_tokens(patch_tokens, question, region_feats)`:
        patch_tokens (T, N, C) float32; question (L, D) token embeddings of the
        current question; region_feats (R, k, D) or None -> (T, D), one
        context token per frame for this turn (k: the region's tokens as the
        LLM sees them, this aggregator's plus any word tokens, see below).
    `region_tokens(patch_tokens, region_masks, region_boxes)`:
        patch_tokens (T, N, C); region_masks (R, T, h, w) float in [0, 1] on the
        patch grid (all-zero where the region is not visible); region_boxes
        (R, 4) normalised x0, y0, x1, y1 -> (R, 2, D): mask-pooled feature and
        box-shape feature, placed between `<vp>` and `</vp>`. An aggregator
        that gives more tokens per region says so in an optional
        `region_token_count` attribute (the st-qformer's motion token makes 3).
        A model with `region_word_tokens` appends one token per attribute head
        after them (with "text", the heads' chosen values as ordinary word
        tokens); the aggregator does not make those.
    """

    name: str

    def context_tokens(self, patch_tokens: Any, question: Any, region_feats: Any = None) -> Any: ...

    def region_tokens(self, patch_tokens: Any, region_masks: Any, region_boxes: Any) -> Any: ...


@runtime_checkable
class LanguageModel(Protocol):
    """A causal LM behind a tokenizer that knows `[SEG]`, `<p>`, `</p>`, `<vp>`, `</vp>`.

    Attributes: `hidden_size` (D), `tokenizer` (a transformers tokenizer).
    `embed(input_ids)`: (B, L) int64 -> (B, L, D).
    `forward(inputs_embeds, attention_mask, past_key_values=None)`: (B, L, D),
        (B, L) -> an object with `logits` (B, L, V), `hidden_states` (last
        layer, (B, L, D)) and `past_key_values`.
    """

    name: str
    hidden_size: int
    tokenizer: Any

    def embed(self, input_ids: Any) -> Any: ...

    def forward(self, inputs_embeds: Any, attention_mask: Any, past_key_values: Any = None) -> Any: ...


@runtime_checkable
class Segmenter(Protocol):
    """Prompts on chosen frames -> one mask track per object, streamed.

    `prompt_kinds`: the subset of {"box", "points", "mask", "embedding"} it
    accepts. Prompts are `{object_id: [Region, ...]}`; regions use pixel
    coordinates of the original video; an `embedding` is a (256,) float
    tensor.
    `propagate(video, prompts, frames=None)`: yields `(frame_index,
    {object_id: (H, W) bool mask})` once for every requested frame (all
    frames when `frames` is None), in any order, holding only a bounded
    number of frames in memory whatever the clip length.
    `segment(video, prompts, frames=None)`: the same, collected into
    `{object_id: MaskTrack}` (see `sama_agent.segmenters.SegmenterBase`).
    """

    name: str
    prompt_kinds: frozenset

    def propagate(self, video: Any, prompts: Mapping[int, Sequence[Any]], frames: Sequence[int] | None = None) -> Iterator[tuple[int, dict[int, np.ndarray]]]: ...

    def segment(self, video: Any, prompts: Mapping[int, Sequence[Any]], frames: Sequence[int] | None = None) -> dict: ...


PROTOCOLS = {"encoder": Encoder, "aggregator": Aggregator, "llm": LanguageModel, "segmenter": Segmenter}


def protocol_problems(kind: str, component: Any) -> list[str]:
    """What a registered component lacks for its kind; empty when it conforms.

    For classes only `name`, class-level attributes and methods can be
    checked; instance attributes are checked again on the built instance.
    """
    if kind == "tool":
        return [] if callable(component) else ["a tool factory must be callable(toolkit) -> BaseTool"]
    if kind == "command":
        import click

        return [] if isinstance(component, click.Command) else ["a command must be a click.Command"]
    protocol = PROTOCOLS[kind]
    problems = []
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not name:
        problems.append("has no string attribute 'name'")
    for member in _members(protocol):
        value = getattr(component, member, None)
        if member in _methods(protocol):
            if not callable(value):
                problems.append(f"lacks method '{member}()'")
        elif not isinstance(component, type) and value is None:
            problems.append(f"lacks attribute '{member}'")
    if kind == "segmenter":
        kinds = getattr(component, "prompt_kinds", None)
        if not kinds or not set(kinds) <= SEGMENTER_PROMPT_KINDS:
            problems.append(f"prompt_kinds must be a non-empty subset of {sorted(SEGMENTER_PROMPT_KINDS)}, got {kinds!r}")
    return problems


def _members(protocol) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {})) | _methods(protocol)
    return sorted(n for n in names if n != "name")


def _methods(protocol) -> set[str]:
    return {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
