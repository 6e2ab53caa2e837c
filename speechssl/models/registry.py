"""Model registry: every preset is created by name from a kw-only dataclass config.

``create_model("hubert_tiny", encoder={"num_layers": 3})`` or, from flat command-line style
overrides, ``create_model("hubert_tiny", **{"encoder.num_layers": 3})``. Configs never name
classes to import; a family registers its presets when its module is imported, and the
package ``speechssl.models`` imports every family module, so importing this module (which
imports the package first) is enough for ``create_model``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from speechssl.errors import ConfigError
from speechssl.models.base import PretrainModel
from speechssl.registry import Registry

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


def list_models(modality: str | None = None) -> list[str]:
    """Registered presets (only those of ``modality`` when given)."""
    if modality is None:
        return MODELS.names()
    return [n for n in MODELS.names() if MODELS.get(n).modality == modality]


def family_spec(family: str) -> ModelSpec:
    """A family's own name (``hubert``) as a model name: its ``base`` preset's builder and
    config class, size ``custom``. Imported models whose architecture matches no preset
    are saved under it (their ``model.json`` holds the full config), so a 2-layer import is
    called ``hubert``, not ``hubert_base``."""
    members = [MODELS.get(n) for n in MODELS.names() if MODELS.get(n).family == family]
    if not members:
        raise ConfigError(f"unknown model family {family!r}")
    base = next((m for m in members if m.size == "base"), members[0])
    return ModelSpec(family, family, base.make_config, base.build, "custom", base.modality)


def get_spec(name: str) -> ModelSpec:
    """The preset ``name``, or for a family name (``hubert``) :func:`family_spec`."""
    if name not in MODELS and any(MODELS.get(n).family == name for n in MODELS.names()):
        return family_spec(name)
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


def _architecture(config: Any) -> tuple[Any, ...]:
    """The shape-defining fields of an audio config (conv stack, encoder shape)."""
    parts: list[Any] = []
    for group, names in (
        ("extractor", ("conv_layers", "mode", "conv_bias")),
        ("encoder", ("dim", "num_layers", "num_heads", "ffn_dim", "layer_norm_first",
                     "pos_conv_kernel", "pos_conv_groups")),
    ):  # fmt: skip
        sub = getattr(config, group, None)
        parts.append(tuple(getattr(sub, n, None) for n in names))
    return tuple(parts)


def name_for_config(family: str, config: Any) -> str:
    """The name a model of ``family`` with ``config`` goes by: the preset whose conv stack and
    encoder shape it has (``hubert_base``), else the family's name (``hubert``)."""
    arch = _architecture(config)
    for name in MODELS.names():
        spec = MODELS.get(name)
        if spec.family == family and _architecture(spec.make_config()) == arch:
            return name
    return family_spec(family).name
