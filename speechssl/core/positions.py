"""Position encodings beyond wav2vec 2.0's single convolution (which lives in
:mod:`speechssl.core.transformer`).

* :class:`StackedConvPositionalEmbedding` - data2vec's relative position embedding: ``depth``
  grouped 1-D convolutions over time, each followed by a parameter-free LayerNorm and
  GELU (``transformers.Data2VecAudioPositionalConvEmbedding`` has the same layout).
  With ``padding_aware`` (default) padded frames are zeroed again between the layers so
  padding never reaches a real frame; the reference implementations only zero them before
  the first layer, so their padded batches differ near the end of shorter sequences.
* :func:`sincos_2d` - fixed 2-D sine-cosine embeddings of a grid (MAE/ViT style): half of
  the channels encode the row, half the column.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.errors import ConfigError


class PositionalConvLayer(nn.Module):
    """Grouped conv (same length) -> LayerNorm without parameters -> GELU over ``[N, D, S]``."""

    def __init__(self, dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups)
        self.trim = 1 if kernel_size % 2 == 0 else 0
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.trim:
            y = y[..., : -self.trim]
        y = F.layer_norm(y.transpose(1, 2), (self.dim,)).transpose(1, 2)
        return F.gelu(y)


class StackedConvPositionalEmbedding(nn.Module):
    """``depth`` :class:`PositionalConvLayer` s over ``[N, S, D]`` (data2vec's ``pos_conv``).

    Args:
        dim: model dimension.
        depth: number of conv layers (5 in data2vec).
        kernel_size: kernel of each layer (19 in data2vec: ``95 // 5``).
        groups: conv groups (16).
        padding_aware: zero padded frames between layers (see the module docstring).
    """

    #: :class:`~speechssl.core.transformer.TransformerEncoder` passes its padding mask
    accepts_padding_mask = True

    def __init__(
        self, dim: int, depth: int, kernel_size: int, groups: int, *, padding_aware: bool = True
    ) -> None:
        super().__init__()
        if depth < 1 or kernel_size < 1:
            raise ConfigError(
                f"positional conv depth and kernel must be >= 1: {depth}, {kernel_size}"
            )
        if dim % groups:
            raise ConfigError(f"dim {dim} is not divisible by positional conv groups {groups}")
        self.layers = nn.ModuleList(
            PositionalConvLayer(dim, kernel_size, groups) for _ in range(depth)
        )
        self.padding_aware = padding_aware
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """data2vec's initialisation: ``N(0, sqrt(4 / (kernel * dim)))`` weights, zero bias."""
        for layer in self.layers:
            assert isinstance(layer, PositionalConvLayer)
            conv = layer.conv
            std = math.sqrt(4.0 / (conv.kernel_size[0] * conv.in_channels))
            nn.init.normal_(conv.weight, mean=0.0, std=std)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``[N, S, D]`` -> ``[N, S, D]``; ``padding_mask [N, S]`` True at padding."""
        keep = None
        if self.padding_aware and padding_mask is not None and bool(padding_mask.any()):
            keep = (~padding_mask).unsqueeze(1).to(x.dtype)
        y = x.transpose(1, 2)
        for i, layer in enumerate(self.layers):
            if keep is not None and i > 0:
                y = y * keep
            y = layer(y)
        return y.transpose(1, 2)


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D position embeddings ``[H * W, dim]`` (row-major), ``dim`` divisible by 4:
    the first half encodes the row index, the second half the column index, each as
    ``[sin(p w_i), cos(p w_i)]`` with ``w_i = temperature ** (-i / (dim / 4))``."""
    if dim % 4:
        raise ConfigError(f"2-D sin-cos embeddings need dim divisible by 4, got {dim}")
    h, w = grid
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)

    def encode(pos: Tensor) -> Tensor:
        angles = pos.unsqueeze(1) * omega.unsqueeze(0)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


__all__ = ["PositionalConvLayer", "StackedConvPositionalEmbedding", "sincos_2d"]
