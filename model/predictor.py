"""SamaPredictor: multi-turn grounded chat about one video.

    predictor = SamaPredictor(SamaModel.from_pretrained(folder))
    predictor.set_video(Video("clip.mp4"))          # encoded once
    first = predictor.ask("segment the red disc", [])
    region = Region(frame=3, mask=first.tracks[0].mask(3))
    second = predictor.ask("what is <mask> doing?", [region])   # turn 1 stays in context
    predictor.prompt_text()                          # the sequence the LLM has seen

Frames: up to `num_context_frames` evenly sampled from the whole video give one
context token each per turn; `num_key_frames` of them (evenly spaced) give
pooled patch tokens and are where `[SEG]` prompts are decoded. Each `[SEG]`
becomes a mask track over every frame of the video at its original size,
by memory propagation from the key frames (the model's SAM2, or another
segmenter plugin; one that does not take embeddings gets key-frame masks
decoded by the model's own SAM2 instead, DESIGN §3).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sama_agent.conversation import grounded_phrases, plain_text
from sama_agent.errors import RegionError, SamaError
from sama_agent.masks import MaskTrack, heavy_parts
from sama_agent.regions import PLACEHOLDER, Region, parse_question, prompt_mask
from sama_agent.segmenters import adapt_prompts
from sama_agent.video import Video

from .modeling.sama import ConversationState, SamaModel, VideoContext, dense_prompts

WHERE_KEY_FRAMES = 512  # clips up to this long keep their where-keys (32x32x64 floats a frame at 128 px)


@dataclass
class TurnResult:
    """One answered turn.

    text: the answer without markup; raw: with `<p>phrase</p> [SEG]`; phrases: the grounded
    phrases in order; tracks: one MaskTrack per [SEG] over every frame, at the video's size;
    key_frames: video frame indices the [SEG] prompts were decoded on.
    """

    text: str
    raw: str
    phrases: list[str]
    tracks: list[MaskTrack]
    key_frames: list[int] = field(default_factory=list)
    question: str = ""


class SamaPredictor:
    """Holds one encoded video and one conversation about it."""

    def __init__(self, model: SamaModel, segmenter=None):
        self.model = model.eval()
        self.segmenter = segmenter if segmenter is not None else self._own_segmenter()
        self.video: Video | None = None
        self.context: VideoContext | None = None
        self.context_frames: list[int] = []
        self.key_frames: list[int] = []
        self.state: ConversationState | None = None
        self.history: list[TurnResult] = []
        self.progress = False
        self._where_keys: dict[int, tuple] = {}  # chunk start -> where-keys of the current video

    def _own_segmenter(self):
        """The configured segmenter plugin; "sam2" wraps the model's own (trained) SAM2."""
        from sama_agent.plugins import get_registry

        config = self.model.config
        registry = get_registry()
        if config.segmenter == "sam2":
            return registry.create("segmenter", "sam2", grounding=self.model.sam2)
        return registry.create("segmenter", config.segmenter, **config.segmenter_options)

    # ---- the video --------------------------------------------------------------------------
    @torch.no_grad()
    def set_video(self, video: Video | str | Path) -> None:
        """Decode the context frames and encode them once; starts a new conversation."""
        self.video = video if isinstance(video, Video) else Video(video)
        self._where_keys = {}
        config = self.model.config
        self.context_frames = self.video.sample(count=config.num_context_frames)
        key_positions = _evenly(len(self.context_frames), config.num_key_frames)
        self.key_frames = [self.context_frames[k] for k in key_positions]
        frames = self.video.frames(self.context_frames)
        self.context = self.model.encode_video(frames, key_positions)
        self.reset()

    def reset(self) -> None:
        """Forget the conversation; keep the encoded video."""
        self.state = self.model.new_conversation(self.context) if self.context is not None else None
        self.history = []

    # ---- asking -------------------------------------------------------------------------------
    @torch.no_grad()
    def ask(self, question_text: str, regions: list[Region] | None = None) -> TurnResult:
        """One turn. `question_text` has one `<mask>` per region (or `<region ...>` tags, parsed here)."""
        if self.state is None:
            raise SamaError("no video is set; call set_video(video) before ask().")
        regions = list(regions or [])
        if "<region" in question_text.lower():
            if regions:
                raise RegionError("give regions either as <region ...> tags in the question or as a list, not both.")
            question_text, regions = parse_question(question_text)
        if question_text.count(PLACEHOLDER) != len(regions):
            raise RegionError(f"the question has {question_text.count(PLACEHOLDER)} {PLACEHOLDER} placeholder(s) but {len(regions)} region(s) were given.")
        masks = np.stack([self.region_masks(r) for r in regions]) if regions else \
            np.zeros((0, len(self.context_frames), self.video.height, self.video.width), bool)
        answer_ids, seg_hidden = self.model.generate_turn(self.state, question_text, masks)
        raw = self.model.llm.decode(answer_ids)
        phrases = grounded_phrases(raw)
        tracks = self._tracks(seg_hidden, phrases)
        result = TurnResult(plain_text(raw), raw, phrases, tracks, list(self.key_frames), question_text)
        self.history.append(result)
        return result

    def prompt_text(self) -> str:
        """Everything the LLM has seen in this conversation, as text (placeholder runs shortened)."""
        return self.model.prompt_text(self.state.ids if self.state else [])

    # ---- regions -> per-context-frame masks ------------------------------------------------------
    def region_masks(self, region: Region) -> np.ndarray:
        """(T, H, W) bool over the context frames: the region's own track when it has one (a mask
        handle, a dataset masklet), else the region followed to every context frame (so its feature
        pools over all frames where it is visible) - frame to frame with a per-frame model's own SAM2
        (Sam2Grounding.follow), by the segmenter's propagation otherwise - else its prompt mask on the
        nearest context frame."""
        video = self.video
        if region.mask is None and region.mask_ref is not None:
            raise RegionError(f"{region.to_text()}: resolve the mask reference first (Region.resolve(store)).")
        region.validate(video.height, video.width, video.num_frames)
        masks = np.zeros((len(self.context_frames), video.height, video.width), bool)
        if region.track is not None:
            for slot, frame in enumerate(self.context_frames):
                if frame in region.track.rles:
                    masks[slot] = region.track.mask(frame)
        elif self.model.config.region_propagation and self._follows_per_frame() and region.kinds <= {"box", "points", "mask"}:
            prompt = "coarse" if self.model.config.where_logits else "dense"  # as its [SEG] masks are made
            found = self._own_sam2().follow(video, region, frames=self.context_frames, prompt=prompt)
            for slot, frame in enumerate(self.context_frames):
                masks[slot] = found[frame]
        elif self.model.config.region_propagation and region.kinds <= set(self.segmenter.prompt_kinds):
            wanted = sorted(set(self.context_frames))
            for index, found in self.segmenter.propagate(video, {0: [region]}, frames=wanted):
                if index in self.context_frames and 0 in found:
                    masks[self.context_frames.index(index)] = found[0]
        if not masks.any():
            nearest = int(np.argmin([abs(f - region.frame) for f in self.context_frames]))
            masks[nearest] = prompt_mask(region, video.height, video.width)
        return masks

    def _own_sam2(self):
        """The model's SAM2 when the segmenter is it (either may sit behind a feature cache), else None."""
        grounding = getattr(self.segmenter, "grounding", None)
        return grounding if _unwrapped(grounding) is _unwrapped(self.model.sam2) else None

    def _follows_per_frame(self) -> bool:
        """A per-frame model with its own SAM2 decodes every frame on its own and follows regions frame to
        frame (Sam2Grounding.follow): its SAM2 was trained on prompts, not on memory propagation."""
        return self.model.config.propagation == "per_frame" and self._own_sam2() is not None

    # ---- [SEG] -> tracks ---------------------------------------------------------------------------
    def _tracks(self, seg_hidden: torch.Tensor, phrases: list[str]) -> list[MaskTrack]:
        if seg_hidden.shape[0] == 0:
            return []
        prompts = self.model.seg_prompts(seg_hidden, self.context).cpu()  # (S, K, 256)
        if self._follows_per_frame():
            return self._per_frame_tracks(prompts, phrases, seg_hidden)
        object_prompts = {
            s: [Region(frame=frame, embedding=prompts[s, k]) for k, frame in enumerate(self.key_frames)]
            for s in range(prompts.shape[0])
        }
        if "embedding" not in self.segmenter.prompt_kinds:
            object_prompts = adapt_prompts(self.segmenter, self.video, object_prompts, self._decode_embedding)
        video = self.video
        tracks = {s: MaskTrack(video.height, video.width, label=phrases[s] if s < len(phrases) else "", object_id=s)
                  for s in object_prompts}
        live = {s: p for s, p in object_prompts.items() if p}
        if live:
            for index, found in self.segmenter.propagate(video, live):
                for s, mask in found.items():
                    tracks[s].set(index, mask)
        empty = np.zeros((video.height, video.width), bool)
        for s, track in tracks.items():  # an object the segmenter could not follow is empty everywhere
            if not track.rles:
                for index in range(video.num_frames):
                    track.set(index, empty)
        return [tracks[s] for s in sorted(tracks)]

    def _per_frame_tracks(self, prompts: torch.Tensor, phrases: list[str], seg_hidden: torch.Tensor) -> list[MaskTrack]:
        """Every frame decoded on its own by the model's SAM2 with its nearest key frame's prompt (and, when
        the grounding head makes where-maps, that frame's own dense prompt; with `seg_part_share` a frame's
        mask keeps only the connected parts its where-map weighs enough), streamed."""
        video, sam2 = self.video, self.model.sam2
        size = (video.height, video.width)
        tracks = [MaskTrack(video.height, video.width, label=phrases[s] if s < len(phrases) else "", object_id=s)
                  for s in range(prompts.shape[0])]
        nearest = [int(np.argmin([abs(f - k) for k in self.key_frames])) for f in range(video.num_frames)]
        batch = max(1, sam2.config.encode_batch)
        share = self.model.config.seg_part_share
        prompts = prompts.to(self.model.device)
        for start in range(0, video.num_frames, batch):
            chunk = list(range(start, min(start + batch, video.num_frames)))
            features = sam2.encode_uint8(video.frames(chunk))
            maps = self.model.where_maps(seg_hidden, features, self._chunk_where_keys(start, features))  # (S, len(chunk), h, w)
            dense = None if maps is None else dense_prompts(maps)
            for s, track in enumerate(tracks):
                sparse = prompts[s, [nearest[f] for f in chunk]][:, None]
                logits = self.model.decode_seg(features, sparse, None if dense is None else dense[s], size, sam2=sam2)
                masks = (sam2.upsample(logits, size)[:, 0] > 0).cpu().numpy()
                if share > 0 and maps is not None:
                    weights = F.interpolate(maps[s, :, None].exp(), size=size, mode="nearest")[:, 0].cpu().numpy()
                    masks = [heavy_parts(m, w, share) for m, w in zip(masks, weights)]
                for f, mask in zip(chunk, masks):
                    track.set(f, mask)
        return tracks

    def _chunk_where_keys(self, start: int, features):
        """A chunk's where-keys, kept for the session when the whole clip's fit WHERE_KEY_FRAMES: they do
        not depend on the question, so a later turn only matches its [SEG] against them."""
        if start in self._where_keys:
            return self._where_keys[start]
        keys = self.model.where_keys(features)
        if keys is not None and self.video.num_frames <= WHERE_KEY_FRAMES:
            self._where_keys[start] = keys
        return keys

    def _decode_embedding(self, video, region: Region) -> np.ndarray:
        """A [SEG] embedding on a key frame -> that frame's mask, by the model's own SAM2."""
        key = self.key_frames.index(region.frame)
        prompt = torch.as_tensor(region.embedding, device=self.model.device)
        return self.model.decode_key_frame(self.context, key, prompt, (video.height, video.width))


def _unwrapped(grounding):
    """A Sam2Grounding itself, whether given bare or behind a session's feature cache."""
    return getattr(grounding, "_grounding", grounding)


def _evenly(total: int, count: int) -> list[int]:
    from .modeling.sama import evenly_spaced

    return evenly_spaced(total, count)


__all__ = ["SamaPredictor", "TurnResult", "prompt_mask"]
