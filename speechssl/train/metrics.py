"""Training metrics: the step window, the FLOP/MFU meter and the log records.

A loop adds each update's values to a :class:`StepWindow` (this rank's sums), and every
``log_every`` updates :meth:`Metrics.log_window` reduces the window over all ranks into one
``train`` record of ``log.jsonl`` (see :mod:`speechssl.train.monitor` for the fields):
averages of the values, throughput (``audio_sec_per_sec``), padding and crop waste, data
wait, skipped steps and, where the peak FLOP/s is known, MFU from a :class:`FlopMeter`.
:meth:`Metrics.reduce_means` is the same reduction for an evaluation pass (weighted sums).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from speechssl import distributed as dist
from speechssl.distributed import DistEnv
from speechssl.train.monitor import RunLogger

#: window keys that are summed over ranks, not averaged into the record
COUNTS = (
    "real_samples",
    "padded_samples",
    "loaded_samples",
    "utterances",
    "batches",
    "skipped_utts",
    "flops",
)


@dataclass
class StepWindow:
    """Sums over the updates since the last log record (this rank only)."""

    values: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    updates: int = 0
    skipped: int = 0
    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0

    def add(self, key: str, value: float, count: float = 1.0) -> None:
        """Add ``value`` with weight ``count`` (averages are ``sum(value * count) /
        sum(count)``; for the :data:`COUNTS` keys the record holds the plain sum)."""
        self.values[key] += value * count
        self.counts[key] += count


class FlopMeter:
    """Model FLOPs of training micro-batches, for MFU.

    Counts come from :func:`speechssl.models.flops.train_step_flops` (real, unpadded
    lengths) when it knows the model, else from one measured micro-batch
    (``torch.utils.flop_counter``) scaled per padded sample. Inactive (zero cost) when
    ``peak_flops`` is 0.
    """

    def __init__(self, model_config: Any, sample_rate: int, peak_flops: float) -> None:
        self.config = model_config
        self.peak_flops = peak_flops
        self.analytic = peak_flops > 0 and self._has_analytic(sample_rate)
        self.per_padded_sample: float | None = None

    @staticmethod
    def device_peak(device: torch.device) -> float:
        """The device's dense bf16 peak FLOP/s (0 on CPU or an unknown GPU)."""
        if device.type != "cuda":
            return 0.0
        from speechssl.models.flops import peak_bf16_tflops

        peak = peak_bf16_tflops(torch.cuda.get_device_name(device))
        return 0.0 if peak is None else peak * 1e12

    def _has_analytic(self, sample_rate: int) -> bool:
        from speechssl.models.flops import train_step_flops

        try:
            train_step_flops(self.config, [sample_rate])
        except (AttributeError, TypeError):
            return False
        return True

    @property
    def active(self) -> bool:
        return self.peak_flops > 0

    def measuring(self) -> contextlib.AbstractContextManager[Any]:
        """A context to run the first micro-batch's forward+backward under (counts its ops
        once for models without analytic counts)."""
        if self.active and not self.analytic and self.per_padded_sample is None:
            from torch.utils.flop_counter import FlopCounterMode

            return FlopCounterMode(display=False)
        return contextlib.nullcontext()

    def count(self, ctx: Any, lengths: Tensor, padded_samples: int) -> float:
        """FLOPs of one micro-batch (after running it under ``ctx`` from :meth:`measuring`)."""
        if not self.active:
            return 0.0
        if self.analytic:
            from speechssl.models.flops import train_step_flops

            return train_step_flops(self.config, lengths.tolist())
        get_total = getattr(ctx, "get_total_flops", None)
        if callable(get_total):
            self.per_padded_sample = get_total() / max(1, padded_samples)
        return (self.per_padded_sample or 0.0) * padded_samples


class Metrics:
    """Turns step windows and evaluation sums into ``log.jsonl`` records.

    Args:
        logger: the run's logger (rank 0 writes, other ranks' loggers are disabled).
        env: this process's place in the world (every reduction is collective).
        sample_rate: Hz of the ``real_samples`` counts (for ``audio_sec_per_sec``).
        peak_flops: one device's peak FLOP/s for MFU (0: no MFU).
    """

    def __init__(self, logger: RunLogger, env: DistEnv, *, sample_rate: int, peak_flops: float):
        self.logger = logger
        self.env = env
        self.sample_rate = sample_rate
        self.peak_flops = peak_flops

    def _reduce(
        self, tables: list[dict[str, float]], extra: list[float]
    ) -> tuple[list[str], list[list[float]], list[float]]:
        """Sum each table (same keys: the union over ranks) and ``extra`` over all ranks."""
        keys = sorted(set().union(*dist.all_gather_objects(sorted(tables[0]))))
        flat = [t.get(k, 0.0) for t in tables for k in keys] + extra
        vec = torch.tensor(flat, dtype=torch.float64, device=self.env.device)
        vals = dist.all_reduce(vec).tolist()
        n = len(keys)
        return (
            keys,
            [vals[i * n : (i + 1) * n] for i in range(len(tables))],
            vals[n * len(tables) :],
        )

    def window_record(self, window: StepWindow, step: int, epoch: int) -> dict[str, Any]:
        """The ``train`` record of ``window`` summed over all ranks (collective)."""
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        keys, (value_sums, count_sums), (skipped, wait) = self._reduce(
            [dict(window.values), dict(window.counts)], [float(window.skipped), window.data_wait]
        )
        sums, totals = dict(zip(keys, value_sums)), dict(zip(keys, count_sums))
        rec: dict[str, Any] = {"step": step, "epoch": epoch}
        for k in keys:
            if k not in COUNTS and totals[k] > 0:
                rec[k] = sums[k] / totals[k]
        real, padded = sums.get("real_samples", 0.0), sums.get("padded_samples", 0.0)
        loaded = sums.get("loaded_samples", 0.0)
        world = self.env.world_size
        rec["audio_sec_per_sec"] = real / self.sample_rate / elapsed
        rec["padding_fraction"] = 1.0 - real / padded if padded else 0.0
        rec["crop_waste"] = 1.0 - real / loaded if loaded else 0.0
        rec["utts_per_batch"] = sums.get("utterances", 0.0) / max(1.0, sums.get("batches", 0.0))
        rec["data_wait_fraction"] = wait / world / elapsed
        rec["skipped_steps"] = int(skipped / world)
        rec["updates"] = window.updates
        rec["batches"] = int(sums.get("batches", 0.0))
        rec["skipped_utts"] = int(sums.get("skipped_utts", 0.0))
        if self.peak_flops > 0 and sums.get("flops"):
            rec["mfu"] = sums["flops"] / elapsed / (self.peak_flops * world)
        return rec

    def log_window(self, window: StepWindow, step: int, epoch: int) -> dict[str, Any]:
        """Write the window's ``train`` record (and the progress-bar postfix); returns it."""
        rec = self.window_record(window, step, epoch)
        self.logger.write("train", rec)
        post = {k: rec[k] for k in ("loss", "acc_masked", "lr", "audio_sec_per_sec") if k in rec}
        self.logger.progress(0, **post)
        return rec

    def reduce_means(self, sums: dict[str, float], weight: float) -> tuple[dict[str, float], float]:
        """``({key: sum over ranks / total weight}, total weight)`` of weighted sums."""
        keys, (summed,), (total,) = self._reduce([sums], [weight])
        return ({k: v / total for k, v in zip(keys, summed)} if total else {}), total
