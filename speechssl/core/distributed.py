"""Differentiable collectives for objectives that opt into cross-rank statistics.

Every objective keeps gathering off by default; these helpers are what the explicit flags
use. Without an initialised process group (or with one rank) they are the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.detach().clone()
        dist.all_reduce(y)
        return y / dist.get_world_size()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # d(mean_r x_r)/d x_own = 1/W for each rank's output; summing the ranks' upstream
        # gradients gives the full derivative of the (rank-summed) loss
        g = grad.detach().clone()
        dist.all_reduce(g)
        return g / dist.get_world_size()


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks, with gradients flowing back to every rank's ``x``."""
    if world_size() == 1:
        return x
    out: Tensor = _AllReduceMean.apply(x)
    return out
