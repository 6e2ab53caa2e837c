"""The pretraining loop: one code path from one CPU process to many GPUs under torchrun.

A step is ``grad_accum`` micro-batches per rank (gradient all-reduce only on the last),
optionally under bf16/fp16 autocast (fp16 with dynamic loss scaling), then unscale, global
gradient-norm clipping, a non-finite check agreed by all ranks, and the optimizer + schedule
update. A non-finite step is skipped (fp16: the loss scale drops); too many in a row stop
the run with a clear message after saving the state.

Randomness inside the model (masks, dropout) is re-seeded before every micro-batch from
``(seed, epoch, global batch index)``, and the data pipeline is a pure function of the same
numbers, so a step computes the same thing whether the run was resumed or not and however
the global batch is spread over ranks and accumulation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from speechssl.errors import CheckpointError, ConfigError, TrainingError
from speechssl.train import checkpoint as ckpt
from speechssl.train.config import TrainConfig
from speechssl.train.data import (
    BatchingOptions,
    BatchPlanSampler,
    CroppedBatchDataset,
    TrainBatch,
    TrainCorpus,
    derive_seed,
    filter_by_duration,
    load_corpus,
    make_loader,
    stream_names_for,
)
from speechssl.train.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce,
    barrier,
    broadcast_object,
    fsdp_units,
    gradient_sync,
    wrap_model,
)
from speechssl.train.monitor import RunLogger
from speechssl.train.optim import Schedule, build_optimizer

log = logging.getLogger(__name__)

# seed-stream tags (see data.py for the data streams 0 and 1)
_MODEL_STREAM = 2
_DEV_STREAM = 3
_DEV_EPOCH = 0


@dataclass
class TrainSummary:
    """What a finished run reports."""

    step: int
    epoch: int
    last_checkpoint: Path | None
    best_value: float | None
    final_dir: Path | None
    stopped: str = "max_steps"


@dataclass
class StepWindow:
    """Sums over the updates since the last log record (this rank only), for
    :meth:`Trainer.train_step`."""

    values: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    updates: int = 0
    skipped: int = 0
    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0

    def add(self, key: str, value: float, count: float = 1.0) -> None:
        self.values[key] += value * count
        self.counts[key] += count


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _total_norm(norm: Tensor) -> Tensor:
    full = getattr(norm, "full_tensor", None)  # FSDP2 returns a DTensor
    return full() if callable(full) else norm


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` of a nested dict (lists are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _model_state(model: nn.Module, fsdp: bool) -> dict[str, Tensor]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {k: v for k, v in full.items() if isinstance(v, Tensor)}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool
) -> dict[str, Any]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


class Trainer:
    """Builds everything from a :class:`TrainConfig` and runs :meth:`fit`.

    Args:
        cfg: the validated config.
        env: this process's place in the world (from ``init_distributed``).
        train_corpus, dev_corpus: corpora to use instead of loading ``cfg.data.dir`` /
            ``cfg.data.dev_dir`` (for embedding the trainer in other code).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        *,
        train_corpus: TrainCorpus | None = None,
        dev_corpus: TrainCorpus | None = None,
    ) -> None:
        self.cfg = cfg
        self.env = env
        tc = cfg.trainer
        self.exp_dir = Path(tc.exp_dir)
        self.ckpt_root = self.exp_dir / "checkpoints"
        self.device = env.device
        self.fsdp = env.distributed and tc.strategy == "fsdp"
        if (
            tc.precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError("trainer.precision=bf16 but this GPU does not support bfloat16")

        # 1. which checkpoint to resume from, verified before anything expensive
        self.resume_from = self._resolve_resume()

        # 2. the model (same initial weights on every rank)
        from speechssl.models.registry import create_model

        self.stream_names = stream_names_for(cfg.data.labels)
        self._seed_everything(tc.seed)
        given_streams = train_corpus is not None and bool(train_corpus.streams)
        self.model: nn.Module = create_model(
            cfg.model.name, **self._model_overrides(given_streams)
        ).to(self.device)
        self.sample_rate = int(cfg.data.sample_rate or getattr(self.model, "sample_rate", 16000))

        # 3. data
        self._data_reports: dict[str, Any] = {}
        self.train_corpus, self.filter_report = self._corpus(
            train_corpus, cfg.data.dir, cfg.data.labels, "train"
        )
        if len(self.train_corpus) == 0:
            raise ConfigError(
                f"data.dir {cfg.data.dir}: no utterance is left after the duration filter "
                f"({self.filter_report.summary()})"
            )
        self.batching = BatchingOptions(
            crop_samples=round(cfg.data.crop_seconds * self.sample_rate),
            max_batch_samples=round(cfg.data.max_batch_seconds * self.sample_rate),
            max_batch_utts=cfg.data.max_batch_utts,
            num_buckets=cfg.data.num_buckets,
            shuffle=cfg.data.shuffle,
            crop_mode=cfg.data.crop_mode,
            random_crop=cfg.data.random_crop,
        )
        self.sampler = BatchPlanSampler(
            self.train_corpus.num_samples,
            self.batching,
            seed=tc.seed,
            rank=env.rank,
            world_size=env.world_size,
            grad_accum=tc.grad_accum,
        )
        self.dataset = CroppedBatchDataset(
            self.train_corpus,
            self.batching,
            seed=tc.seed,
            normalize=cfg.data.normalize,
            tolerant=cfg.data.tolerant,
            fault_nan_utts=cfg.data.fault_nan_utts,
        )
        pin = self.device.type == "cuda"
        self.loader = make_loader(
            self.dataset, self.sampler, num_workers=cfg.data.num_workers, pin_memory=pin
        )
        self.dev_loader = None
        self.dev_plan_size = 0
        if cfg.data.dev_dir or dev_corpus is not None:
            dev, _ = self._corpus(dev_corpus, cfg.data.dev_dir or "", cfg.data.dev_labels, "dev")
            dev_opts = BatchingOptions(
                crop_samples=self.batching.crop_samples,
                max_batch_samples=self.batching.max_batch_samples,
                max_batch_utts=self.batching.max_batch_utts,
                shuffle=False,
                crop_mode=cfg.data.crop_mode,
                random_crop=False,
            )
            dev_sampler = BatchPlanSampler(
                dev.num_samples, dev_opts, seed=tc.seed, rank=env.rank, world_size=env.world_size
            )
            dev_sampler.set_position(_DEV_EPOCH, 0)
            self.dev_plan_size = (
                len(dev_sampler.epoch_plan(_DEV_EPOCH)[0]) - dev_sampler.epoch_plan(_DEV_EPOCH)[1]
            )
            self.dev_loader = make_loader(
                # strict even in tolerant mode: an emptied dev batch would leave ranks with
                # different numbers of (collective, under FSDP) forward passes
                CroppedBatchDataset(dev, dev_opts, seed=tc.seed, normalize=cfg.data.normalize),
                dev_sampler,
                num_workers=0,
                pin_memory=pin,
            )

        # 4. wrapping, optimizer, schedule, loss scaling
        self.wrapped = wrap_model(
            self.model,
            env,
            strategy=tc.strategy,
            find_unused_parameters=tc.find_unused_parameters or self._skips_layers(),
        )
        self.forward_module: nn.Module = self.wrapped
        if tc.compile:
            self._compile_units()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.schedule = Schedule(self.optimizer, cfg.optim, cfg.optim.total_steps or tc.max_steps)
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=tc.init_loss_scale, enabled=tc.precision == "fp16"
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]

        # 5. counters and resume
        self.step = 0
        self.epoch = 0
        self.index = 0  # micro-batches this rank consumed in the current epoch
        self.consecutive_nonfinite = 0
        self.stop_signal: int | None = None  # set by a SIGTERM/SIGUSR1 handler
        self.stop_requested = False  # agreed by all ranks after each step
        self.best_value: float | None = None
        self.best_step = 0
        # sum and count of the best metric since the last checkpoint (train-side best)
        self._save_window: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.peak_flops = tc.peak_flops or self._device_peak_flops()
        self.analytic_flops = self._has_analytic_flops()
        self.flops_per_padded_sample: float | None = None  # measured once if not analytic
        if self.resume_from is not None:
            self._load(self.resume_from)

        self.logger = RunLogger(
            self.exp_dir,
            enabled=env.is_main,
            resume_step=self.step if self.resume_from is not None else None,
            tensorboard=tc.tensorboard,
            progress_bar=tc.progress_bar,
            total_steps=tc.max_steps,
        )
        self._log_start()

    # ----------------------------------------------------------------------------------
    # setup helpers

    def _seed_everything(self, seed: int) -> None:
        import random

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _corpus(
        self, given: TrainCorpus | None, data_dir: str, label_dirs: list[str], split: str
    ) -> tuple[TrainCorpus, Any]:
        dcfg = self.cfg.data
        corpus = given
        if corpus is None:
            corpus = load_corpus(
                data_dir,
                label_dirs,
                sample_rate=self.sample_rate,
                label_tolerance=dcfg.label_tolerance,
                stream_names=self.stream_names,
                tolerant=dcfg.tolerant,
            )
        filtered, report = filter_by_duration(corpus, dcfg.min_seconds, dcfg.max_seconds)
        if self.env.is_main:
            log.info("%s data %s: %s", split, data_dir or "(given)", report.summary())
        self._data_reports[split] = report
        return filtered, report

    def _compile_units(self) -> None:
        """``torch.compile`` each repeated block (transformer layers, conv blocks) in place,
        with dynamic shapes: batches change length every step, and data-dependent parts
        (masking, label alignment) stay eager. State-dict keys are unchanged."""
        units = fsdp_units(self.model)
        if not units:
            raise ConfigError(
                f"trainer.compile: model {self.cfg.model.name} has no repeated blocks to compile"
            )
        for unit in units:
            unit.compile(dynamic=True)
        if self.env.is_main:
            log.info("compiled %d blocks with torch.compile (dynamic shapes)", len(units))

    def _device_peak_flops(self) -> float:
        if self.device.type != "cuda":
            return 0.0
        from speechssl.models.flops import peak_bf16_tflops

        peak = peak_bf16_tflops(torch.cuda.get_device_name(self.device))
        return 0.0 if peak is None else peak * 1e12

    def _has_analytic_flops(self) -> bool:
        """Whether ``speechssl.models.flops`` can count this model's FLOPs."""
        from speechssl.models.flops import train_step_flops

        try:
            train_step_flops(getattr(self.model, "config", None), [self.sample_rate])
        except (AttributeError, TypeError):
            return False
        return True

    def _step_flops(self, lengths: Tensor) -> float:
        from speechssl.models.flops import train_step_flops

        return train_step_flops(getattr(self.model, "config", None), lengths.tolist())

    def _skips_layers(self) -> bool:
        """Layer drop leaves whole layers without gradients in some steps: DDP must then
        look for unused parameters."""
        encoder = getattr(getattr(self.model, "config", None), "encoder", None)
        drop = float(getattr(encoder, "layer_drop", 0.0) or 0.0)
        if drop > 0 and self.env.distributed and self.env.is_main:
            log.info("encoder.layer_drop=%g: DDP runs with find_unused_parameters=True", drop)
        return drop > 0

    def _model_overrides(self, given_streams: bool = False) -> dict[str, Any]:
        """The user's model overrides, plus the label streams' names and sizes (k) for
        models that predict units, unless the user set them. ``given_streams``: the caller
        passed a corpus with its own label streams (the overrides are then the caller's)."""
        from speechssl.models.registry import model_config

        overrides = dict(self.cfg.model.overrides)
        labels = self.cfg.data.labels
        config = model_config(self.cfg.model.name, **overrides)
        if not labels:
            if hasattr(config, "num_classes") and not given_streams:
                raise ConfigError(
                    f"model {self.cfg.model.name} predicts unit labels: give data.labels=[DIR,...] "
                    "(label dirs from speechssl kmeans apply)"
                )
            return overrides
        if hasattr(config, "num_classes") and "num_classes" not in overrides:
            from speechssl.units.labels import LabelsMeta

            overrides["num_classes"] = tuple(LabelsMeta.read(d).k for d in labels)
        if hasattr(config, "label_streams") and "label_streams" not in overrides:
            overrides["label_streams"] = tuple(self.stream_names)
        return overrides

    def _resolve_resume(self) -> Path | None:
        """The checkpoint to start from, or None; refuses corrupt ones before training."""
        resume = self.cfg.resume
        chosen: Path | None = None
        error: str | None = None
        if self.env.is_main:
            try:
                if resume == "auto":
                    removed = ckpt.remove_partial(self.ckpt_root)
                    for p in removed:
                        log.warning("removed partial checkpoint %s (an interrupted save)", p)
                    latest = ckpt.latest_checkpoint(self.ckpt_root)
                    chosen = latest.path if latest else None
                elif resume == "never":
                    complete, _ = ckpt.list_checkpoints(self.ckpt_root)
                    if complete:
                        raise ConfigError(
                            f"{self.ckpt_root} already has checkpoints (newest "
                            f"{complete[-1].path.name}); use resume=auto to continue, or a "
                            "new trainer.exp_dir"
                        )
                else:
                    chosen = Path(resume)
                if chosen is not None:
                    ckpt.verify_checkpoint(chosen, hashes=self.cfg.trainer.verify_checkpoint)
            except (CheckpointError, ConfigError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        error, chosen = broadcast_object((error, chosen), self.env)
        if error is not None:
            kind, _, message = error.partition(": ")
            raise (ConfigError if kind == "ConfigError" else CheckpointError)(
                message
                + (
                    ""
                    if kind == "ConfigError"
                    else " -- refusing to train; delete or move it, or pass resume=<older checkpoint dir>"
                )
            )
        return chosen

    def _load(self, path: Path) -> None:
        model_state, state, _ = ckpt.load_checkpoint(path, verify=False)  # verified above
        try:
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import (
                    StateDictOptions,
                    set_model_state_dict,
                    set_optimizer_state_dict,
                )

                opts = StateDictOptions(full_state_dict=True)
                set_model_state_dict(self.model, dict(model_state), options=opts)
                set_optimizer_state_dict(
                    self.model, self.optimizer, optim_state_dict=state["optimizer"], options=opts
                )
            else:
                self.model.load_state_dict(model_state, strict=True)
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: does not match this model/optimizer ({exc}); was it written with "
                "another model config?"
            ) from None
        self.schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        saved_world = int(state["world_size"])
        global_batches = int(state["global_batches"])
        self.index = global_batches // self.env.world_size
        if global_batches % self.env.world_size or saved_world != self.env.world_size:
            log.warning(
                "checkpoint was written by %d ranks, now %d: resuming at global batch %d of "
                "epoch %d (the order is kept; exactness across world sizes is not promised)",
                saved_world,
                self.env.world_size,
                self.index * self.env.world_size,
                self.epoch,
            )
        rng = state["rng"]
        if saved_world == self.env.world_size and self.env.rank < len(rng):
            ckpt.restore_rng_state(rng[self.env.rank])
        self.best_value = state.get("best_value")
        self.best_step = int(state.get("best_step", 0))
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        if self.env.is_main:
            log.info(
                "resumed from %s (step %d, epoch %d, batch %d)",
                path,
                self.step,
                self.epoch,
                self.index,
            )

    def _save_config(self) -> list[str]:
        """Write the resolved config to ``config.yaml``; a different one from an earlier
        start is kept as ``config.step-<N>.yaml``. Returns the changed keys."""
        from omegaconf import OmegaConf

        from speechssl.utils.atomic import atomic_write_text

        path = self.exp_dir / "config.yaml"
        new = OmegaConf.structured(self.cfg)
        changed: list[str] = []
        if path.is_file():
            old = OmegaConf.load(path)
            flat_old = _flatten(OmegaConf.to_container(old))
            flat_new = _flatten(OmegaConf.to_container(new))
            changed = sorted(
                k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k)
            )
            if changed:
                os.replace(path, path.with_name(f"config.step-{self.step:08d}.yaml"))
                log.warning("config changed since the last start: %s", ", ".join(changed))
        atomic_write_text(path, OmegaConf.to_yaml(new))
        return changed

    def _log_start(self) -> None:
        changed = self._save_config() if self.env.is_main else []
        n_params = sum(p.numel() for p in self.model.parameters())
        self.logger.event(
            "resume" if self.resume_from else "start",
            step=self.step,
            epoch=self.epoch,
            checkpoint=str(self.resume_from) if self.resume_from else None,
            world_size=self.env.world_size,
            config_changed=changed,
            device=str(self.device),
            model=self.cfg.model.name,
            parameters=n_params,
        )
        for split, report in self._data_reports.items():
            self.logger.event(
                "data",
                step=self.step,
                split=split,
                total=report.total,
                kept=report.kept,
                too_short=report.too_short,
                too_long=report.too_long,
                kept_hours=round(report.kept_hours, 4),
            )
        _, padded = self.sampler.epoch_plan(self.epoch)
        self.logger.event(
            "plan",
            step=self.step,
            epoch=self.epoch,
            batches_per_rank=self.sampler.batches_per_rank(self.epoch),
            repeated_batches=padded,
        )

    # ----------------------------------------------------------------------------------
    # the loop

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def fit(self) -> TrainSummary:
        """Train until ``max_steps`` / ``max_epochs``, or until SIGTERM/SIGUSR1 (a cluster's
        preemption notice): then every rank stops after the current update, a checkpoint is
        saved, and the summary says ``stopped="signal"``."""
        tc = self.cfg.trainer
        stopped = "max_steps"
        window = StepWindow()
        last_saved: Path | None = None
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                previous[sig] = signal.signal(sig, self._request_stop)
        try:
            while self.step < tc.max_steps and not self.stop_requested:
                if tc.max_epochs and self.epoch >= tc.max_epochs:
                    stopped = "max_epochs"
                    break
                self.sampler.set_position(self.epoch, self.index)
                micro: list[TrainBatch] = []
                it = iter(self.loader)
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    window.data_wait += time.perf_counter() - t0
                    micro.append(batch)
                    self.index += 1
                    if len(micro) < tc.grad_accum:
                        continue
                    updated = self.train_step(micro, window)
                    micro = []
                    if self.stop_requested:
                        break
                    if updated:
                        # log before a checkpoint so a checkpoint's steps are all in the log
                        if self.step % tc.log_every == 0:
                            self._log_window(window)
                            window = StepWindow()
                        last_saved = self._after_update(window) or last_saved
                        if self.step >= tc.max_steps:
                            break
                if self.stop_requested:
                    stopped = "signal"
                    break
                if micro:  # cannot happen: epochs are padded to whole steps
                    raise RuntimeError("epoch ended inside an accumulated step")
                if self.step >= tc.max_steps:
                    break
                self.epoch += 1
                self.index = 0
            if window.updates or window.skipped:
                self._log_window(window)
            if last_saved is None or ckpt.step_dir_name(self.step) != last_saved.name:
                last_saved = self._save()
            final = None
            if stopped == "signal":
                self.logger.event(
                    "stop",
                    step=self.step,
                    reason=f"signal {self.stop_signal or 'on another rank'}",
                    checkpoint=str(last_saved),
                )
            elif tc.export_final:
                final = self._export_final()
            self.logger.event("done", step=self.step, epoch=self.epoch, stopped=stopped)
            return TrainSummary(
                step=self.step,
                epoch=self.epoch,
                last_checkpoint=last_saved,
                best_value=self.best_value,
                final_dir=final,
                stopped=stopped,
            )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.logger.close()

    def _after_update(self, window: StepWindow) -> Path | None:
        tc = self.cfg.trainer
        dev_metrics: dict[str, float] | None = None
        validate_every = tc.validate_every or tc.save_every
        if self.dev_loader is not None and self.step % validate_every == 0:
            dev_metrics = self._validate()
        if self.step % tc.save_every == 0 and self.step < tc.max_steps:
            return self._save(dev_metrics)
        if self.step >= tc.max_steps:
            if self.dev_loader is not None and dev_metrics is None:
                dev_metrics = self._validate()
            return self._save(dev_metrics)
        return None

    def train_step(self, micro: list[TrainBatch], window: StepWindow | None = None) -> bool:
        """One optimizer update over ``micro`` (this rank's micro-batches); False if it was
        skipped (non-finite). Statistics go to ``window`` (a throwaway one if None)."""
        tc = self.cfg.trainer
        if window is None:
            window = StepWindow()
        self.model.train()
        sums: dict[str, Tensor] = {}
        local_nonfinite = False
        bad_terms: list[str] = []
        mfu = self.peak_flops > 0
        # models without analytic counts: count one micro-batch's ops once, per padded sample
        count_flops = mfu and not self.analytic_flops and self.flops_per_padded_sample is None
        real = padded = loaded = utts = skipped_utts = 0
        flops = 0.0
        for k, tb in enumerate(micro):
            torch.manual_seed(derive_seed(tc.seed, tb.epoch, tb.index, _MODEL_STREAM))
            batch = tb.audio_batch().to(self.device, non_blocking=True)
            real += int(tb.lengths.sum())
            padded += tb.waveforms.numel()
            loaded += tb.loaded_samples
            utts += tb.batch_size
            skipped_utts += len(tb.skipped)
            for utt, reason in tb.skipped:
                self.logger.event("skipped_utterance", step=self.step, utt=utt, reason=reason)
            flop_ctx: Any = contextlib.nullcontext()
            if count_flops and k == 0:
                from torch.utils.flop_counter import FlopCounterMode

                flop_ctx = FlopCounterMode(display=False)
            with flop_ctx, gradient_sync(self.wrapped, k == len(micro) - 1):
                with _autocast(self.device, tc.precision):
                    if batch.batch_size == 0:  # every utterance failed to load (tolerant)
                        total = sum(
                            (p.sum() * 0.0 for p in self.params),
                            torch.zeros((), device=self.device),
                        )
                        terms: dict[str, Tensor] = {}
                        metrics: dict[str, Tensor] = {}
                    else:
                        out = self.forward_module(batch)
                        total, terms, metrics = out.loss.total, out.loss.terms, out.metrics
                total = total.float()
                self.scaler.scale(total / len(micro)).backward()
            if count_flops and k == 0:
                measured = flop_ctx.get_total_flops()
                self.flops_per_padded_sample = measured / max(1, tb.waveforms.numel())
            if mfu and self.analytic_flops:
                flops += self._step_flops(tb.lengths)
            elif mfu and self.flops_per_padded_sample is not None:
                flops += self.flops_per_padded_sample * tb.waveforms.numel()
            if batch.batch_size == 0:
                continue
            values = {
                "loss": total.detach(),
                **{f"loss/{n}": v.detach().float() for n, v in terms.items()},
            }
            values.update({n: v.detach().float() for n, v in metrics.items()})
            for name, value in values.items():
                value = value.reshape(())
                sums[name] = sums[name] + value if name in sums else value
        # one host sync for all the step's scalars
        names = sorted(sums)
        host = torch.stack([sums[n] for n in names]).tolist() if names else []
        for name, value in zip(names, host):
            if not math.isfinite(value):
                local_nonfinite = True
                bad_terms.append(name)
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = tc.clip_norm if tc.clip_norm > 0 else float("inf")
        grad_norm = float(
            _total_norm(torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True))
        )
        window.add("skipped_utts", skipped_utts, 1)  # counted whatever happens to the step
        # one all-reduce decides for every rank: any non-finite value, any data at all, and
        # whether a rank was asked to stop
        flags = torch.tensor(
            [
                float(local_nonfinite or not math.isfinite(grad_norm)),
                float(utts),
                float(self.stop_signal is not None),
            ],
            device=self.device,
        )
        all_reduce(flags, self.env)
        nonfinite, global_utts = bool(flags[0].item() > 0), int(flags[1].item())
        self.stop_requested = bool(flags[2].item() > 0)
        if global_utts == 0 and not nonfinite:
            # every utterance of the global batch failed to load (tolerant mode): an
            # optimizer step on zero gradients would still move Adam's weights, so skip it
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            self.logger.event("empty_step", step=self.step, batches=[tb.index for tb in micro])
            return False
        if nonfinite:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            self.consecutive_nonfinite += 1
            window.skipped += 1
            self._on_nonfinite(micro, bad_terms, grad_norm)
            return False
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr_used = self.schedule.lr
        self.schedule.step()
        self.step += 1
        self.consecutive_nonfinite = 0
        self.model_after_step()
        n = len(micro)
        for name, value in zip(names, host):
            window.add(name, value / n, n)
            if name == self.cfg.trainer.best_metric:
                acc = self._save_window[name]
                acc[0] += value
                acc[1] += n
        window.add("grad_norm", grad_norm)
        window.add("lr", lr_used)
        window.add(
            "loss_scale", float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        )
        window.add("real_samples", real, 1)
        window.add("padded_samples", padded, 1)
        window.add("loaded_samples", loaded, 1)
        window.add("utterances", utts, 1)
        window.add("batches", n, 1)
        if mfu:
            window.add("flops", flops, 1)
        window.updates += 1
        self.logger.progress(1)
        return True

    def model_after_step(self) -> None:
        hook = getattr(self.model, "after_optimizer_step", None)
        if callable(hook):
            hook(self.step)

    def _on_nonfinite(
        self, micro: list[TrainBatch], bad_terms: list[str], grad_norm: float
    ) -> None:
        tc = self.cfg.trainer
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else None
        utts = [u for tb in micro for u in tb.utt_ids]
        self.logger.event(
            "nonfinite",
            step=self.step,
            epoch=self.epoch,
            batches=[tb.index for tb in micro],
            terms=bad_terms,
            grad_norm=grad_norm,
            loss_scale=scale,
            consecutive=self.consecutive_nonfinite,
            utts=utts[:20],
        )
        reason = None
        if (
            tc.max_consecutive_nonfinite
            and self.consecutive_nonfinite >= tc.max_consecutive_nonfinite
        ):
            reason = (
                f"{self.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient"
            )
        elif scale is not None and scale < tc.min_loss_scale:
            reason = f"the fp16 loss scale fell to {scale:g} (< trainer.min_loss_scale={tc.min_loss_scale:g})"
        if reason is None:
            return
        saved = self._save()
        where = ", ".join(bad_terms) if bad_terms else "gradients"
        message = (
            f"stopping at step {self.step} (epoch {self.epoch}): {reason}; last non-finite "
            f"values: {where}; batch utterances include {', '.join(utts[:5])}. The last good "
            f"state is saved in {saved}. Check the data (speechssl data validate), lower "
            "optim.lr, raise trainer.clip_norm protection, or use trainer.precision=bf16/fp32."
        )
        self.logger.event("stop", step=self.step, reason=reason, checkpoint=str(saved))
        raise TrainingError(message)

    # ----------------------------------------------------------------------------------
    # logging, validation, checkpoints

    def _log_window(self, window: StepWindow) -> None:
        elapsed = time.perf_counter() - window.start
        keys = sorted(set().union(*all_gather_objects(sorted(window.values), self.env)))
        vec = torch.tensor(
            [window.values.get(k, 0.0) for k in keys]
            + [window.counts.get(k, 0.0) for k in keys]
            + [float(window.skipped), window.data_wait],
            dtype=torch.float64,
            device=self.device,
        )
        all_reduce(vec, self.env)
        vals = vec.tolist()
        n = len(keys)
        sums = dict(zip(keys, vals[:n]))
        counts = dict(zip(keys, vals[n : 2 * n]))
        skipped, wait = vals[2 * n], vals[2 * n + 1]
        rec: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        special = {
            "real_samples",
            "padded_samples",
            "loaded_samples",
            "utterances",
            "batches",
            "skipped_utts",
            "flops",
        }
        for k in keys:
            if k not in special and counts[k] > 0:
                rec[k] = sums[k] / counts[k]
        # grad norm, lr and loss scale are the same on every rank: average over updates
        real, padded = sums.get("real_samples", 0.0), sums.get("padded_samples", 0.0)
        loaded = sums.get("loaded_samples", 0.0)
        rec["audio_sec_per_sec"] = real / self.sample_rate / max(elapsed, 1e-9)
        rec["padding_fraction"] = 1.0 - real / padded if padded else 0.0
        rec["crop_waste"] = 1.0 - real / loaded if loaded else 0.0
        rec["utts_per_batch"] = sums.get("utterances", 0.0) / max(1.0, sums.get("batches", 0.0))
        rec["data_wait_fraction"] = wait / self.env.world_size / max(elapsed, 1e-9)
        rec["skipped_steps"] = int(skipped / self.env.world_size)
        rec["updates"] = window.updates
        rec["batches"] = int(sums.get("batches", 0.0))
        rec["skipped_utts"] = int(sums.get("skipped_utts", 0.0))
        if self.peak_flops > 0 and sums.get("flops"):
            achieved = sums["flops"] / max(elapsed, 1e-9)
            rec["mfu"] = achieved / (self.peak_flops * self.env.world_size)
        self.logger.write("train", rec)
        post = {k: rec[k] for k in ("loss", "acc_masked", "lr", "audio_sec_per_sec") if k in rec}
        self.logger.progress(0, **post)

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        assert self.dev_loader is not None
        tc = self.cfg.trainer
        module = self.wrapped if self.fsdp else self.model
        module.eval()
        rng = ckpt.capture_rng_state()
        sums: dict[str, float] = defaultdict(float)
        weight = 0.0
        try:
            for i, tb in enumerate(self.dev_loader):
                if tc.dev_max_batches and i >= tc.dev_max_batches:
                    break
                torch.manual_seed(derive_seed(tc.seed, _DEV_EPOCH, tb.index, _DEV_STREAM))
                with _autocast(self.device, tc.precision):
                    out = module(tb.audio_batch().to(self.device))
                w = 0.0 if tb.index >= self.dev_plan_size else 1.0  # wrap-around padding
                vals = {**out.loss.scalars(), **{k: float(v) for k, v in out.metrics.items()}}
                for k, v in vals.items():
                    sums[k] += w * v
                weight += w
        finally:
            ckpt.restore_rng_state(rng)
            self.model.train()
        keys = sorted(set().union(*all_gather_objects(sorted(sums), self.env)))
        vec = torch.tensor(
            [sums.get(k, 0.0) for k in keys] + [weight], dtype=torch.float64, device=self.device
        )
        all_reduce(vec, self.env)
        total = vec[-1].item()
        result = {k: v / total for k, v in zip(keys, vec[:-1].tolist())} if total else {}
        self.logger.write("dev", {"step": self.step, **result, "batches": int(total)})
        return result

    def _save(self, dev_metrics: dict[str, float] | None = None) -> Path:
        tc = self.cfg.trainer
        model_state = _model_state(self.model, self.fsdp)
        optim_state = _optimizer_state(self.model, self.optimizer, self.fsdp)
        rngs = all_gather_objects(ckpt.capture_rng_state(), self.env)
        metric_value: float | None
        if dev_metrics is not None:
            metric_value = dev_metrics.get(tc.best_metric)
            source = "dev"
        else:
            acc = self._save_window.get(tc.best_metric)
            metric_value = acc[0] / acc[1] if acc and acc[1] else None
            source = "train"
        self._save_window = defaultdict(lambda: [0.0, 0.0])
        is_best = (
            metric_value is not None
            and math.isfinite(metric_value)
            and (
                self.best_value is None
                or (
                    metric_value < self.best_value
                    if tc.best_mode == "min"
                    else metric_value > self.best_value
                )
            )
        )
        if is_best:
            self.best_value, self.best_step = metric_value, self.step
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "global_batches": self.index * self.env.world_size,
            "world_size": self.env.world_size,
            "grad_accum": tc.grad_accum,
            "optimizer": optim_state,
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rngs,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "consecutive_nonfinite": self.consecutive_nonfinite,
        }
        target = self.ckpt_root / ckpt.step_dir_name(self.step)
        if self.env.is_main:
            meta = {
                "epoch": self.epoch,
                "batch_index": self.index,
                "model": self.cfg.model.name,
                "metric": {"name": tc.best_metric, "value": metric_value, "source": source},
            }
            target = ckpt.save_checkpoint(
                self.ckpt_root,
                self.step,
                model_state,
                state,
                meta,
                extra_files={"model.json": self._model_json()},
            )
            if is_best:
                ckpt.mark_best(
                    self.ckpt_root,
                    target,
                    {
                        "metric": tc.best_metric,
                        "value": metric_value,
                        "source": source,
                        "step": self.step,
                    },
                )
                self.logger.event(
                    "best", step=self.step, metric=tc.best_metric, value=metric_value, source=source
                )
            removed = ckpt.prune_checkpoints(self.ckpt_root, tc.keep_last)
            self.logger.event(
                "checkpoint", step=self.step, path=str(target), removed=[p.name for p in removed]
            )
        barrier(self.env)
        return target

    def _model_json(self) -> str:
        import json

        from speechssl.models.io import model_description

        desc = model_description(self.model)  # type: ignore[arg-type]
        return json.dumps(desc, indent=2, sort_keys=True) + "\n"

    def _training_info(self) -> dict[str, Any]:
        """What the exported model was trained on (kept in its ``model.json``)."""
        from speechssl.units.labels import LabelsMeta

        labels = []
        for name, d in zip(self.stream_names, self.cfg.data.labels):
            meta = LabelsMeta.read(d)
            labels.append(
                {
                    "stream": name,
                    "dir": str(d),
                    "k": meta.k,
                    "label_rate": meta.label_rate,
                    "kmeans": meta.kmeans,
                    "source": meta.source,
                }
            )
        return {
            "exp_dir": str(self.exp_dir),
            "step": self.step,
            "data": self.cfg.data.dir,
            "labels": labels,
        }

    def _export_final(self) -> Path:
        """``exp_dir/final``: the trained model as a model dir (``speechssl.models.io``), the
        one ``speechssl features dump --kind model --checkpoint`` and export read."""
        from speechssl.models.io import (
            build_from_description,
            load_weights,
            model_description,
            save_model_dir,
        )

        state = _model_state(self.model, self.fsdp) if self.fsdp else None
        target = self.exp_dir / "final"
        if self.env.is_main:
            model: Any = self.model
            if state is not None:  # FSDP: gather into an unsharded copy
                model = build_from_description(model_description(self.model))  # type: ignore[arg-type]
                load_weights(model, state, str(target))
            save_model_dir(model, target, overwrite=True, extra={"training": self._training_info()})
            self.logger.event("export", step=self.step, path=str(target))
        barrier(self.env)
        return target
