"""Region attribute heads: labels read from a turn's `expect`, a loss that trains the region tokens,
config validation, and checkpoints that keep the heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import one_thread, square_frames, square_sample, tiny_config
from sama_agent.model.configuration import SamaConfig
from sama_agent.model.modeling.region_attributes import RegionAttributeHeads
from sama_agent.model.modeling.sama import SamaModel
from sama_agent.training.objectives import combined_loss

MOTIONS = ["moves left", "moves right", "stays still"]
ATTRIBUTES = {"motion": {"field": "motions", "index": 0, "values": MOTIONS},
              "then": {"field": "motions", "index": 1, "values": MOTIONS},
              "colour": {"field": "colour", "values": ["red", "blue"]}}
AGGREGATOR_OPTIONS = dict(dim=48, heads=2, spatial_queries=4, temporal_queries=6, window=4, region_cues=True)
MOTION_TOKEN_OPTIONS = {**AGGREGATOR_OPTIONS, "region_motion": "token"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def attribute_config(**overrides):
    options = dict(aggregator_options=AGGREGATOR_OPTIONS, region_attributes=ATTRIBUTES)
    options.update(overrides)
    return tiny_config(**options)


def labelled_square_sample():
    frames, masks = square_frames()  # a red square that moves right, then stays
    sample = square_sample(frames, masks)
    expect = {"colour": "red", "shape": "square", "motions": ["moves right", "stays still"]}
    sample.meta["turn_meta"] = [{"kind": "ground", "expect": expect}, {"kind": "refer", "expect": expect}]
    return sample


def test_labels_come_from_expect_and_skip_what_is_unknown():
    heads = RegionAttributeHeads(8, ATTRIBUTES)
    assert heads.labels({"colour": "red", "motions": ["moves right", "stays still"]}) == {"motion": 1, "then": 2, "colour": 0}
    assert heads.labels({"colour": "green", "motions": ["moves left"]}) == {"motion": 0}  # no second motion, unknown colour
    assert heads.labels(None) == {}


def test_the_loss_trains_the_heads_towards_the_labels():
    torch.manual_seed(0)
    heads = RegionAttributeHeads(4, ATTRIBUTES)
    tokens = [torch.randn(2, 4) for _ in range(3)]
    labels = [{"motion": 0, "colour": 1}, {"motion": 2}, {"then": 1}]
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.5)
    first, count = heads.loss(tokens, labels)
    first = float(first.detach())
    assert count == 4  # one per (region, attribute) label
    for _ in range(50):
        loss, _ = heads.loss(tokens, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.1 * first
    empty, none = heads.loss([], [])
    assert none == 0 and float(empty) == 0


@pytest.mark.parametrize("attributes, message", [
    ({"motion": {"values": MOTIONS}}, "needs a 'field'"),
    ({"motion": {"field": "motions", "values": ["one"]}}, "at least two strings"),
    ({"motion": {"field": "motions", "values": MOTIONS, "index": -1}}, "non-negative integer"),
    ({"motion": {"field": "motions", "values": MOTIONS, "colour": 1}}, "unknown key(s) colour"),
    ({"then": {"field": "motions", "index": 1, "values": MOTIONS, "absent": "nothing"}}, "absent' must be one of its values"),
    ({"motion": {"field": "motions", "values": MOTIONS, "tokens": [True]}}, "motion.tokens' must be a list of distinct"),
])
def test_a_bad_attribute_config_names_the_problem(attributes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SamaConfig(region_attributes=attributes)


def test_training_reads_the_labelled_region_and_moves_its_tokens():
    torch.manual_seed(0)
    model = SamaModel(attribute_config()).train()
    sample = labelled_square_sample()
    output = model(sample)
    assert output.attribute_loss is not None and float(output.attribute_loss) > 0
    assert "attribute_loss" in output.log_dict()
    # only turn 2 asks about a region: its tokens and labels are the ones read
    item = model._prepare_sample(sample)
    assert len(item["attribute_tokens"]) == 1 and item["attribute_labels"] == [{"motion": 1, "then": 2, "colour": 0}]
    model.set_training_phase({"loss_weights": {"lm": 0, "bce": 0, "dice": 0, "where": 0, "attribute": 1}})
    model.zero_grad()
    model(sample).loss.backward()
    shape_grad = model.aggregator.region_shape[0].weight.grad
    assert shape_grad is not None and shape_grad.abs().sum() > 0  # the region tokens themselves learn


def test_unlabelled_data_trains_as_without_heads():
    torch.manual_seed(0)
    model = SamaModel(attribute_config()).train()
    frames, masks = square_frames()
    output = model(square_sample(frames, masks))  # no turn meta, as in real SAMA-239K records
    assert float(output.attribute_loss) == 0
    assert np.isclose(float(output.loss.detach()), float(output.lm_loss) + 2.0 * float(output.bce_loss) + 0.5 * float(output.dice_loss))


def test_checkpoints_keep_the_heads(tmp_path):
    torch.manual_seed(0)
    model = SamaModel(attribute_config())
    model.save_pretrained(tmp_path / "m")
    loaded = SamaModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.region_heads.heads["motion"].weight, model.region_heads.heads["motion"].weight)
    assert loaded.config.region_attributes == ATTRIBUTES


def test_a_motion_token_makes_three_region_tokens_the_prompt_and_heads_follow(tmp_path):
    torch.manual_seed(0)
    model = SamaModel(attribute_config(aggregator_options=MOTION_TOKEN_OPTIONS)).train()
    assert model.region_token_count == 3
    sample = labelled_square_sample()
    item = model._prepare_sample(sample)
    assert item["attribute_tokens"][0].shape == (3, model.llm.hidden_size)
    ids = model.conversation_pieces(model.encode_video(sample.frames[:4], [0, 3], with_sam2=False), sample, [0, 1, 2, 3])[3].ids
    reg = model.llm.ids["<reg>"]
    opened = ids.index(model.llm.ids["<vp>"])
    assert ids[opened + 1 : opened + 5] == [reg, reg, reg, model.llm.ids["</vp>"]]
    model.set_training_phase({"loss_weights": {"lm": 0, "bce": 0, "dice": 0, "where": 0, "attribute": 1}})
    model.zero_grad()
    model(sample).loss.backward()
    motion_grad = model.aggregator.region_motion[0].weight.grad
    assert motion_grad is not None and motion_grad.abs().sum() > 0  # the motion token learns from the heads
    model.save_pretrained(tmp_path / "m")
    loaded = SamaModel.from_pretrained(tmp_path / "m")
    assert loaded.region_token_count == 3 and torch.equal(loaded.aggregator.region_motion[0].weight, model.aggregator.region_motion[0].weight)


def test_heads_can_read_only_the_motion_token():
    torch.manual_seed(0)
    model = SamaModel(attribute_config(aggregator_options=MOTION_TOKEN_OPTIONS, region_attribute_tokens=[2])).train()
    assert model.region_heads.heads["motion"].in_features == model.llm.hidden_size
    model.set_training_phase({"loss_weights": {"lm": 0, "bce": 0, "dice": 0, "where": 0, "attribute": 1}})
    model(labelled_square_sample()).loss.backward()
    assert model.aggregator.region_motion[0].weight.grad.abs().sum() > 0
    shape_grad = model.aggregator.region_shape[0].weight.grad
    assert shape_grad is None or not shape_grad.abs().sum()  # the shape token is left to the LLM
    with pytest.raises(ValueError, match="past the 2 the aggregator gives each region"):
        SamaModel(attribute_config(region_attribute_tokens=[2]))
    for bad in ([1, 1], [True], [], [-1]):
        with pytest.raises(ValueError, match="region_attribute_tokens"):
            SamaConfig(region_attribute_tokens=bad)


def test_an_aggregator_giving_other_than_its_declared_token_count_is_named():
    torch.manual_seed(0)
    model = SamaModel(attribute_config(aggregator_options=MOTION_TOKEN_OPTIONS)).eval()
    model.aggregator.motion_mode = None  # it still declares 3 tokens a region but now gives 2
    sample = labelled_square_sample()
    video = model.encode_video(sample.frames[:4], [0, 3], with_sam2=False)
    with pytest.raises(ValueError, match="region_token_count"):
        model.region_tokens(video, sample.turns[1].region_masks[:, :4])


def test_an_absent_value_labels_a_list_too_short():
    heads = RegionAttributeHeads(8, {"then": {"field": "motions", "index": 1, "values": MOTIONS, "absent": "stays still"}})
    assert heads.labels({"motions": ["moves left"]}) == {"then": 2}
    assert heads.labels({"motions": ["moves left", "moves right"]}) == {"then": 1}


def then_head_gradient(model, sample, attribute_weight: float) -> float:
    """How much one LM step (plus the heads' own loss at `attribute_weight`) moves the "then" head."""
    model.set_training_phase({"loss_weights": {"lm": 1, "bce": 0, "dice": 0, "where": 0, "attribute": attribute_weight}})
    model.zero_grad()
    model(sample).loss.backward()
    grad = model.region_heads.heads["then"].weight.grad
    return 0.0 if grad is None else float(grad.abs().sum())


def test_word_tokens_are_the_heads_predictions_as_word_embeddings(tmp_path):
    torch.manual_seed(0)
    model = SamaModel(attribute_config(region_word_tokens=True)).train()
    assert model.aggregator_token_count == 2 and model.region_token_count == 2 + len(ATTRIBUTES)
    sample = labelled_square_sample()
    video = model.encode_video(sample.frames[:4], [0, 3], with_sam2=False)
    region = sample.turns[1].region_masks[:, :4]
    tokens = model.region_tokens(video, region)
    assert tokens.shape == (1, 5, model.llm.hidden_size)
    # a head made certain of one value gives exactly the mean embedding of that value's words
    with torch.no_grad():
        model.region_heads.heads["colour"].bias.copy_(torch.tensor([0.0, 1e4]))
    blue = model.llm.embed(torch.tensor(model.llm.encode_text("blue")))[0]
    assert list(model.value_ids) == ["colour", "motion", "then"]  # name order, as a saved config's keys come back
    assert torch.allclose(model.region_tokens(video, region)[0, 2], blue, atol=1e-5)
    with torch.no_grad():
        model.region_heads.heads["motion"].bias.copy_(torch.tensor([0.0, 1e4, 0.0]))
    moves_right = model.llm.embed(torch.tensor(model.llm.encode_text("moves right"))).mean(dim=0)
    assert torch.allclose(model.region_tokens(video, region)[0, 3], moves_right, atol=1e-5)
    # the prompt holds all five tokens, and the LLM's loss alone reaches the heads through them
    ids = model.conversation_pieces(video, sample, [0, 1, 2, 3])[3].ids
    opened = ids.index(model.llm.ids["<vp>"])
    assert ids[opened + 1 : opened + 7] == [model.llm.ids["<reg>"]] * 5 + [model.llm.ids["</vp>"]]
    assert then_head_gradient(model, sample, attribute_weight=0) > 0
    model.eval().save_pretrained(tmp_path / "m")
    loaded = SamaModel.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(loaded.region_tokens(video, region), model.region_tokens(video, region), atol=1e-6)


def test_text_words_write_each_heads_value_into_the_prompt(tmp_path):
    torch.manual_seed(0)
    model = SamaModel(attribute_config(region_word_tokens="text")).train()
    assert model.region_token_count == model.aggregator_token_count == 2
    sample = labelled_square_sample()
    video = model.encode_video(sample.frames[:4], [0, 3], with_sam2=False)
    assert model.region_tokens(video, sample.turns[1].region_masks[:, :4]).shape == (1, 2, model.llm.hidden_size)
    with torch.no_grad():  # heads made certain: blue, moves right, then moves left
        model.region_heads.heads["colour"].bias.copy_(torch.tensor([0.0, 1e4]))
        model.region_heads.heads["motion"].bias.copy_(torch.tensor([0.0, 1e4, 0.0]))
        model.region_heads.heads["then"].bias.copy_(torch.tensor([1e4, 0.0, 0.0]))
    ids = model.conversation_pieces(video, sample, [0, 1, 2, 3])[3].ids
    opened, closed = ids.index(model.llm.ids["<vp>"]), ids.index(model.llm.ids["</vp>"])
    assert ids[opened + 1 : opened + 3] == [model.llm.ids["<reg>"]] * 2
    assert ids[opened + 3 : closed] == model.llm.encode_text("blue moves right moves left")  # name order: colour, motion, then
    # the words are what the heads chose, so only the attribute loss trains the heads, never the LLM's loss
    assert then_head_gradient(model, sample, attribute_weight=0) == 0
    assert then_head_gradient(model, sample, attribute_weight=1) > 0
    model.eval().save_pretrained(tmp_path / "m")
    loaded = SamaModel.from_pretrained(tmp_path / "m").eval()
    assert loaded.conversation_pieces(video, sample, [0, 1, 2, 3])[3].ids == ids


def test_teacher_words_write_the_true_values_in_training_and_the_heads_values_in_use():
    torch.manual_seed(0)
    model = SamaModel(attribute_config(region_word_tokens="text", region_word_teacher=1.0)).train()
    sample = labelled_square_sample()  # the truth: red, moves right, then stays still
    video = model.encode_video(sample.frames[:4], [0, 3], with_sam2=False)
    with torch.no_grad():  # heads made certain of other values: blue, moves left, then moves left
        model.region_heads.heads["colour"].bias.copy_(torch.tensor([0.0, 1e4]))
        model.region_heads.heads["motion"].bias.copy_(torch.tensor([1e4, 0.0, 0.0]))
        model.region_heads.heads["then"].bias.copy_(torch.tensor([1e4, 0.0, 0.0]))

    def words():
        ids = model.conversation_pieces(video, sample, [0, 1, 2, 3])[3].ids
        return ids[ids.index(model.llm.ids["<reg>"]) + 2 : ids.index(model.llm.ids["</vp>"])]

    assert words() == model.llm.encode_text("red moves right stays still")
    sample.meta["turn_meta"][1]["expect"] = {"colour": "red"}  # what the turn does not label, the heads fill in
    assert words() == model.llm.encode_text("red moves left moves left")
    model.eval()
    assert words() == model.llm.encode_text("blue moves left moves left")
    model.train().config.region_word_teacher = 0.5
    torch.manual_seed(1)
    assert len({tuple(words()) for _ in range(20)}) == 2  # about half the turns get the truth


def test_teacher_words_need_text_words_and_a_share():
    with pytest.raises(ValueError, match="region_word_teacher' writes true values as region words"):
        SamaConfig(region_attributes=ATTRIBUTES, region_word_tokens=True, region_word_teacher=0.5)
    with pytest.raises(ValueError, match="region_word_teacher' must be a share between 0 and 1, got 2"):
        SamaConfig(region_attributes=ATTRIBUTES, region_word_tokens="text", region_word_teacher=2)


def test_word_tokens_need_heads_and_readable_values():
    with pytest.raises(ValueError, match="region_word_tokens' needs 'region_attributes'"):
        SamaConfig(region_word_tokens=True)
    with pytest.raises(ValueError, match="region_word_tokens' must be true, false or \"text\""):
        SamaConfig(region_attributes=ATTRIBUTES, region_word_tokens="yes")
    unreadable = {"colour": {"field": "colour", "values": ["red", ""]}}
    with pytest.raises(ValueError, match=r"region_attributes.colour: the LLM's tokenizer makes no tokens of \[''\]"):
        SamaModel(attribute_config(region_attributes=unreadable, region_word_tokens=True))


def test_each_attribute_can_read_its_own_tokens():
    """Motion off the motion token alone, colour off the feature and shape tokens: neither head can
    lean on the other's cues (a motion read with the colour could memorise colour-motion pairs)."""
    torch.manual_seed(0)
    attributes = {"motion": {**ATTRIBUTES["motion"], "tokens": [2]}, "colour": {**ATTRIBUTES["colour"], "tokens": [0, 1]}}
    model = SamaModel(attribute_config(aggregator_options=MOTION_TOKEN_OPTIONS, region_attributes=attributes)).train()
    hidden = model.llm.hidden_size
    assert model.region_heads.heads["motion"].in_features == hidden
    assert model.region_heads.heads["colour"].in_features == 2 * hidden
    model.set_training_phase({"loss_weights": {"lm": 0, "bce": 0, "dice": 0, "where": 0, "attribute": 1}})
    sample = labelled_square_sample()
    for turn_meta in sample.meta["turn_meta"]:
        turn_meta["expect"] = {"colour": "red"}  # a colour label only
    model.zero_grad()
    model(sample).loss.backward()
    motion_grad = model.aggregator.region_motion[0].weight.grad
    assert motion_grad is None or not motion_grad.abs().sum()  # the colour head does not read the motion token
    assert model.aggregator.region_shape[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"region_attributes.motion.tokens \[3\] names a token past the 3"):
        SamaModel(attribute_config(aggregator_options=MOTION_TOKEN_OPTIONS, region_attributes={"motion": {**ATTRIBUTES["motion"], "tokens": [3]}}))


def test_the_region_attribute_objective_trains_region_tokens_and_heads_without_the_llm():
    torch.manual_seed(0)
    model = SamaModel(attribute_config(aggregator_options=MOTION_TOKEN_OPTIONS)).train()
    sample = labelled_square_sample()
    loss, parts, output = combined_loss(model, sample, {"region_attributes": 1.0})
    # (object, attribute) labels: two turns show the square, each labels 3 attributes; without object ids both count
    assert output is None and parts["attribute_labels"] == 6
    loss.backward()
    assert model.aggregator.region_motion[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters()) and all(p.grad is None for p in model.sam2.parameters())

    for meta in sample.meta["turn_meta"]:
        meta["objects"] = [7]
    assert model.region_attribute_loss(sample)[1] == 3  # with ids, each object once
    frames, masks = square_frames()
    sample.meta["objects"] = [{"colour": "red", "motions": ["moves right", "stays still"]}, {"colour": "blue", "motions": ["moves left"]}]
    sample.meta["object_masks"] = np.stack([masks, masks[:, :, ::-1]])  # the dataset's object_masks win over the turns
    assert model.region_attribute_loss(sample)[1] == 3 + 2
    output = model(sample)  # the model objective's encoded clip is reused: the same loss without encoding twice
    assert torch.allclose(model.region_attribute_loss(sample, video=output.videos[0])[0], model.region_attribute_loss(sample)[0])

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(60):
        loss, _ = model.region_attribute_loss(sample)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.2 * first, (first, float(loss.detach()))
    with pytest.raises(ValueError, match="needs a model with region_attributes"):
        SamaModel(tiny_config()).region_attribute_loss(sample)
