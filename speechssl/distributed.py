"""The one ``torch.distributed`` wrapper: process-group setup, collectives, model wrapping.

One convention for every stage (training, k-means, objectives):

- :func:`init_distributed` joins the process group that ``torchrun`` describes (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; NCCL on CUDA, gloo
  otherwise) and returns an explicit :class:`DistEnv` (rank, world size, device, and whether
  this call created the group). A plain ``python`` run is a world of one and never touches
  ``torch.distributed``. :func:`shutdown_distributed` ends the group this env created.
- The collectives act on the default process group and are the identity (or a copy) in a
  world of one, so callers never branch on the world size. Tensor collectives move data to
  the backend's device and back (NCCL needs CUDA tensors, gloo CPU tensors), so callers keep
  their tensors wherever their computation runs.
- :func:`all_reduce_mean` is differentiable, for objectives that opt into cross-rank
  statistics (every objective keeps gathering off by default).
- :func:`wrap_model` / :func:`gradient_sync` / :func:`fsdp_units`: DDP or FSDP2 wrapping for
  the training loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from speechssl.utils.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits (from :func:`init_distributed` or :func:`current_env`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    created_group: bool = False
    """Whether :func:`init_distributed` created the process group (and so ends it)."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    """True when a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_env(device: torch.device | str = "cpu") -> DistEnv:
    """The env of an already initialised process group (a world of one without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            device=torch.device(device),
        )
    return DistEnv(device=torch.device(device))


def init_distributed(device: str | torch.device = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join torchrun's process group if there is one; pick this process's device.

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device
    without an index becomes ``cuda:<LOCAL_RANK mod device count>``. An already initialised
    group is joined as it is (``created_group=False``: its owner ends it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world <= 1 or not dist.is_available():
        return DistEnv(device=dev)
    if dist.is_initialized():
        return current_env(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, dev)
    return DistEnv(
        rank=rank, world_size=world, local_rank=local_rank, device=dev, created_group=True
    )


def shutdown_distributed(env: DistEnv | None = None) -> None:
    """End the process group ``env`` created (any group when ``env`` is None)."""
    if env is not None and not env.created_group:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# collectives (identity in a world of one)


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce ``tensor`` over all processes in place (``sum``, ``max``, ``min``); returns it."""
    if not is_distributed():
        return tensor
    dev = _comm_device()
    buf = tensor if tensor.device == dev else tensor.to(dev)
    dist.all_reduce(buf, op=getattr(dist.ReduceOp, _OPS[op]))
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all processes, in place; returns it."""
    return all_reduce(tensor, "sum")


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
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)
    return out.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


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
    if not is_distributed():
        return x
    out: Tensor = _AllReduceMean.apply(x)
    return out


# --------------------------------------------------------------------------------------
# model wrapping (training)


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Submodules to shard (or compile) separately: the model's ``fsdp_units()`` if it has
    one, else every member of every ``nn.ModuleList`` (transformer layers, conv blocks)."""
    custom = getattr(model, "fsdp_units", None)
    if callable(custom):
        return list(custom())
    units: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            units.extend(module)
    return units


def wrap_model(
    model: nn.Module, env: DistEnv, *, strategy: str, find_unused_parameters: bool = False
) -> nn.Module:
    """DDP or FSDP2 around ``model`` for a world > 1; ``model`` itself otherwise.

    FSDP2 shards in place (``model`` becomes an ``FSDPModule``); the returned module is what
    the training step calls.
    """
    if not env.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for unit in fsdp_units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on non-final micro-batches of an accumulated step."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(wrapped, DistributedDataParallel):
        if enabled:
            yield
        else:
            with wrapped.no_sync():
                yield
        return
    setter = getattr(wrapped, "set_requires_gradient_sync", None)  # FSDP2
    if callable(setter):
        setter(enabled)
    yield
