"""Cell motion: labels from objects' centres and motion phases, a head that learns them from the patch
tokens, tokens added to the key-frame tokens (nothing at the start), config checks and checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import one_thread, square_frames, square_sample, tiny_config
from sama_agent.model.configuration import SamaConfig
from sama_agent.model.modeling.cell_motion import cell_motion_labels
from sama_agent.model.modeling.sama import SamaModel
from sama_agent.training.objectives import combined_loss

VALUES = ["moves left", "moves right", "stays still"]
CELL_MOTION = {"field": "motions", "values": VALUES, "dim": 16}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


def square_with_objects():
    frames, masks = square_frames()  # 16 frames: the square moves right for 8, then stays
    sample = square_sample(frames, masks)
    sample.meta["object_masks"] = masks[None]
    sample.meta["objects"] = [{"motions": ["moves right", "stays still"]}]
    return sample


def test_labels_put_each_objects_motion_phase_in_the_cell_of_its_centre():
    masks = np.zeros((2, 4, 40, 40), bool)
    masks[0, :, 2:8, 2:8] = True  # top left cell of a 2 x 2 grid, all along
    masks[1, :, 30:36, 24:30] = True  # bottom right
    objects = [{"motions": ["moves left", "stays still"]}, {"motions": ["moves right"]}]
    labels = cell_motion_labels(masks, objects, "motions", VALUES, [0, 3], 4, 2)
    assert labels.tolist() == [[0, -100, -100, 1], [2, -100, -100, 1]]  # the second phase on the late key frame
    masks[1, :, 2:8, 2:8] = True  # both centres in the top left cell: that cell is left out
    masks[1, :, 30:36, 24:30] = False
    assert cell_motion_labels(masks, objects, "motions", VALUES, [0], 4, 2).tolist() == [[-100] * 4]
    # an unknown motion or an object that does not show gives no label
    assert cell_motion_labels(masks[:1], [{"motions": ["spins"]}], "motions", VALUES, [0], 4, 2).tolist() == [[-100] * 4]
    assert cell_motion_labels(np.zeros((1, 4, 40, 40), bool), objects[:1], "motions", VALUES, [0], 4, 2).tolist() == [[-100] * 4]


def test_cell_motion_starts_as_nothing_then_learns_the_squares_motion(tmp_path):
    torch.manual_seed(0)
    plain = SamaModel(tiny_config()).eval()
    torch.manual_seed(0)
    model = SamaModel(tiny_config(cell_motion=CELL_MOTION)).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    sample = square_with_objects()
    context, keys = model.frame_positions(len(sample.frames))
    video = model.encode_video(sample.frames[context], keys, with_sam2=False)
    assert video.cell_motion.shape == (2, 4, 16)
    assert torch.equal(video.key_tokens, plain.encode_video(sample.frames[context], keys, with_sam2=False).key_tokens)
    loss, cells = model.cell_motion_loss(sample)
    assert cells == 2  # one centre per key frame
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        total, parts, _ = combined_loss(model, sample, {"cell_motion": 1.0})
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert parts["motion_cells"] == 2 and parts["cell_motion_loss"] < 0.1 < float(loss.detach())
    # the projection into the key-frame tokens trains with the LLM's loss, not with the head's
    assert model.cell_motion.out.weight.abs().sum() == 0
    model.zero_grad()
    model(sample).loss.backward()
    assert model.cell_motion.out.weight.grad.abs().sum() > 0
    model.eval().save_pretrained(tmp_path / "m")
    loaded = SamaModel.from_pretrained(tmp_path / "m").eval()
    again = loaded.encode_video(sample.frames[context], keys, with_sam2=False)
    assert torch.allclose(again.cell_motion, model.encode_video(sample.frames[context], keys, with_sam2=False).cell_motion, atol=1e-6)


def test_a_sample_without_labelled_cells_logs_the_same_keys():
    """Every process must log the same keys (the runner sums them in one all-reduce), labels or not."""
    model = SamaModel(tiny_config(cell_motion=CELL_MOTION))
    sample = square_with_objects()
    sample.meta["objects"] = [{"motions": ["spins"]}]
    total, parts, _ = combined_loss(model, sample, {"cell_motion": 1.0})
    assert total is None and parts == {"cell_motion_loss": 0.0, "motion_cells": 0}
    assert set(combined_loss(model, square_with_objects(), {"cell_motion": 1.0})[1]) == set(parts)


def test_cell_motion_config_is_checked():
    with pytest.raises(ValueError, match="'cell_motion.values' must list at least two strings"):
        SamaConfig(cell_motion={"field": "motions", "values": ["moves left"]})
    with pytest.raises(ValueError, match="'cell_motion' has unknown key"):
        SamaConfig(cell_motion={**CELL_MOTION, "size": 3})
    with pytest.raises(ValueError, match="'cell_motion.dim' must be a positive integer"):
        SamaConfig(cell_motion={**CELL_MOTION, "dim": 0})
    without_objects = square_with_objects()
    del without_objects.meta["object_masks"]
    with pytest.raises(ValueError, match="sample square: cell motion learns from every object's masks; load them with the dataset's `object_masks: true`"):
        SamaModel(tiny_config(cell_motion=CELL_MOTION)).cell_motion_loss(without_objects)
    model = SamaModel(tiny_config())
    with pytest.raises(ValueError, match="the cell_motion objective needs"):
        combined_loss(model, square_with_objects(), {"cell_motion": 1.0})
