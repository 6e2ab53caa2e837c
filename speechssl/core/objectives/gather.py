"""Cross-rank gathering for the batch-level objectives (an explicit flag, off by default).

:func:`gather_rows` concatenates every rank's ``[N, D]`` rows (rank order) so negatives and
batch statistics cover the global batch; gradients flow back to each rank's own rows. Each
rank then computes the same global loss; the backward all-reduce sums the ranks' gradients
for a rank's rows, and DDP's gradient averaging divides by the world size again, so the
parameter gradient is that of the global loss. Every rank must hold the same ``N``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from speechssl.distributed import all_gather_objects, all_reduce_mean, is_distributed


def gather_rows(x: Tensor) -> Tensor:
    """``[N, ...]`` on each of ``W`` ranks -> ``[W * N, ...]`` everywhere (``x`` itself
    without torch.distributed)."""
    if not is_distributed():
        return x
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = all_gather_objects(int(x.shape[0]))
    if len(set(sizes)) != 1:
        raise ValueError(f"gathering needs the same batch size on every rank, got {sizes}")
    slots = x.new_zeros((world, *x.shape))
    slots = torch.cat([slots[:rank], x.unsqueeze(0), slots[rank + 1 :]], dim=0)
    return (all_reduce_mean(slots) * world).reshape(world * x.shape[0], *x.shape[1:])


def mean_over_ranks(x: Tensor) -> Tensor:
    """The mean of ``x`` over ranks (gradients to every rank's ``x``)."""
    return all_reduce_mean(x)


__all__ = ["gather_rows", "mean_over_ranks"]
