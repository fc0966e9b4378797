"""Caption metrics from pycocoevalcap (the COCO caption evaluation code):
BLEU-1..4, METEOR, ROUGE-L, CIDEr (CIDEr-D, x10 scale as COCO reports it),
computed over a set of (candidate, references) pairs the COCO way: PTB
tokenisation (Java), then corpus-level scores.

SPICE needs the Stanford CoreNLP 3.6.0 jars, which pycocoevalcap downloads on
first use; offline they are absent, so SPICE is reported as unavailable
(`None`, with the reason in `unavailable`), never as 0.

METEOR runs in a Java process that takes seconds to warm up; it is started
on first use and shared by every `CaptionScorer` in the process (METEOR
serialises its calls with a lock), and stopped at exit or by `stop_meteor()`.
"""
from __future__ import annotations

import atexit
import shutil
import threading
from pathlib import Path
from typing import Sequence

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
MAX_CHARS = 2000  # guards METEOR's line protocol against runaway generations


class CaptionMetricError(RuntimeError):
    """The caption metric tooling (Java, pycocoevalcap) is missing or failed."""


def spice_status() -> str | None:
    """None when SPICE can run offline, else the reason it cannot."""
    if shutil.which("java") is None:
        return "SPICE needs Java on PATH"
    try:
        import pycocoevalcap.spice as spice_package
    except ImportError:
        return "pycocoevalcap is not installed"
    lib = Path(spice_package.__file__).parent / "lib"
    missing = [name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar") if not (lib / name).exists()]
    if missing:
        return (
            f"SPICE needs {', '.join(missing)} in {lib}; pycocoevalcap downloads them from nlp.stanford.edu at first use "
            "and this machine is offline"
        )
    return None


class CaptionScorer:
    """Scores candidate captions against references with pycocoevalcap."""

    def __init__(self, spice: bool = True):
        if shutil.which("java") is None:
            raise CaptionMetricError("caption metrics need Java (PTB tokenizer, METEOR); install a JRE (Java 8 or newer)")
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        self._tokenizer = PTBTokenizer()
        self._bleu, self._rouge, self._cider = Bleu(4), Rouge(), Cider()
        self.spice_unavailable = spice_status() if spice else "SPICE was not requested"

    @property
    def unavailable(self) -> dict[str, str]:
        """Metrics that are not computed, with the reason."""
        return {"SPICE": self.spice_unavailable} if self.spice_unavailable else {}

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str] | str]) -> dict[str, float | None]:
        """Corpus scores of candidates[i] against references[i] (a string or a list of strings).

        An empty candidate is allowed and scores 0 on every per-item metric.
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
        if not candidates:
            raise ValueError("no captions to score")
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        if any(not r for r in refs):
            raise ValueError("every candidate needs at least one reference caption")
        gts = {str(i): [{"caption": _clip(c)} for c in r] for i, r in enumerate(refs)}
        res = {str(i): [{"caption": _clip(c)}] for i, c in enumerate(candidates)}
        gts_tok, res_tok = self._tokenizer.tokenize(gts), self._tokenizer.tokenize(res)
        scores: dict[str, float | None] = {}
        bleu, _ = self._bleu.compute_score(gts_tok, res_tok, verbose=0)
        scores.update({f"Bleu_{n + 1}": float(v) for n, v in enumerate(bleu)})
        scores["METEOR"] = float(self._meteor_scorer().compute_score(gts_tok, res_tok)[0])
        scores["ROUGE_L"] = float(self._rouge.compute_score(gts_tok, res_tok)[0])
        scores["CIDEr"] = float(self._cider.compute_score(gts_tok, res_tok)[0])
        scores["SPICE"] = self._spice(gts_tok, res_tok)
        return scores

    def _meteor_scorer(self):
        return shared_meteor()

    def _spice(self, gts_tok, res_tok) -> float | None:
        if self.spice_unavailable:
            return None
        from pycocoevalcap.spice.spice import Spice

        try:
            return float(Spice().compute_score(gts_tok, res_tok)[0])
        except Exception as exc:  # a SPICE failure must not sink the other metrics
            self.spice_unavailable = f"SPICE failed: {exc}"
            return None

    def close(self) -> None:
        """Nothing to release per scorer; the shared METEOR process stops at exit (or `stop_meteor()`)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_meteor = None
_meteor_lock = threading.Lock()


def shared_meteor():
    """The process-wide METEOR scorer, (re)started when needed."""
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor.meteor_p.poll() is not None:
            from pycocoevalcap.meteor.meteor import Meteor

            _meteor = Meteor()
        return _meteor


@atexit.register
def stop_meteor() -> None:
    global _meteor
    with _meteor_lock:
        if _meteor is None:
            return
        process = _meteor.meteor_p
        process.stdin.close()
        process.kill()
        process.wait()
        _meteor.meteor_p = _Closed()  # its __del__ then has nothing left to stop
        _meteor = None


class _Closed:
    """Stands in for METEOR's process after close(), so its __del__ does nothing harmful."""

    class _Stdin:
        def close(self):
            pass

    stdin = _Stdin()

    def kill(self):
        pass

    def wait(self):
        return 0


def _clip(text: str) -> str:
    return " ".join(text.split())[:MAX_CHARS]
