"""JEPA latent prediction (I-JEPA, Assran et al. 2023), modality-free.

A context encoder sees only the context patches; a narrow predictor, given the context
latents and position queries for the target blocks, predicts the latents that an EMA target
encoder computes from the *whole* input at those positions. The targets are
layer-normalised over the feature dimension (without parameters) and the distance is the
smooth-L1 (beta 1) of the official implementation (the paper writes L2; ``kind="l2"``
gives the mean squared error).

* :func:`jepa_loss` - the distance averaged over target positions and features;
* :class:`JEPAObjective` - the module, a :class:`~speechssl.core.loss.LossRecord` with the
  term ``latent``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.errors import ConfigError

JEPA_DISTANCES = ("smooth_l1", "l2")


def jepa_loss(
    pred: Tensor,
    target: Tensor,
    *,
    kind: str = "smooth_l1",
    normalize_target: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """JEPA's latent-prediction loss.

    Args:
        pred: ``[M, D]`` predicted latents at the ``M`` target positions.
        target: ``[M, D]`` the target encoder's latents there (no gradient flows into them).
        kind: ``smooth_l1`` (beta 1, the official code) or ``l2`` (mean squared error).
        normalize_target: parameter-free layer norm of each target vector first.
        eps: the layer norm's epsilon.

    Returns:
        scalar: mean over ``M x D`` (0 with a gradient path when ``M == 0``).
    """
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(
            f"JEPA pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [M, D]"
        )
    if kind not in JEPA_DISTANCES:
        raise ConfigError(f"JEPA distance must be one of {JEPA_DISTANCES}, got {kind!r}")
    p = pred.double() if pred.dtype == torch.float64 else pred.float()
    t = target.detach().to(p.dtype)
    if p.shape[0] == 0:
        return p.sum() * 0.0
    if normalize_target:
        t = F.layer_norm(t, (t.shape[-1],), eps=eps)
    if kind == "l2":
        return F.mse_loss(p, t)
    return F.smooth_l1_loss(p, t, beta=1.0)


class JEPAObjective(nn.Module):
    """``forward(pred [N, S, D], target [N, S, D], mask [N, S])``: :func:`jepa_loss` over
    the positions where ``mask`` is True (the target blocks)."""

    def __init__(self, kind: str = "smooth_l1", normalize_target: bool = True) -> None:
        super().__init__()
        if kind not in JEPA_DISTANCES:
            raise ConfigError(f"JEPA distance must be one of {JEPA_DISTANCES}, got {kind!r}")
        self.kind = kind
        self.normalize_target = normalize_target

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossRecord:
        loss = jepa_loss(
            pred[mask], target[mask], kind=self.kind, normalize_target=self.normalize_target
        )
        return LossRecord(
            total=loss, terms={"latent": loss}, weights={"latent": 1.0}, sample_size=mask.sum()
        )


__all__ = ["JEPA_DISTANCES", "JEPAObjective", "jepa_loss"]
