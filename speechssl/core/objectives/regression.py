"""Regression onto continuous targets at masked positions (data2vec).

* :func:`regression_loss` - per position, the smooth-L1 (``beta > 0``) or squared error
  (``beta == 0``) summed over the feature dimension and scaled by ``scale`` (data2vec's
  default ``1 / sqrt(D)``), averaged over the positions;
* :func:`feature_std` - the mean per-dimension standard deviation of a set of vectors,
  logged for predictions and targets (a collapsing model drives both towards 0);
* :class:`RegressionObjective` - selects the masked positions and returns a
  :class:`~speechssl.core.loss.LossRecord` with the ``regression`` term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.errors import ConfigError


def regression_loss(
    pred: Tensor, target: Tensor, *, beta: float = 0.0, scale: float | None = None
) -> Tensor:
    """Mean over ``M`` positions of the per-position regression loss.

    Args:
        pred: ``[M, D]`` predictions.
        target: ``[M, D]`` targets (no gradient flows into them).
        beta: smooth-L1 threshold; 0 gives the squared error (data2vec audio), 2 is
            data2vec vision's choice.
        scale: multiplies each position's summed loss; ``None`` means ``1 / sqrt(D)``.

    Returns:
        scalar float32 (0 with a gradient path when ``M == 0``).
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(
            f"regression pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [M, D]"
        )
    if beta < 0:
        raise ConfigError(f"regression beta must be >= 0, got {beta}")
    p, t = pred.float(), target.detach().float()
    if beta == 0:
        per_elem = F.mse_loss(p, t, reduction="none")
    else:
        per_elem = F.smooth_l1_loss(p, t, reduction="none", beta=beta)
    s = 1.0 / math.sqrt(pred.shape[-1]) if scale is None else scale
    per_position = per_elem.sum(dim=-1) * s
    if per_position.numel() == 0:
        return p.sum() * 0.0
    return per_position.mean()


def feature_std(x: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension standard deviation of ``x [M, D]``
    (detached; 0 with fewer than two rows)."""
    with torch.no_grad():
        flat = x.reshape(-1, x.shape[-1]).float()
        if flat.shape[0] < 2:
            return flat.new_zeros(())
        return torch.sqrt(flat.var(dim=0) + 1e-6).mean()


class RegressionObjective(nn.Module):
    """data2vec's loss: regression of predictions onto targets at masked positions.

    ``forward(pred [N, S, D], target [N, S, D], mask [N, S])`` -> record with the term
    ``regression`` (mean over masked positions) and ``sample_size`` = masked positions.
    """

    def __init__(self, beta: float = 0.0, scale: float | None = None) -> None:
        super().__init__()
        if beta < 0:
            raise ConfigError(f"regression beta must be >= 0, got {beta}")
        self.beta = beta
        self.scale = scale

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossRecord:
        p = pred[mask]
        t = target[mask]
        loss = regression_loss(p, t, beta=self.beta, scale=self.scale)
        return LossRecord(
            total=loss,
            terms={"regression": loss},
            weights={"regression": 1.0},
            sample_size=mask.sum(),
        )


__all__ = ["RegressionObjective", "feature_std", "regression_loss"]
