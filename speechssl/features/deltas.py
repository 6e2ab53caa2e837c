"""Kaldi's delta features (``add-deltas``) on a padded batch of feature sequences."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from speechssl.errors import ConfigError


@functools.lru_cache(maxsize=16)
def delta_windows(order: int, window: int) -> tuple[tuple[float, ...], ...]:
    """Regression windows of orders ``0..order`` (Kaldi's ``DeltaFeatures::scales_``).

    Order ``i`` is the ``i``-fold convolution of ``[-w..w] / sum(j^2)``; its length is
    ``1 + 2 * i * window``.
    """
    if order < 0 or window < 1:
        raise ConfigError(f"deltas need order >= 0 and window >= 1, got {order}, {window}")
    scales: list[list[float]] = [[1.0]]
    norm = float(sum(j * j for j in range(-window, window + 1)))
    for _ in range(order):
        prev = scales[-1]
        cur = [0.0] * (len(prev) + 2 * window)
        for j in range(-window, window + 1):
            for k, p in enumerate(prev):
                cur[k + j + window] += j * p
        scales.append([c / norm for c in cur])
    return tuple(tuple(s) for s in scales)


def add_deltas(
    feats: Tensor, num_frames: Tensor | None = None, *, order: int = 2, window: int = 2
) -> Tensor:
    """Append deltas (and delta-deltas, ...): ``[N, F, D] -> [N, F, D * (order + 1)]``.

    Frames outside ``[0, num_frames[n])`` are replaced by the nearest edge frame of that
    utterance (Kaldi replicates the edges), so padding never leaks into real frames; rows
    past ``num_frames[n]`` come out zero.
    """
    if feats.dim() != 3:
        raise ConfigError(f"feats must be [N, F, D], got shape {tuple(feats.shape)}")
    n, f, _ = feats.shape
    if num_frames is None:
        num_frames = torch.full((n,), f, dtype=torch.long, device=feats.device)
    nf = num_frames.to(device=feats.device, dtype=torch.long)
    scales = delta_windows(order, window)
    reach = order * window
    t = torch.arange(f, device=feats.device)
    last = (nf - 1).clamp_min(0).view(n, 1)
    valid = (t.view(1, f) < nf.view(n, 1)).unsqueeze(-1).to(feats.dtype)
    # shifted[k] = feats at t + k - reach, clamped into each utterance's own frames
    shifted = []
    for k in range(2 * reach + 1):
        idx = torch.minimum((t + (k - reach)).clamp_min(0).view(1, f), last)
        shifted.append(feats.gather(1, idx.unsqueeze(-1).expand(n, f, feats.shape[2])))
    blocks = [feats]
    for scale in scales[1:]:
        off = reach - (len(scale) - 1) // 2
        acc = torch.zeros_like(feats)
        for j, s in enumerate(scale):
            if s != 0.0:
                acc = acc + s * shifted[off + j]
        blocks.append(acc)
    return torch.cat(blocks, dim=-1) * valid
