"""Auxiliary heads that read attributes of a region (its motion, say) off its region tokens.

A small LLM trained from scratch learns colour and shape words from the region
tokens, but its motion words collapse onto the most frequent phrase: the path
is in the shape token's inputs (region_cues.py), yet nothing makes the token
carry it in a form the LLM's attention picks up. A linear head per attribute,
trained with cross-entropy against labels the data supplies, gives the region
tokens that direct signal; the words themselves are still learned by the LLM.

Configured as data (SamaConfig.region_attributes):

    {"motion": {"field": "motions", "index": 0, "values": ["moves left", ...], "tokens": [2]},
     "then": {"field": "motions", "index": 1, "values": [..., "nothing"], "absent": "nothing"}}

Labels come from a turn's `expect` (the world generator writes it into each
record's meta, see training/world/language.py): `expect[field]`, or its
`index`-th element when it is a list (`absent` when the list is shorter). A
turn without `expect`, with more than one region, or whose value is not among
`values`, gives no label: real SAMA-239K data, which has none, trains exactly
as without the heads.

With `region_word_tokens` the heads also feed the LLM: each head's softmax
over its values weights the mean input embedding of each value's words, one
token per attribute after the region's own tokens. The LLM's embeddings are
tied to its output, so naming what a region is becomes copying words that are
already in the prompt, one attribute per token, which recombines to unseen
colour-shape-motion triples as the attributes themselves do.

With `region_word_tokens: "text"` each head's most likely value is written
into the region as its words instead (`SamaModel.region_words`): `<vp>`, the
aggregator's tokens, "red moves left ring nothing ...", `</vp>`. A mixture
of embeddings leaves values that share most of their words ("moves to the
upper right" / "... lower right") nearly the same token; words are exact, and
copying them is what a small LLM learns first. The LLM's loss then no longer
reaches the heads, so only their own cross-entropy trains them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import check_attributes


class RegionAttributeHeads(nn.Module):
    """One linear classifier per attribute over the region tokens it reads, flattened: the attribute's own
    `tokens` (indices into a region's tokens), else `default_tokens` (SamaConfig.region_attribute_tokens), else all."""

    def __init__(self, hidden: int, attributes: Mapping, token_count: int = 2, default_tokens: Sequence[int] | None = None):
        super().__init__()
        problems = check_attributes(attributes)
        if problems:
            raise ValueError("invalid region attributes: " + "; ".join(problems) + ".")
        self.attributes = {name: dict(spec) for name, spec in attributes.items()}
        self.rows = {}
        for name, spec in self.attributes.items():
            rows = list(spec.get("tokens") or default_tokens or range(token_count))
            if max(rows) >= token_count:
                setting = f"region_attributes.{name}.tokens" if spec.get("tokens") else "region_attribute_tokens"
                raise ValueError(f"{setting} {rows} names a token past the {token_count} the aggregator gives each region; "
                                 f"use indices below {token_count}.")
            self.rows[name] = rows
        self.heads = nn.ModuleDict({name: nn.Linear(len(self.rows[name]) * hidden, len(spec["values"]))
                                    for name, spec in self.attributes.items()})

    def labels(self, expect: Mapping | None) -> dict[str, int]:
        """{attribute: class index} for the attributes this `expect` names."""
        found = {}
        for name, spec in self.attributes.items():
            value = (expect or {}).get(spec["field"])
            if isinstance(value, list):
                index = spec.get("index", 0)
                value = value[index] if index < len(value) else spec.get("absent")
            if isinstance(value, str) and value in spec["values"]:
                found[name] = spec["values"].index(value)
        return found

    def logits(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """tokens (R, token_count, D), regions' tokens from the aggregator -> {attribute: (R, values)}."""
        return {name: head(tokens[:, self.rows[name]].flatten(1)) for name, head in self.heads.items()}

    def word_tokens(self, tokens: torch.Tensor, value_embeddings: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """tokens (R, token_count, D); value_embeddings {attribute: (values, D)} -> (R, attributes, D):
        per attribute in the order of `value_embeddings`, the expected embedding of its value under the head's softmax."""
        logits = self.logits(tokens)
        return torch.stack([logits[name].softmax(dim=-1) @ embeddings for name, embeddings in value_embeddings.items()], dim=1)

    def loss(self, tokens: Sequence[torch.Tensor], labels: Sequence[Mapping[str, int]]) -> tuple[torch.Tensor, int]:
        """tokens: per labelled region (token_count, D); labels: its {attribute: index} -> (mean cross-entropy, count)."""
        total, count = None, 0
        for name, head in self.heads.items():
            pairs = [(t[self.rows[name]].reshape(-1), found[name]) for t, found in zip(tokens, labels) if name in found]
            if not pairs:
                continue
            rows, targets = zip(*pairs)
            summed = F.cross_entropy(head(torch.stack(rows)), torch.tensor(targets, device=rows[0].device), reduction="sum")
            total = summed if total is None else total + summed
            count += len(rows)
        if total is None:
            return next(self.parameters()).new_zeros(()), 0
        return total / count, count
