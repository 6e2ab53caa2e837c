"""Contrastive InfoNCE with distractors from the same sequence (wav2vec 2.0).

* :func:`sample_distractors` – for each of ``M`` positions, ``K`` indices of other positions
  of the same group (utterance), uniformly, never the position itself;
* :func:`info_nce_loss` – cosine similarities to the positive and the distractors over a
  temperature, cross-entropy with the positive as the class (a distractor identical to
  the positive is excluded, as in fairseq);
* :class:`ContrastiveObjective` – the module: InfoNCE plus optional diversity and feature
  penalty terms, one :class:`LossRecord`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord


def sample_distractors(
    group_sizes: Tensor, num_distractors: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample distractor indices within groups, excluding the position itself.

    Positions are numbered ``0 .. M-1`` group after group (``group_sizes [B]`` sums to
    ``M``), e.g. the masked frames of each utterance in order.

    Returns:
        ``(index [M, K] long, valid [M, K] bool)``: ``index[m]`` are positions of ``m``'s
        group other than ``m``; ``valid`` is False for every slot of a position whose group
        has no other member (its logits get no distractors).
    """
    device = group_sizes.device
    sizes = group_sizes.long()
    m = int(sizes.sum())
    group_of = torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)
    starts = torch.cumsum(sizes, 0) - sizes
    pos_in_group = torch.arange(m, device=device) - starts[group_of]
    size = sizes[group_of]
    gen_device = generator.device if generator is not None else device
    u = torch.rand((m, num_distractors), generator=generator, device=gen_device).to(device)
    # uniform over the size-1 other members: draw from [0, size-1), skip over yourself
    draw = torch.floor(u * (size - 1).clamp(min=1).unsqueeze(1)).long()
    draw = draw + (draw >= pos_in_group.unsqueeze(1)).long()
    draw = torch.minimum(draw, (size - 1).clamp(min=0).unsqueeze(1))
    index = starts[group_of].unsqueeze(1) + draw
    valid = (size > 1).unsqueeze(1).expand(m, num_distractors)
    return index, valid


def info_nce_logits(
    pred: Tensor,
    positives: Tensor,
    distractors: Tensor,
    *,
    temperature: float = 0.1,
    valid: Tensor | None = None,
) -> Tensor:
    """InfoNCE logits.

    Args:
        pred: ``[M, D]`` predictions (context vectors projected to the target space).
        positives: ``[M, D]`` the true target of each prediction.
        distractors: ``[M, K, D]`` negative targets.
        temperature: similarity temperature (0.1 in wav2vec 2.0).
        valid: optional ``[M, K]`` bool; False distractors are excluded.

    Returns:
        ``[M, 1 + K]`` float32 logits, column 0 the positive; excluded distractors (invalid
        or identical to the positive) are ``-inf``.
    """
    candidates = torch.cat([positives.unsqueeze(1), distractors], dim=1).float()
    logits = F.cosine_similarity(pred.float().unsqueeze(1), candidates, dim=-1) / temperature
    same = (distractors == positives.unsqueeze(1)).all(dim=-1)
    excluded = same if valid is None else same | ~valid
    return torch.cat([logits[:, :1], logits[:, 1:].masked_fill(excluded, float("-inf"))], dim=1)


def info_nce_loss(
    pred: Tensor,
    positives: Tensor,
    distractors: Tensor,
    *,
    temperature: float = 0.1,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean InfoNCE loss over ``M`` predictions and the logits it used (shapes as in
    :func:`info_nce_logits`). Returns ``(loss scalar, logits [M, 1 + K])``."""
    logits = info_nce_logits(pred, positives, distractors, temperature=temperature, valid=valid)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0, logits
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target), logits


def contrastive_accuracy(logits: Tensor) -> Tensor:
    """Fraction of predictions whose positive scores highest (ties count as wrong, as in
    fairseq: a constant output must not look accurate)."""
    with torch.no_grad():
        if logits.shape[0] == 0:
            return logits.new_zeros(())
        best = logits.argmax(dim=-1) == 0
        tie = (
            (logits[:, 1:] == logits[:, :1]).any(dim=-1)
            if logits.shape[1] > 1
            else torch.zeros_like(best)
        )
        return (best & ~tie).float().mean()


class ContrastiveObjective(nn.Module):
    """wav2vec 2.0 loss: InfoNCE + ``diversity_weight * diversity`` +
    ``feature_penalty_weight * feature_penalty`` (the extra terms when given)."""

    def __init__(
        self,
        temperature: float = 0.1,
        diversity_weight: float = 0.1,
        feature_penalty_weight: float = 10.0,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.diversity_weight = diversity_weight
        self.feature_penalty_weight = feature_penalty_weight

    def forward(
        self,
        pred: Tensor,
        positives: Tensor,
        distractors: Tensor,
        valid: Tensor | None = None,
        *,
        diversity: Tensor | None = None,
        feature_penalty: Tensor | None = None,
    ) -> tuple[LossRecord, Tensor]:
        """Returns the record (terms ``contrastive``, ``diversity``, ``feature_penalty``) and
        the InfoNCE logits (for accuracy)."""
        loss, logits = info_nce_loss(
            pred, positives, distractors, temperature=self.temperature, valid=valid
        )
        terms = {"contrastive": loss}
        weights = {"contrastive": 1.0}
        total = loss
        if diversity is not None:
            terms["diversity"] = diversity
            weights["diversity"] = self.diversity_weight
            total = total + self.diversity_weight * diversity
        if feature_penalty is not None:
            terms["feature_penalty"] = feature_penalty
            weights["feature_penalty"] = self.feature_penalty_weight
            total = total + self.feature_penalty_weight * feature_penalty
        return (
            LossRecord(total=total, terms=terms, weights=weights, sample_size=pred.shape[0]),
            logits,
        )
