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

Fault injection (tests): with ``SPEECHSSL_FAULT_SAVE_PAUSE_STEP=N`` in the environment, the
save of step ``N`` writes the weights and trainer state, creates ``PAUSED`` in its temporary
dir and sleeps (up to an hour) before writing ``meta.json``, so a test can kill the process
in the middle of a save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl.errors import CheckpointError
from speechssl.utils.atomic import atomic_dir, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "speechssl-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"
BEST_NAME = "best"
FAULT_PAUSE_ENV = "SPEECHSSL_FAULT_SAVE_PAUSE_STEP"
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint dir; CheckpointError if missing or unreadable."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{path}: no {META_FILE}; the checkpoint is partial (save interrupted)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} checkpoint")
    return meta


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
        if hashes and _sha256(fpath) != info["sha256"]:
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


def remove_partial(ckpt_root: str | os.PathLike[str]) -> list[Path]:
    """Delete debris of interrupted saves and deletions; returns what was removed."""
    _, partial = list_checkpoints(ckpt_root)
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


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


def _fault_pause(tmp: Path, step: int) -> None:
    wanted = os.environ.get(FAULT_PAUSE_ENV)
    if wanted is not None and wanted.strip() == str(step):
        (tmp / "PAUSED").write_text(f"{os.getpid()}\n", encoding="utf-8")
        log.warning("fault injection: pausing inside the save of step %d (%s)", step, tmp)
        time.sleep(3600)


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
        _fault_pause(tmp, step)
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
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
        trainer_state = torch.load(root / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, runtime)
        raise CheckpointError(f"{root / STATE_FILE}: cannot read trainer state ({exc})") from None
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
