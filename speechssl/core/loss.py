"""Typed loss records: the total plus every named term, each of which is logged."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LossRecord:
    """The result of an objective.

    Attributes:
        total: scalar tensor to call ``backward`` on (already weighted and summed).
        terms: every named component (unweighted values, detached or not), e.g.
            ``{"masked": ..., "unmasked": ..., "diversity": ...}``. Logged as ``loss/<name>``.
        weights: the weight each term had in ``total`` (absent = 1.0 or not part of total).
        sample_size: the normaliser the objective used (e.g. number of masked frames), so
            records can be combined across micro-batches and ranks correctly.
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    sample_size: int | Tensor = 1

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self.terms.items())

    def scalars(self) -> dict[str, float]:
        """Detached float values for logging: ``{"loss": total, "loss/<term>": ...}``."""
        out = {"loss": float(self.total.detach())}
        for name, value in self.terms.items():
            out[f"loss/{name}"] = float(value.detach())
        return out

    @staticmethod
    def combine(records: Mapping[str, LossRecord], weights: Mapping[str, float]) -> LossRecord:
        """Weighted sum of several records; their terms are kept, prefixed by the key."""
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        used: dict[str, float] = {}
        for key, rec in records.items():
            w = float(weights.get(key, 1.0))
            total = rec.total * w if total is None else total + rec.total * w
            terms[key] = rec.total
            used[key] = w
            for name, value in rec.terms.items():
                terms[f"{key}/{name}"] = value
        if total is None:
            raise ValueError("LossRecord.combine needs at least one record")
        return LossRecord(total=total, terms=terms, weights=used)


def zero_loss(device: torch.device | str = "cpu") -> LossRecord:
    return LossRecord(total=torch.zeros((), device=device))
