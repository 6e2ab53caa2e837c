"""Cepstral mean and variance normalisation: per utterance, and global (corpus) stats.

Statistics are accumulated in float64, as Kaldi's ``compute-cmvn-stats`` does, and can be
exported to Kaldi's ``[2, D + 1]`` stats matrix layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from speechssl.errors import ConfigError
from speechssl.utils.atomic import atomic_write_json

#: Kaldi's floor on the variance in ``apply-cmvn --norm-vars``
VAR_FLOOR = 1.0e-20


def _valid_mask(feats: Tensor, num_frames: Tensor | None) -> Tensor:
    n, f, _ = feats.shape
    if num_frames is None:
        return torch.ones(n, f, 1, dtype=torch.float64, device=feats.device)
    t = torch.arange(f, device=feats.device)
    return (t.view(1, f) < num_frames.to(feats.device).view(n, 1)).unsqueeze(-1).double()


def utterance_cmvn(
    feats: Tensor, num_frames: Tensor | None = None, *, norm_vars: bool = False
) -> Tensor:
    """Normalise each utterance by its own mean (and standard deviation).

    ``feats [N, F, D]``; statistics use only each utterance's real frames; padding rows
    stay zero. An utterance with zero frames is left as is.
    """
    if feats.dim() != 3:
        raise ConfigError(f"feats must be [N, F, D], got shape {tuple(feats.shape)}")
    mask = _valid_mask(feats, num_frames)
    x = feats.double() * mask
    count = mask.sum(1, keepdim=True).clamp_min(1.0)
    mean = x.sum(1, keepdim=True) / count
    out = x - mean
    if norm_vars:
        var = (x.square().sum(1, keepdim=True) / count - mean.square()).clamp_min(VAR_FLOOR)
        out = out * var.rsqrt()
    return (out * mask).to(feats.dtype)


@dataclass
class CmvnStats:
    """Global statistics: frame count, per-dimension sum and sum of squares (float64)."""

    count: float
    sum: Tensor
    sumsq: Tensor

    @staticmethod
    def zeros(dim: int) -> CmvnStats:
        z = torch.zeros(dim, dtype=torch.float64)
        return CmvnStats(0.0, z.clone(), z.clone())

    @property
    def dim(self) -> int:
        return int(self.sum.numel())

    def accumulate(self, feats: Tensor, num_frames: Tensor | None = None) -> CmvnStats:
        """Add a batch ``[N, F, D]`` (or one utterance ``[F, D]``); returns self."""
        if feats.dim() == 2:
            feats = feats.unsqueeze(0)
        if feats.shape[-1] != self.dim:
            raise ConfigError(f"cmvn stats have dim {self.dim}, features have {feats.shape[-1]}")
        mask = _valid_mask(feats, num_frames)
        x = feats.double() * mask
        self.count += float(mask.sum())
        self.sum += x.sum((0, 1)).cpu()
        self.sumsq += x.square().sum((0, 1)).cpu()
        return self

    def merge(self, other: CmvnStats) -> CmvnStats:
        if other.dim != self.dim:
            raise ConfigError(f"cannot merge cmvn stats of dims {self.dim} and {other.dim}")
        return CmvnStats(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation (variance floored at Kaldi's 1e-20)."""
        if self.count <= 0:
            raise ConfigError("cmvn stats are empty (no frames accumulated)")
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean.square()).clamp_min(VAR_FLOOR)
        return mean, var.sqrt()

    def apply(
        self, feats: Tensor, num_frames: Tensor | None = None, *, norm_vars: bool = True
    ) -> Tensor:
        """``(x - mean) / std`` (or ``x - mean``) on ``[..., D]``; padding rows stay zero."""
        mean, std = self.mean_std()
        out = feats.double() - mean.to(feats.device)
        if norm_vars:
            out = out / std.to(feats.device)
        if num_frames is not None and feats.dim() == 3:
            out = out * _valid_mask(feats, num_frames)
        return out.to(feats.dtype)

    def to_kaldi(self) -> Tensor:
        """Kaldi's stats matrix ``[2, D + 1]``: sums and count, then sums of squares and 0."""
        row0 = torch.cat([self.sum, torch.tensor([self.count], dtype=torch.float64)])
        row1 = torch.cat([self.sumsq, torch.zeros(1, dtype=torch.float64)])
        return torch.stack([row0, row1])

    @staticmethod
    def from_kaldi(mat: Tensor) -> CmvnStats:
        if mat.dim() != 2 or mat.shape[0] != 2:
            raise ConfigError(f"Kaldi cmvn stats must be [2, D+1], got {tuple(mat.shape)}")
        m = mat.double()
        return CmvnStats(float(m[0, -1]), m[0, :-1].clone(), m[1, :-1].clone())

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(
            path, {"count": self.count, "sum": self.sum.tolist(), "sumsq": self.sumsq.tolist()}
        )

    @staticmethod
    def load(path: str | os.PathLike[str]) -> CmvnStats:
        p = Path(path)
        try:
            obj = json.loads(p.read_text())
            stats = CmvnStats(
                float(obj["count"]),
                torch.tensor(obj["sum"], dtype=torch.float64),
                torch.tensor(obj["sumsq"], dtype=torch.float64),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{p}: not a cmvn stats file ({exc})") from exc
        if stats.sum.shape != stats.sumsq.shape:
            raise ConfigError(f"{p}: sum and sumsq have different sizes")
        return stats


class GlobalCMVN(nn.Module):
    """Fixed global normalisation as a module (buffers travel with the model's state)."""

    mean: Tensor
    inv_std: Tensor

    def __init__(self, stats: CmvnStats, norm_vars: bool = True) -> None:
        super().__init__()
        mean, std = stats.mean_std()
        self.register_buffer("mean", mean.float())
        self.register_buffer(
            "inv_std", (1.0 / std).float() if norm_vars else torch.ones_like(std).float()
        )

    def forward(self, feats: Tensor) -> Tensor:
        return (feats - self.mean) * self.inv_std
