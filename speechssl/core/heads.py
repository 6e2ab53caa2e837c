"""Projection heads of the joint-embedding methods, modality-free (``[N, D]`` in and out).

* :class:`ProjectionMLP` - Linear (-> BatchNorm -> ReLU) blocks and a final Linear: SimCLR's
  projector (2 layers), VICReg's and Barlow Twins' expanders (3 layers);
* :class:`DINOHead` - DINO's head: an MLP with GELU to a bottleneck, L2-normalised, then a
  weight-normalised linear layer to ``K`` outputs whose norm is fixed at 1 (DINO's
  ``norm_last_layer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.errors import ConfigError


class ProjectionMLP(nn.Module):
    """``in_dim -> dims[0] -> ... -> dims[-1]``; every layer but the last is followed by
    BatchNorm (when ``batch_norm``) and ReLU.

    Args:
        in_dim: input size (the pooled encoder output).
        dims: the output size of each layer (at least one).
        batch_norm: BatchNorm1d after each hidden layer.
    """

    def __init__(self, in_dim: int, dims: Sequence[int], *, batch_norm: bool = True) -> None:
        super().__init__()
        if not dims or any(d < 1 for d in dims):
            raise ConfigError(f"projector dims must be one or more positive sizes, got {list(dims)}")  # fmt: skip
        layers: list[nn.Module] = []
        prev = in_dim
        for i, d in enumerate(dims):
            last = i == len(dims) - 1
            layers.append(nn.Linear(prev, d, bias=last or not batch_norm))
            if not last:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(d))
                layers.append(nn.ReLU())
            prev = d
        self.layers = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DINOHead(nn.Module):
    """DINO's projection head.

    Args:
        in_dim: input size.
        out_dim: ``K`` prototypes (65536 in DINO).
        hidden_dim: MLP width (2048 in DINO).
        bottleneck_dim: size before the last layer (256 in DINO).
        num_layers: MLP layers before the bottleneck output (3 in DINO).
        batch_norm: BatchNorm after each hidden layer (DINO's ``use_bn``, its choice for
            convolutional backbones): it takes the component every item shares out of the
            hidden features, which otherwise decides the normalised output of inputs that
            differ little (e.g. mean-pooled utterances) and leaves the centred teacher
            uniform.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1 or min(out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ConfigError("DINO head sizes and num_layers must be positive")
        layers: list[nn.Module] = []
        prev = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(prev, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            prev = hidden_dim
        layers.append(nn.Linear(prev, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        # the direction of each prototype is learned; its norm is fixed at 1
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in_dim]`` -> ``[N, out_dim]`` logits."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(z, F.normalize(self.prototypes, dim=-1, eps=1e-6))


__all__ = ["DINOHead", "ProjectionMLP"]
