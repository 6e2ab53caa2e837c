"""The simple SUPERB heads: a linear CTC head (PR) and a mean-pooling classifier (KS, SID).

Both take featurizer output ``[N, T, D]`` and per-utterance frame counts ``[N]``; padding
frames never reach the result.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def frame_mask(frames: Tensor, width: int) -> Tensor:
    """``[N, width]`` bool, True on real frames."""
    steps = torch.arange(width, device=frames.device)
    return steps[None, :] < frames[:, None]


class LinearCTCHead(nn.Module):
    """SUPERB PR: a projection then a linear layer to the CTC vocabulary (blank = 0)."""

    def __init__(self, in_dim: int, vocab_size: int, proj_dim: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, proj_dim)
        self.out = nn.Linear(proj_dim, vocab_size)

    def forward(self, feats: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """-> ``(log_probs [N, T, V], frames [N])``."""
        return torch.log_softmax(self.out(self.proj(feats)).float(), dim=-1), frames


class MeanPoolClassifier(nn.Module):
    """SUPERB KS/SID: a projection, mean pooling over real frames, a linear classifier."""

    def __init__(self, in_dim: int, num_classes: int, proj_dim: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, proj_dim)
        self.out = nn.Linear(proj_dim, num_classes)

    def forward(self, feats: Tensor, frames: Tensor) -> Tensor:
        """-> ``logits [N, C]``."""
        x = self.proj(feats)
        mask = frame_mask(frames, x.shape[1]).unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / frames.clamp(min=1).unsqueeze(-1).to(x.dtype)
        return self.out(pooled).float()
