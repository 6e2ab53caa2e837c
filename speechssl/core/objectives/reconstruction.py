"""Masked reconstruction of raw patches (MAE for images, SSAST for spectrograms).

* :func:`normalize_patches` - MAE's per-patch normalised targets: each patch minus its mean,
  over the square root of its (unbiased) variance plus 1e-6;
* :func:`mae_loss` - mean squared error per patch (over the patch's values), averaged over
  the masked patches only (He et al. 2022);
* :func:`patch_discrimination_loss` - SSAST's discriminative term: within one item, each
  masked patch's prediction must pick its own patch among the item's masked patches
  (dot-product logits, softmax cross-entropy; Gong et al. 2022);
* :class:`MAEObjective`, :class:`SSASTObjective` - the modules (SSAST: discrimination +
  10 x reconstruction, the paper's lambda).

Shapes: ``pred`` and ``target`` are ``[N, P, D]`` (``P`` patches of ``D`` values, e.g.
``C * p * p`` pixels), ``mask`` is ``[N, P]`` bool, True where the patch was hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.errors import ConfigError


def _check(pred: Tensor, target: Tensor, mask: Tensor, what: str) -> None:
    if pred.dim() != 3 or pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"{what}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be "
            f"[N, P, D] and mask {tuple(mask.shape)} [N, P]"
        )


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """``[..., D]`` -> each patch standardised over its ``D`` values (MAE's
    ``norm_pix_loss`` targets; unbiased variance, ``eps`` inside the square root)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / torch.sqrt(var + eps)


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool = False) -> Tensor:
    """MAE's reconstruction loss.

    Args:
        pred: ``[N, P, D]`` reconstructed patches.
        target: ``[N, P, D]`` the raw patches (no gradient flows into them).
        mask: ``[N, P]`` bool, True at the hidden patches (the only ones that count).
        norm_pix: normalise each target patch first (:func:`normalize_patches`).

    Returns:
        scalar: mean over masked patches of the per-patch mean squared error (0 with a
        gradient path when nothing is masked).
    """
    _check(pred, target, mask, "MAE")
    p = pred.double() if pred.dtype == torch.float64 else pred.float()
    t = target.detach().to(p.dtype)
    if norm_pix:
        t = normalize_patches(t)
    per_patch = (p - t).pow(2).mean(dim=-1)
    m = mask.to(p.dtype)
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)


def patch_discrimination_loss(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """SSAST's discriminative loss over the masked patches of each item.

    Args:
        pred: ``[N, P, D]`` predictions (a projection of the encoder output).
        target: ``[N, P, D]`` the raw patches.
        mask: ``[N, P]`` bool; every item must have the same number ``M`` of masked
            patches (block masking with ``exact_count``).

    Returns:
        ``(loss, accuracy)``: mean over the ``N * M`` masked patches of the cross-entropy of
        ``pred_i . target_j`` over ``j`` (the item's masked patches) with ``j = i`` the
        class, and the fraction of patches whose own patch scores highest.
    """
    _check(pred, target, mask, "patch discrimination")
    n, _, d = pred.shape
    counts = mask.sum(dim=1)
    if n and bool((counts != counts[0]).any()):
        raise ValueError("patch discrimination needs the same number of masked patches per item")
    m = int(counts[0]) if n else 0
    if m == 0:
        zero = pred.sum() * 0.0
        return zero.float(), zero.detach().float()
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    sel_p = pred[mask].view(n, m, d).to(dtype)
    sel_t = target.detach()[mask].view(n, m, d).to(dtype)
    logits = sel_p @ sel_t.transpose(1, 2)  # [N, M, M]
    classes = torch.arange(m, device=pred.device).expand(n, m)
    loss = F.cross_entropy(logits.reshape(n * m, m), classes.reshape(-1))
    with torch.no_grad():
        acc = (logits.argmax(dim=-1) == classes).float().mean()
    return loss, acc


class MAEObjective(nn.Module):
    """MAE's loss as a record with the term ``reconstruction``."""

    def __init__(self, norm_pix: bool = False) -> None:
        super().__init__()
        self.norm_pix = norm_pix

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> LossRecord:
        loss = mae_loss(pred, target, mask, norm_pix=self.norm_pix)
        return LossRecord(
            total=loss,
            terms={"reconstruction": loss},
            weights={"reconstruction": 1.0},
            sample_size=mask.sum(),
        )


class SSASTObjective(nn.Module):
    """SSAST's joint loss: ``discrimination_weight * discrimination +
    reconstruction_weight * reconstruction`` (1 and 10 in the paper).

    ``forward(disc_pred, recon_pred, target, mask)`` (all ``[N, P, D]`` / ``[N, P]``) returns
    the record and the discrimination accuracy.
    """

    def __init__(
        self,
        discrimination_weight: float = 1.0,
        reconstruction_weight: float = 10.0,
        norm_pix: bool = False,
    ) -> None:
        super().__init__()
        if discrimination_weight < 0 or reconstruction_weight < 0:
            raise ConfigError("SSAST loss weights must be >= 0")
        self.discrimination_weight = discrimination_weight
        self.reconstruction_weight = reconstruction_weight
        self.norm_pix = norm_pix

    def forward(
        self, disc_pred: Tensor, recon_pred: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[LossRecord, Tensor]:
        disc, acc = patch_discrimination_loss(disc_pred, target, mask)
        recon = mae_loss(recon_pred, target, mask, norm_pix=self.norm_pix)
        total = self.discrimination_weight * disc + self.reconstruction_weight * recon
        record = LossRecord(
            total=total,
            terms={"discrimination": disc, "reconstruction": recon},
            weights={
                "discrimination": self.discrimination_weight,
                "reconstruction": self.reconstruction_weight,
            },
            sample_size=mask.sum(),
        )
        return record, acc


__all__ = [
    "MAEObjective",
    "SSASTObjective",
    "mae_loss",
    "normalize_patches",
    "patch_discrimination_loss",
]
