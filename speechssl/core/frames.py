"""`Frames`: what every front end returns and every core part consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Frames:
    """A padded batch of frame sequences.

    Attributes:
        seqs: ``[N, S, D]`` frame features.
        padding_mask: ``[N, S]`` bool, True where the frame is padding (no data).
            ``None`` means no padding (every sequence is ``S`` long).
    """

    seqs: Tensor
    padding_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.seqs.dim() != 3:
            raise ValueError(f"Frames.seqs must be [N, S, D], got {tuple(self.seqs.shape)}")
        if self.padding_mask is not None and self.padding_mask.shape != self.seqs.shape[:2]:
            raise ValueError(
                f"Frames.padding_mask {tuple(self.padding_mask.shape)} does not match "
                f"seqs {tuple(self.seqs.shape[:2])}"
            )

    @property
    def lengths(self) -> Tensor:
        """``[N]`` number of real frames per sequence."""
        n, s = self.seqs.shape[:2]
        if self.padding_mask is None:
            return torch.full((n,), s, dtype=torch.long, device=self.seqs.device)
        return (~self.padding_mask).sum(dim=1)

    @staticmethod
    def padding_mask_from_lengths(lengths: Tensor, max_len: int) -> Tensor:
        """``[N, max_len]`` bool mask, True at positions ``>= lengths[n]``."""
        steps = torch.arange(max_len, device=lengths.device)
        return steps.unsqueeze(0) >= lengths.unsqueeze(1)
