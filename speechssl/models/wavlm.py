"""WavLM: HuBERT's masked prediction with gated relative position bias and denoising by
utterance mixing (Chen et al., 2022).

The model is HuBERT (:mod:`speechssl.models.hubert`: waveform conv front end, span masking,
cosine-similarity head on k-means units, same label alignment and checks) with two changes:

* the encoder is :mod:`speechssl.core.gated_relative`'s transformer: one relative position
  bias table (320 T5-style buckets up to ``max_distance`` 800 frames) shared by all layers,
  gated per layer and head from the attention input, as in ``transformers.WavLMModel``
  (:mod:`speechssl.interop.hf.wavlm` maps the weights one to one);
* **utterance mixing** while training (:class:`UtteranceMixer`): each utterance of the batch
  is, with probability ``mix_prob``, overlapped with a random segment of another utterance
  of the same batch or, with probability ``noise_ratio``, of a noise clip from
  ``noise_dir`` (a Kaldi data dir, optional). The segment covers at most
  ``max_mix_fraction`` of the primary utterance, starts at a random place and is scaled so
  that the primary's power over the scaled segment's is a random ratio in ``speech_db`` /
  ``noise_db`` dB. The targets stay the primary utterance's labels, so the model learns to
  predict the main speaker's units through the interference.

Defaults: ``mix_prob`` 0.2, speech ratios in [-5, 5] dB, noise ratios in [-5, 20] dB, half
of the augmentations noise when noise clips are given, a segment of at most half the
primary (the WavLM paper's overlap of less than 50 %; the dB ranges and the noise share
are NeMo's WavLM augmentation defaults). Every random draw comes from the CPU generator
passed in (else torch's global one, which pretraining re-seeds before every micro-batch
from the batch's place in the data), so a resumed run mixes exactly as an uninterrupted
one. Mixing happens only in training mode; ``extract`` and evaluation see clean audio.

Presets ``wavlm_tiny``, ``wavlm_base``, ``wavlm_base_plus``, ``wavlm_large``: Base and
Base+ share the HuBERT Base architecture (Base+ differs in data, 94k h, not in shape), Large
is HuBERT Large's; all with the gated bias (``transformers`` ``WavLMConfig`` defaults).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechssl.core.gated_relative import (
    GatedRelativeEncoderConfig,
    build_gated_relative_encoder,
)
from speechssl.core.masking import SpanMasker
from speechssl.core.objectives.masked_prediction import (
    MaskedPredictionHead,
    MaskedPredictionObjective,
)
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.frontends.speech import WaveformFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.common import coerce_subconfigs
from speechssl.models.hubert import (
    HubertConfig,
    HubertModel,
    hubert_base_config,
    hubert_large_config,
    hubert_tiny_config,
)
from speechssl.models.registry import register_model

# --------------------------------------------------------------------------- utterance mixing


@dataclass(kw_only=True)
class UtteranceMixConfig:
    """WavLM's utterance mixing (denoising) of the training input."""

    mix_prob: float = 0.2
    """Probability that an utterance is augmented (0 disables mixing)."""
    noise_ratio: float = 0.5
    """Share of the augmented utterances mixed with a noise clip instead of another
    utterance (used only when ``noise_dir`` is set)."""
    speech_db: tuple[float, float] = (-5.0, 5.0)
    """Range of the primary-over-interfering-speech power ratio in dB (drawn uniformly)."""
    noise_db: tuple[float, float] = (-5.0, 20.0)
    """Range of the primary-over-noise power ratio in dB (drawn uniformly)."""
    max_mix_fraction: float = 0.5
    """The mixed segment covers up to this share of the primary utterance (its length is
    drawn uniformly from (0, share])."""
    noise_dir: str = ""
    """Kaldi data dir of noise clips (loaded at the first training step); empty: mix only
    utterances of the batch."""

    def __post_init__(self) -> None:
        self.speech_db = _db_range("speech_db", self.speech_db)
        self.noise_db = _db_range("noise_db", self.noise_db)
        for name in ("mix_prob", "noise_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"wavlm mixing: {name} must be in [0, 1], got {value}")
        if not 0.0 < self.max_mix_fraction <= 1.0:
            raise ConfigError(
                f"wavlm mixing: max_mix_fraction must be in (0, 1], got {self.max_mix_fraction}"
            )


def _db_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ConfigError(f"wavlm mixing: {name} must be [low, high] dB, got {list(value)}")
    return pair[0], pair[1]


@dataclass(frozen=True)
class MixEvent:
    """One mixing: segment ``[source_start, source_start + length)`` of ``source`` (an
    utterance index of the batch, or a noise clip index) added to utterance ``index`` at
    ``start``, scaled to ``ratio_db`` (primary power over scaled segment power)."""

    index: int
    kind: str
    source: int
    start: int
    source_start: int
    length: int
    ratio_db: float


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high)`` (``high >= 1``)."""
    return int(torch.randint(high, (), generator=generator))


def mix_utterances(
    waveforms: Tensor,
    lengths: Tensor,
    config: UtteranceMixConfig,
    noise: Sequence[Tensor] = (),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[MixEvent]]:
    """Utterance mixing of a padded batch ``[N, T]`` (``lengths`` real samples each).

    Returns the mixed batch (a new tensor; padding stays zero) and what was mixed. The
    draws use the CPU ``generator`` (torch's global CPU generator when None): per
    utterance, whether to augment, speech or noise, which source, segment length, offsets
    and ratio. An utterance is left alone when it has no possible source (a batch of one
    without noise) or when the primary or the segment is silent.
    """
    out = waveforms.clone()
    events: list[MixEvent] = []
    n = waveforms.shape[0]
    lens = [int(v) for v in lengths.tolist()]
    for i in range(n):
        if float(torch.rand((), generator=generator)) >= config.mix_prob:
            continue
        use_noise = bool(noise) and float(torch.rand((), generator=generator)) < config.noise_ratio
        if not use_noise and n < 2:
            continue
        if use_noise:
            j = _randint(len(noise), generator)
            source, kind, db = noise[j].to(out.device, out.dtype), "noise", config.noise_db
        else:
            j = _randint(n - 1, generator)
            j = j + 1 if j >= i else j  # any utterance but the primary
            source, kind, db = waveforms[j, : lens[j]], "speech", config.speech_db
        length = math.ceil(lens[i] * _uniform(0.0, config.max_mix_fraction, generator))
        length = min(length, source.shape[0], lens[i])
        ratio = _uniform(db[0], db[1], generator)
        if length < 1:
            continue
        start = _randint(lens[i] - length + 1, generator)
        source_start = _randint(source.shape[0] - length + 1, generator)
        segment = source[source_start : source_start + length]
        primary_power = waveforms[i, : lens[i]].double().pow(2).mean()
        segment_power = segment.double().pow(2).mean()
        if float(primary_power) == 0.0 or float(segment_power) == 0.0:
            continue
        scale = torch.sqrt(primary_power / (segment_power * 10.0 ** (ratio / 10.0)))
        out[i, start : start + length] += (scale * segment.double()).to(out.dtype)
        events.append(MixEvent(i, kind, j, start, source_start, length, ratio))
    return out, events


class UtteranceMixer(nn.Module):
    """:func:`mix_utterances` as a part of the model (no weights; noise clips loaded from
    ``config.noise_dir`` at first use, at ``sample_rate``)."""

    def __init__(self, config: UtteranceMixConfig, sample_rate: int) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = sample_rate
        self._noise: list[Tensor] | None = None

    def noise_clips(self) -> list[Tensor]:
        if self._noise is None:
            self._noise = (
                load_noise_clips(self.config.noise_dir, self.sample_rate)
                if self.config.noise_dir
                else []
            )
        return self._noise

    def forward(
        self, waveforms: Tensor, lengths: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, list[MixEvent]]:
        if self.config.mix_prob == 0.0:
            return waveforms, []
        return mix_utterances(waveforms, lengths, self.config, self.noise_clips(), generator)


def load_noise_clips(noise_dir: str, sample_rate: int) -> list[Tensor]:
    """Every utterance of the Kaldi data dir ``noise_dir`` as a mono float32 waveform at
    ``sample_rate`` (resampled if needed); a missing dir, an unreadable or silent clip is
    an error naming it."""
    from speechssl.data.audio import LoadOptions
    from speechssl.data.kaldi_dir import KaldiDataDir

    data = KaldiDataDir(noise_dir)
    opts = LoadOptions(sample_rate=sample_rate)
    clips = [data.load(utt, opts)[0].float() for utt in data.utt_ids()]
    if not clips:
        raise ConfigError(f"wavlm mixing: noise_dir {noise_dir} has no utterances")
    return clips


# --------------------------------------------------------------------------- model


@dataclass(kw_only=True)
class WavLMConfig(HubertConfig):
    """WavLM pretraining model: HuBERT's fields, the gated-bias encoder, utterance mixing."""

    encoder: GatedRelativeEncoderConfig = field(default_factory=GatedRelativeEncoderConfig)
    """Transformer encoder with gated relative position bias."""
    mixing: UtteranceMixConfig = field(default_factory=UtteranceMixConfig)
    """Utterance mixing of the training input."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self, {"encoder": GatedRelativeEncoderConfig, "mixing": UtteranceMixConfig}
        )
        super().__post_init__()


class WavLMModel(HubertModel):
    """WavLM for pretraining: ``forward(AudioBatch)`` -> masked-prediction loss record on
    the (mixed, when training) input, targets of the primary utterances."""

    config: WavLMConfig

    def __init__(
        self,
        config: WavLMConfig,
        frontend: WaveformFrontend,
        masker: SpanMasker,
        encoder: nn.Module,
        head: MaskedPredictionHead,
        objective: MaskedPredictionObjective,
        mixer: UtteranceMixer,
    ) -> None:
        super().__init__(config, frontend, masker, encoder, head, objective)
        self.mixer = mixer

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        events: list[MixEvent] = []
        if self.training:
            mixed, events = self.mixer(batch.waveforms, batch.lengths, generator)
            batch = dataclasses.replace(batch, waveforms=mixed)
        out = super().forward(batch, mask=mask, generator=generator)
        out.metrics["mixed_fraction"] = torch.tensor(
            len(events) / max(batch.batch_size, 1), device=batch.waveforms.device
        )
        return out


def build_wavlm(config: WavLMConfig) -> WavLMModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend = WaveformFrontend(config.extractor, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_gated_relative_encoder(config.encoder)
    head = MaskedPredictionHead(
        config.encoder.dim,
        config.num_classes,
        config.final_dim,
        kind=config.head_kind,
        temperature=config.logit_temp,
    )
    objective = MaskedPredictionObjective(config.masked_weight, config.unmasked_weight)
    mixer = UtteranceMixer(config.mixing, frontend.sample_rate)
    return WavLMModel(config, frontend, masker, encoder, head, objective, mixer)


def _gated(encoder: object, **extra: int) -> GatedRelativeEncoderConfig:
    """A gated-bias encoder config with the fields of a plain one (320 buckets, 800)."""
    fields = dataclasses.asdict(encoder)  # type: ignore[call-overload]
    return GatedRelativeEncoderConfig(**{**fields, **extra})


def _from_hubert(hubert: HubertConfig) -> WavLMConfig:
    fields = {f.name: getattr(hubert, f.name) for f in dataclasses.fields(hubert)}
    fields["encoder"] = _gated(hubert.encoder)
    return WavLMConfig(**fields)


def wavlm_base_config() -> WavLMConfig:
    """WavLM Base (``transformers`` ``WavLMConfig`` defaults, microsoft/wavlm-base): HuBERT
    Base's architecture (GroupNorm conv stack, 12 post-LN layers of 768, conv pos 128/16)
    plus the gated relative bias (320 buckets, max distance 800); mask 0.8 x 10; utterance
    mixing with probability 0.2."""
    return _from_hubert(hubert_base_config())


def wavlm_base_plus_config() -> WavLMConfig:
    """WavLM Base+: the Base architecture (trained on 94k h instead of 960 h)."""
    return wavlm_base_config()


def wavlm_large_config() -> WavLMConfig:
    """WavLM Large: HuBERT Large's architecture (LayerNorm conv stack, normalised
    waveforms, 24 pre-LN layers of 1024) plus the gated relative bias."""
    return _from_hubert(hubert_large_config())


def wavlm_tiny_config() -> WavLMConfig:
    """Tiny WavLM for tests and the demo recipe: HuBERT tiny's shape (64-channel conv stack,
    2 layers of 128, 4 heads) plus the gated bias (320 buckets, max distance 800)."""
    return _from_hubert(hubert_tiny_config())


for _size, _make in (
    ("tiny", wavlm_tiny_config),
    ("base", wavlm_base_config),
    ("base_plus", wavlm_base_plus_config),
    ("large", wavlm_large_config),
):
    register_model(
        f"wavlm_{_size}", family="wavlm", make_config=_make, build=build_wavlm, size=_size
    )

__all__ = [
    "MixEvent",
    "UtteranceMixConfig",
    "UtteranceMixer",
    "WavLMConfig",
    "WavLMModel",
    "build_wavlm",
    "load_noise_clips",
    "mix_utterances",
    "wavlm_base_config",
    "wavlm_base_plus_config",
    "wavlm_large_config",
    "wavlm_tiny_config",
]
