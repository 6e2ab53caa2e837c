"""Joint-embedding objectives on two views of the same items (SimCLR, VICReg, Barlow Twins).

Each takes the embeddings of two views of a batch, ``z_a [N, D]`` and ``z_b [N, D]`` (row
``i`` of both comes from item ``i``), and is modality-free: the views may be two
augmentations of an image or two crops of an utterance.

* :func:`nt_xent_loss` - SimCLR's normalised-temperature cross-entropy (InfoNCE with the
  other ``2N - 2`` embeddings of the batch as negatives), temperature 0.5 by default
  (SimCLR's default in its ablations; lightly's too);
* :func:`vicreg_loss` - VICReg: invariance (mean squared error), variance (hinge on the
  per-dimension standard deviation) and covariance (squared off-diagonal covariances / D),
  weighted 25 / 25 / 1 (Bardes et al. 2022);
* :func:`barlow_twins_loss` - Barlow Twins: the cross-correlation matrix of the
  batch-standardised views driven to the identity, off-diagonal weight 5e-3 (Zbontar et
  al. 2021).

The modules (:class:`NTXentObjective`, :class:`VICRegObjective`,
:class:`BarlowTwinsObjective`) hold the coefficients and return a
:class:`~speechssl.core.loss.LossRecord` with every term. All arithmetic is float32 (or the
inputs' dtype when that is float64). With ``gather_distributed=True`` (off by default) the
modules use the global batch under torch.distributed: NT-Xent and VICReg gather every
rank's embeddings (:func:`~speechssl.core.objectives.gather.gather_rows`), Barlow Twins
averages the ranks' cross-correlation matrices (each standardised on its own rank, as
lightly does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.core.objectives.gather import gather_rows, mean_over_ranks
from speechssl.errors import ConfigError


def _pair(z_a: Tensor, z_b: Tensor, what: str, min_rows: int = 1) -> tuple[Tensor, Tensor]:
    if z_a.dim() != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"{what}: the two views must both be [N, D], got {tuple(z_a.shape)} and "
            f"{tuple(z_b.shape)}"
        )
    if z_a.shape[0] < min_rows:
        raise ValueError(f"{what} needs at least {min_rows} items per batch, got {z_a.shape[0]}")
    dtype = torch.float64 if z_a.dtype == torch.float64 else torch.float32
    return z_a.to(dtype), z_b.to(dtype)


# --------------------------------------------------------------------------- NT-Xent


def nt_xent_logits(z_a: Tensor, z_b: Tensor, temperature: float = 0.5) -> tuple[Tensor, Tensor]:
    """SimCLR's logits over the ``2N`` embeddings of a batch.

    Args:
        z_a, z_b: ``[N, D]`` embeddings of the two views.
        temperature: divides the cosine similarities.

    Returns:
        ``(logits [2N, 2N - 1], target [2N])``: row ``i`` scores every other embedding
        (itself left out); ``target[i]`` is the column of the other view of the same item.
    """
    a, b = _pair(z_a, z_b, "NT-Xent", min_rows=1)
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b], dim=0), dim=-1, eps=1e-8)
    sim = z @ z.t() / temperature
    keep = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = sim[keep].view(2 * n, 2 * n - 1)
    rows = torch.arange(2 * n, device=z.device)
    partner = (rows + n) % (2 * n)
    # dropping the diagonal shifts every column right of it one to the left
    target = partner - (partner > rows).long()
    return logits, target


def nt_xent_loss(z_a: Tensor, z_b: Tensor, temperature: float = 0.5) -> Tensor:
    """Mean NT-Xent over the ``2N`` embeddings (both directions); scalar.

    ``z_a, z_b``: ``[N, D]``; with ``N == 1`` the only candidate is the positive and the
    loss is 0.
    """
    if temperature <= 0:
        raise ConfigError(f"NT-Xent temperature must be > 0, got {temperature}")
    logits, target = nt_xent_logits(z_a, z_b, temperature)
    return F.cross_entropy(logits, target)


def nt_xent_accuracy(z_a: Tensor, z_b: Tensor) -> Tensor:
    """Fraction of the ``2N`` embeddings whose nearest other embedding is their partner."""
    with torch.no_grad():
        logits, target = nt_xent_logits(z_a, z_b, 1.0)
        return (logits.argmax(dim=-1) == target).float().mean()


class NTXentObjective(nn.Module):
    """SimCLR's loss as a record with the term ``nt_xent``."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"NT-Xent temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z_a: Tensor, z_b: Tensor) -> LossRecord:
        if self.gather_distributed:
            z_a, z_b = gather_rows(z_a), gather_rows(z_b)
        loss = nt_xent_loss(z_a, z_b, self.temperature)
        return LossRecord(
            total=loss,
            terms={"nt_xent": loss},
            weights={"nt_xent": 1.0},
            sample_size=2 * z_a.shape[0],
        )


# --------------------------------------------------------------------------- VICReg


def vicreg_terms(z_a: Tensor, z_b: Tensor, eps: float = 1e-4) -> dict[str, Tensor]:
    """VICReg's three unweighted terms.

    Args:
        z_a, z_b: ``[N, D]`` embeddings, ``N >= 2``.
        eps: added to the variance before the square root.

    Returns:
        ``{"invariance": mean squared error between the views (over N x D),
        "variance": mean over D of relu(1 - std_d), averaged over the two views,
        "covariance": sum of the squared off-diagonal covariances / D, summed over the two
        views}`` (unbiased covariance, as in the paper's pseudo-code).
    """
    a, b = _pair(z_a, z_b, "VICReg", min_rows=2)
    invariance = F.mse_loss(a, b)
    variance = 0.5 * (_variance_hinge(a, eps) + _variance_hinge(b, eps))
    covariance = _off_diagonal_covariance(a) + _off_diagonal_covariance(b)
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def _variance_hinge(x: Tensor, eps: float) -> Tensor:
    std = torch.sqrt(x.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def _off_diagonal_covariance(x: Tensor) -> Tensor:
    n, d = x.shape
    centred = x - x.mean(dim=0)
    cov = centred.t() @ centred / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    invariance_weight: float = 25.0,
    variance_weight: float = 25.0,
    covariance_weight: float = 1.0,
    eps: float = 1e-4,
) -> LossRecord:
    """VICReg (``z_a, z_b [N, D]``, N >= 2): ``25 * invariance + 25 * variance + 1 *
    covariance`` by default (the paper's lambda, mu, nu); terms as in :func:`vicreg_terms`."""
    terms = vicreg_terms(z_a, z_b, eps)
    weights = {
        "invariance": invariance_weight,
        "variance": variance_weight,
        "covariance": covariance_weight,
    }
    total = sum(weights[k] * v for k, v in terms.items())
    assert isinstance(total, Tensor)
    return LossRecord(total=total, terms=terms, weights=weights, sample_size=z_a.shape[0])


class VICRegObjective(nn.Module):
    """VICReg with its coefficients (:func:`vicreg_loss`)."""

    def __init__(
        self,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        eps: float = 1e-4,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        for name, value in (
            ("invariance_weight", invariance_weight),
            ("variance_weight", variance_weight),
            ("covariance_weight", covariance_weight),
        ):
            if value < 0:
                raise ConfigError(f"VICReg {name} must be >= 0, got {value}")
        if eps <= 0:
            raise ConfigError(f"VICReg eps must be > 0, got {eps}")
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.eps = eps

    def forward(self, z_a: Tensor, z_b: Tensor) -> LossRecord:
        if self.gather_distributed:
            z_a, z_b = gather_rows(z_a), gather_rows(z_b)
        return vicreg_loss(
            z_a,
            z_b,
            invariance_weight=self.invariance_weight,
            variance_weight=self.variance_weight,
            covariance_weight=self.covariance_weight,
            eps=self.eps,
        )


# --------------------------------------------------------------------------- Barlow Twins


def cross_correlation(z_a: Tensor, z_b: Tensor, eps: float = 1e-5) -> Tensor:
    """``[D, D]`` cross-correlation of the two views after standardising each dimension over
    the batch (biased variance, as a training-mode BatchNorm without affine parameters)."""
    a, b = _pair(z_a, z_b, "Barlow Twins", min_rows=2)

    def standardise(x: Tensor) -> Tensor:
        mean = x.mean(dim=0)
        var = x.var(dim=0, unbiased=False)
        return (x - mean) / torch.sqrt(var + eps)

    return standardise(a).t() @ standardise(b) / a.shape[0]


def barlow_twins_loss(
    z_a: Tensor,
    z_b: Tensor,
    *,
    redundancy_weight: float = 5e-3,
    eps: float = 1e-5,
    gather_distributed: bool = False,
) -> LossRecord:
    """Barlow Twins (``z_a, z_b [N, D]``, N >= 2): ``sum_i (1 - C_ii)^2 + lambda *
    sum_{i != j} C_ij^2`` with ``C`` the :func:`cross_correlation` and ``lambda = 5e-3``
    (with ``gather_distributed``, ``C`` averaged over ranks). Terms ``invariance``
    (on-diagonal) and ``redundancy`` (off-diagonal)."""
    c = cross_correlation(z_a, z_b, eps)
    if gather_distributed:
        c = mean_over_ranks(c)
    diag = torch.diagonal(c)
    invariance = (1.0 - diag).pow(2).sum()
    redundancy = c.pow(2).sum() - diag.pow(2).sum()
    total = invariance + redundancy_weight * redundancy
    return LossRecord(
        total=total,
        terms={"invariance": invariance, "redundancy": redundancy},
        weights={"invariance": 1.0, "redundancy": redundancy_weight},
        sample_size=z_a.shape[0],
    )


class BarlowTwinsObjective(nn.Module):
    """Barlow Twins with its off-diagonal weight (:func:`barlow_twins_loss`)."""

    def __init__(
        self, redundancy_weight: float = 5e-3, eps: float = 1e-5, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        if redundancy_weight < 0:
            raise ConfigError(f"Barlow Twins redundancy_weight must be >= 0, got {redundancy_weight}")  # fmt: skip
        self.redundancy_weight = redundancy_weight
        self.eps = eps

    def forward(self, z_a: Tensor, z_b: Tensor) -> LossRecord:
        return barlow_twins_loss(
            z_a, z_b, redundancy_weight=self.redundancy_weight, eps=self.eps,
            gather_distributed=self.gather_distributed,
        )  # fmt: skip


__all__ = [
    "BarlowTwinsObjective",
    "NTXentObjective",
    "VICRegObjective",
    "barlow_twins_loss",
    "cross_correlation",
    "nt_xent_accuracy",
    "nt_xent_logits",
    "nt_xent_loss",
    "vicreg_loss",
    "vicreg_terms",
]
