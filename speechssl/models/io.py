"""Save and load a model directory: ``model.json`` (registry name + full config) and
``model.safetensors`` (the state dict).

The directory is built under a temporary name and renamed, so a crash never leaves a
half-written model dir in place; loading checks both files and the weights' names and
shapes, and every problem is a :class:`~speechssl.errors.CheckpointError` naming the path.
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

FORMAT = "speechssl-model/1"
CONFIG_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"


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
            (tmp / CONFIG_NAME).write_text(json.dumps(desc, indent=2, sort_keys=True) + "\n")
    except FileExistsError:
        raise CheckpointError(f"{target}: exists (pass overwrite=True to replace it)") from None
    return target


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
    """``load_state_dict(strict=True)`` with a CheckpointError listing what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{where}: weights do not match the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]})"
        )
    model.load_state_dict(weights, strict=True)


def load_model_dir(path: str | os.PathLike[str], map_location: str = "cpu") -> PretrainModel:
    """Rebuild the model saved by :func:`save_model_dir`."""
    desc = read_model_description(path)
    model = build_from_description(desc)
    weights_path = Path(path) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{path}: missing {WEIGHTS_NAME}")
    try:
        weights = load_file(str(weights_path), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: unreadable ({exc})") from None
    load_weights(model, weights, str(weights_path))
    return model
