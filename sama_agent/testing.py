"""Conformance kit: reusable pytest checks a component author runs on their own component.

    from sama_agent.testing import SegmenterConformance

    class TestMySegmenter(SegmenterConformance):
        @pytest.fixture
        def segmenter(self):
            return MySegmenter()

Subclass the class for your kind, provide the fixture it names, and pytest
collects every check. Set `check_quality = False` for a component with
untrained weights (the quality check expects a sensible mask on a clean clip).
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from .errors import RegionError
from .masks import MaskTrack
from .protocols import Aggregator, Encoder, LanguageModel, Segmenter, protocol_problems
from .regions import Region
from .video import Video

SPECIAL_TOKENS = ("[SEG]", "<p>", "</p>", "<vp>", "</vp>")


def write_square_clip(folder, frames: int = 12, size: tuple[int, int] = (96, 128), side: int = 28, step: int = 3):
    """A frame folder with a red square moving right over a grey textured background.

    Returns (Video, masks (T, H, W) bool): the exact masks of the square.
    """
    from PIL import Image

    height, width = size
    rng = np.random.default_rng(0)
    background = (110 + rng.integers(-20, 20, (height, width, 1))).repeat(3, axis=2).astype(np.uint8)
    masks = np.zeros((frames, height, width), bool)
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(frames):
        image = background.copy()
        x0, y0 = 8 + step * t, height // 2 - side // 2
        masks[t, y0 : y0 + side, x0 : x0 + side] = True
        image[masks[t]] = (220, 30, 30)
        Image.fromarray(image).save(folder / f"{t:05d}.png")
    return Video(folder, fps=10), masks


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _region(kind: str, frame: int, mask: np.ndarray) -> Region:
    if kind == "box":
        return Region(frame=frame, box=_box_of(mask))
    if kind == "points":
        ys, xs = np.nonzero(mask)
        return Region(frame=frame, points=((float(xs.mean()), float(ys.mean())),), labels=(1,))
    return Region(frame=frame, mask=mask)


class SegmenterConformance:
    """Checks for the segmenter contract (DESIGN §3). Fixture to provide: `segmenter`."""

    check_quality = True

    @pytest.fixture
    def clip(self, tmp_path):
        return write_square_clip(tmp_path / "clip")

    def _kinds(self, segmenter):
        return [k for k in ("box", "mask", "points") if k in segmenter.prompt_kinds]

    def test_meets_protocol(self, segmenter):
        assert protocol_problems("segmenter", segmenter) == []
        assert isinstance(segmenter, Segmenter)
        assert self._kinds(segmenter), "a segmenter must accept at least one of box, mask, points"

    def test_streams_every_requested_frame_once(self, segmenter, clip):
        video, masks = clip
        kind = self._kinds(segmenter)[0]
        stream = segmenter.propagate(video, {1: [_region(kind, 4, masks[4])]})
        assert inspect.isgenerator(stream) or hasattr(stream, "__next__"), "propagate must stream (return an iterator)"
        seen = []
        for index, frame_masks in stream:
            seen.append(index)
            assert set(frame_masks) == {1}
            assert frame_masks[1].shape == (video.height, video.width)
            assert frame_masks[1].dtype == bool
        assert sorted(seen) == list(range(video.num_frames))

    def test_requested_frames_only(self, segmenter, clip):
        video, masks = clip
        kind = self._kinds(segmenter)[0]
        wanted = [2, 5, 9]
        seen = sorted(i for i, _ in segmenter.propagate(video, {1: [_region(kind, 5, masks[5])]}, frames=wanted))
        assert seen == wanted

    def test_segment_returns_one_track_per_object(self, segmenter, clip):
        video, masks = clip
        kind = self._kinds(segmenter)[0]
        half = masks.copy()
        half[:, :, : video.width // 2] = False
        prompts = {7: [_region(kind, 0, masks[0])], 9: [_region(kind, 11, masks[11])]}
        tracks = segmenter.segment(video, prompts)
        assert set(tracks) == {7, 9}
        for track in tracks.values():
            assert isinstance(track, MaskTrack)
            assert (track.height, track.width) == (video.height, video.width)
            assert track.frames == list(range(video.num_frames))

    def test_prompt_outside_frame_is_refused(self, segmenter, clip):
        video, _ = clip
        if "box" in segmenter.prompt_kinds:
            bad = Region(frame=0, box=(10.0, 10.0, video.width + 50.0, 40.0))
        else:
            bad = Region(frame=0, points=((video.width + 5.0, 3.0),), labels=(1,))
        with pytest.raises(RegionError, match="outside"):
            list(segmenter.propagate(video, {1: [bad]}))

    def test_frame_out_of_range_is_refused(self, segmenter, clip):
        video, masks = clip
        kind = self._kinds(segmenter)[0]
        region = _region(kind, 0, masks[0])
        object.__setattr__(region, "frame", video.num_frames + 3)
        with pytest.raises(Exception, match="out of range"):
            list(segmenter.propagate(video, {1: [region]}))

    def test_empty_mask_is_refused(self, segmenter, clip):
        video, _ = clip
        if "mask" not in segmenter.prompt_kinds:
            pytest.skip("segmenter does not take mask prompts")
        with pytest.raises(RegionError, match="empty"):
            list(segmenter.propagate(video, {1: [Region(frame=0, mask=np.zeros((video.height, video.width), bool))]}))

    def test_unsupported_kind_is_refused(self, segmenter, clip):
        video, masks = clip
        missing = [k for k in ("box", "points", "mask") if k not in segmenter.prompt_kinds]
        if not missing:
            pytest.skip("segmenter accepts every region kind")
        with pytest.raises(RegionError, match="does not accept"):
            list(segmenter.propagate(video, {1: [_region(missing[0], 0, masks[0])]}))

    def test_mask_follows_the_object(self, segmenter, clip):
        if not self.check_quality:
            pytest.skip("check_quality is off for this segmenter")
        video, masks = clip
        kind = self._kinds(segmenter)[0]
        tracks = segmenter.segment(video, {1: [_region(kind, 0, masks[0])]})
        ious = []
        for t in range(video.num_frames):
            predicted = tracks[1].mask(t)
            ious.append((predicted & masks[t]).sum() / max(1, (predicted | masks[t]).sum()))
        assert np.mean(ious) > 0.5, f"mean IoU {np.mean(ious):.2f} on a clean moving square"


class EncoderConformance:
    """Checks for encoders. Fixture to provide: `encoder`."""

    def test_meets_protocol(self, encoder):
        assert protocol_problems("encoder", encoder) == []
        assert isinstance(encoder, Encoder)

    def test_patch_tokens_shape(self, encoder):
        import torch

        frames = torch.rand(3, 3, encoder.image_size, encoder.image_size)
        with torch.no_grad():
            tokens = encoder.encode(frames)
        assert tokens.ndim == 3 and tokens.shape[0] == 3 and tokens.shape[2] == encoder.embed_dim
        assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()

    def test_frames_are_encoded_independently(self, encoder):
        import torch

        if hasattr(encoder, "eval"):
            encoder.eval()
        frames = torch.rand(2, 3, encoder.image_size, encoder.image_size)
        with torch.no_grad():
            together = encoder.encode(frames)
            alone = encoder.encode(frames[1:])
        assert torch.allclose(together[1], alone[0], atol=1e-4)


class AggregatorConformance:
    """Checks for aggregators. Fixtures to provide: `aggregator` and
    `aggregator_dims` = {"C": encoder channels, "D": LLM hidden size}."""

    def test_meets_protocol(self, aggregator):
        assert protocol_problems("aggregator", aggregator) == []
        assert isinstance(aggregator, Aggregator)

    def test_one_context_token_per_frame(self, aggregator, aggregator_dims):
        import torch

        C, D = aggregator_dims["C"], aggregator_dims["D"]
        patches, question = torch.randn(5, 16, C), torch.randn(7, D)
        with torch.no_grad():
            context = aggregator.context_tokens(patches, question, None)
            regions = aggregator.region_tokens(patches, torch.rand(2, 5, 4, 4).round(), torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.2, 0.3, 0.9, 0.8]]))
            conditioned = aggregator.context_tokens(patches, question, regions)
        assert context.shape == (5, D)
        assert regions.shape == (2, getattr(aggregator, "region_token_count", 2), D)
        assert conditioned.shape == (5, D)

    def test_region_invisible_frames_do_not_count(self, aggregator, aggregator_dims):
        import torch

        C = aggregator_dims["C"]
        patches = torch.randn(4, 16, C)
        masks = torch.zeros(1, 4, 4, 4)
        masks[0, 1, :2, :2] = 1
        box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
        changed = patches.clone()
        changed[3] += 5.0  # the region is not visible on frame 3
        with torch.no_grad():
            assert torch.allclose(aggregator.region_tokens(patches, masks, box), aggregator.region_tokens(changed, masks, box), atol=1e-5)


class LanguageModelConformance:
    """Checks for LLM adapters. Fixture to provide: `llm`."""

    def test_meets_protocol(self, llm):
        assert protocol_problems("llm", llm) == []
        assert isinstance(llm, LanguageModel)

    def test_special_tokens_are_single_tokens(self, llm):
        for token in SPECIAL_TOKENS:
            ids = llm.tokenizer.encode(token, add_special_tokens=False)
            assert len(ids) == 1, f"{token} must be one token, got {ids}"

    def test_forward_shapes_and_cache(self, llm):
        import torch

        ids = torch.tensor([llm.tokenizer.encode("hello there [SEG]", add_special_tokens=False)])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            embeds = llm.embed(ids)
            assert embeds.shape == (1, ids.shape[1], llm.hidden_size)
            full = llm.forward(embeds, mask)
            assert full.logits.shape[:2] == ids.shape
            assert full.hidden_states.shape == (1, ids.shape[1], llm.hidden_size)
            head = llm.forward(embeds[:, :-1], mask[:, :-1])
            step = llm.forward(embeds[:, -1:], mask, past_key_values=head.past_key_values)
        assert torch.allclose(step.logits[0, -1], full.logits[0, -1], atol=1e-3)
