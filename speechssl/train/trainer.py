"""The training loop: one code path from one CPU process to many GPUs under torchrun.

The loop is generic; what is trained comes from a *task* (:class:`TrainTask`): the model,
this rank's micro-batches, the loss of one micro-batch and an optional evaluation.
Pretraining is one task (:class:`speechssl.train.pretrain.PretrainTask`, run by
:class:`Trainer`); a downstream probe is another, run by the same :class:`TrainLoop` with
the same :class:`~speechssl.train.checkpoint.CheckpointManager` and
:class:`~speechssl.train.metrics.Metrics`, without subclassing anything::

    loop = TrainLoop(task, env, trainer=TrainerConfig(...), optim=OptimConfig(...),
                     resume="auto", config=my_config_dataclass)
    summary = loop.fit()

A step is ``grad_accum`` micro-batches per rank (gradient all-reduce only on the last),
optionally under bf16/fp16 autocast (fp16 with dynamic loss scaling), then unscale, global
gradient-norm clipping, a non-finite check agreed by all ranks, and the optimizer + schedule
update. A non-finite step is skipped (fp16: the loss scale drops); too many in a row stop
the run with a clear message after saving the (finite) state. Parameters that become
non-finite are never saved: the run stops naming the optimizer settings and the last good
checkpoint on disk.

The loop holds ``trainer.exp_dir``'s exclusive lock (:func:`speechssl.utils.lock.exclusive_lock`)
from construction to the end of :meth:`TrainLoop.fit`, and refuses an exp dir that holds
anything else (a Kaldi data dir, a model dir, ...).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from speechssl import distributed as dist
from speechssl.distributed import DistEnv, gradient_sync, wrap_model
from speechssl.errors import ConfigError, TrainingError
from speechssl.train import checkpoint as ckpt
from speechssl.train.checkpoint import CheckpointManager, NonFiniteStateError, TrainState
from speechssl.train.config import OptimConfig, TrainConfig, TrainerConfig
from speechssl.train.data import TrainCorpus
from speechssl.train.metrics import FlopMeter, Metrics, StepWindow
from speechssl.train.monitor import RunLogger
from speechssl.train.optim import Schedule, build_optimizer
from speechssl.train.pretrain import PretrainTask
from speechssl.train.task import BatchInfo, StepOutput, TrainTask, autocast
from speechssl.utils.lock import exclusive_lock

log = logging.getLogger(__name__)

#: weights this many times larger than at the start mean the optimizer broke them
WEIGHT_BLOWUP = 1e3
#: what a training exp dir may hold (anything else means the path is something else)
#: (besides hidden names: the lock, temporary files of interrupted atomic writes)
EXP_ENTRIES = (
    "checkpoints", "log.jsonl", "config.yaml", "final", "tb", "hydra", "hydra-multirun",
    "curves.png",
)  # fmt: skip


@dataclass
class TrainSummary:
    """What a finished run reports."""

    step: int
    epoch: int
    last_checkpoint: Path | None
    best_value: float | None
    final_dir: Path | None
    stopped: str = "max_steps"


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


def check_exp_dir(exp_dir: Path) -> None:
    """Refuse an existing, non-empty dir that is not a training exp dir (a Kaldi data dir,
    a model dir, a home dir): the loop would write checkpoints and logs into it."""
    if not exp_dir.is_dir():
        if exp_dir.exists():
            raise ConfigError(f"trainer.exp_dir={exp_dir} exists and is not a directory")
        return
    names = {p.name for p in exp_dir.iterdir()}
    foreign = sorted(
        n
        for n in names
        if n not in EXP_ENTRIES
        and not n.startswith(".")
        and not (n.startswith("config.step-") and n.endswith(".yaml"))
    )
    if not foreign:
        return
    what = "a Kaldi data dir" if "wav.scp" in names else "not a training exp dir"
    raise ConfigError(
        f"trainer.exp_dir={exp_dir} is {what} (it holds {', '.join(foreign[:5])}); point "
        "trainer.exp_dir at a new or empty dir, or at an earlier run's exp dir"
    )


class TrainLoop:
    """Runs a :class:`TrainTask` (see the module doc).

    Args:
        task: what to train, or a function building it (called once the exp dir is locked
            and checked, so a refused run loads no data).
        env: this process's place in the world (:func:`speechssl.distributed.init_distributed`).
        trainer: loop settings (exp dir, steps, precision, checkpoints, logging).
        optim: optimizer and schedule.
        resume: ``auto``, ``never`` or a checkpoint dir.
        config: the run's full config dataclass, written to ``exp_dir/config.yaml`` (the
            loop settings alone if None).
    """

    def __init__(
        self,
        task: TrainTask | Callable[[], TrainTask],
        env: DistEnv,
        *,
        trainer: TrainerConfig,
        optim: OptimConfig,
        resume: str = "auto",
        config: Any = None,
    ) -> None:
        self.env, self.tc, self.optim_cfg = env, trainer, optim
        self.exp_dir = Path(trainer.exp_dir)
        self.device = env.device
        self.fsdp = env.distributed and trainer.strategy == "fsdp"
        self._config = config if config is not None else trainer
        self._exit = contextlib.ExitStack()
        try:
            self._lock_exp_dir()
            self.task: TrainTask = task() if callable(task) else task
            self._setup(resume)
        except BaseException:
            self._exit.close()
            raise

    @property
    def model(self) -> nn.Module:
        return self.task.model

    @property
    def step(self) -> int:
        return self.state.step

    def _lock_exp_dir(self) -> None:
        error = None
        if self.env.is_main:
            try:
                check_exp_dir(self.exp_dir)
                self._exit.enter_context(exclusive_lock(self.exp_dir, "training exp dir"))
            except ConfigError as exc:
                error = str(exc)
            except Exception as exc:  # LockedError and OS errors: refused on every rank
                error = str(exc)
        error = dist.broadcast_object(error)
        if error is not None:
            raise ConfigError(error)

    def _setup(self, resume: str) -> None:
        tc, model = self.tc, self.task.model
        self.wrapped = wrap_model(
            model, self.env, strategy=tc.strategy, find_unused_parameters=self._unused_params()
        )
        if tc.compile:
            self._compile_units()
        self.optimizer = build_optimizer(model, self.optim_cfg)
        self.schedule = Schedule(
            self.optimizer, self.optim_cfg, self.optim_cfg.total_steps or tc.max_steps
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=tc.init_loss_scale, enabled=tc.precision == "fp16"
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.state = TrainState(world_size=self.env.world_size, grad_accum=tc.grad_accum)
        self.checkpoints = CheckpointManager(
            self.exp_dir / "checkpoints",
            self.env,
            model=model,
            optimizer=self.optimizer,
            train_state=self.state,
            stateful={"schedule": self.schedule, "scaler": self.scaler},
            fsdp=self.fsdp,
            keep_last=tc.keep_last,
            best_metric=tc.best_metric,
            best_mode=tc.best_mode,
            verify_hashes=tc.verify_checkpoint,
            model_files=self.task.model_files,
        )
        self.resume_from = self.checkpoints.resolve_resume(resume)
        if self.resume_from is not None:
            self.checkpoints.load(self.resume_from)
            if self.env.is_main:
                log.info("resumed from %s (step %d, epoch %d, batch %d)", self.resume_from,
                         self.state.step, self.state.epoch, self.state.index)  # fmt: skip
        self._start_peak = self._max_abs_weight()
        self.logger = RunLogger(
            self.exp_dir,
            enabled=self.env.is_main,
            resume_step=self.state.step if self.resume_from is not None else None,
            tensorboard=tc.tensorboard,
            progress_bar=tc.progress_bar,
            total_steps=tc.max_steps,
        )
        peak = tc.peak_flops or FlopMeter.device_peak(self.device)
        self.flops = FlopMeter(getattr(model, "config", None), self.task.sample_rate, peak)
        self.metrics = Metrics(
            self.logger, self.env, sample_rate=self.task.sample_rate, peak_flops=peak
        )
        self.stop_signal: int | None = None  # set by a SIGTERM/SIGUSR1 handler
        self.stop_requested = False  # agreed by all ranks after each step
        # sum and count of the best metric since the last checkpoint (train-side best)
        self._best_window = [0.0, 0.0]
        self._log_start()

    def _unused_params(self) -> bool:
        """Layer drop leaves whole layers without gradients in some steps: DDP must then
        look for unused parameters."""
        encoder = getattr(getattr(self.task.model, "config", None), "encoder", None)
        drop = float(getattr(encoder, "layer_drop", 0.0) or 0.0)
        if drop > 0 and self.env.distributed and self.env.is_main:
            log.info("encoder.layer_drop=%g: DDP runs with find_unused_parameters=True", drop)
        return self.tc.find_unused_parameters or drop > 0

    def _compile_units(self) -> None:
        """``torch.compile`` each repeated block in place, with dynamic shapes (batches change
        length every step; data-dependent parts stay eager). State-dict keys are unchanged."""
        units = dist.fsdp_units(self.task.model)
        if not units:
            raise ConfigError(
                f"trainer.compile: model {self.task.model_name} has no repeated blocks to compile"
            )
        for unit in units:
            unit.compile(dynamic=True)
        if self.env.is_main:
            log.info("compiled %d blocks with torch.compile (dynamic shapes)", len(units))

    def _save_config(self) -> list[str]:
        """Write the resolved config to ``config.yaml``; a different one from an earlier
        start is kept as ``config.step-<N>.yaml``. Returns the changed keys."""
        import os

        from omegaconf import OmegaConf

        from speechssl.utils.atomic import atomic_write_text

        path = self.exp_dir / "config.yaml"
        new = OmegaConf.structured(self._config)
        changed: list[str] = []
        if path.is_file():
            flat_old = _flatten(OmegaConf.to_container(OmegaConf.load(path)))
            flat_new = _flatten(OmegaConf.to_container(new))
            changed = sorted(
                k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k)
            )
            if changed:
                os.replace(path, path.with_name(f"config.step-{self.state.step:08d}.yaml"))
                log.warning("config changed since the last start: %s", ", ".join(changed))
        atomic_write_text(path, OmegaConf.to_yaml(new))
        return changed

    def _log_start(self) -> None:
        changed = self._save_config() if self.env.is_main else []
        self.logger.event(
            "resume" if self.resume_from else "start",
            step=self.state.step,
            epoch=self.state.epoch,
            checkpoint=str(self.resume_from) if self.resume_from else None,
            world_size=self.env.world_size,
            config_changed=changed,
            device=str(self.device),
            model=self.task.model_name,
            parameters=sum(p.numel() for p in self.task.model.parameters()),
        )
        logged = self._logged_events() if self.resume_from is not None else []
        for event in self.task.start_events(self.state.epoch):
            if event["event"] == "data" and event in logged:
                continue  # the log reads as one history: the same data report once
            details = {k: v for k, v in event.items() if k != "event"}
            self.logger.event(event["event"], step=self.state.step, **details)

    def _logged_events(self) -> list[dict[str, Any]]:
        """Events already in the (resumed) log, without their kind, time and step."""
        from speechssl.train.monitor import iter_kind, read_log

        if not self.env.is_main or not self.logger.path.exists():
            return []
        drop = ("kind", "time", "step")
        return [
            {k: v for k, v in r.items() if k not in drop}
            for r in iter_kind(read_log(self.logger.path), "event")
        ]

    # ----------------------------------------------------------------------------------
    # the loop

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def fit(self) -> TrainSummary:
        """Train until ``max_steps`` / ``max_epochs``, or until SIGTERM/SIGUSR1 (a cluster's
        preemption notice): then every rank stops after the current update, a checkpoint is
        saved, and the summary says ``stopped="signal"``."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                previous[sig] = signal.signal(sig, self._request_stop)
        try:
            stopped = self._run_epochs()
            last = self.checkpoints.last_saved
            if last is None or last.name != ckpt.step_dir_name(self.state.step):
                last = self._save()
            final = None
            if stopped == "signal":
                reason = f"signal {self.stop_signal or 'on another rank'}"
                self.logger.event("stop", step=self.step, reason=reason, checkpoint=str(last))
            elif self.tc.export_final:
                final = self.exp_dir / "final"
                self.task.export(final, self.fsdp, self.step)
                self.logger.event("export", step=self.step, path=str(final))
                dist.barrier()
            self.logger.event("done", step=self.step, epoch=self.state.epoch, stopped=stopped)
            best = self.checkpoints.best_value
            return TrainSummary(self.step, self.state.epoch, last, best, final, stopped)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.logger.close()
            self._exit.close()

    def _run_epochs(self) -> str:
        """Epochs of updates until a limit or a signal; returns why it stopped."""
        tc, st = self.tc, self.state
        window = self.window = StepWindow()
        while st.step < tc.max_steps:
            if tc.max_epochs and st.epoch >= tc.max_epochs:
                return "max_epochs"
            micro: list[Any] = []
            for batch in self._timed(self.task.batches(st.epoch, st.index)):
                micro.append(batch)
                st.index += 1
                if len(micro) < tc.grad_accum:
                    continue
                updated = self.train_step(micro, window)
                micro = []
                if self.stop_requested:
                    break
                if updated and st.step % tc.log_every == 0:  # log first: a checkpoint's
                    self.metrics.log_window(window, st.step, st.epoch)  # steps are all logged
                    window = self.window = StepWindow()
                if updated:
                    self._after_update()
                if st.step >= tc.max_steps:
                    break
            if micro:  # cannot happen: epochs are padded to whole steps
                raise RuntimeError("epoch ended inside an accumulated step")
            if self.stop_requested or st.step >= tc.max_steps:
                break
            st.epoch, st.index = st.epoch + 1, 0
        if window.updates or window.skipped:
            self.metrics.log_window(window, st.step, st.epoch)
        return "signal" if self.stop_requested else "max_steps"

    def _timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches``, adding the time spent waiting for each to the current window."""
        it = iter(batches)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.window.data_wait += time.perf_counter() - t0
            yield batch

    def _after_update(self) -> None:
        tc, step = self.tc, self.state.step
        dev: dict[str, float] | None = None
        if step % (tc.validate_every or tc.save_every) == 0 or step >= tc.max_steps:
            dev = self.evaluate()
        if step % tc.save_every == 0 or step >= tc.max_steps:
            self._save(dev)

    def train_step(self, micro: list[Any], window: StepWindow | None = None) -> bool:
        """One optimizer update over ``micro`` (this rank's micro-batches); False if it was
        skipped (non-finite, or nothing loaded). Statistics go to ``window``."""
        window = window if window is not None else StepWindow()
        self.task.model.train()
        sums, infos = self._accumulate(micro, window)
        names = sorted(sums)  # one host sync for all the step's scalars
        host = dict(zip(names, torch.stack([sums[n] for n in names]).tolist() if names else []))
        bad = [n for n, v in host.items() if not math.isfinite(v)]
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = self.tc.clip_norm or float("inf")  # 0: no clipping (norm still logged)
        norm = float(
            _total_norm(torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True))
        )
        # one all-reduce decides for every rank: non-finite values, data at all, a stop signal
        utts = sum(i.size for i in infos)
        flags = torch.tensor(
            [float(bool(bad) or not math.isfinite(norm)), float(utts), float(self.stop_signal is not None)],
            device=self.device,
        )  # fmt: skip
        dist.all_reduce(flags)
        nonfinite, global_utts = bool(flags[0].item() > 0), int(flags[1].item())
        self.stop_requested = bool(flags[2].item() > 0)
        if nonfinite or global_utts == 0:
            # nothing loaded anywhere (tolerant mode): a step on zero gradients would still
            # move Adam's weights, so it is skipped like a non-finite one
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            if nonfinite:
                self._on_nonfinite(infos, bad, norm, window)
            else:
                self.logger.event("empty_step", step=self.step, batches=[i.index for i in infos])
            return False
        lr_used = self.schedule.lr
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.state.step += 1
        self.state.consecutive_nonfinite = 0
        hook = getattr(self.task.model, "after_optimizer_step", None)
        if callable(hook):
            hook(self.state.step)
        self._record(window, host, infos, norm, lr_used)
        self.logger.progress(1)
        return True

    def _accumulate(
        self, micro: list[Any], window: StepWindow
    ) -> tuple[dict[str, Tensor], list[BatchInfo]]:
        """Forward and backward of every micro-batch; the summed logged scalars."""
        sums: dict[str, Tensor] = {}
        infos: list[BatchInfo] = []
        flops = 0.0
        for k, batch in enumerate(micro):
            info = self.task.info(batch)
            infos.append(info)
            for utt, reason in info.skipped:
                self.logger.event("skipped_utterance", step=self.step, utt=utt, reason=reason)
            measure = self.flops.measuring() if k == 0 else contextlib.nullcontext()
            with measure, gradient_sync(self.wrapped, k == len(micro) - 1):
                with autocast(self.device, self.tc.precision):
                    if info.size == 0:  # every utterance failed to load (tolerant mode)
                        zero = torch.zeros((), device=self.device)
                        out = StepOutput(sum((p.sum() * 0.0 for p in self.params), zero))
                    else:
                        out = self.task.forward(self.wrapped, batch)
                self.scaler.scale(out.loss.float() / len(micro)).backward()
            flops += self.flops.count(measure, info.lengths, info.padded_samples)
            for name, value in out.scalars.items():
                value = value.detach().float().reshape(())
                sums[name] = sums[name] + value if name in sums else value
        window.add("skipped_utts", sum(len(i.skipped) for i in infos), 1)
        window.add("flops", flops, 1) if self.flops.active else None
        return sums, infos

    def _record(
        self,
        window: StepWindow,
        host: dict[str, float],
        infos: list[BatchInfo],
        norm: float,
        lr: float,
    ) -> None:
        n = len(infos)
        for name, value in host.items():
            window.add(name, value / n, n)
        if self.tc.best_metric in host:
            self._best_window[0] += host[self.tc.best_metric]
            self._best_window[1] += n
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        for key, value in (("grad_norm", norm), ("lr", lr), ("loss_scale", scale)):
            window.add(key, value)
        window.add("real_samples", sum(int(i.lengths.sum()) for i in infos), 1)
        window.add("padded_samples", sum(i.padded_samples for i in infos), 1)
        window.add("loaded_samples", sum(i.loaded_samples for i in infos), 1)
        window.add("utterances", sum(i.size for i in infos), 1)
        window.add("batches", n, 1)
        window.updates += 1

    def _on_nonfinite(
        self, infos: list[BatchInfo], bad_terms: list[str], grad_norm: float, window: StepWindow
    ) -> None:
        st, tc = self.state, self.tc
        st.consecutive_nonfinite += 1
        window.skipped += 1
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else None
        utts = [u for i in infos for u in i.utt_ids]
        self.logger.event(
            "nonfinite", step=st.step, epoch=st.epoch, batches=[i.index for i in infos],
            terms=bad_terms, grad_norm=grad_norm, loss_scale=scale,
            consecutive=st.consecutive_nonfinite, utts=utts[:20],
        )  # fmt: skip
        self._check_weights()  # broken weights: skipping steps cannot help
        reason = None
        if (
            tc.max_consecutive_nonfinite
            and st.consecutive_nonfinite >= tc.max_consecutive_nonfinite
        ):
            reason = (
                f"{st.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient"
            )
        elif scale is not None and scale < tc.min_loss_scale:
            reason = f"the fp16 loss scale fell to {scale:g} (< trainer.min_loss_scale={tc.min_loss_scale:g})"
        if reason is None:
            return
        saved = self._save()
        where = ", ".join(bad_terms) if bad_terms else "gradients"
        self.logger.event("stop", step=st.step, reason=reason, checkpoint=str(saved))
        raise TrainingError(
            f"stopping at step {st.step} (epoch {st.epoch}): {reason}; last non-finite "
            f"values: {where}; batch utterances include {', '.join(utts[:5])}. The last good "
            f"state (finite parameters) is saved in {saved}. Check the data (speechssl data "
            "validate), lower optim.lr, lower trainer.clip_norm, or use "
            "trainer.precision=bf16/fp32."
        )  # fmt: skip

    def _max_abs_weight(self) -> float:
        """The largest ``|parameter|`` over all ranks (NaN if any is NaN)."""
        local = [getattr(p, "to_local", lambda p=p: p)().detach() for p in self.params]
        peaks = [t.abs().max().float() for t in local if t.numel()]
        peak = torch.stack(peaks).max() if peaks else torch.zeros(())
        return float(dist.all_reduce(peak.reshape(1).to(self.device), "max").item())

    def _check_weights(self) -> None:
        """Stop, blaming the optimizer settings, if the weights are non-finite or blew up
        (largest |weight| over ``WEIGHT_BLOWUP`` times its value at the start)."""
        broken = ckpt.nonfinite_parameters(self.task.model)
        if broken:
            shown = ", ".join(broken[:3]) + (
                f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            )
            self._stop_bad_weights(f"are non-finite ({shown})", broken)
        peak = self._max_abs_weight()
        if peak > WEIGHT_BLOWUP * max(self._start_peak, 1.0):
            self._stop_bad_weights(
                f"blew up (largest |weight| {peak:.3g}, {self._start_peak:.3g} at the start)", []
            )

    def _stop_bad_weights(self, what: str, names: list[str]) -> NoReturn:
        """The optimizer updates (of finite gradients: others are skipped) broke the weights:
        blame the optimizer settings, save nothing, name the last good checkpoint."""
        o = self.optim_cfg
        good = self.checkpoints.latest_good()
        self.logger.event("stop", step=self.step, reason=f"weights {what}", params=names[:20])
        raise TrainingError(
            f"stopping at step {self.step}: the model's weights {what} after optimizer "
            f"updates of finite gradients, so the optimizer settings are the likely cause "
            f"(optim.name={o.name}, optim.lr={o.lr:g}, optim.eps={o.eps:g}, "
            f"optim.betas={list(o.betas)}, optim.weight_decay={o.weight_decay:g}); lower "
            f"optim.lr or raise optim.eps. Nothing was saved; the last good checkpoint is "
            f"{good if good is not None else 'none (no checkpoint was written yet)'}"
        )

    # ----------------------------------------------------------------------------------
    # evaluation and checkpoints

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """The task's evaluation averaged over ranks and logged as ``dev`` (None without a
        dev set); the RNG states are restored afterwards, so training is unaffected."""
        module = self.wrapped if self.fsdp else self.task.model
        module.eval()
        rng = ckpt.capture_rng_state()
        try:
            result = self.task.evaluate(module)
        finally:
            ckpt.restore_rng_state(rng)
            self.task.model.train()
        if result is None:
            return None
        means, weight = self.metrics.reduce_means(*result)
        self.logger.write("dev", {"step": self.step, **means, "batches": int(weight)})
        return means

    def _save(self, dev: dict[str, float] | None = None) -> Path:
        metric: float | None
        if dev is not None:
            metric, source = dev.get(self.tc.best_metric), "dev"
        else:
            total, count = self._best_window
            metric, source = (total / count if count else None), "train"
        self._best_window = [0.0, 0.0]
        meta = {"batch_index": self.state.index, "model": self.task.model_name}
        self._check_weights()  # a checkpoint is a state training can go on from
        try:
            path = self.checkpoints.save(metric, source, meta)
        except NonFiniteStateError as exc:  # a buffer (the weights were checked above)
            self._stop_bad_weights(f"are non-finite ({', '.join(exc.names[:3])})", exc.names)
        for event in self.checkpoints.events:
            self.logger.event(event.pop("event"), **event)
        self.checkpoints.events.clear()
        return path


class Trainer(TrainLoop):
    """Pretraining from a :class:`TrainConfig`: :class:`TrainLoop` over a
    :class:`~speechssl.train.pretrain.PretrainTask`.

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

        from speechssl.train.images import ImageTrainTask, check_modality

        image = check_modality(cfg) == "image"  # a model/data mismatch is refused up front

        def task() -> TrainTask:
            if image:
                return ImageTrainTask(cfg, env)
            return PretrainTask(cfg, env, train_corpus=train_corpus, dev_corpus=dev_corpus)

        super().__init__(
            task, env, trainer=cfg.trainer, optim=cfg.optim, resume=cfg.resume, config=cfg
        )

    @property
    def pretrain(self) -> PretrainTask:
        """The pretraining task (its model, corpus, sampler and dataset)."""
        assert isinstance(self.task, PretrainTask)
        return self.task
