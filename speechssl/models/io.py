"""Save and load a model directory: ``model.json`` (registry name + full config) and
``model.safetensors`` (the state dict).

The directory is built under a temporary name and renamed, so a crash never leaves a
half-written model dir in place. ``model.json`` records the weights file's size and SHA-256
(``files``); a training checkpoint dir (``step-*``, ``best``) records them in its
``meta.json``. :func:`load_model_dir` is the one loader every reader goes through (feature
dumping, export, probing), and it verifies the recorded sizes and SHA-256s of what it reads,
the weights' names and shapes, and that every floating weight is finite. Every problem is a
:class:`~speechssl.errors.CheckpointError` naming the path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from speechssl.errors import CheckpointError, ConfigError
from speechssl.models.base import PretrainModel
from speechssl.models.registry import apply_overrides, get_spec
from speechssl.utils.atomic import atomic_dir
from speechssl.utils.files import sha256_file

FORMAT = "speechssl-model/1"
CONFIG_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_META = "meta.json"
"""A training checkpoint's file list (``speechssl.train.checkpoint``): sizes and SHA-256s."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def model_description(model: PretrainModel) -> dict[str, Any]:
    """What ``model.json`` holds: format, registry name, family and full config."""
    if not model.model_name or model.config is None:
        raise ConfigError("model has no registry name/config; build it with create_model()")
    return {
        "format": FORMAT,
        "name": model.model_name,
        "family": model.family,
        "config": config_to_dict(model.config),
    }


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the state dict (safetensors refuses shared/strided views)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model_dir(
    model: PretrainModel,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to the directory ``path`` (atomically); ``extra`` goes into
    ``model.json`` under ``"extra"`` (e.g. the k-means model the labels came from)."""
    desc = model_description(model)
    if extra:
        desc["extra"] = extra
    target = Path(path)
    try:
        with atomic_dir(target, overwrite=overwrite) as tmp:
            save_file(
                state_dict_for_saving(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"}
            )
            desc["files"] = {WEIGHTS_NAME: file_record(tmp / WEIGHTS_NAME)}
            (tmp / CONFIG_NAME).write_text(json.dumps(desc, indent=2, sort_keys=True) + "\n")
    except FileExistsError:
        raise CheckpointError(f"{target}: exists (pass overwrite=True to replace it)") from None
    return target


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"bytes", "sha256"}`` of a file, as model dirs and checkpoints record them."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def verify_recorded_files(root: Path, names: tuple[str, ...], desc: dict[str, Any]) -> None:
    """Check ``names`` in ``root`` against the sizes and SHA-256s recorded for them: in a
    checkpoint's ``meta.json`` when there is one (it is written last and lists every file),
    else in ``model.json``'s ``files``. A model dir that records none (written before
    checksums were recorded) is not checked here; its weights' names, shapes and finiteness
    still are."""
    records: dict[str, Any] = {}
    meta_path = root / CHECKPOINT_META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta_path}: unreadable metadata ({exc})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
            raise CheckpointError(f"{meta_path}: no file list; the dir cannot be verified")
        records = meta["files"]
        where = meta_path
    elif isinstance(desc.get("files"), dict):
        records = desc["files"]
        where = root / CONFIG_NAME
    else:
        return
    for name in names:
        info = records.get(name)
        fpath = root / name
        if not isinstance(info, dict) or "bytes" not in info or "sha256" not in info:
            raise CheckpointError(f"{where}: records no size and SHA-256 for {name}")
        if not fpath.is_file():
            raise CheckpointError(f"{fpath}: missing (listed in {where.name})")
        size = fpath.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"{fpath}: {size} bytes, {where.name} says {info['bytes']} (truncated or replaced)"
            )
        if sha256_file(fpath) != info["sha256"]:
            raise CheckpointError(
                f"{fpath}: SHA-256 does not match {where.name} (corrupt or modified file)"
            )


def nonfinite_weights(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding a NaN or an infinite value."""
    return sorted(
        k
        for k, v in weights.items()
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())
    )


def read_model_description(path: str | os.PathLike[str]) -> dict[str, Any]:
    cfg_path = Path(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: not a model directory (no {CONFIG_NAME})")
    try:
        desc = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(desc, dict) or desc.get("format") != FORMAT or "name" not in desc:
        raise CheckpointError(f"{cfg_path}: not a {FORMAT} description")
    return desc


def build_from_description(desc: dict[str, Any]) -> PretrainModel:
    """A freshly initialised model of the described name and config."""
    spec = get_spec(desc["name"])
    config = apply_overrides(spec.make_config(), desc.get("config") or {}, desc["name"])
    model = spec.build(config)
    model.model_name = spec.name
    model.family = spec.family
    return model


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a CheckpointError listing what does not fit;
    NaN/inf weights are refused too (naming the tensors)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: weights do not match the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    bad = nonfinite_weights(weights)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{where}: NaN or infinite values in {', '.join(bad[:5])}{more}; such weights are "
            "never loaded (the model diverged or the file was modified)"
        )
    model.load_state_dict(weights, strict=True)


def load_model_dir(path: str | os.PathLike[str], map_location: str = "cpu") -> PretrainModel:
    """Rebuild the model saved by :func:`save_model_dir` (or a training checkpoint dir),
    after verifying the recorded checksums (:func:`verify_recorded_files`)."""
    desc = read_model_description(path)
    weights_path = Path(path) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_NAME}")
    names = (WEIGHTS_NAME, CONFIG_NAME) if (Path(path) / CHECKPOINT_META).is_file() else ()
    verify_recorded_files(Path(path), names or (WEIGHTS_NAME,), desc)
    model = build_from_description(desc)
    try:
        weights = load_file(str(weights_path), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable ({exc})") from None
    load_weights(model, weights, str(weights_path))
    return model
