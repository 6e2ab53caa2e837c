"""Process-group setup and model wrapping: one code path from 1 CPU process to many GPUs.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; with ``WORLD_SIZE > 1`` we join a process group (NCCL on CUDA, gloo on CPU).
A plain ``python``/``speechssl-train`` run is a world of one and never touches
``torch.distributed``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from speechssl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto") -> DistEnv:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        log.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, env: DistEnv, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (no-op in a world of one); returns the tensor."""
    if env.distributed:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Submodules to shard separately: the model's ``fsdp_units()`` if it has one, else every
    member of every ``nn.ModuleList`` (transformer layers, conv blocks)."""
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
