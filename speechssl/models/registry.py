"""Model registry: every preset is created by name from a kw-only dataclass config.

``create_model("hubert_tiny", encoder={"num_layers": 3})`` or, from flat command-line style
overrides, ``create_model("hubert_tiny", **{"encoder.num_layers": 3})``. Configs never name
classes to import; a family registers its presets when its module is imported
(:data:`FAMILY_MODULES` lists them, so ``create_model`` works without importing anything
first).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from speechssl.errors import ConfigError
from speechssl.models.base import PretrainModel
from speechssl.registry import Registry

#: modules that register model presets when imported
FAMILY_MODULES: list[str] = [
    "speechssl.models.hubert",
    "speechssl.models.wav2vec2",
    "speechssl.models.w2v_bert",
    "speechssl.models.data2vec",
    "speechssl.models.vision",
    "speechssl.models.vision_ssl",
    "speechssl.models.speech_ssl",
]

#: what a model's ``forward``/``extract`` take: ``audio`` (``AudioBatch``, waveforms) or
#: ``image`` (``speechssl.data.images.ImageBatch``, ``[N, C, H, W]`` images)
MODALITIES = ("audio", "image")


@dataclass(frozen=True)
class ModelSpec:
    """A registered preset.

    Attributes:
        name: registry name (``hubert_base``).
        family: model family (``hubert``), the key export/import use.
        make_config: returns the preset's config dataclass.
        build: builds the model from a config.
        size: named size (``tiny``, ``base``, ``large``, ...).
        modality: ``audio`` or ``image`` (what the model's batches hold).
    """

    name: str
    family: str
    make_config: Callable[[], Any]
    build: Callable[[Any], PretrainModel]
    size: str = ""
    modality: str = "audio"


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str,
    *,
    family: str,
    make_config: Callable[[], Any],
    build: Callable[[Any], PretrainModel],
    size: str = "",
    modality: str = "audio",
) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"model {name!r}: modality must be one of {MODALITIES}, got {modality!r}")
    MODELS.add(name, ModelSpec(name, family, make_config, build, size, modality))


def _ensure_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_models(modality: str | None = None) -> list[str]:
    """Registered presets (only those of ``modality`` when given)."""
    _ensure_families()
    if modality is None:
        return MODELS.names()
    return [n for n in MODELS.names() if MODELS.get(n).modality == modality]


def get_spec(name: str) -> ModelSpec:
    _ensure_families()
    return MODELS.get(name)


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"encoder.num_layers": 2}`` into ``{"encoder": {"num_layers": 2}}`` (merging)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key!r} conflicts with a value given for {part!r}")
            node = nxt
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(_nest(value))
        else:
            node[leaf] = _nest(value) if isinstance(value, Mapping) else value
    return out


def apply_overrides(config: Any, overrides: Mapping[str, Any], where: str = "model") -> Any:
    """A copy of dataclass ``config`` with ``overrides`` applied (nested dicts or dotted
    keys); an unknown field is a :class:`ConfigError` naming it and the known fields."""
    if not overrides:
        return config
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, value in _nest(overrides).items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown config field {key!r}; known: {known}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, Mapping):
                if dataclasses.is_dataclass(value):
                    changes[key] = value
                    continue
                raise ConfigError(
                    f"{where}.{key} is a group of settings; give a mapping, got {value!r}"
                )
            changes[key] = apply_overrides(current, value, f"{where}.{key}")
        else:
            changes[key] = value
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def model_config(name: str, **overrides: Any) -> Any:
    """The preset's config with ``overrides`` applied."""
    return apply_overrides(get_spec(name).make_config(), overrides, name)


def create_model(name: str, **overrides: Any) -> PretrainModel:
    """Build the preset ``name`` (with ``overrides``); the model remembers its name and
    config (``model.model_name``, ``model.config``) for saving and export."""
    spec = get_spec(name)
    config = apply_overrides(spec.make_config(), overrides, name)
    model = spec.build(config)
    model.model_name = name
    model.family = spec.family
    return model
