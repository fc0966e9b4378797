"""A SamaPredictor that encodes each frame for SAM2 once per session.

Both ways the predictor turns a `[SEG]` into a track over every frame need
every frame's SAM2 features: memory propagation (through the segmenter) and
per-frame decoding (straight on the model's SAM2). Here both read them from
one `CachedEncoding`, so a later turn decodes masks but encodes nothing.
"""
from __future__ import annotations

from typing import Any

from .feature_cache import DEFAULT_BUDGET_BYTES, CachedEncoding
from .model.predictor import SamaPredictor


class CachedPredictor(SamaPredictor):
    """SamaPredictor with the model's own SAM2 segmenter behind a per-session feature cache."""

    def __init__(self, model, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        from .plugins import get_registry

        self.feature_cache = CachedEncoding(model.sam2, budget_bytes)
        segmenter = get_registry().create("segmenter", "sam2", grounding=self.feature_cache)
        super().__init__(model, segmenter=segmenter)

    def _tracks(self, seg_hidden, phrases):
        # The per-frame path decodes on `self.model.sam2`; let it see the cached one for this call.
        model = self.model
        self.model = _WithSam2(model, self.feature_cache)
        try:
            return super()._tracks(seg_hidden, phrases)
        finally:
            self.model = model


class _WithSam2:
    """The model, except that `.sam2` is the given stand-in."""

    def __init__(self, model: Any, sam2: Any):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "sam2", sam2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
