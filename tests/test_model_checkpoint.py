"""Checkpoint I/O: safetensors round trips, strict loading, refusal of pickles and tampering,
and the official SAM2 `{"model": state_dict}` layout (made here with torch.save, never downloaded)."""
import json
import pickle
import struct

import pytest
import torch

from sama_agent.errors import CheckpointError
from sama_agent.model.checkpoint import (
    DIGEST_KEY,
    convert_sam2_pt_to_safetensors,
    load_official_sam2_pt,
    load_state_dict_strict,
    read_pretrained,
    read_safetensors,
    safetensors_metadata,
    save_pretrained,
    save_safetensors,
)
from sama_agent.model.modeling.sam2_model import Sam2Config, Sam2Grounding, build_sam2

SMALL = {"variant": "cpu_small", "image_size": 64, "trunk": "cnn", "cnn_channels": [8, 16, 24, 32]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sam2_small():
    torch.manual_seed(0)
    return build_sam2(SMALL)


def _outputs(grounding: Sam2Grounding) -> torch.Tensor:
    torch.manual_seed(1)
    frames = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        features = grounding.encode_frames(frames)
        return grounding.decode_masks(features, sparse=torch.randn(2, 1, 256), boxes=torch.tensor([[4.0, 4, 30, 40], [0, 0, 20, 20]]), orig_hw=(48, 40))


class Evil:
    """Unpickling this would create a file; the loaders must never unpickle it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---- safetensors ----------------------------------------------------------------------
def test_safetensors_round_trip_is_bit_identical(tmp_path, sam2_small):
    path = save_safetensors(sam2_small, tmp_path / "sam2.safetensors", metadata={"note": "test"})
    fresh = build_sam2({**SMALL})
    assert not torch.equal(fresh.sam_mask_decoder.iou_token.weight, sam2_small.sam_mask_decoder.iou_token.weight)
    load_state_dict_strict(fresh, path)
    for name, tensor in sam2_small.state_dict().items():
        loaded = fresh.state_dict()[name]
        assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor), name
    assert torch.equal(_outputs(Sam2Grounding(fresh, SMALL)), _outputs(Sam2Grounding(sam2_small, SMALL)))
    metadata = safetensors_metadata(path)
    assert metadata["note"] == "test" and len(metadata[DIGEST_KEY]) == 64


def test_tied_and_sliced_tensors_can_be_saved(tmp_path):
    shared = torch.arange(12.0)
    state = {"a": shared, "b": shared, "view": shared[2:5], "half": torch.ones(3, dtype=torch.bfloat16)}
    path = save_safetensors(state, tmp_path / "tied.safetensors")
    loaded = read_safetensors(path)
    assert set(loaded) == set(state)
    for name in state:
        assert torch.equal(loaded[name], state[name]) and loaded[name].dtype == state[name].dtype


def test_tampered_tensor_bytes_are_refused(tmp_path, sam2_small):
    path = save_safetensors(sam2_small, tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified or damaged"):
        load_state_dict_strict(build_sam2(SMALL), path)


def test_truncated_and_garbage_files_are_refused(tmp_path, sam2_small):
    path = save_safetensors(sam2_small, tmp_path / "m.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        read_safetensors(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 32)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_safetensors(garbage)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        read_safetensors(tiny)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_safetensors(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("layout", ["torch_zip", "legacy_pickle"])
def test_pickles_are_refused_without_unpickling(tmp_path, layout):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    if layout == "torch_zip":
        torch.save({"w": torch.ones(2), "evil": Evil(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"evil": Evil(marker)}, protocol=2))
    module = torch.nn.Linear(2, 1)
    with pytest.raises(CheckpointError, match="Pickle checkpoints are refused") as info:
        load_state_dict_strict(module, path)
    assert "convert" in str(info.value).lower()
    assert not marker.exists()


def test_missing_extra_and_mismatched_tensors_are_named(tmp_path, sam2_small):
    state = dict(sam2_small.state_dict())
    missing = dict(state)
    del missing["sam_mask_decoder.iou_token.weight"]
    path = save_safetensors(missing, tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor.*sam_mask_decoder\.iou_token\.weight") as info:
        load_state_dict_strict(build_sam2(SMALL), path)
    assert "missing.safetensors" in str(info.value)

    extra = {**state, "head.surprise": torch.zeros(3)}
    path = save_safetensors(extra, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*head\.surprise"):
        load_state_dict_strict(build_sam2(SMALL), path)

    wrong = {**state, "no_mem_embed": torch.zeros(1, 1, 128)}
    path = save_safetensors(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatch.*no_mem_embed \(checkpoint \(1, 1, 128\), model \(1, 1, 256\)\)"):
        load_state_dict_strict(build_sam2(SMALL), path)


# ---- official SAM2 .pt -------------------------------------------------------------------
def test_official_layout_checkpoint_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(3)
    config = {"variant": "sam2.1_hiera_t", "image_size": 128}
    source = build_sam2(config)
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": source.state_dict()}, path)  # the layout facebookresearch/sam2 publishes
    loaded = build_sam2({**config, "checkpoint": str(path)})
    for name, tensor in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(_outputs(Sam2Grounding(loaded, config)), _outputs(Sam2Grounding(source, config)))

    converted = convert_sam2_pt_to_safetensors(path, tmp_path / "sam2.1_hiera_tiny.safetensors")
    from_safetensors = build_sam2({**config, "checkpoint": str(converted)})
    assert torch.equal(_outputs(Sam2Grounding(from_safetensors, config)), _outputs(Sam2Grounding(source, config)))


def test_official_pt_with_code_or_wrong_layout_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "extra": Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_official_sam2_pt(evil)
    assert not marker.exists()

    flat = tmp_path / "flat.pt"
    torch.save({"w": torch.ones(1)}, flat)
    with pytest.raises(CheckpointError, match="under 'model'"):
        load_official_sam2_pt(flat)

    mismatched = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.ones(1)}}, mismatched)
    with pytest.raises(CheckpointError, match=r"missing tensor.*unexpected tensor\(s\): w"):
        build_sam2({**SMALL, "checkpoint": str(mismatched)})


# ---- save_pretrained directories --------------------------------------------------------
def test_save_pretrained_directory_round_trip(tmp_path, sam2_small):
    grounding = Sam2Grounding(sam2_small, SMALL)
    directory = grounding.save_pretrained(tmp_path / "seg")
    config, weights = read_pretrained(directory)
    assert config["variant"] == "cpu_small" and config["model_type"] == "sam2_grounding"
    assert weights.name == "model.safetensors"
    again = Sam2Grounding.from_pretrained(directory)
    assert again.config.cnn_channels == (8, 16, 24, 32)
    assert torch.equal(_outputs(again), _outputs(grounding))


def test_read_pretrained_explains_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        read_pretrained(tmp_path / "nowhere")
    directory = tmp_path / "ckpt"
    directory.mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({"variant": "cpu_small"}))
    (directory / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing.*pytorch_model\.bin.*refused"):
        read_pretrained(directory)
    save_pretrained(directory, {"variant": "cpu_small"}, {"w": torch.ones(2)})
    config, weights = read_pretrained(directory)
    assert config == {"variant": "cpu_small"} and read_safetensors(weights)["w"].tolist() == [1.0, 1.0]
    (directory / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_pretrained(directory)


def test_config_round_trip_and_bad_fields():
    config = Sam2Config(variant="sam2.1_hiera_s", image_size=128, num_maskmem=3, overrides=["model.memory_attention.num_layers=1"])
    assert Sam2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown Sam2Config field.*colour"):
        Sam2Config.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="unknown SAM2 variant"):
        Sam2Config(variant="sam3")
    with pytest.raises(ValueError, match="multiple of 32"):
        Sam2Config(image_size=100)


def test_save_pretrained_refuses_a_config_that_would_not_rebuild_the_model(tmp_path, sam2_small):
    mislabelled = Sam2Grounding(sam2_small)  # built from SMALL, labelled with the default config
    with pytest.raises(CheckpointError, match="pass the config the model was built with"):
        mislabelled.save_pretrained(tmp_path / "bad")
