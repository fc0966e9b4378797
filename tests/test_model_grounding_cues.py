"""Region cues (colour and path read from pixels and masks), the grounding head's where-maps
and dense prompts, text-only training steps, and regions given as whole tracks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import one_thread, overfit, square_frames, square_sample, tiny_config, write_square_mp4
from sama_agent.masks import MaskTrack
from sama_agent.model.modeling.aggregator import SpatioTemporalQFormer
from sama_agent.model.modeling.grounding_head import GroundingHead, coarse_where_prompt, dense_prompt, where_loss
from sama_agent.model.modeling.region_cues import CUE_DIM, MOTION_DIM, PATH_SLOTS, motion_features, region_cues
from sama_agent.model.modeling.sama import SamaModel
from sama_agent.model.predictor import SamaPredictor
from sama_agent.regions import Region
from sama_agent.training.objectives import PromptOptions, segmenter_prompt_objective
from sama_agent.video import Video


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def cue_config(**overrides):
    options = dict(
        aggregator_options=dict(dim=48, heads=2, spatial_queries=4, temporal_queries=6, window=4, region_cues=True),
        seg_head_options=dict(hidden=64, per_frame=True, where=True),
    )
    options.update(overrides)
    return tiny_config(**options)


def pixels_of(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255


# ---- region cues -----------------------------------------------------------------------------
def test_cues_read_the_colour_under_the_mask():
    frames, masks = square_frames()
    cues = region_cues(torch.from_numpy(masks[None]).float(), pixels_of(frames))
    assert cues.shape == (1, CUE_DIM)
    assert torch.allclose(cues[0, :3], torch.tensor([220, 30, 30]) / 255, atol=1e-4)  # the square's red
    assert torch.all(cues[0, 3:6] < 1e-3)  # a flat colour


def test_cues_follow_the_path_and_hold_where_the_region_is_hidden():
    frames, masks = square_frames()  # moves right for half the clip, then stays
    path = region_cues(torch.from_numpy(masks[None]).float(), pixels_of(frames))[0, 8:].reshape(PATH_SLOTS, 4)
    dx, dy = path[:, 0], path[:, 1]
    assert dx[0] == 0 and torch.all(dx[1:] >= dx[:-1]) and dx[-1] > 0.5  # rightwards, never back
    assert torch.allclose(dy, torch.zeros_like(dy))
    assert dx[-1] == dx[-2]  # still at the end
    hidden = masks.copy()
    hidden[-4:] = False
    held = region_cues(torch.from_numpy(hidden[None]).float(), pixels_of(frames))[0, 8:].reshape(PATH_SLOTS, 4)
    assert held[-1, 3] == 0 and held[-1, 0] == 0 and held[0, 3] == 1  # not shown: no offset, flag off


def entering_square(frames=8, size=64, side=16, speed=4):
    """A square sliding right at `speed` px per frame, starting half outside the left border."""
    masks = np.zeros((frames, size, size), bool)
    for t in range(frames):
        left = -side // 2 + speed * t
        masks[t, 24:24 + side, max(left, 0):left + side] = True
    return masks


def test_box_path_keeps_the_true_centre_while_the_border_cuts_the_region():
    masks = torch.from_numpy(entering_square()[None]).float()
    pixels = torch.full((8, 3, 64, 64), 0.5)
    steps = {}
    for path in ("centroid", "box"):
        track = region_cues(masks, pixels, path)[0, 8:].reshape(PATH_SLOTS, 4)
        steps[path] = (track[1:, 0] - track[:-1, 0]) / 4 * 64  # px per frame
    # cut by the border for its first frames: the visible part's centroid moves at half the speed
    assert torch.allclose(steps["centroid"][:2], torch.tensor([2.0, 2.0]))
    assert torch.allclose(steps["box"], torch.full((7,), 4.0))  # the object's own speed throughout
    with pytest.raises(ValueError, match="path must be one of centroid, box"):
        region_cues(masks, pixels, "bbox")
    with pytest.raises(ValueError, match="cue_path must be one of"):
        SpatioTemporalQFormer(in_dim=16, out_dim=24, region_cues=True, cue_path="edge")


def test_the_model_computes_cues_with_its_aggregators_path():
    entering = entering_square(frames=6)
    frames = np.full((6, 64, 64, 3), 100, np.uint8)
    frames[entering] = (220, 30, 30)
    tokens = {}
    for path in ("centroid", "box"):
        torch.manual_seed(0)
        options = dict(dim=48, heads=2, spatial_queries=4, temporal_queries=6, window=4, region_cues=True, region_motion="token", cue_path=path)
        model = SamaModel(cue_config(aggregator_options=options)).eval()
        with torch.no_grad():
            video = model.encode_video(frames, with_sam2=False)
            tokens[path] = model.region_tokens(video, entering[None])[0]
    assert torch.equal(tokens["centroid"][:1], tokens["box"][:1])  # the pooled feature does not read the path
    assert not torch.allclose(tokens["centroid"][2], tokens["box"][2])  # the motion token does


def test_cues_refuse_masks_that_do_not_match_the_frames():
    frames, masks = square_frames()
    with pytest.raises(ValueError, match="same frames and size"):
        region_cues(torch.from_numpy(masks[None, :-1]).float(), pixels_of(frames))


def test_aggregator_with_cues_needs_them_and_tells_motions_apart():
    torch.manual_seed(0)
    aggregator = SpatioTemporalQFormer(in_dim=16, out_dim=24, dim=16, heads=2, spatial_queries=2, temporal_queries=2, region_cues=True)
    patches = torch.randn(5, 16, 16)
    masks = torch.ones(1, 5, 4, 4)
    box = torch.tensor([[0.1, 0.1, 0.9, 0.9]])
    with pytest.raises(ValueError, match="region_cues=True"):
        aggregator.region_tokens(patches, masks, box)
    still, moving = torch.zeros(1, CUE_DIM), torch.zeros(1, CUE_DIM)
    moving[0, 8::4] = torch.linspace(0, 1, PATH_SLOTS)
    a = aggregator.region_tokens(patches, masks, box, cues=still)
    b = aggregator.region_tokens(patches, masks, box, cues=moving)
    assert torch.allclose(a[:, 0], b[:, 0])  # the pooled feature is the same
    assert not torch.allclose(a[:, 1], b[:, 1])  # the shape-and-path token differs


def test_motion_features_are_the_path_steps_where_the_region_shows():
    frames, masks = square_frames()  # moves right for half the clip, then stays
    cues = region_cues(torch.from_numpy(masks[None]).float(), pixels_of(frames))
    motion = motion_features(cues)[0]
    assert motion.shape == (MOTION_DIM,)
    steps = motion[:2 * (PATH_SLOTS - 1)].reshape(PATH_SLOTS - 1, 2)
    assert torch.all(steps[:3, 0] > 0) and torch.allclose(steps[-2:, 0], torch.zeros(2))  # right, then still
    assert torch.allclose(steps[:, 1], torch.zeros(PATH_SLOTS - 1))
    first_speed, second_speed = motion[-2:]
    assert first_speed > 0.1 and second_speed < first_speed
    hidden = masks.copy()
    hidden[:8] = False  # enters halfway: no step is counted from where it was not
    late = motion_features(region_cues(torch.from_numpy(hidden[None]).float(), pixels_of(frames)))[0]
    assert torch.allclose(late[:6], torch.zeros(6))


def test_aggregator_with_a_motion_branch_needs_cues_and_separates_steps():
    with pytest.raises(ValueError, match="region_cues=True"):
        SpatioTemporalQFormer(in_dim=16, out_dim=24, dim=16, heads=2, spatial_queries=2, temporal_queries=2, region_motion=True)
    torch.manual_seed(0)
    aggregator = SpatioTemporalQFormer(in_dim=16, out_dim=24, dim=16, heads=2, spatial_queries=2, temporal_queries=2,
                                       region_cues=True, region_motion=True)
    patches, masks, box = torch.randn(5, 16, 16), torch.ones(1, 5, 4, 4), torch.tensor([[0.1, 0.1, 0.9, 0.9]])
    left, right = torch.zeros(1, CUE_DIM), torch.zeros(1, CUE_DIM)
    left[0, 11::4] = right[0, 11::4] = 1  # shown at every slot
    left[0, 8::4], right[0, 8::4] = -torch.linspace(0, 1, PATH_SLOTS), torch.linspace(0, 1, PATH_SLOTS)
    a = aggregator.region_tokens(patches, masks, box, cues=left)
    b = aggregator.region_tokens(patches, masks, box, cues=right)
    aggregator.motion_mode = None
    plain = aggregator.region_tokens(patches, masks, box, cues=left)
    aggregator.motion_mode = "feature"
    assert torch.allclose(a[:, 0] - plain[:, 0], aggregator.region_motion(motion_features(left)), atol=1e-6)  # added to the feature token
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_aggregator_motion_token_keeps_appearance_and_motion_apart():
    with pytest.raises(ValueError, match="\"token\""):
        SpatioTemporalQFormer(in_dim=16, out_dim=24, dim=16, heads=2, spatial_queries=2, temporal_queries=2,
                              region_cues=True, region_motion="sideways")
    torch.manual_seed(0)
    aggregator = SpatioTemporalQFormer(in_dim=16, out_dim=24, dim=16, heads=2, spatial_queries=2, temporal_queries=2,
                                       region_cues=True, region_motion="token")
    assert aggregator.region_token_count == 3
    patches, masks, box = torch.randn(5, 16, 16), torch.ones(1, 5, 4, 4), torch.tensor([[0.1, 0.1, 0.9, 0.9]])
    left, right = torch.zeros(1, CUE_DIM), torch.zeros(1, CUE_DIM)
    left[0, 11::4] = right[0, 11::4] = 1
    left[0, 8::4], right[0, 8::4] = -torch.linspace(0, 1, PATH_SLOTS), torch.linspace(0, 1, PATH_SLOTS)
    a = aggregator.region_tokens(patches, masks, box, cues=left)
    b = aggregator.region_tokens(patches, masks, box, cues=right)
    assert a.shape == (1, 3, 24)
    assert torch.allclose(a[:, 0], b[:, 0])  # the feature token does not see the path
    assert torch.allclose(a[:, 2], aggregator.region_motion(motion_features(left)), atol=1e-6)
    assert not torch.allclose(a[:, 2], b[:, 2])
    assert aggregator.region_tokens(patches, masks[:0], box[:0], cues=left[:0]).shape == (0, 3, 24)
    context = aggregator.context_tokens(patches, torch.randn(6, 24), a)
    assert context.shape == (5, 24)


# ---- where-maps -------------------------------------------------------------------------------
def test_where_maps_are_distributions_and_the_loss_prefers_the_right_cell():
    head = GroundingHead(32, prompt_dim=16, hidden=16, where=True, feature_dim=8)
    maps = head.where_maps(torch.randn(3, 32), torch.randn(4, 8, 4, 4))
    assert maps.shape == (3, 4, 4, 4)
    assert torch.allclose(maps.exp().flatten(2).sum(-1), torch.ones(3, 4), atol=1e-5)
    mask = torch.zeros(1, 16, 16)
    mask[0, :4, :4] = True  # top-left cell of a 4x4 grid
    right, wrong = torch.full((1, 4, 4), -10.0), torch.full((1, 4, 4), -10.0)
    right[0, 0, 0], wrong[0, 3, 3] = 0.0, 0.0
    assert where_loss(right.log_softmax(-1).reshape(1, 4, 4), mask)[0] < where_loss(wrong, mask)[0]
    assert where_loss(right, torch.zeros(1, 16, 16)) == (0, 0)  # an object that does not show is left out
    prompt = dense_prompt(torch.tensor([[[0.0, -2.0], [-50.0, -1.0]]]).log_softmax(-1))
    assert prompt.shape == (1, 1, 2, 2) and prompt.max() == 4.0 and prompt.min() == -4.0


def test_coarse_where_prompt_peaks_on_the_object():
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[0, 24:, 24:] = True
    mask[1, :8, 8:16] = True
    prompt = coarse_where_prompt(mask, (4, 4))
    assert prompt.shape == (2, 1, 4, 4)
    assert prompt[0, 0, 3, 3] == prompt.max() and prompt[1, 0, 0, 1] == prompt[1].max()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    write_square_mp4(path)
    _, masks = square_frames()
    return Video(path), masks


def test_training_with_cues_and_where_maps_learns_where_the_object_is(clip):
    video, masks = clip
    torch.manual_seed(0)
    model = SamaModel(cue_config())
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    first = model(sample).where_loss
    overfit(model, sample, steps=40)
    model.train()
    output = model(sample)
    assert output.where_loss < 0.6 * first, (float(first), float(output.where_loss))
    assert "where_loss" in output.log_dict()


def test_text_only_phase_skips_mask_decoding(clip):
    video, masks = clip
    model = SamaModel(cue_config())
    model.train()
    model.set_training_phase({"loss_weights": {"bce": 0.0, "dice": 0.0}})
    output = model(square_sample(video.frames(range(video.num_frames)), masks))
    output.loss.backward()
    assert output.num_masks == 0 and output.bce_loss == 0 and output.lm_loss > 0 and output.where_loss > 0
    decoder = model.sam2.sam2.sam_mask_decoder
    assert all(p.grad is None for p in decoder.transformer.parameters())  # no mask was decoded
    assert all(p.grad is None for p in decoder.output_hypernetworks_mlps.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.seg_head.where_query.parameters())


def test_segmenter_prompts_include_where_prompts(clip):
    video, masks = clip
    torch.manual_seed(3)
    model = SamaModel(cue_config())
    loss, parts, _ = segmenter_prompt_objective(model, square_sample(video.frames(range(video.num_frames)), masks), count=12)
    loss.backward()
    downscale = model.sam2.sam2.sam_prompt_encoder.mask_downscaling
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in downscale.parameters())  # a dense prompt was used



def test_prompt_options_prompt_every_object_on_the_chosen_frames_with_dense_boxes(clip):
    """frames=N prompts each object the record lists on N frames; coarse_box feeds SAM2 a dense prompt only."""
    video, masks = clip
    frames = video.frames(range(video.num_frames))
    sample = square_sample(frames, masks)
    other = np.zeros_like(masks)
    other[:, 2:10, 2:10] = True  # a second object, on every frame, that no turn mentions
    other[3] = False  # ...except frame 3
    sample.meta["object_masks"] = np.stack([masks, other])
    model = SamaModel(cue_config())
    decoded = []
    decode = model.sam2.decode_masks
    model.sam2.decode_masks = lambda features, **kw: (decoded.append((len(features), sorted(kw))), decode(features, **kw))[1]
    torch.manual_seed(0)
    loss, parts, _ = segmenter_prompt_objective(model, sample, options=PromptOptions(kinds=["coarse_box"], frames=2))
    loss.backward()
    prompts = sum(count for count, _ in decoded)
    assert prompts in (3, 4) and all(keys == ["mask_inputs", "orig_hw"] for _, keys in decoded)  # 2 objects a frame (1 on frame 3)
    encoder = model.sam2.sam2.sam_prompt_encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.mask_downscaling.parameters())
    assert all(p.grad is None or not p.grad.any() for p in encoder.point_embeddings[2].parameters())  # no box corner was embedded
    assert parts["prompt_dice_loss"] > 0


def test_prompt_options_are_checked():
    with pytest.raises(ValueError, match="prompt kinds must be a non-empty list from box, points, where, coarse_box"):
        PromptOptions(kinds=["lasso"])
    with pytest.raises(ValueError, match="prompts.frames must be a whole number >= 1"):
        PromptOptions(frames=0)


# ---- regions given as tracks ------------------------------------------------------------------
def test_a_region_with_a_track_is_read_over_the_context_frames_as_given(clip):
    video, masks = clip
    model = SamaModel(cue_config())
    predictor = SamaPredictor(model)
    predictor.set_video(video)
    track = MaskTrack.from_masks({t: masks[t] for t in range(0, video.num_frames, 2)})  # even frames only
    region = Region(frame=0, mask=masks[0], track=track)
    got = predictor.region_masks(region)
    for slot, frame in enumerate(predictor.context_frames):
        expected = masks[frame] if frame % 2 == 0 else np.zeros_like(masks[frame])
        assert np.array_equal(got[slot], expected), frame
    answer = predictor.ask("what is <mask> doing?", [region])
    assert isinstance(answer.text, str)


def test_a_track_of_another_size_is_refused(clip):
    video, masks = clip
    from sama_agent.errors import RegionError

    small = MaskTrack.from_masks({0: np.ones((8, 8), bool)})
    with pytest.raises(RegionError, match="its track is 8x8"):
        Region(frame=0, mask=masks[0], track=small).validate(video.height, video.width, video.num_frames)


# ---- following a region without SAM2 memory ------------------------------------------------------
def test_a_region_is_followed_frame_to_frame(clip):
    """SAM2 trained briefly on prompts follows the square forwards and backwards from a box on a middle frame."""
    video, masks = clip
    torch.manual_seed(0)
    model = SamaModel(cue_config(propagation="per_frame"))
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    params = [p for p in model.sam2.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(40):
        loss, _, _ = segmenter_prompt_objective(model, sample, count=6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    middle = video.num_frames // 2
    ys, xs = np.nonzero(masks[middle])
    region = Region(frame=middle, box=(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    for prompt in ("box", "coarse", "dense"):
        found = model.sam2.follow(video, region, prompt=prompt)
        assert sorted(found) == list(range(video.num_frames))
        ious = [(found[t] & masks[t]).sum() / (found[t] | masks[t]).sum() for t in range(video.num_frames)]
        assert min(ious[:middle]) > 0.5 and min(ious[middle:]) > 0.5, (prompt, np.round(ious, 2))

    predictor = SamaPredictor(model)
    predictor.set_video(video)
    followed = predictor.region_masks(region)  # the per-frame model follows regions the same way
    found = model.sam2.follow(video, region)
    for slot, frame in enumerate(predictor.context_frames):
        assert np.array_equal(followed[slot], found[frame])
    model.config.where_logits = False  # then a followed region's coarse box is not added to the logits either
    followed = predictor.region_masks(region)
    found = model.sam2.follow(video, region, prompt="dense")
    assert any(not np.array_equal(found[f], model.sam2.follow(video, region, prompt="coarse")[f]) for f in found)
    for slot, frame in enumerate(predictor.context_frames):
        assert np.array_equal(followed[slot], found[frame])
    with pytest.raises(ValueError, match="unknown follow prompt"):
        model.sam2.follow(video, region, prompt="memory")


def test_a_where_prompt_is_added_to_sam2_logits(clip):
    video, masks = clip
    torch.manual_seed(4)
    model = SamaModel(cue_config()).eval()
    with torch.no_grad():
        features = model.sam2.encode_uint8(video.frames([0, 5]))
        sparse = torch.randn(2, 1, model.sam2.prompt_dim)
        dense = dense_prompt(torch.randn(2, *model.sam2.sam2.sam_prompt_encoder.mask_input_size).flatten(1).log_softmax(-1)
                             .reshape(2, *model.sam2.sam2.sam_prompt_encoder.mask_input_size))
        size = (video.height, video.width)
        plain = model.sam2.decode_masks(features, sparse=sparse, orig_hw=size, mask_inputs=dense)
        assert torch.allclose(model.decode_seg(features, sparse, dense, size), plain + dense)
        assert torch.allclose(model.decode_seg(features, sparse, None, size), model.sam2.decode_masks(features, sparse=sparse, orig_hw=size))
        model.config.where_logits = False  # a SAM2 that follows dense prompts: its own logits only
        assert torch.allclose(model.decode_seg(features, sparse, dense, size), plain)


def test_where_keys_are_kept_per_video_and_give_the_same_masks(clip):
    video, masks = clip
    torch.manual_seed(5)
    model = SamaModel(cue_config(propagation="per_frame"))
    overfit(model, square_sample(video.frames(range(video.num_frames)), masks), steps=30)
    predictor = SamaPredictor(model)
    predictor.set_video(video)
    first = predictor.ask("segment the red square")
    assert first.tracks and predictor._where_keys  # kept after the first grounded turn
    predictor.reset()  # the same question afresh: the same [SEG] state, now matched against kept keys
    again = predictor.ask("segment the red square")
    assert [t.rles for t in again.tracks] == [t.rles for t in first.tracks]
    predictor.set_video(video)
    assert not predictor._where_keys  # a new video starts afresh


def test_a_seg_mask_keeps_the_parts_its_where_map_weighs(tmp_path):
    """A [SEG] trained on two look-alike squares at once draws both. With seg_part_share 1 each frame keeps
    only the square holding more of the where-map's mass; with 0 the mask is kept whole."""
    import cv2
    from scipy import ndimage

    frames, masks = square_frames()
    twin = np.roll(masks, -16, axis=1)  # the same square 16 rows higher, apart from the first
    frames[twin] = (220, 30, 30)
    masks = masks | twin
    path = tmp_path / "twins.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (frames.shape[2], frames.shape[1]))
    for frame in frames:
        writer.write(frame[:, :, ::-1].copy())
    writer.release()
    video = Video(path)
    torch.manual_seed(5)
    model = SamaModel(cue_config(propagation="per_frame"))
    overfit(model, square_sample(video.frames(range(video.num_frames)), masks), steps=60)
    predictor = SamaPredictor(model)
    predictor.set_video(video)
    drawn = predictor.ask("segment the red square").tracks[0]
    parts = [ndimage.label(drawn.mask(t))[1] for t in range(video.num_frames)]
    assert max(parts) >= 2, parts  # both squares lit up on some frame

    model.config.seg_part_share = 1.0
    predictor.reset()
    kept = predictor.ask("segment the red square").tracks[0]
    with torch.no_grad():
        _, seg_hidden = model.generate_turn(model.new_conversation(predictor.context), "segment the red square",
                                            np.zeros((0, len(predictor.context_frames), video.height, video.width), bool))
        features = model.sam2.encode_uint8(video.frames(range(video.num_frames)))
        maps = model.where_maps(seg_hidden, features)[0].exp()  # (T, h, w) probabilities
    for t in range(video.num_frames):
        mask, whole = kept.mask(t), drawn.mask(t)
        assert not (mask & ~whole).any() and ndimage.label(mask)[1] <= 1
        if parts[t] >= 2:
            weights = np.kron(maps[t].numpy(), np.ones((video.height // maps.shape[1], video.width // maps.shape[2])))
            labels, count = ndimage.label(whole)
            mass = [weights[labels == k].sum() for k in range(1, count + 1)]
            assert np.array_equal(mask, labels == 1 + int(np.argmax(mass)))

    model.config.seg_part_share = 0.0
    predictor.reset()
    assert predictor.ask("segment the red square").tracks[0].rles == drawn.rles


def test_seg_part_share_needs_where_maps_and_per_frame_propagation():
    with pytest.raises(ValueError, match="'seg_part_share' weighs a mask's parts by its where-map"):
        cue_config(seg_part_share=0.25)  # memory propagation
    with pytest.raises(ValueError, match="'seg_part_share' must be a share between 0 and 1"):
        cue_config(propagation="per_frame", seg_part_share=1.5)
    assert cue_config(propagation="per_frame", seg_part_share=0.25).seg_part_share == 0.25
