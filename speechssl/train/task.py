"""The contract between :class:`~speechssl.train.trainer.TrainLoop` and what it trains.

A task provides the model, this rank's micro-batches, the loss of one micro-batch, an
optional evaluation, the files saved beside the weights and the final export; the loop does
everything else (optimizer, schedule, precision, accumulation, clipping, non-finite
handling, checkpoints through :class:`~speechssl.train.checkpoint.CheckpointManager`, logs
through :class:`~speechssl.train.metrics.Metrics`). Pretraining is
:class:`speechssl.train.pretrain.PretrainTask`; a downstream probe is another task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass
class StepOutput:
    """A task's result for one micro-batch: the loss to back-propagate and the values to log
    (``loss``, ``loss/<term>``, metrics; 0-d tensors)."""

    loss: Tensor
    scalars: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class BatchInfo:
    """Bookkeeping of one micro-batch (for throughput, skipped-item accounting, FLOPs)."""

    index: int
    utt_ids: list[str]
    lengths: Tensor
    padded_samples: int
    loaded_samples: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.utt_ids)


class TrainTask(Protocol):
    """What :class:`TrainLoop` trains. ``model`` is the unwrapped module whose trainable
    parameters the optimizer updates and whose state is checkpointed."""

    model: nn.Module
    sample_rate: int
    model_name: str

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """This rank's micro-batches of ``epoch`` from local position ``start`` (a pure
        function of the arguments and the seed, so a resumed run sees the same ones)."""
        ...

    def batches_per_rank(self, epoch: int) -> int: ...

    def info(self, batch: Any) -> BatchInfo: ...

    def forward(self, module: nn.Module, batch: Any) -> StepOutput:
        """Loss of a non-empty micro-batch through ``module`` (the wrapped model); seeds
        its own randomness (masks, dropout) from the batch's place in the data."""
        ...

    def evaluate(self, module: nn.Module) -> tuple[dict[str, float], float] | None:
        """``(weighted sums, weight)`` over this rank's dev batches, or None without a dev
        set; the loop averages over ranks, logs ``dev`` and restores the RNG states."""
        ...

    def model_files(self) -> dict[str, str]:
        """Text files saved beside the weights in each checkpoint (e.g. ``model.json``)."""
        ...

    def start_events(self, epoch: int) -> list[dict[str, Any]]:
        """Events logged at start/resume (data reports, the batch plan)."""
        ...

    def export(self, target: Path, fsdp: bool, step: int) -> None:
        """Write the trained model to ``target`` at the end (``trainer.export_final``);
        called on every rank (FSDP gathers), rank 0 writes."""
        ...


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``trainer.precision`` (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
