"""Atomic, verifiable training checkpoints.

A checkpoint is a directory ``<exp>/checkpoints/step-<8 digits>/``::

    model.safetensors     model weights (full, unsharded state dict)
    model.json            the model's registry name and config (so the dir is also a model
                          dir for ``speechssl.models.io.load_model_dir``)
    trainer_state.pt      optimizer, schedule, grad scaler, RNG states, sampler position,
                          counters; plain tensors/lists/numbers, loadable with
                          ``torch.load(weights_only=True)``
    meta.json             written last: format, step, epoch, metrics, and every file's size
                          and SHA-256

The directory is built under a temporary name (``.step-....tmp-*``) and renamed into place
only after ``meta.json`` is written, so a crash at any point leaves either the previous
checkpoints untouched plus hidden debris, never a half-written ``step-*`` dir. A dir without
``meta.json`` is partial and ignored; a dir whose files do not match ``meta.json`` is
corrupt and refused with :class:`~speechssl.errors.CheckpointError` before training starts.

``best/`` holds a hard-linked copy of the best step checkpoint by the chosen metric.

Resume (:meth:`CheckpointManager.resolve_resume`): ``auto`` takes the newest complete
``step-*`` dir; hidden temporary dirs of interrupted saves are removed, and a ``step-*`` dir
without ``meta.json`` (which an atomic save never leaves; someone deleted it) is set aside
under a new name (``step-<N>.no-meta-<time>``), never deleted. ``resume=DIR`` on something
that is not a checkpoint says what it is (a model dir, an exp dir, a data dir, ...).

:class:`CheckpointManager` owns all of it for a training loop: it takes the stateful objects
(model, optimizer, schedule, grad scaler, :class:`TrainState` with the sampler position and
counters; RNG states are captured per rank) and does resolve-resume, verify, load, save
(refusing non-finite parameters), keep-last-N pruning and ``best/`` tracking.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from speechssl import distributed as dist
from speechssl.distributed import DistEnv
from speechssl.errors import CheckpointError, ConfigError
from speechssl.utils.atomic import atomic_dir, atomic_write_json
from speechssl.utils.files import sha256_file

log = logging.getLogger(__name__)

FORMAT = "speechssl-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"
BEST_NAME = "best"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# --------------------------------------------------------------------------------------
# RNG states as plain tensors (loadable with weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    """States of Python's, numpy's, torch's CPU and (if initialised) CUDA generators."""
    version, py_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    nps = state["numpy"]
    np.random.set_state(
        (
            nps["kind"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d; "
                "CUDA generators are not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


# --------------------------------------------------------------------------------------
# listing and verification


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint dir and its metadata."""

    path: Path
    step: int
    meta: dict[str, Any]


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint dir; CheckpointError if missing or unreadable."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: {describe_non_checkpoint(path)}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{meta_path}: not a {FORMAT} checkpoint; resume expects a "
            "<exp>/checkpoints/step-<N> dir written by speechssl-train"
        )
    return meta


_EXPECTS = "resume expects a <exp>/checkpoints/step-<N> dir written by speechssl-train"


def describe_non_checkpoint(path: Path) -> str:
    """Why ``path`` (which has no ``meta.json``) is not a checkpoint: what it looks like
    instead and what resume expects."""
    if (path / "config.json").is_file() and any(
        (path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")
    ):
        what = "a Hugging Face model dir (config.json + weights), not a training checkpoint"
    elif (path / "model.json").is_file() and (path / MODEL_FILE).is_file():
        if (path / STATE_FILE).is_file():
            what = (
                f"a checkpoint without {META_FILE} (deleted or never written); it cannot be "
                "verified"
            )
        else:
            what = "a speechssl model dir (e.g. <exp>/final), which has no trainer state"
    elif (path / "checkpoints").is_dir():
        return (
            f"an experiment dir, not a checkpoint; pass one of its checkpoints/step-<N> "
            f"dirs, or resume=auto with trainer.exp_dir={path}"
        )
    elif (path / "wav.scp").is_file():
        what = "a Kaldi data dir, not a checkpoint"
    else:
        what = f"not a checkpoint (no {META_FILE})"
    return f"{what}; {_EXPECTS}"


def verify_checkpoint(path: str | os.PathLike[str], *, hashes: bool = True) -> dict[str, Any]:
    """Check every file against ``meta.json`` (size, and SHA-256 if ``hashes``).

    Returns the metadata; raises CheckpointError naming the file and what is wrong.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint dir does not exist")
    meta = read_meta(root)
    files = meta.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files or STATE_FILE not in files:
        raise CheckpointError(f"{root / META_FILE}: file list is missing or incomplete")
    for name, info in files.items():
        fpath = root / name
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: missing from checkpoint")
        size = fpath.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"{fpath}: {size} bytes, metadata says {info['bytes']} (truncated or replaced)"
            )
        if hashes and sha256_file(fpath) != info["sha256"]:
            raise CheckpointError(f"{fpath}: SHA-256 does not match metadata (corrupt file)")
    return meta


def list_checkpoints(ckpt_root: str | os.PathLike[str]) -> tuple[list[CheckpointInfo], list[Path]]:
    """``(complete step checkpoints sorted by step, partial dirs)`` under ``ckpt_root``.

    Complete means ``meta.json`` is present and readable (files are verified on load).
    Partial dirs are ``step-*`` dirs without metadata and hidden temporary dirs of
    interrupted saves.
    """
    root = Path(ckpt_root)
    complete: list[CheckpointInfo] = []
    partial: list[Path] = []
    if not root.is_dir():
        return complete, partial
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        if child.name.startswith(".") and ".tmp-" in child.name:
            partial.append(child)
            continue
        m = _STEP_DIR.match(child.name)
        if not m:
            continue
        if not (child / META_FILE).is_file():
            partial.append(child)
            continue
        complete.append(CheckpointInfo(path=child, step=int(m.group(1)), meta=read_meta(child)))
    complete.sort(key=lambda c: c.step)
    return complete, partial


def latest_checkpoint(ckpt_root: str | os.PathLike[str]) -> CheckpointInfo | None:
    """The newest complete step checkpoint (by step), or None."""
    complete, partial = list_checkpoints(ckpt_root)
    for p in partial:
        log.warning("ignoring partial checkpoint %s (interrupted save)", p)
    return complete[-1] if complete else None


def remove_partial(ckpt_root: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """Clean up before resuming: ``(removed, set_aside)``.

    Hidden temporary dirs (interrupted saves and deletions; never a complete checkpoint)
    are removed. A ``step-*`` dir without ``meta.json`` cannot come from an atomic save
    (someone deleted the file): it is renamed to ``step-<N>.no-meta-<time>`` and kept,
    weights included, for its owner to inspect.
    """
    _, partial = list_checkpoints(ckpt_root)
    removed: list[Path] = []
    aside: list[Path] = []
    for p in partial:
        if p.name.startswith("."):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            continue
        target = p.with_name(f"{p.name}.no-meta-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while target.exists():
            n += 1
            target = p.with_name(f"{p.name}.no-meta-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        os.replace(p, target)
        aside.append(target)
    return removed, aside


# --------------------------------------------------------------------------------------
# save and load


def _unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached contiguous CPU tensors with no shared storage (safetensors refuses aliases)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state.items():
        t = value.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        if t.numel() and ident in seen:
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), int(t.storage_offset())))
        out[key] = t
    return out


def save_checkpoint(
    ckpt_root: str | os.PathLike[str],
    step: int,
    model_state: dict[str, Tensor],
    trainer_state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``step-<step>/`` atomically (see the module doc); returns its path.

    ``extra_files`` (name -> text) are written beside the weights and listed in the
    metadata like them (the trainer adds ``model.json``, which makes every checkpoint dir a
    model dir that ``speechssl.models.io.load_model_dir`` reads).
    """
    from safetensors.torch import save_file

    target = Path(ckpt_root) / step_dir_name(step)
    with atomic_dir(target, overwrite=True) as tmp:
        save_file(_unshared(model_state), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        torch.save(trainer_state, tmp / STATE_FILE)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            for name in (MODEL_FILE, STATE_FILE, *(extra_files or {}))
        }
        full_meta = {
            **(meta or {}),
            "format": FORMAT,
            "step": step,
            "files": files,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(tmp / META_FILE, full_meta)
    return target


def load_checkpoint(
    path: str | os.PathLike[str], *, verify: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """``(model_state, trainer_state, meta)``; CheckpointError on anything missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(path)
    meta = verify_checkpoint(root, hashes=verify)
    try:
        model_state = load_file(str(root / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{root / MODEL_FILE}: cannot read weights ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols
            warnings.simplefilter("ignore")
            trainer_state = torch.load(root / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{root / STATE_FILE}: cannot read trainer state: it holds Python objects that a "
            "weights-only load refuses (a foreign or tampered file; nothing in it was run)"
        ) from None
    except Exception as exc:  # torch.load raises many kinds (zip, runtime)
        reason = " ".join(str(exc).split())[:300]  # one line, however torch words it
        raise CheckpointError(
            f"{root / STATE_FILE}: cannot read trainer state ({reason})"
        ) from None
    if not isinstance(trainer_state, dict):
        raise CheckpointError(f"{root / STATE_FILE}: trainer state is not a dict")
    return model_state, trainer_state, meta


def _trash(path: Path) -> None:
    """Remove a checkpoint dir so that no crash can leave a complete-looking remnant."""
    hidden = path.with_name(f".{path.name}.tmp-del-{os.getpid()}")
    os.replace(path, hidden)
    shutil.rmtree(hidden, ignore_errors=True)


def prune_checkpoints(ckpt_root: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete step checkpoints."""
    complete, _ = list_checkpoints(ckpt_root)
    doomed = [c.path for c in complete[:-keep_last]] if keep_last > 0 else []
    for p in doomed:
        _trash(p)
    return doomed


def mark_best(ckpt_root: str | os.PathLike[str], source: Path, info: dict[str, Any]) -> Path:
    """Make ``best/`` a copy (hard links where possible) of ``source`` with ``info`` added."""
    target = Path(ckpt_root) / BEST_NAME
    meta = read_meta(source)
    with atomic_dir(target, overwrite=True) as tmp:
        for name in meta["files"]:
            try:
                os.link(source / name, tmp / name)
            except OSError:
                shutil.copy2(source / name, tmp / name)
        atomic_write_json(tmp / META_FILE, {**meta, "best": info, "copied_from": source.name})
    return target


# --------------------------------------------------------------------------------------
# the manager a training loop hands its stateful parts to


class Stateful(Protocol):
    """Anything with ``state_dict()`` / ``load_state_dict()`` (schedules, grad scalers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    """The loop's counters and the sampler position, saved with every checkpoint.

    ``index`` counts the micro-batches this rank consumed in ``epoch``; the checkpoint keeps
    the global count (``index * world_size``), so a resume with another world size keeps
    the batch order (exactness across world sizes is not promised).
    """

    world_size: int = 1
    grad_accum: int = 1
    step: int = 0
    epoch: int = 0
    index: int = 0
    consecutive_nonfinite: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "global_batches": self.index * self.world_size,
            "world_size": self.world_size,
            "grad_accum": self.grad_accum,
            "consecutive_nonfinite": self.consecutive_nonfinite,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        saved_world = int(state["world_size"])
        global_batches = int(state["global_batches"])
        self.index = global_batches // self.world_size
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        if global_batches % self.world_size or saved_world != self.world_size:
            log.warning(
                "checkpoint was written by %d ranks, now %d: resuming at global batch %d of "
                "epoch %d (the order is kept; exactness across world sizes is not promised)",
                saved_world,
                self.world_size,
                self.index * self.world_size,
                self.epoch,
            )


def model_state(model: torch.nn.Module, fsdp: bool = False) -> dict[str, Tensor]:
    """Full (unsharded) CPU state dict of ``model`` (FSDP: gathered on rank 0)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {k: v for k, v in full.items() if isinstance(v, Tensor)}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of parameters/buffers with a NaN or infinite value, agreed by all ranks (FSDP
    shards are checked where they live)."""
    bad: list[str] = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        local = getattr(t, "to_local", None)  # an FSDP2 DTensor shard
        value = local() if callable(local) else t
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return sorted(set().union(*dist.all_gather_objects(bad)))


class NonFiniteStateError(CheckpointError):
    """The model holds NaN/inf values: such a state is never written as a checkpoint."""

    def __init__(self, names: list[str], step: int) -> None:
        self.names = names
        self.step = step
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        super().__init__(f"step {step}: non-finite (NaN/inf) values in {shown}")


class CheckpointManager:
    """Resolve-resume, verify, load, save, keep-last-N and best tracking for one loop.

    Args:
        root: the checkpoints dir (``<exp>/checkpoints``).
        env: this process's :class:`~speechssl.distributed.DistEnv`.
        model: the (unwrapped) model; FSDP2-sharded in place when ``fsdp``.
        optimizer: its optimizer.
        train_state: the loop's counters and sampler position.
        stateful: other parts saved under their name (``schedule``, ``scaler``); an empty
            saved state (a disabled grad scaler) is not loaded back.
        fsdp: the model is FSDP2-sharded (full state dicts are gathered and scattered).
        keep_last: complete step checkpoints kept (``best/`` is kept apart).
        best_metric, best_mode: what ``best/`` tracks (``min`` or ``max``).
        verify_hashes: check SHA-256s before resuming (sizes are always checked).
        model_files: text files written beside the weights (e.g. ``model.json``).

    Every method is called on every rank; rank 0 reads and writes files, the others wait.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        env: DistEnv,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train_state: TrainState,
        stateful: Mapping[str, Stateful] | None = None,
        fsdp: bool = False,
        keep_last: int = 3,
        best_metric: str = "loss",
        best_mode: str = "min",
        verify_hashes: bool = True,
        model_files: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.env = env
        self.model = model
        self.optimizer = optimizer
        self.train_state = train_state
        self.stateful = dict(stateful or {})
        self.fsdp = fsdp
        self.keep_last = keep_last
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.verify_hashes = verify_hashes
        self.model_files = model_files
        self.best_value: float | None = None
        self.best_step = 0
        self.last_saved: Path | None = None
        self.events: list[dict[str, Any]] = []
        """What happened since the caller last emptied it (``checkpoint``/``best`` records)."""

    # resume ---------------------------------------------------------------------------

    def resolve_resume(self, resume: str) -> Path | None:
        """The checkpoint to start from (``auto``, ``never`` or a dir), verified; None for
        a fresh start. Raises CheckpointError / ConfigError on every rank."""
        chosen: Path | None = None
        error: tuple[str, str] | None = None
        if self.env.is_main:
            try:
                chosen = self._choose(resume)
                if chosen is not None:
                    verify_checkpoint(chosen, hashes=self.verify_hashes)
            except (CheckpointError, ConfigError) as exc:
                error = (type(exc).__name__, str(exc))
        error, chosen = dist.broadcast_object((error, chosen))
        if error is None:
            return chosen
        kind, message = error
        if kind == "ConfigError":
            raise ConfigError(message)
        raise CheckpointError(
            f"{message} -- refusing to train; delete or move it, or pass "
            "resume=<older checkpoint dir>"
        )

    def _choose(self, resume: str) -> Path | None:
        if resume == "auto":
            removed, aside = remove_partial(self.root)
            for p in removed:
                log.warning("removed %s (debris of an interrupted save)", p)
            for p in aside:
                log.warning("set aside %s: a step dir without %s (weights kept)", p, META_FILE)
            latest = latest_checkpoint(self.root)
            return latest.path if latest else None
        if resume == "never":
            complete, _ = list_checkpoints(self.root)
            if complete:
                raise ConfigError(
                    f"{self.root} already has checkpoints (newest {complete[-1].path.name}); "
                    "use resume=auto to continue, or a new trainer.exp_dir"
                )
            return None
        chosen = Path(resume)
        if (chosen / "model.json").is_file() and not (chosen / META_FILE).is_file():
            # a model dir (an import, a run's final/): weights only, nothing to resume
            raise ConfigError(
                f"resume={resume}: a model dir (weights only: no optimizer, schedule or data "
                f"position to resume); start from its weights with model.init_from={resume}"
            )
        return chosen

    def load(self, path: Path) -> None:
        """Restore every part from ``path`` (verified by :meth:`resolve_resume`); NaN/inf
        weights are refused even when the checksums match (a file rewritten consistently)."""
        from speechssl.models.io import nonfinite_weights

        weights, state, _ = load_checkpoint(path, verify=False)
        bad = nonfinite_weights(weights)
        if bad:
            raise CheckpointError(
                f"{path / MODEL_FILE}: NaN or infinite values in {', '.join(bad[:5])}; such "
                "weights are never resumed from (the file was modified or written by another "
                "tool)"
            )
        try:
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import (
                    StateDictOptions,
                    set_model_state_dict,
                    set_optimizer_state_dict,
                )

                opts = StateDictOptions(full_state_dict=True)
                set_model_state_dict(self.model, dict(weights), options=opts)
                set_optimizer_state_dict(
                    self.model, self.optimizer, optim_state_dict=state["optimizer"], options=opts
                )
            else:
                self.model.load_state_dict(weights, strict=True)
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: does not match this model/optimizer ({exc}); was it written with "
                "another model config?"
            ) from None
        for name, part in self.stateful.items():
            if state.get(name):
                part.load_state_dict(state[name])
        self.train_state.load_state_dict(state)
        rng = state["rng"]
        if int(state["world_size"]) == self.env.world_size and self.env.rank < len(rng):
            restore_rng_state(rng[self.env.rank])
        self.best_value = state.get("best_value")
        self.best_step = int(state.get("best_step", 0))

    # save -----------------------------------------------------------------------------

    def is_better(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.best_mode == "min" else value > self.best_value

    def save(
        self, metric: float | None = None, source: str = "train", meta: dict[str, Any] | None = None
    ) -> Path:
        """Write ``step-<N>`` for the current train state (and ``best/`` if ``metric`` is
        the best so far), prune to ``keep_last``; returns the step dir.

        Raises :class:`NonFiniteStateError` (nothing written) if a parameter or buffer is
        NaN/inf: a checkpoint is always a state training can go on from.
        """
        step = self.train_state.step
        bad = nonfinite_parameters(self.model)
        if bad:
            raise NonFiniteStateError(bad, step)
        weights = model_state(self.model, self.fsdp)
        optim_state = self._optimizer_state()
        rngs = dist.all_gather_objects(capture_rng_state())
        is_best = self.is_better(metric)
        if is_best:
            self.best_value, self.best_step = metric, step
        state = {
            **self.train_state.state_dict(),
            "optimizer": optim_state,
            **{name: part.state_dict() for name, part in self.stateful.items()},
            "rng": rngs,
            "best_value": self.best_value,
            "best_step": self.best_step,
        }
        target = self.root / step_dir_name(step)
        if self.env.is_main:
            info = {"name": self.best_metric, "value": metric, "source": source}
            files = self.model_files() if self.model_files else None
            target = save_checkpoint(
                self.root,
                step,
                weights,
                state,
                {**(meta or {}), "epoch": self.train_state.epoch, "metric": info},
                extra_files=files,
            )
            if is_best:
                best = {"metric": self.best_metric, "value": metric, "source": source}
                mark_best(self.root, target, {**best, "step": step})
                self.events.append({"event": "best", "step": step, **best})
            removed = prune_checkpoints(self.root, self.keep_last)
            self.events.append(
                {
                    "event": "checkpoint",
                    "step": step,
                    "path": str(target),
                    "removed": [p.name for p in removed],
                }
            )
        dist.barrier()
        self.last_saved = target
        return target

    def _optimizer_state(self) -> dict[str, Any]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            return get_optimizer_state_dict(
                self.model,
                self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        return self.optimizer.state_dict()

    def latest_good(self) -> Path | None:
        """The newest complete checkpoint on disk (every one was finite when written)."""
        latest = latest_checkpoint(self.root) if self.env.is_main else None
        return dist.broadcast_object(latest.path if latest else None)
