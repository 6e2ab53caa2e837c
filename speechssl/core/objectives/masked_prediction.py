"""Masked prediction over discrete targets (HuBERT, BEST-RQ, w2v-BERT's MLM module).

Pure functions with documented shapes, plus thin modules:

* :func:`cosine_logits` – HuBERT's logits: cosine similarity between projected frames and
  one learned embedding per class, divided by a temperature (fairseq ``compute_nce`` with
  every class as a candidate, which is the same softmax);
* :func:`masked_prediction_loss` – cross-entropy over masked and unmasked frames,
  separately averaged and weighted; targets equal to ``ignore_index`` (padding, frames
  without a label) count nowhere;
* :class:`MaskedPredictionHead` – projection + logits for one or several label streams
  (cosine or plain linear);
* :class:`MaskedPredictionObjective` – sums the streams into one :class:`LossRecord`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.errors import ConfigError

IGNORE_INDEX = -100


def cosine_logits(pred: Tensor, embeddings: Tensor, temperature: float = 0.1) -> Tensor:
    """Cosine-similarity logits.

    Args:
        pred: ``[..., D]`` projected frames.
        embeddings: ``[C, D]`` one embedding per class.
        temperature: divides the similarities (0.1 in HuBERT).

    Returns:
        ``[..., C]`` float32 logits.
    """
    p = F.normalize(pred.float(), dim=-1, eps=1e-8)
    e = F.normalize(embeddings.float(), dim=-1, eps=1e-8)
    return (p @ e.t()) / temperature


def masked_prediction_loss(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor,
    *,
    masked_weight: float = 1.0,
    unmasked_weight: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> LossRecord:
    """Cross-entropy on masked and unmasked frames.

    Args:
        logits: ``[N, S, C]`` (or ``[M, C]``) class scores.
        targets: ``[N, S]`` (or ``[M]``) long class ids; ``ignore_index`` = no target.
        mask: same shape as ``targets``, True where the input frame was masked.
        masked_weight, unmasked_weight: weights of the two mean losses in ``total``; a term
            with weight 0 is still computed for logging, without gradient.

    Returns:
        ``LossRecord`` with terms ``masked`` and ``unmasked`` (each the mean over its
        frames, 0 if there are none) and ``sample_size`` = number of masked frames with a
        target.
    """
    c = logits.shape[-1]
    flat_logits = logits.reshape(-1, c)
    flat_targets = targets.reshape(-1)
    flat_mask = mask.reshape(-1)
    has_target = flat_targets != ignore_index
    terms: dict[str, Tensor] = {}
    counts: dict[str, Tensor] = {}
    total = flat_logits.new_zeros(()).float()
    for name, sel, weight in (
        ("masked", flat_mask & has_target, masked_weight),
        ("unmasked", ~flat_mask & has_target, unmasked_weight),
    ):
        idx = sel.nonzero(as_tuple=True)[0]
        counts[name] = sel.sum()
        rows = flat_logits.index_select(0, idx)
        if weight == 0:
            rows = rows.detach()
        ce = F.cross_entropy(rows.float(), flat_targets.index_select(0, idx), reduction="sum")
        mean = ce / counts[name].clamp(min=1)
        terms[name] = mean
        if weight != 0:
            total = total + weight * mean
    return LossRecord(
        total=total,
        terms=terms,
        weights={"masked": masked_weight, "unmasked": unmasked_weight},
        sample_size=counts["masked"],
    )


def masked_accuracy(
    logits: Tensor, targets: Tensor, mask: Tensor, ignore_index: int = IGNORE_INDEX
) -> dict[str, Tensor]:
    """Top-1 accuracy on masked and unmasked frames with a target: ``{"acc_masked",
    "acc_unmasked"}`` (detached; NaN-free: 0 when a set is empty)."""
    with torch.no_grad():
        correct = logits.argmax(dim=-1) == targets
        has_target = targets != ignore_index
        out = {}
        for name, sel in (("acc_masked", mask & has_target), ("acc_unmasked", ~mask & has_target)):
            out[name] = (correct & sel).sum().float() / sel.sum().clamp(min=1)
        return out


class MaskedPredictionHead(nn.Module):
    """Projects encoder outputs and scores them against each label stream's classes.

    ``kind="cosine"`` (HuBERT): ``final_proj`` maps to ``final_dim`` per stream (untied: one
    slice of the projection per stream) and logits are cosine similarities with learned
    ``label_embeddings`` over a temperature. ``kind="linear"``: one linear classifier per
    stream on the encoder output.

    Args:
        input_dim: encoder dim.
        num_classes: classes per stream, in stream order.
        final_dim: projection dim (cosine kind).
        kind: ``cosine`` or ``linear``.
        temperature: logit temperature (cosine kind).
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: Sequence[int],
        final_dim: int = 256,
        *,
        kind: str = "cosine",
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if kind not in ("cosine", "linear"):
            raise ConfigError(f"masked prediction head kind must be cosine or linear, got {kind!r}")
        if not num_classes or any(k < 2 for k in num_classes):
            raise ConfigError(f"every label stream needs >= 2 classes, got {list(num_classes)}")
        self.kind = kind
        self.num_classes = list(num_classes)
        self.temperature = temperature
        self.final_dim = final_dim
        if kind == "cosine":
            self.final_proj = nn.Linear(input_dim, final_dim * len(self.num_classes))
            self.label_embeddings = nn.Parameter(torch.empty(sum(self.num_classes), final_dim))
            nn.init.uniform_(self.label_embeddings)
        else:
            self.classifiers = nn.ModuleList(nn.Linear(input_dim, k) for k in self.num_classes)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x [..., input_dim]`` -> one ``[..., C_i]`` logits tensor per stream."""
        if self.kind == "linear":
            return [clf(x).float() for clf in self.classifiers]
        proj = self.final_proj(x).chunk(len(self.num_classes), dim=-1)
        embeddings = self.label_embeddings.split(self.num_classes, dim=0)
        return [
            cosine_logits(p, e, self.temperature) for p, e in zip(proj, embeddings, strict=True)
        ]


class MaskedPredictionObjective(nn.Module):
    """Masked-prediction loss over several label streams, summed (each stream weighted).

    ``forward(logits, targets, mask)`` takes one logits/targets pair per stream (by name) and
    returns a record whose terms are ``<stream>/masked`` and ``<stream>/unmasked`` (and the
    per-stream totals), so every stream is logged.
    """

    def __init__(
        self,
        masked_weight: float = 1.0,
        unmasked_weight: float = 0.0,
        stream_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.masked_weight = masked_weight
        self.unmasked_weight = unmasked_weight
        self.stream_weights = dict(stream_weights or {})

    def forward(
        self, logits: Mapping[str, Tensor], targets: Mapping[str, Tensor], mask: Tensor
    ) -> LossRecord:
        records = {
            name: masked_prediction_loss(
                logits[name],
                targets[name],
                mask,
                masked_weight=self.masked_weight,
                unmasked_weight=self.unmasked_weight,
            )
            for name in logits
        }
        combined = LossRecord.combine(
            records, {n: self.stream_weights.get(n, 1.0) for n in records}
        )
        first = next(iter(records.values()))
        combined.sample_size = first.sample_size
        return combined
