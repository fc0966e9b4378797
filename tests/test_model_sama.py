"""The SAMA model end to end, with a tiny config: real decoding (an mp4 written with
OpenCV, read by decord), real transformers Qwen2, real sam2 modules, real training steps."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from model_fixtures import TURN1_A, TURN1_Q, TURN2_A, TURN2_Q, one_thread, overfit, square_frames, square_sample, tiny_config, write_square_mp4
from sama_agent.conversation import grounded_phrases
from sama_agent.errors import CheckpointError, PluginError
from sama_agent.model.configuration import SamaConfig
from sama_agent.model.modeling.sama import SamaModel
from sama_agent.model.predictor import SamaPredictor
from sama_agent.regions import Region
from sama_agent.video import Video


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    write_square_mp4(path)
    video = Video(path)
    _, masks = square_frames()
    return video, masks


@pytest.fixture(scope="module")
def trained(clip):
    """A tiny model that has memorised a two-turn conversation about the decoded clip."""
    torch.manual_seed(0)
    video, masks = clip
    model = SamaModel(tiny_config())
    frames = video.frames(range(video.num_frames))  # decoded by decord, lossy: as at inference
    history = overfit(model, square_sample(frames, masks), steps=80)
    return model, history


@pytest.fixture()
def predictor(trained, clip):
    model, _ = trained
    predictor = SamaPredictor(model)
    predictor.set_video(clip[0])
    return predictor


def test_training_reduces_the_loss(trained):
    _, history = trained
    assert history[-1] < 0.5 * history[0], history[::10]


def test_answer_has_text_and_a_mask_per_seg_at_the_video_size(predictor, clip):
    video, truth = clip
    result = predictor.ask(TURN1_Q, [])
    assert result.raw.count("[SEG]") >= 1
    assert result.raw == TURN1_A
    assert "[SEG]" not in result.text and "<p>" not in result.text
    assert result.phrases == grounded_phrases(result.raw)
    assert len(result.tracks) == result.raw.count("[SEG]")
    for track in result.tracks:
        assert (track.height, track.width) == (video.height, video.width)
        assert track.frames == list(range(video.num_frames))  # every frame of the video
        assert track.to_array(video.num_frames).shape == (video.num_frames, video.height, video.width)
    assert set(result.key_frames) <= set(predictor.context_frames)


def test_backward_reaches_trained_parts_and_spares_frozen_ones(clip):
    video, masks = clip
    torch.manual_seed(1)
    model = SamaModel(tiny_config(freeze=["encoder", "llm"]))
    model.train()
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    output = model(sample)
    output.loss.backward()
    assert output.num_masks > 0 and output.num_answer_tokens > 0
    grads = {name: p.grad for name, p in model.named_parameters()}

    def reached(prefix):
        return any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))

    for part in ("aggregator.", "projector.", "seg_head.", "sam2.sam2.sam_mask_decoder."):
        assert reached(part), f"no gradient reached {part}"
    for name, grad in grads.items():
        if name.startswith(("encoder.", "llm.")):
            assert grad is None, f"frozen parameter {name} got a gradient"
            assert not model.get_parameter(name).requires_grad


def test_losses_are_weighted_as_in_sama(clip):
    video, masks = clip
    model = SamaModel(tiny_config())
    torch.manual_seed(2)
    output = model(square_sample(video.frames(range(video.num_frames)), masks))
    expected = 1.0 * output.lm_loss + 2.0 * output.bce_loss + 0.5 * output.dice_loss
    assert torch.allclose(output.loss.detach(), expected, atol=1e-5)
    assert output.bce_loss > 0 and output.dice_loss > 0 and output.lm_loss > 0


def test_seg_count_must_match_masks(clip):
    video, masks = clip
    model = SamaModel(tiny_config())
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    sample.turns[0].seg_masks = np.zeros((0, *masks.shape), bool)
    with pytest.raises(ValueError, match=r"2 \[SEG\] token\(s\) but seg_masks give 1"):
        model(sample)


def test_second_turn_keeps_the_first_in_context(predictor, clip):
    video, _ = clip
    first = predictor.ask(TURN1_Q, [])
    frame = first.tracks[0].frames_present[0] if first.tracks[0].frames_present else 2
    mask = first.tracks[0].mask(frame)
    region = Region(frame=frame, mask=mask) if mask.any() else Region(frame=frame, box=(4, 18, 16, 30))
    turn_one_ids = list(predictor.state.ids)
    second = predictor.ask(TURN2_Q, [region])
    prompt = predictor.prompt_text()
    # turn 1's question, answer and context tokens are still in what the LLM sees, before turn 2's
    assert prompt.count("<user>") == 2 and prompt.count("<eot>") == 2
    assert prompt.index("segment the red square") < prompt.index("what is <vp> <reg>x2 </vp> doing")
    assert prompt.index("moves right.") < prompt.index("what is")
    assert prompt.count("<ctx>x6") == 2
    assert predictor.state.ids[: len(turn_one_ids)] == turn_one_ids  # turn 2 extends turn 1's sequence
    assert predictor.state.cache.get_seq_length() == len(predictor.state.ids)  # the KV cache holds both turns
    assert second.raw == TURN2_A
    predictor.reset()
    assert predictor.prompt_text() == ""


def test_history_changes_the_second_answer_state(trained, clip):
    """The turn-2 hidden states differ with and without turn 1 in context: history is used, not just shown."""
    model, _ = trained
    video, masks = clip
    predictor = SamaPredictor(model)
    predictor.set_video(video)
    region = Region(frame=4, box=(16, 18, 28, 30))
    alone_ids, alone_seg = model.generate_turn(model.new_conversation(predictor.context), TURN2_Q, np.stack([predictor.region_masks(region)]))
    state = model.new_conversation(predictor.context)
    model.generate_turn(state, TURN1_Q, np.zeros((0, len(predictor.context_frames), video.height, video.width), bool))
    after_ids, after_seg = model.generate_turn(state, TURN2_Q, np.stack([predictor.region_masks(region)]))
    assert alone_seg.shape[0] and after_seg.shape[0]
    assert not torch.allclose(alone_seg[0], after_seg[0])


def test_save_load_gives_bit_identical_outputs(trained, clip, tmp_path):
    model, _ = trained
    video, masks = clip
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["llm_options"]["tokenizer_file"] == "tokenizer.json" and "vocab" not in config["llm_options"]
    loaded = SamaModel.from_pretrained(tmp_path / "ckpt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.manual_seed(5)
        a = model(sample)
        torch.manual_seed(5)
        b = loaded(sample)
    assert torch.equal(a.loss, b.loss)
    assert all(torch.equal(x, y) for x, y in zip(a.key_frame_logits, b.key_frame_logits))
    first, second = SamaPredictor(model), SamaPredictor(loaded)
    first.set_video(video), second.set_video(video)
    r1, r2 = first.ask(TURN1_Q, []), second.ask(TURN1_Q, [])
    assert r1.raw == r2.raw
    assert all(np.array_equal(t1.to_array(video.num_frames), t2.to_array(video.num_frames)) for t1, t2 in zip(r1.tracks, r2.tracks))


def _tensor_span(path, name):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    start, end = header[name]["data_offsets"]
    return raw, 8 + length + start, 8 + length + end


def test_tampered_checkpoint_is_refused_naming_the_tensor(trained, tmp_path):
    model, _ = trained
    folder = model.save_pretrained(tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    name = "seg_head.mlp.1.weight"
    raw, start, end = _tensor_span(weights, name)
    tampered = bytearray(raw)
    tampered[start : start + 4] = struct.pack("<f", 123.0)
    weights.write_bytes(bytes(tampered))
    with pytest.raises(CheckpointError, match=r"seg_head\.mlp\.1\.weight"):
        SamaModel.from_pretrained(folder)


def test_missing_or_misshapen_tensor_is_refused(trained, tmp_path):
    from sama_agent.model.checkpoint import save_pretrained

    model, _ = trained
    config = json.loads(model.save_pretrained(tmp_path / "good").joinpath("config.json").read_text())
    state = model.state_to_save()
    missing = dict(state)
    missing.pop("projector.1.weight")
    save_pretrained(tmp_path / "missing", config, missing)
    (tmp_path / "missing" / "tokenizer.json").write_bytes((tmp_path / "good" / "tokenizer.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): projector\.1\.weight"):
        SamaModel.from_pretrained(tmp_path / "missing")
    misshapen = dict(state)
    misshapen["projector.1.bias"] = torch.zeros(3)
    save_pretrained(tmp_path / "shape", config, misshapen)
    (tmp_path / "shape" / "tokenizer.json").write_bytes((tmp_path / "good" / "tokenizer.json").read_bytes())
    with pytest.raises(CheckpointError, match=r"projector\.1\.bias \(checkpoint \(3,\)"):
        SamaModel.from_pretrained(tmp_path / "shape")


def test_pickle_weights_are_refused(trained, tmp_path):
    model, _ = trained
    folder = model.save_pretrained(tmp_path / "ckpt")
    torch.save(model.state_to_save(), folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="Pickle checkpoints are refused"):
        SamaModel.from_pretrained(folder)


def test_config_round_trip_and_errors(tmp_path):
    config = tiny_config()
    path = config.to_json_file(tmp_path / "config.json")
    assert SamaConfig.from_json_file(path) == config
    assert SamaConfig.from_named("sama-tiny").llm == "qwen2-tiny"
    assert SamaConfig.from_named("sama-smol").llm == "smollm2-135m"
    with pytest.raises(CheckpointError, match="unknown SAMA config field"):
        SamaConfig.from_dict({**config.to_dict(), "encoder_size": 3})
    with pytest.raises(ValueError, match="num_key_frames"):
        tiny_config(num_key_frames=9)
    with pytest.raises(ValueError, match="freeze prefix 'decoder' matches no parameter"):
        SamaModel(tiny_config(freeze=["decoder"]))
    with pytest.raises(PluginError, match="no llm named 'gpt-9'"):
        SamaModel(tiny_config(llm="gpt-9"))


def test_question_and_region_count_must_agree(predictor):
    from sama_agent.errors import RegionError

    with pytest.raises(RegionError, match="1 <mask> placeholder"):
        predictor.ask("what is <mask> doing?", [])
    answer = predictor.ask("what is <region frame=3 box=10,16,30,34> doing?")
    assert answer.raw  # tags are parsed into regions


def test_eval_forward_reports_masks_on_every_sampled_frame(trained, clip):
    """What the training runner's held-out evaluation reads: per turn, (S, T, h, w) logits."""
    model, _ = trained
    video, masks = clip
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    model.eval()
    with torch.no_grad():
        output = model(sample)
    assert len(output.pred_masks) == len(sample.turns)
    for turn, logits in zip(sample.turns, output.pred_masks):
        assert logits.shape[:2] == (turn.seg_masks.shape[0], len(sample.frames))
    # the memorised square is found on the frames the model was trained on
    guess = torch.nn.functional.interpolate(output.pred_masks[0][0][:, None], size=masks.shape[1:], mode="bilinear")[:, 0] > 0
    truth = torch.from_numpy(masks)
    iou = (guess & truth).sum() / (guess | truth).sum().clamp_min(1)
    assert iou > 0.6, float(iou)


def test_mask_prompt_phase_trains_sam2_from_boxes_without_the_llm(clip):
    video, masks = clip
    model = SamaModel(tiny_config())
    model.train()
    model.set_training_phase({"model_phase": "mask_prompt", "loss_weights": {"lm": 0.0}})
    output = model(square_sample(video.frames(range(video.num_frames)), masks))
    output.loss.backward()
    assert output.num_answer_tokens == 0 and output.num_masks == 2 * 2  # two [SEG] masks x two key frames
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith("sam2.sam2.sam_mask_decoder."))
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("llm.", "aggregator.", "seg_head.")))
    with pytest.raises(ValueError, match="unknown model_phase 'boxes'"):
        model.set_training_phase({"model_phase": "boxes"})


def test_a_segmenter_without_embedding_prompts_gets_key_frame_masks(trained, clip):
    """DESIGN §3: a segmenter that takes no `embedding` is handed the [SEG] decoded into key-frame
    masks by the model's own SAM2. Here: SAM2 propagation restricted to box/points/mask prompts."""
    from sama_agent.model.segmenter import Sam2Segmenter

    class MaskOnlySam2(Sam2Segmenter):
        name = "sam2-mask-only"
        prompt_kinds = frozenset({"box", "points", "mask"})

    model, _ = trained
    video, truth = clip
    predictor = SamaPredictor(model, segmenter=MaskOnlySam2(grounding=model.sam2))
    predictor.set_video(video)
    result = predictor.ask(TURN1_Q, [])
    assert len(result.tracks) == 1
    track = result.tracks[0]
    assert track.frames == list(range(video.num_frames))
    for frame in predictor.key_frames:  # the decoded key-frame masks find the memorised square
        guess, expected = track.mask(frame), truth[frame]
        assert (guess & expected).sum() / max((guess | expected).sum(), 1) > 0.5


def test_per_frame_propagation_decodes_every_frame(trained, clip):
    model, _ = trained
    video, truth = clip
    model.config.propagation = "per_frame"
    try:
        predictor = SamaPredictor(model)
        predictor.set_video(video)
        result = predictor.ask(TURN1_Q, [])
    finally:
        model.config.propagation = "memory"
    track = result.tracks[0]
    assert track.frames == list(range(video.num_frames))
    guess = track.to_array(video.num_frames)
    assert (guess & truth).sum() / (guess | truth).sum() > 0.5  # the memorised square on every frame


def test_track_phase_trains_sam2_memory_over_context_frames(clip):
    video, masks = clip
    model = SamaModel(tiny_config())
    model.train()
    sample = square_sample(video.frames(range(video.num_frames)), masks)
    torch.manual_seed(0)
    plain = model(sample)
    model.set_training_phase({"model_phase": "track"})
    torch.manual_seed(0)
    tracked = model(sample)
    tracked.loss.backward()
    # key-frame masks (2 [SEG] x 2 key frames) + tracked masks (2 [SEG] x 6 context frames)
    assert plain.num_masks == 4 and tracked.num_masks == 4 + 2 * 6
    memory = [p.grad for n, p in model.named_parameters() if n.startswith(("sam2.sam2.memory_attention.", "sam2.sam2.memory_encoder."))]
    assert memory and any(g is not None and g.abs().sum() > 0 for g in memory)
