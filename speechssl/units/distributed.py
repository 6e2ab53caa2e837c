"""Small ``torch.distributed`` helpers for k-means: every call is a no-op on one process.

k-means only needs sums (sufficient statistics), a broadcast of the initial centroids from
rank 0 and a gather of the initialisation sample. With NCCL the collectives need CUDA
tensors, with gloo CPU tensors; the helpers move data to the backend's device and back, so
callers keep their tensors wherever the computation runs.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device | str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment, if there is one.

    Uses NCCL for a CUDA ``device`` and gloo otherwise. Returns True when this call created
    the group (the caller should then :func:`shutdown` it), False when there is no group to
    join (``WORLD_SIZE`` unset or 1) or one is already initialised.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return False
    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes, in place; returns it."""
    if not is_distributed():
        return tensor
    dev = _comm_device()
    buf = tensor if tensor.device == dev else tensor.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def broadcast(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` on every process with rank ``src``'s value, in place."""
    if not is_distributed():
        return tensor
    dev = _comm_device()
    buf = tensor.contiguous() if tensor.device == dev else tensor.to(dev).contiguous()
    dist.broadcast(buf, src=src)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate along dim 0 the tensors of all ranks (rank order); sizes may differ."""
    if not is_distributed():
        return tensor
    dev = _comm_device()
    world = dist.get_world_size()
    local = tensor.to(dev).contiguous()
    n = torch.tensor([local.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)
    return out.to(tensor.device)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
