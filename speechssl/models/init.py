"""Start a model from a saved model dir (``speechssl-train model.init_from=DIR``).

The model dir (``speechssl.models.io``: from ``speechssl import ...`` or a run's ``final/``)
fixes the architecture; the caller may change training settings (masking, dropout, loss
weights, label streams and their sizes) but not the architecture. Weights are copied by
name; a parameter whose size follows the label streams (HuBERT's label embeddings for a new
k, w2v-BERT's ...) or that the source lacks starts fresh, and :class:`InitReport` lists it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from speechssl.errors import CheckpointError, ConfigError
from speechssl.models.base import PretrainModel
from speechssl.models.io import load_model_dir, read_model_description
from speechssl.models.registry import apply_overrides, get_spec

#: config fields (by leaf name, any group) that are training settings, not architecture
TRAINING_FIELDS = frozenset(
    {
        "dropout", "attention_dropout", "activation_dropout", "conv_dropout", "layer_drop",
        "dropout_input", "dropout_features", "feature_grad_mult", "padding_aware_norm",
        "dither", "logit_temp", "gumbel_temp", "num_negatives", "masked_weight",
        "unmasked_weight", "feature_penalty_weight", "diversity_weight", "contrastive_weight",
        "mlm_weight", "label_tolerance_frames", "distributed_perplexity",
        "num_classes", "label_streams",
    }
)  # fmt: skip
#: config groups that are training settings as a whole
TRAINING_GROUPS = frozenset({"mask", "targets"})
#: fields whose change resizes label heads (their parameters may start fresh)
LABEL_FIELDS = ("num_classes", "label_streams")


@dataclass
class InitReport:
    """What :func:`init_from_dir` did: ``loaded`` tensors copied, ``initialised`` parameters
    that start fresh (absent from the source or resized for the labels), ``unused`` source
    tensors of heads the new label streams do not have."""

    source: str
    loaded: int = 0
    initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"model.init_from {self.source}: {self.loaded} tensors loaded"]
        parts.append(
            "initialised fresh: " + (", ".join(self.initialised) if self.initialised else "none")
        )
        if self.unused:
            parts.append(
                "not used (heads of the source's label streams): " + ", ".join(self.unused)
            )
        return "; ".join(parts)


def _leaves(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_leaves(value, f"{path}."))
        else:
            out.append(path)
    return out


def _get_path(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    from speechssl.models.registry import _nest

    return _nest(overrides)


def describe_init_source(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``model.json`` of ``path`` (a :class:`ConfigError` when it is not a model dir)."""
    try:
        return read_model_description(path)
    except CheckpointError as exc:  # say which option pointed there
        raise ConfigError(f"model.init_from={path}: {exc}") from None


def resolve_name(desc: dict[str, Any], given: str, where: str) -> str:
    """The model name to build: DIR's, unless ``given`` (an explicit ``model=``) differs."""
    if given and given != desc["name"]:
        raise ConfigError(
            f"model={given} conflicts with model.init_from={where} (a {desc['name']} model); "
            "leave model= out: the architecture comes from the model dir"
        )
    return str(desc["name"])


def config_overrides(
    desc: dict[str, Any], overrides: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """DIR's full config with ``overrides`` on top, as nested overrides of the preset; an
    override that changes an architecture field is refused, naming it."""
    spec = get_spec(desc["name"])
    source = apply_overrides(spec.make_config(), desc.get("config") or {}, desc["name"])
    user = _nested(overrides)
    changed = apply_overrides(source, user, desc["name"])
    for path in _leaves(user):
        parts = path.split(".")
        if parts[-1] in TRAINING_FIELDS or parts[0] in TRAINING_GROUPS:
            continue
        try:
            before, after = _get_path(source, path), _get_path(changed, path)
        except AttributeError:
            continue  # not a field: apply_overrides already named it
        if before != after:
            raise ConfigError(
                f"model.overrides.{path}={after!r} conflicts with model.init_from={where} "
                f"(it has {before!r}); the architecture comes from the model dir"
            )
    from speechssl.models.io import config_to_dict

    return config_to_dict(changed)


def _shapes(name: str, config: Any) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = get_spec(name).build(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def init_from_dir(model: PretrainModel, path: str | os.PathLike[str]) -> InitReport:
    """Copy the weights of model dir ``path`` into ``model`` (built from that dir's config
    plus training overrides). Parameters resized by the label streams, or absent from the
    source, keep their fresh values; any other mismatch is a :class:`ConfigError` naming the
    parameter."""
    where = str(path)
    desc = describe_init_source(path)
    try:
        source_model = load_model_dir(path)
    except (CheckpointError, ConfigError) as exc:
        raise ConfigError(f"model.init_from={where}: {exc}") from None
    src = source_model.state_dict()
    own = model.state_dict()
    # what the label fields alone change: those parameters may be re-created
    spec_name = desc["name"]
    label_changes = {f: getattr(model.config, f) for f in LABEL_FIELDS if hasattr(model.config, f)}
    relabelled = apply_overrides(source_model.config, label_changes, spec_name)
    label_shapes = _shapes(spec_name, relabelled)
    source_shapes = {k: tuple(v.shape) for k, v in src.items()}
    label_driven = {
        k
        for k in set(label_shapes) | set(source_shapes)
        if label_shapes.get(k) != source_shapes.get(k)
    }
    report = InitReport(where)
    merged: dict[str, torch.Tensor] = {}
    for name, value in own.items():
        if name in src and src[name].shape == value.shape:
            merged[name] = src[name].to(value.dtype)
            report.loaded += 1
        elif name in src and name not in label_driven:
            raise ConfigError(
                f"model.init_from={where}: parameter {name} has shape "
                f"{tuple(src[name].shape)} there but {tuple(value.shape)} in the model to train"
            )
        elif name not in src and name not in label_driven:
            raise ConfigError(
                f"model.init_from={where}: the model dir has no parameter {name} "
                f"(made by another speechssl version?)"
            )
        else:
            merged[name] = value
            report.initialised.append(name)
    report.unused = sorted(k for k in src if k not in own)
    unexplained = [k for k in report.unused if k not in label_driven]
    if unexplained:
        raise ConfigError(
            f"model.init_from={where}: parameters {unexplained[:5]} do not exist in the model "
            "to train"
        )
    model.load_state_dict(merged, strict=True)
    return report


__all__ = [
    "InitReport",
    "config_overrides",
    "describe_init_source",
    "init_from_dir",
    "resolve_name",
]
