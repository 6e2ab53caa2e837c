"""``speechssl features dump --kind model``: one hidden layer of a trained model as features.

Registered with the feature-extractor registry at import. ``--checkpoint`` is a model
directory (``speechssl.models.io``: a trainer checkpoint ``step-*``, ``final``, or a saved
model) or a ``transformers`` export (``speechssl.interop.hf``); ``--layer L``
picks ``extract().hidden_states[L]``: 0 is the encoder input, ``L >= 1`` the output of
transformer layer ``L`` (HuBERT's "layer 6" / "layer 9" features are ``--layer 6`` / ``9``).
The model runs in evaluation mode, stops after layer ``L``, and its first-layer GroupNorm
ignores padding, so an utterance's features do not depend on its batch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.features.extractors import ExtractorSpec, register_extractor
from speechssl.models.base import PretrainModel
from speechssl.models.io import CONFIG_NAME, WEIGHTS_NAME, load_model_dir


def load_any_model(path: str | os.PathLike[str]) -> PretrainModel:
    """A model dir (``model.json``) or a ``transformers`` export (``config.json``)."""
    root = Path(path)
    if (root / CONFIG_NAME).is_file():
        return load_model_dir(root)
    if (root / "config.json").is_file():
        from speechssl.interop.hf import import_from_transformers

        return import_from_transformers(root)
    raise CheckpointError(f"{root}: neither a model dir ({CONFIG_NAME}) nor a transformers export")


def _weights_digest(root: Path) -> str:
    """SHA-256 of the weights file (so a rerun with retrained weights is not mixed in)."""
    for name in (WEIGHTS_NAME, "model.safetensors"):
        p = root / name
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            return h.hexdigest()
    return ""


class ModelLayerExtractor:
    """Hidden layer ``layer`` of ``model`` for padded waveform batches."""

    def __init__(self, model: PretrainModel, layer: int, source: str, device: torch.device) -> None:
        from speechssl.models.registry import get_spec

        if model.model_name and get_spec(model.model_name).modality != "audio":
            raise ConfigError(f"{model.model_name} is an image model; --kind model needs audio")
        num_layers = model.config.encoder.num_layers
        if not 0 <= layer <= num_layers:
            raise ConfigError(
                f"--layer must be in [0, {num_layers}] for {model.model_name}, got {layer}"
            )
        self.model = model.to(device).eval()
        self.layer = layer
        self.source = source
        self.device = device
        self._digest = _weights_digest(Path(source))

    @property
    def dim(self) -> int:
        return int(self.model.config.encoder.dim)

    @property
    def frame_rate(self) -> float:
        return float(self.model.frame_rate)

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "model",
            "checkpoint": self.source,
            "weights_sha256": self._digest,
            "model": self.model.model_name,
            "layer": self.layer,
        }

    def __call__(
        self, waves: Tensor, lengths: Tensor, utt_ids: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            out = self.model.extract(
                waves.to(self.device), lengths.to(self.device), num_layers=self.layer
            )
        feats = out.hidden_states[self.layer].float()
        if out.padding_mask is None:
            frames = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.long)
        else:
            frames = (~out.padding_mask).sum(dim=1).cpu()
        return feats.cpu(), frames


def _factory(options: Mapping[str, Any], device: torch.device) -> ModelLayerExtractor:
    foreign = sorted(
        k for k, v in options.items() if v is not None and k not in ("checkpoint", "layer")
    )
    if foreign:
        names = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise ConfigError(f"option(s) {names} do not apply to --kind model")
    checkpoint, layer = options.get("checkpoint"), options.get("layer")
    if checkpoint is None or layer is None:
        raise ConfigError("--kind model needs --checkpoint DIR and --layer N")
    source = str(Path(checkpoint).resolve())
    return ModelLayerExtractor(load_any_model(source), int(layer), source, device)


register_extractor(
    "model",
    ExtractorSpec(
        factory=_factory,
        help="hidden layer --layer N of a trained model dir or export (--checkpoint DIR)",
    ),
)
