"""``speechssl features dump --kind model``: a hidden layer of a trained model as features.

Registered with the feature-extractor registry at import (``speechssl.features.extractors``
imports this module), so the dump loop, sharding, resume and the store format are the same
as for Kaldi features. ``--checkpoint`` is a model dir (``speechssl.models.io``: a
training run's ``final/`` or any checkpoint dir) and ``--layer L`` picks
``ExtractOutput.hidden_states[L]`` (0: the transformer's input, L: the output of layer L).

Each utterance goes through the model on its own, as fairseq's HuBERT feature dumping does:
the waveform front ends of the base models normalise over time (GroupNorm), so a padded
batch would change every utterance's features with the length of its batch mates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.errors import ConfigError
from speechssl.features.extractors import ExtractorSpec, register_extractor
from speechssl.models.base import PretrainModel
from speechssl.models.io import WEIGHTS_NAME, load_model_dir

#: the analysis window of one output frame: the 400-sample receptive field of the 20 ms
#: waveform front ends at 16 kHz (how unit labels line up with audio and alignments)
FRAME_WINDOW_S = 0.025


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(kw_only=True)
class ModelLayerExtractor:
    """Hidden states of one layer of a trained model, one utterance at a time."""

    model: PretrainModel
    """The model, in eval mode, on ``device``."""
    checkpoint: Path
    """The model dir it was loaded from."""
    layer: int
    """Index into ``ExtractOutput.hidden_states``."""
    weights_sha256: str
    """Hash of the weights file, so a changed checkpoint at the same path is noticed."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where the model runs."""
    dim: int = 0
    """Feature dimension (set from a probe forward pass)."""
    frame_rate: float = 50.0
    """Frames per second of the hidden states."""

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "model",
            "model": self.model.model_name,
            "family": self.model.family,
            "checkpoint": str(self.checkpoint.resolve()),
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "frame_window_s": FRAME_WINDOW_S,
        }

    @torch.inference_mode()
    def _layer(self, wave: Tensor) -> Tensor:
        out = self.model.extract(wave[None].to(self.device), None, num_layers=self.layer)
        return out.hidden_states[self.layer][0]

    def __call__(
        self, waves: Tensor, lengths: Tensor, utt_ids: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        feats = [self._layer(waves[i, : int(n)]) for i, n in enumerate(lengths.tolist())]
        nframes = torch.tensor([f.shape[0] for f in feats])
        out = torch.zeros(len(feats), int(nframes.max()), self.dim, device=self.device)
        for i, f in enumerate(feats):
            out[i, : f.shape[0]] = f
        return out, nframes


def make_model_extractor(options: Mapping[str, Any], device: torch.device) -> ModelLayerExtractor:
    """Factory of ``--kind model``: needs ``--checkpoint DIR`` and ``--layer L``."""
    checkpoint, layer = options.get("checkpoint"), options.get("layer")
    if not checkpoint or layer is None:
        raise ConfigError("--kind model needs --checkpoint MODEL_DIR and --layer L")
    set_kaldi = sorted(
        k for k in ("deltas", "cmvn", "num_ceps", "num_mel_bins") if options.get(k) is not None
    )
    if set_kaldi:
        names = ", ".join("--" + k.replace("_", "-") for k in set_kaldi)
        raise ConfigError(f"option(s) {names} do not apply to --kind model")
    path = Path(checkpoint)
    model = load_model_dir(path).eval().to(device)
    probe = torch.zeros(1, model.sample_rate, device=device)  # one second
    with torch.inference_mode():
        out = model.extract(probe, None)
    num_layers = len(out.hidden_states) - 1
    if not 0 <= int(layer) <= num_layers:
        raise ConfigError(
            f"--layer {layer}: {path} ({model.model_name}) has layers 0..{num_layers} "
            "(0 = the transformer's input)"
        )
    return ModelLayerExtractor(
        model=model,
        checkpoint=path,
        layer=int(layer),
        weights_sha256=_sha256(path / WEIGHTS_NAME),
        device=device,
        dim=int(out.hidden_states[int(layer)].shape[-1]),
        frame_rate=float(out.frame_rate),
    )


register_extractor(
    "model",
    ExtractorSpec(
        factory=make_model_extractor,
        help="a hidden layer of a trained model (--checkpoint MODEL_DIR --layer L)",
    ),
)
