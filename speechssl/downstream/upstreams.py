"""Frozen upstreams for probing: one interface over every source of frame features.

:func:`load_upstream` takes

* ``fbank`` / ``mfcc``: Kaldi features from :mod:`speechssl.features` (SUPERB's FBANK
  baseline: 80 mel bins; MFCC: 13 cepstra; both with deltas + delta-deltas and per-utterance
  mean/variance normalisation), one "layer";
* a speechssl model dir (``model.json`` + ``model.safetensors``: a training's ``final/``,
  ``checkpoints/best/``, ``checkpoints/step-*``, a saved model), or a training exp dir
  (its ``final/`` is used);
* ``random-init:PATH``: a model of the same config as the speechssl model dir (or training
  exp dir) ``PATH``, with fresh random weights (seed 0) instead of its trained ones - the
  honest baseline of an SSL claim (same architecture, no pretraining);
* a local ``transformers`` model dir (``config.json``), loaded with ``AutoModel``
  (HubertModel, Wav2Vec2Model / Wav2Vec2ForPreTraining, WavLMModel, Data2VecAudioModel,
  and Wav2Vec2BertModel with the fbank feature extractor of its
  ``preprocessor_config.json``) with ``output_hidden_states=True``.

Every upstream returns all hidden states (index 0 = input of the first transformer layer,
``i`` = output of layer ``i``, as :class:`speechssl.models.base.ExtractOutput`), runs in
eval mode (dropout and layer drop off), and returns each utterance's frame count as the model
itself computes it for that length (no trimming). ``identity()`` names the upstream and the
SHA-256 of its weights, so a layer cache made from other weights is refused.

This module also registers ``features dump --kind model`` (one hidden layer as features).
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.features.extractors import ExtractorSpec, KaldiExtractor, register_extractor
from speechssl.features.options import FbankOptions, FrameOptions, MelOptions, MfccOptions
from speechssl.models.base import PretrainModel
from speechssl.models.io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_from_description,
    load_model_dir,
    read_model_description,
)

BASELINES = ("fbank", "mfcc")
"""Names of the classic-feature upstreams."""

RANDOM_INIT = "random-init:"
"""Prefix of the random-init upstream: ``random-init:PATH`` (PATH a speechssl model dir)."""

RANDOM_INIT_SEED = 0
"""Seed of the random-init upstream's weights (fixed, so its layer cache is reused)."""

#: transformers model types the AutoModel upstream accepts (the last takes fbank input)
HF_MODEL_TYPES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio", "wav2vec2-bert")


@dataclass
class UpstreamOutput:
    """Hidden states of a padded batch.

    Attributes:
        hidden_states: ``[N, S, D]`` per layer (padding rows are zero).
        frames: ``[N]`` frames of each utterance (the model's own count for its length).
    """

    hidden_states: list[Tensor]
    frames: Tensor


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _zero_padding(hidden: list[Tensor], frames: Tensor) -> list[Tensor]:
    if not hidden:
        return hidden
    steps = torch.arange(hidden[0].shape[1], device=hidden[0].device)
    keep = (steps[None, :] < frames.to(steps.device)[:, None]).unsqueeze(-1)
    return [h * keep for h in hidden]


class Upstream(abc.ABC):
    """The interface (see the module doc). Subclasses set the attributes and ``forward``."""

    name: str
    kind: str
    num_layers: int
    """Number of hidden states (``transformer layers + 1`` for models, 1 for baselines)."""
    dim: int
    frame_rate: float
    sample_rate: int
    device: torch.device
    standardize: bool = False
    """The features are raw (not normalised by the upstream): a probe standardises every
    dimension with statistics over its training split's frames (QbE, which has no training
    split, per utterance). True for the fbank/MFCC baselines."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What determines the output: name, kind, source and weights digest."""

    @abc.abstractmethod
    def forward(
        self, waves: Tensor, lengths: Tensor, layers: Sequence[int] | None = None
    ) -> UpstreamOutput:
        """Hidden states of ``waves [N, T]`` (float in [-1, 1]) with ``lengths [N]``; only
        ``layers`` (indices into all hidden states) when given."""

    def __call__(
        self, waves: Tensor, lengths: Tensor, layers: Sequence[int] | None = None
    ) -> UpstreamOutput:
        if layers is not None:
            bad = [i for i in layers if not 0 <= i < self.num_layers]
            if bad:
                raise ConfigError(
                    f"layer(s) {bad} out of range for upstream {self.name} "
                    f"({self.num_layers} hidden states: 0..{self.num_layers - 1})"
                )
        with torch.inference_mode():
            return self.forward(waves.to(self.device), lengths.to(self.device), layers)

    def digest(self) -> str:
        """A short hex digest of :meth:`identity` (for file names and cache checks)."""
        text = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class BaselineUpstream(Upstream):
    """Kaldi fbank or MFCC with deltas, unnormalised (one hidden state).

    No per-utterance CMVN: after it every utterance's features average to exactly zero, so
    a mean-pooling head (KS, SID, IC) sees a constant input and can only predict the
    majority class. The probe standardises the features with its training split's
    statistics instead (:attr:`Upstream.standardize`).
    """

    standardize = True

    def __init__(self, kind: str, device: torch.device | str = "cpu") -> None:
        if kind not in BASELINES:
            raise ConfigError(f"baseline upstream must be one of {BASELINES}, got {kind!r}")
        frame = FrameOptions(dither=0.0)
        opts: FbankOptions | MfccOptions
        if kind == "fbank":
            opts = FbankOptions(frame=frame, mel=MelOptions(num_mel_bins=80))
        else:
            opts = MfccOptions(frame=frame)
        self.device = torch.device(device)
        self.extractor = KaldiExtractor(
            kind=kind, opts=opts, deltas=2, cmvn="none", device=self.device
        )
        self.name = self.kind = kind
        self.num_layers = 1
        self.dim = self.extractor.dim
        self.frame_rate = self.extractor.frame_rate
        self.sample_rate = self.extractor.sample_rate

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "baseline", "extractor": self.extractor.describe()}

    def forward(
        self, waves: Tensor, lengths: Tensor, layers: Sequence[int] | None = None
    ) -> UpstreamOutput:
        feats, frames = self.extractor(waves, lengths, [])
        return UpstreamOutput(_zero_padding([feats.float()], frames), frames.long())


class SpeechSSLUpstream(Upstream):
    """A speechssl model (``PretrainModel.extract``)."""

    def __init__(
        self, model: PretrainModel, source: str, device: torch.device | str = "cpu"
    ) -> None:
        from speechssl.models.registry import get_spec

        if model.model_name and get_spec(model.model_name).modality != "audio":
            raise ConfigError(
                f"{source}: {model.model_name} is an image model, not a speech upstream"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.source = source
        self.name = Path(source).name if source else model.model_name
        self.kind = "speechssl"
        self.num_layers = int(model.config.encoder.num_layers) + 1
        self.dim = int(model.config.encoder.dim)
        self.frame_rate = float(model.frame_rate)
        self.sample_rate = int(model.sample_rate)
        root = Path(source)
        weights = next(
            (root / n for n in (WEIGHTS_NAME, "model.safetensors") if (root / n).is_file()), None
        )
        self._sha = sha256_of(weights) if weights is not None else _state_digest(model)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "model": self.model.model_name,
            "weights_sha256": self._sha,
        }

    def forward(
        self, waves: Tensor, lengths: Tensor, layers: Sequence[int] | None = None
    ) -> UpstreamOutput:
        upto = max(layers) if layers else None
        out = self.model.extract(waves, lengths, num_layers=upto)
        hidden = out.hidden_states
        if out.padding_mask is None:
            frames = torch.full((hidden[0].shape[0],), hidden[0].shape[1], dtype=torch.long)
        else:
            frames = (~out.padding_mask).sum(dim=1).long()
        picked = [hidden[i] for i in layers] if layers else list(hidden)
        return UpstreamOutput(_zero_padding([h.float() for h in picked], frames), frames.cpu())


def _state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TransformersUpstream(Upstream):
    """A local ``transformers`` speech model dir loaded with ``AutoModel``.

    Models whose first conv layer normalises over time (``feat_extract_norm="group"``, as
    HuBERT/wav2vec 2.0 Base) cannot mask padding in ``transformers``, so each utterance
    of a batch is run alone; the others run batched with an attention mask.
    """

    def __init__(self, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> None:
        from transformers import AutoConfig, AutoModel

        root = Path(path)
        try:
            config = AutoConfig.from_pretrained(root, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{root}: not a transformers model dir ({exc})") from None
        if config.model_type not in HF_MODEL_TYPES:
            raise ConfigError(
                f"{root}: transformers model type {config.model_type!r} is not a supported "
                f"upstream (supported: {', '.join(HF_MODEL_TYPES)})"
            )
        config.output_hidden_states = True
        config.layerdrop = 0.0
        try:
            model = AutoModel.from_pretrained(root, config=config, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{root}: cannot load the transformers model ({exc})") from None
        base = getattr(model, model.base_model_prefix, model)  # *ForPreTraining -> base model
        self.device = torch.device(device)
        self.model = base.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.config = config
        self.source = str(root.resolve())
        self.name = root.name
        self.kind = "transformers"
        self.num_layers = int(config.num_hidden_layers) + 1
        self.dim = int(config.hidden_size)
        self.features: Any = None  # the fbank feature extractor of Wav2Vec2BertModel
        if config.model_type == "wav2vec2-bert":
            self.features = self._fbank_extractor(root, config)
            self.sample_rate = int(self.features.sampling_rate)
            self.frame_rate = 100.0 / int(self.features.stride)
        else:
            stride = 1
            for s in config.conv_stride:
                stride *= int(s)
            self.sample_rate = 16000
            self.frame_rate = self.sample_rate / stride
        self.per_utterance = getattr(config, "feat_extract_norm", "layer") == "group"
        files = sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin"))
        h = hashlib.sha256()
        for f in files:
            h.update(sha256_of(f).encode())
        self._sha = h.hexdigest()

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "model_type": self.config.model_type,
            "weights_sha256": self._sha,
        }

    @staticmethod
    def _fbank_extractor(root: Path, config: Any) -> Any:
        from transformers import AutoFeatureExtractor

        if getattr(config, "add_adapter", False):
            raise ConfigError(
                f"{root}: Wav2Vec2BertModel with add_adapter=True (a fine-tuning adapter that "
                "subsamples frames) is not a supported upstream"
            )
        if not (root / "preprocessor_config.json").is_file():
            raise CheckpointError(
                f"{root}: a Wav2Vec2BertModel dir needs its preprocessor_config.json (the "
                "fbank feature extractor)"
            )
        return AutoFeatureExtractor.from_pretrained(root, local_files_only=True)

    def frame_counts(self, lengths: Tensor) -> Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def _forward_fbank(self, waves: Tensor, lengths: Tensor) -> tuple[list[Tensor], Tensor]:
        arrays = [waves[i, : int(n)].float().cpu().numpy() for i, n in enumerate(lengths)]
        inputs = self.features(
            arrays, sampling_rate=self.sample_rate, return_tensors="pt", padding=True,
            return_attention_mask=True,
        )  # fmt: skip
        mask = inputs["attention_mask"]
        out = self.model(
            input_features=inputs["input_features"].to(self.device),
            attention_mask=mask.to(self.device),
        )
        return list(out.hidden_states), mask.sum(dim=1).long()

    def forward(
        self, waves: Tensor, lengths: Tensor, layers: Sequence[int] | None = None
    ) -> UpstreamOutput:
        if self.features is not None:
            hidden, frames = self._forward_fbank(waves, lengths)
            picked = [hidden[i] for i in layers] if layers else hidden
            return UpstreamOutput(_zero_padding([h.float() for h in picked], frames), frames)
        frames = self.frame_counts(lengths).cpu()
        if self.per_utterance:
            outs = [
                self.model(waves[i : i + 1, : int(lengths[i])]).hidden_states
                for i in range(waves.shape[0])
            ]
            width = int(frames.max())
            hidden = []
            for k in range(len(outs[0])):
                layer = waves.new_zeros(waves.shape[0], width, self.dim)
                for i, o in enumerate(outs):
                    layer[i, : o[k].shape[1]] = o[k][0]
                hidden.append(layer)
        else:
            steps = torch.arange(waves.shape[1], device=waves.device)
            mask = (steps[None, :] < lengths[:, None]).long()
            hidden = list(self.model(waves, attention_mask=mask).hidden_states)
        picked = [hidden[i] for i in layers] if layers else hidden
        return UpstreamOutput(_zero_padding([h.float() for h in picked], frames), frames)


def load_any_model(path: str | os.PathLike[str]) -> PretrainModel:
    """A speechssl model dir (``model.json``) or a speechssl ``transformers`` export
    (``config.json``), as a speechssl model."""
    root = Path(path)
    if (root / CONFIG_NAME).is_file():
        return load_model_dir(root)
    if (root / "config.json").is_file():
        from speechssl.interop.hf import import_from_transformers

        return import_from_transformers(root)
    raise CheckpointError(f"{root}: neither a model dir ({CONFIG_NAME}) nor a transformers export")


def _speechssl_model_dir(root: Path) -> Path | None:
    """``root`` itself if it is a speechssl model dir, its ``final/`` if it is a training exp
    dir, else None."""
    if (root / CONFIG_NAME).is_file():
        return root
    if (root / "final" / CONFIG_NAME).is_file():
        return root / "final"
    return None


def random_init_model(path: str | os.PathLike[str]) -> PretrainModel:
    """A model built from the config of the speechssl model dir (or training exp dir)
    ``path``, with the fresh weights its factory gives under seed :data:`RANDOM_INIT_SEED`
    (the trained weights are not read)."""
    root = _speechssl_model_dir(Path(path))
    if root is None:
        raise ConfigError(
            f"upstream {RANDOM_INIT}{path}: not a speechssl model dir ({CONFIG_NAME}) or a "
            "training exp dir (final/)"
        )
    desc = read_model_description(root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build_from_description(desc)


def load_upstream(spec: str, device: torch.device | str = "cpu") -> Upstream:
    """The upstream named by ``spec``: ``fbank``, ``mfcc``, a speechssl model dir or
    training exp dir, ``random-init:`` one of those (same config, random weights), or a
    local ``transformers`` model dir."""
    if spec in BASELINES:
        return BaselineUpstream(spec, device)
    if spec.startswith(RANDOM_INIT):
        path = spec[len(RANDOM_INIT) :]
        model = random_init_model(path)
        up = SpeechSSLUpstream(model, spec, device)
        up.name = f"random-init {model.model_name}"
        up._sha = _state_digest(model)  # the weights are these, not any file's
        return up
    root = Path(spec)
    if not root.exists():
        raise ConfigError(
            f"upstream {spec!r}: no such directory (an upstream is {' or '.join(BASELINES)}, "
            "a speechssl model dir, a training exp dir or a transformers model dir)"
        )
    if (root / CONFIG_NAME).is_file():
        return SpeechSSLUpstream(load_model_dir(root), str(root.resolve()), device)
    if (root / "final" / CONFIG_NAME).is_file():
        final = root / "final"
        return SpeechSSLUpstream(load_model_dir(final), str(final.resolve()), device)
    if (root / "config.json").is_file():
        return TransformersUpstream(root, device)
    raise CheckpointError(
        f"upstream {spec}: not a model dir ({CONFIG_NAME}), a training exp dir (final/) "
        "or a transformers model dir (config.json)"
    )


# ----------------------------------------------------------------- features dump --kind model


class ModelLayerExtractor:
    """Hidden layer ``layer`` of a speechssl model as a feature extractor (``features dump
    --kind model``): eval mode, stops after the layer, per-utterance frame counts."""

    def __init__(self, model: PretrainModel, layer: int, source: str, device: torch.device) -> None:
        self.upstream = SpeechSSLUpstream(model, source, device)
        last = self.upstream.num_layers - 1
        if not 0 <= layer <= last:
            raise ConfigError(f"--layer must be in [0, {last}] for {model.model_name}, got {layer}")
        self.layer = layer
        self.source = source

    @property
    def dim(self) -> int:
        return self.upstream.dim

    @property
    def frame_rate(self) -> float:
        return self.upstream.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.upstream.sample_rate

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "model",
            "checkpoint": self.source,
            "weights_sha256": self.upstream.identity()["weights_sha256"],
            "model": self.upstream.model.model_name,
            "layer": self.layer,
        }

    def __call__(
        self, waves: Tensor, lengths: Tensor, utt_ids: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        out = self.upstream(waves, lengths, [self.layer])
        return out.hidden_states[0].cpu(), out.frames.cpu()


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
