"""SAM2 grounding with the real sam2 package: builds, decoding, gradients, streaming propagation."""
import inspect

import numpy as np
import pytest
import torch

from sama_agent.errors import RegionError
from sama_agent.model.modeling.sam2_memory import ObjectMemory
from sama_agent.model.modeling.sam2_model import FrameFeatures, Sam2Config, Sam2Grounding, build_sam2
from sama_agent.model.modeling.sam2_trunks import EfficientNetLiteTrunk, efficientnet_lite0_weights_path
from sama_agent.model.segmenter import Sam2Segmenter
from sama_agent.regions import Region
from sama_agent.testing import SegmenterConformance
from sama_agent.video import Video

from video_files import write_mp4

SMALL = {"variant": "cpu_small", "image_size": 64}
HW = (48, 64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def grounding():
    torch.manual_seed(0)
    return Sam2Grounding(config=SMALL)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2") / "clip.mp4"
    write_mp4(path, frames=14, size=HW)
    return Video(path)


def _prompt(kind: str, frame: int) -> Region:
    mask = np.zeros(HW, bool)
    mask[8:30, 12:40] = True
    return {
        "box": Region(frame=frame, box=(12.0, 8.0, 40.0, 30.0)),
        "points": Region(frame=frame, points=((20.0, 16.0), (50.0, 40.0)), labels=(1, 0)),
        "mask": Region(frame=frame, mask=mask),
        "embedding": Region(frame=frame, embedding=torch.randn(256, generator=torch.Generator().manual_seed(frame))),
    }[kind]


# ---- building -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"])
def test_official_configs_build_and_decode(variant):
    from sam2.modeling.sam2_base import SAM2Base

    model = build_sam2({"variant": variant, "image_size": 64})
    assert isinstance(model, SAM2Base) and model.image_size == 64 and not model.training
    assert type(model.image_encoder.trunk).__name__ == "Hiera"
    grounding = Sam2Grounding(model, {"variant": variant, "image_size": 64})
    with torch.no_grad():
        features = grounding.encode_frames(torch.rand(1, 3, 40, 50))
        logits = grounding.decode_masks(features, boxes=torch.tensor([[5.0, 5.0, 30.0, 30.0]]), orig_hw=(40, 50))
    assert logits.shape == (1, 1, 16, 16)
    assert grounding.upsample(logits, (40, 50)).shape == (1, 1, 40, 50)


def test_cpu_small_uses_the_pretrained_efficientnet_trunk(grounding):
    trunk = grounding.sam2.image_encoder.trunk
    assert isinstance(trunk, EfficientNetLiteTrunk)
    assert trunk.channel_list == [320, 112, 40, 24]
    reference = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(trunk.stem[0].weight, reference["_conv_stem.weight"])
    assert torch.equal(trunk.blocks[15]._project_conv.weight, reference["_blocks.15._project_conv.weight"])
    grounding.train()
    assert all(not m.training for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert grounding.sam2.sam_mask_decoder.training
    grounding.eval()


def test_pretrained_weights_recognise_a_cat_with_our_normalisation():
    """The trunk's weights are real ImageNet weights, and LITE_PIXEL_MEAN/STD is their input scaling."""
    skimage_data = pytest.importorskip("skimage.data")
    from sama_agent.model.modeling.sam2_trunks import LITE_PIXEL_MEAN, LITE_PIXEL_STD, load_efficientnet_lite0

    image = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    image = (image - torch.tensor(LITE_PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_PIXEL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = load_efficientnet_lite0().eval()(image).softmax(-1)[0]
    assert probs[[281, 282, 285]].sum() > 0.8  # tabby, tiger cat, Egyptian cat


def test_cnn_trunk_and_overrides():
    model = build_sam2({"variant": "cpu_small", "image_size": 64, "trunk": "cnn", "cnn_channels": [8, 16, 24, 32],
                        "num_maskmem": 3, "overrides": ["model.memory_attention.num_layers=1"]})
    assert model.image_encoder.trunk.channel_list == [32, 24, 16, 8]
    assert model.num_maskmem == 3 and model.memory_attention.num_layers == 1
    with pytest.raises(ValueError, match="bad SAM2 config override"):
        build_sam2({**SMALL, "overrides": ["model.image_encoder=[unclosed"]})


def test_default_segmenter_builds_cpu_small():
    segmenter = Sam2Segmenter()
    assert segmenter.config.variant == "cpu_small" and segmenter.grounding.image_size == 256
    assert segmenter.name == "sam2" and segmenter.prompt_kinds == frozenset({"box", "points", "mask", "embedding"})


# ---- decoding and gradients ------------------------------------------------------------
def test_sam_heads_match_sam2_forward_sam_heads():
    """Our head (which can take [SEG] tokens) is SAM2's own head when given no extra tokens."""
    torch.manual_seed(2)
    model = build_sam2({"variant": "sam2.1_hiera_t", "image_size": 64})
    grounding = Sam2Grounding(model, {"variant": "sam2.1_hiera_t", "image_size": 64})
    with torch.no_grad():
        features = grounding.encode_frames(torch.rand(2, 3, 64, 64))
        maps = features.maps()
        points = {"point_coords": torch.tensor([[[10.0, 12.0]], [[40.0, 30.0]]]), "point_labels": torch.ones(2, 1, dtype=torch.int32)}
        for multimask in (False, True):
            ours = grounding.sam_heads(maps[-1], maps[:-1], points, multimask=multimask)
            theirs = model._forward_sam_heads(maps[-1], point_inputs=points, high_res_features=maps[:-1], multimask_output=multimask)
            assert torch.equal(ours.low_res_masks, theirs[3])
            assert torch.equal(ours.high_res_masks, theirs[4])
            assert torch.equal(ours.obj_ptr, theirs[5])


def test_decode_masks_backward_reaches_mask_decoder_and_prompt(grounding):
    grounding.zero_grad()
    features = grounding.encode_frames(torch.rand(3, 3, *HW))
    sparse = torch.randn(3, 2, 256, requires_grad=True)
    logits = grounding.decode_masks(features, sparse=sparse, orig_hw=HW)
    assert logits.shape == (3, 1, 16, 16)
    target = torch.zeros_like(logits)
    target[..., 4:12, 4:12] = 1
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    decoder_grads = [p.grad for p in grounding.sam2.sam_mask_decoder.parameters() if p.grad is not None]
    assert decoder_grads and sum(g.abs().sum() for g in decoder_grads) > 0
    assert sparse.grad is not None and sparse.grad.abs().sum() > 0
    grounding.zero_grad()


def test_decode_masks_depends_on_each_prompt_kind(grounding):
    with torch.no_grad():
        features = grounding.encode_frames(torch.rand(1, 3, *HW))
        base = grounding.decode_masks(features, sparse=torch.zeros(1, 1, 256), orig_hw=HW)
        other_sparse = grounding.decode_masks(features, sparse=torch.ones(1, 1, 256), orig_hw=HW)
        boxed = grounding.decode_masks(features, boxes=torch.tensor([[0.0, 0.0, 20.0, 20.0]]), orig_hw=HW)
        points = (torch.tensor([[[30.0, 20.0]]]), torch.tensor([[1]]))
        clicked = grounding.decode_masks(features, points=points, orig_hw=HW)
        mask = torch.zeros(1, 1, *HW)
        mask[..., 10:30, 10:30] = 1
        masked = grounding.decode_masks(features, mask_inputs=mask, orig_hw=HW)
    for other in (other_sparse, boxed, clicked, masked):
        assert not torch.allclose(base, other)
    with pytest.raises(ValueError, match=r"sparse prompts must be \(1, K, 256\)"):
        grounding.decode_masks(features, sparse=torch.zeros(1, 1, 128))
    with pytest.raises(ValueError, match="orig_hw"):
        grounding.decode_masks(features, boxes=torch.tensor([[0.0, 0.0, 5.0, 5.0]]))


def test_track_logits_is_differentiable_through_memory(grounding):
    grounding.zero_grad()
    features = grounding.encode_frames(torch.rand(4, 3, *HW))
    sparse = torch.randn(2, 1, 256, requires_grad=True)
    logits = grounding.track_logits(features, prompt_frame=1, sparse=sparse)
    assert logits.shape == (4, 2, 16, 16)
    logits[3].sum().backward()  # a frame reached only through memory
    attention = [p.grad for p in grounding.sam2.memory_attention.parameters() if p.grad is not None]
    encoder = [p.grad for p in grounding.sam2.memory_encoder.parameters() if p.grad is not None]
    assert attention and sum(g.abs().sum() for g in attention) > 0
    assert encoder and sum(g.abs().sum() for g in encoder) > 0
    assert sparse.grad.abs().sum() > 0
    grounding.zero_grad()


# ---- streaming propagation ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["box", "points", "mask", "embedding"])
def test_propagate_from_a_middle_frame_covers_every_frame(grounding, clip, kind):
    middle = clip.num_frames // 2
    stream = grounding.propagate(clip, {5: [_prompt(kind, middle)]})
    assert inspect.isgenerator(stream)
    seen = []
    for index, masks in stream:
        assert set(masks) == {5}
        assert masks[5].shape == (clip.height, clip.width) and masks[5].dtype == bool
        seen.append(index)
    assert sorted(seen) == list(range(clip.num_frames))
    # forward from the prompt first, then backward to the start
    assert seen == list(range(middle, clip.num_frames)) + list(range(middle - 1, -1, -1))


def test_mask_prompt_frame_returns_the_given_mask(grounding, clip):
    """Geometry check: the prompted mask goes in at SAM2 resolution and comes back at video size."""
    region = _prompt("mask", 3)
    masks = dict(grounding.propagate(clip, {1: [region]}, frames=[3]))
    got, want = masks[3][1], region.mask
    assert (got & want).sum() / (got | want).sum() > 0.85


def test_requested_frames_only_and_frame_folder(grounding, frame_folder):
    folder, frames = frame_folder
    video = Video(folder)
    out = list(grounding.propagate(video, {1: [Region(frame=4, box=(2.0, 2.0, 20.0, 15.0))]}, frames=[1, 5]))
    assert sorted(i for i, _ in out) == [1, 5]
    assert all(m[1].shape == frames.shape[1:3] for _, m in out)


def test_objects_prompted_on_different_frames_come_out_once_per_frame(grounding, clip):
    prompts = {1: [_prompt("box", 2)], 2: [_prompt("points", 9), _prompt("embedding", 11)]}
    out = list(grounding.propagate(clip, prompts))
    assert sorted(i for i, _ in out) == list(range(clip.num_frames))
    assert all(set(masks) == {1, 2} for _, masks in out)
    assert grounding.last_stats["peak_pending_frames"] == 9 - 2  # frames 2..8 wait for object 2's backward pass


def test_streaming_yields_before_the_clip_is_decoded(grounding, clip):
    stream = grounding.propagate(clip, {1: [_prompt("box", 0)]})
    next(stream)
    assert grounding.last_stats["frames_encoded"] <= 2 * grounding.config.encode_batch < clip.num_frames
    stream.close()


def test_memory_does_not_grow_with_clip_length(grounding, tmp_path):
    peaks = []
    for length in (20, 40):
        path = tmp_path / f"clip{length}.mp4"
        write_mp4(path, frames=length, size=(32, 32))
        video = Video(path)
        for _ in grounding.propagate(video, {1: [Region(frame=length // 2, box=(4.0, 4.0, 20.0, 20.0))]}):
            pass
        stats = dict(grounding.last_stats)
        assert stats["frames_encoded"] == length + 1  # each frame once, plus the prompted frame
        assert stats["peak_encoded_frames"] <= grounding.config.encode_batch
        assert stats["peak_pending_frames"] == 0
        peaks.append(stats["peak_memory_frames"])
    bank = ObjectMemory.for_model(grounding.sam2)
    assert peaks[0] == peaks[1] == bank.window + 1  # the window plus the prompted frame


def test_bounded_memory_gives_the_same_masks_as_keeping_everything(grounding, clip, monkeypatch):
    """The bank forgets only what SAM2 never reads again: results equal an unbounded bank's."""
    prompts = {1: [_prompt("box", 3)], 2: [_prompt("embedding", 10)]}
    bounded = dict(grounding.propagate(clip, prompts))
    assert grounding.last_stats["peak_memory_frames"] <= 2 * (ObjectMemory.for_model(grounding.sam2).window + 1)
    monkeypatch.setattr(ObjectMemory, "add", lambda self, frame, output: self.recent.__setitem__(frame, output))
    unbounded = dict(grounding.propagate(clip, prompts))
    assert grounding.last_stats["peak_memory_frames"] > 2 * (ObjectMemory.for_model(grounding.sam2).window + 1)
    for index in bounded:
        for oid in prompts:
            assert np.array_equal(bounded[index][oid], unbounded[index][oid]), (index, oid)


def test_object_memory_window_forgets_far_frames():
    bank = ObjectMemory(num_maskmem=4, max_obj_ptrs=6)
    assert bank.window == 5
    for t in range(50):
        bank.add(t, {"t": t})
    assert sorted(bank.recent) == list(range(45, 50))


def test_bad_embedding_and_unresolved_mask_prompts_are_refused(grounding, clip):
    with pytest.raises(RegionError, match=r"\(256,\) tensor"):
        list(grounding.propagate(clip, {1: [Region(frame=0, embedding=torch.zeros(3))]}))
    with pytest.raises(RegionError, match="NaN"):
        list(grounding.propagate(clip, {1: [Region(frame=0, embedding=torch.full((256,), float("nan")))]}))
    with pytest.raises(RegionError, match="resolve"):
        list(grounding.propagate(clip, {1: [Region(frame=0, mask_ref="mask-0123456789ab")]}))


def test_propagate_restores_training_mode(grounding, clip):
    grounding.train()
    list(grounding.propagate(clip, {1: [_prompt("box", 0)]}, frames=[0, 1]))
    assert grounding.training and torch.is_grad_enabled()
    grounding.eval()


# ---- the segmenter ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_segmenter():
    torch.manual_seed(0)
    return Sam2Segmenter({"variant": "cpu_small", "image_size": 64})


class TestSam2SegmenterConformance(SegmenterConformance):
    check_quality = False  # random SAM2 heads; the trained default is checked where it is built

    @pytest.fixture
    def segmenter(self, small_segmenter):
        return small_segmenter


def test_segmenter_checks_prompts_and_loads_checkpoints(tmp_path, grounding, clip):
    segmenter = Sam2Segmenter(grounding=grounding)
    with pytest.raises(RegionError, match="outside"):
        list(segmenter.propagate(clip, {1: [Region(frame=0, box=(0.0, 0.0, 500.0, 20.0))]}))
    tracks = segmenter.segment(clip, {3: [_prompt("embedding", 5)]}, frames=[4, 5, 6])
    assert tracks[3].frames == [4, 5, 6]

    directory = grounding.save_pretrained(tmp_path / "sam2")
    loaded = Sam2Segmenter(checkpoint=str(directory))
    weights = str(directory / "model.safetensors")
    from_file = Sam2Segmenter(SMALL, checkpoint=weights)
    prompts = {1: [_prompt("box", 4)]}
    expected = dict(segmenter.propagate(clip, prompts, frames=[6]))[6][1]
    for other in (loaded, from_file):
        assert np.array_equal(dict(other.propagate(clip, prompts, frames=[6]))[6][1], expected)
    with pytest.raises(ValueError, match="not both"):
        Sam2Segmenter(SMALL, grounding=grounding)
