"""HuBERT: masked prediction of offline unit labels (Hsu et al., 2021).

Presets ``hubert_tiny``, ``hubert_base``, ``hubert_large`` derive from :func:`hubert_base_config`;
base and large match the published fairseq configs (``hubert_base_librispeech.yaml``,
``hubert_large_librivox.yaml``).

Labels and frame rates. The encoder runs at 50 Hz (20 ms); a label stream may have another
rate (100 Hz MFCC k-means units in the first iteration, 50 Hz model units later). As in
fairseq and torchaudio, encoder frame ``i`` is trained on label
``floor(i * label_rate / frame_rate)``: every 2nd label at 100 Hz, each label at 50 Hz.
Frames whose label index falls past the stream's last label get no target, labels past
the last frame are unused, and ``-100`` (padding) is ignored everywhere. An utterance whose
label count and frame count disagree by more than ``label_tolerance_frames`` encoder frames
is a :class:`~speechssl.errors.LabelError` naming it (wrong label rate or misaligned labels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.objectives.masked_prediction import (
    IGNORE_INDEX,
    MaskedPredictionHead,
    MaskedPredictionObjective,
)
from speechssl.core.transformer import TransformerEncoderConfig, build_transformer_encoder
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError, LabelError
from speechssl.frontends.speech import ConvExtractorConfig, WaveformFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.common import (
    base_group_norm_extractor,
    base_transformer_encoder,
    check_label_streams,
    coerce_subconfigs,
    first_out_of_range,
    large_transformer_encoder,
    masked_accuracy_metrics,
    resolve_label_streams,
    span_mask,
    tiny_extractor,
    tiny_transformer_encoder,
)
from speechssl.models.registry import register_model
from speechssl.models.waveform import WaveformEncoderModel


@dataclass(kw_only=True)
class HubertConfig:
    """HuBERT pretraining model."""

    extractor: ConvExtractorConfig = field(default_factory=ConvExtractorConfig)
    """Waveform conv stack."""
    encoder: TransformerEncoderConfig = field(default_factory=TransformerEncoderConfig)
    """Transformer encoder."""
    mask: SpanMaskConfig = field(default_factory=lambda: SpanMaskConfig(mask_prob=0.8))
    """Span masking of the encoder input."""
    dropout_input: float = 0.1
    """Dropout on the projected front end output."""
    final_dim: int = 256
    """Projection dim of the cosine-similarity head."""
    logit_temp: float = 0.1
    """Temperature of the cosine-similarity logits."""
    num_classes: tuple[int, ...] = (100,)
    """Classes of each label stream (k of its k-means)."""
    label_streams: tuple[str, ...] = ()
    """Names of the label streams in ``AudioBatch.labels``, in ``num_classes`` order; empty:
    take the batch's streams in sorted name order (their count must match)."""
    head_kind: str = "cosine"
    """``cosine`` (HuBERT's label-embedding logits) or ``linear`` (plain classifier)."""
    masked_weight: float = 1.0
    """Weight of the loss on masked frames."""
    unmasked_weight: float = 0.0
    """Weight of the loss on unmasked frames (0 in the paper; still logged)."""
    feature_penalty_weight: float = 10.0
    """Weight of the mean squared conv feature penalty."""
    label_tolerance_frames: int = 4
    """Largest frame-count/label-count disagreement (in encoder frames) accepted per
    utterance before a LabelError."""

    def __post_init__(self) -> None:
        self.label_streams, self.num_classes = check_label_streams(
            "hubert", self.label_streams, self.num_classes
        )
        coerce_subconfigs(
            self,
            {
                "extractor": ConvExtractorConfig,
                "encoder": TransformerEncoderConfig,
                "mask": SpanMaskConfig,
            },
        )


def align_labels(labels: Tensor, label_rate: float, frame_rate: float, num_frames: int) -> Tensor:
    """Labels ``[N, L]`` at ``label_rate`` -> ``[N, num_frames]`` at ``frame_rate``: frame ``i``
    takes label ``floor(i * label_rate / frame_rate)``, ``-100`` where that index is past
    the end."""
    ratio = label_rate / frame_rate
    idx = torch.floor(torch.arange(num_frames, device=labels.device, dtype=torch.float64) * ratio)
    idx = idx.long()
    inside = idx < labels.shape[1]
    gathered = (
        labels[:, idx.clamp(max=max(labels.shape[1] - 1, 0))]
        if labels.shape[1]
        else (labels.new_full((labels.shape[0], num_frames), IGNORE_INDEX))
    )
    return torch.where(inside.unsqueeze(0), gathered, torch.full_like(gathered, IGNORE_INDEX))


def label_frame_mismatch(
    labels: Tensor, label_rate: float, frame_rate: float, frame_lengths: Tensor
) -> Tensor:
    """Per utterance, frames the labels cover minus real frames (positive: labels too long)."""
    has = labels != IGNORE_INDEX
    steps = torch.arange(labels.shape[1], device=labels.device)
    count = torch.where(has, steps + 1, torch.zeros_like(steps)).amax(dim=1)
    covered = torch.ceil(count.double() * frame_rate / label_rate).long()
    return covered - frame_lengths


class HubertModel(WaveformEncoderModel):
    """HuBERT for pretraining: ``forward(AudioBatch)`` -> masked-prediction loss record."""

    def __init__(
        self,
        config: HubertConfig,
        frontend: WaveformFrontend,
        masker: SpanMasker,
        encoder: torch.nn.Module,
        head: MaskedPredictionHead,
        objective: MaskedPredictionObjective,
    ) -> None:
        super().__init__(frontend, masker, encoder)  # type: ignore[arg-type]
        self.config = config
        self.head = head
        self.objective = objective

    def stream_names(self, batch: AudioBatch) -> list[str]:
        return resolve_label_streams(
            "hubert", self.config.label_streams, self.config.num_classes, batch.labels
        )

    def frame_targets(
        self, batch: AudioBatch, num_frames: int, frame_lengths: Tensor
    ) -> dict[str, Tensor]:
        """Each stream's labels aligned to encoder frames, ``-100`` at padding; checks
        label ranges and lengths (errors name the utterance)."""
        out = {}
        for name, classes in zip(self.stream_names(batch), self.config.num_classes, strict=True):
            labels = batch.labels[name].to(frame_lengths.device).long()
            rate = batch.label_rates.get(name)
            if rate is None:
                raise ConfigError(f"label stream {name!r} has no label rate in the batch")
            i = first_out_of_range(labels, classes)
            if i is not None:
                raise LabelError(
                    self._utt(batch, i), f"label stream {name!r} has a label outside [0, {classes})"
                )
            mismatch = label_frame_mismatch(labels, rate, self.frame_rate, frame_lengths)
            far = mismatch.abs() > self.config.label_tolerance_frames
            if bool(far.any()):
                i = int(far.nonzero()[0])
                raise LabelError(
                    self._utt(batch, i),
                    f"label stream {name!r} at {rate:g} Hz covers {int(mismatch[i]):+d} frames "
                    f"relative to the audio's {int(frame_lengths[i])} frames at "
                    f"{self.frame_rate:g} Hz (tolerance {self.config.label_tolerance_frames})",
                )
            aligned = align_labels(labels, rate, self.frame_rate, num_frames)
            pad = torch.arange(num_frames, device=aligned.device) >= frame_lengths.unsqueeze(1)
            out[name] = aligned.masked_fill(pad, IGNORE_INDEX)
        return out

    @staticmethod
    def _utt(batch: AudioBatch, i: int) -> str:
        return batch.utt_ids[i] if i < len(batch.utt_ids) else f"batch item {i}"

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        # labels are checked and aligned before the encoder runs: the checks read values on
        # the host, and doing that first keeps a GPU's queue full afterwards
        lengths = batch.lengths.to(batch.waveforms.device)
        frame_lengths = self.output_lengths(lengths)
        s = int(self.output_lengths(torch.tensor([batch.waveforms.shape[1]]))[0])
        targets = self.frame_targets(batch, s, frame_lengths)
        res = self.encode(batch.waveforms, batch.lengths, mask=mask, generator=generator)
        x = res.encoder.last_hidden_state
        names = list(targets)
        logits = dict(zip(names, self.head(x), strict=True))
        assert res.mask is not None
        record = self.objective(logits, targets, res.mask)
        pen_w = self.config.feature_penalty_weight
        record.terms["feature_penalty"] = res.front.feature_penalty
        record.weights["feature_penalty"] = pen_w
        if pen_w:
            record.total = record.total + pen_w * res.front.feature_penalty
        metrics = masked_accuracy_metrics(logits, targets, res.mask)
        real = frame_lengths.sum().clamp(min=1)
        metrics["mask_fraction"] = (res.mask.sum() / real).detach().float()
        return PretrainOutput(loss=record, metrics=metrics, num_frames=int(frame_lengths.sum()))

    def logits(
        self, waveforms: Tensor, lengths: Tensor | None, mask: Tensor
    ) -> tuple[list[Tensor], Tensor]:
        """Per-stream logits ``[N, S, C]`` for a given time mask (parity/inspection)."""
        res = self.encode(waveforms, lengths, mask=mask)
        return self.head(res.encoder.last_hidden_state), res.front.feature_penalty


def build_hubert(config: HubertConfig) -> HubertModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend = WaveformFrontend(config.extractor, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_transformer_encoder(config.encoder)
    head = MaskedPredictionHead(
        config.encoder.dim,
        config.num_classes,
        config.final_dim,
        kind=config.head_kind,
        temperature=config.logit_temp,
    )
    objective = MaskedPredictionObjective(config.masked_weight, config.unmasked_weight)
    return HubertModel(config, frontend, masker, encoder, head, objective)


def hubert_base_config() -> HubertConfig:
    """HuBERT Base (fairseq ``hubert_base_librispeech.yaml``): GroupNorm extractor without
    conv bias, 12 post-LN layers of 768 (12 heads, FFN 3072), conv pos 128/16, mask 0.8 x 10,
    final dim 256, logit temp 0.1, dropout 0.1, attention dropout 0.1, activation dropout 0,
    input dropout 0.1, layer drop 0.05, feature grad mult 0.1, feature penalty 10."""
    return HubertConfig(
        extractor=base_group_norm_extractor(),
        encoder=base_transformer_encoder(pos_conv_kernel=128, pos_conv_groups=16),
        mask=span_mask(0.8),
        dropout_input=0.1,
        final_dim=256,
        logit_temp=0.1,
        num_classes=(100,),
    )


def hubert_large_config() -> HubertConfig:
    """HuBERT Large (fairseq ``hubert_large_librivox.yaml``): LayerNorm extractor, normalised
    waveforms, 24 pre-LN layers of 1024 (16 heads, FFN 4096), final dim 768, no dropout or
    layer drop, feature grad mult 1.0, 500 classes (k-means on HuBERT Base layer 9)."""
    base = hubert_base_config()
    return dataclasses.replace(
        base,
        extractor=dataclasses.replace(
            base.extractor, mode="layer_norm", normalize_waveform=True, feature_grad_mult=1.0
        ),
        encoder=large_transformer_encoder(base.encoder),
        dropout_input=0.0,
        final_dim=768,
        num_classes=(500,),
    )


def hubert_tiny_config() -> HubertConfig:
    """Tiny HuBERT for tests and the demo recipe: the base layout, 20 ms frames, but a
    64-channel conv stack and 2 layers of 128 (4 heads, FFN 256), conv pos 16/4, final dim
    64, light dropout, no layer drop, full conv gradient (trains in seconds on CPU)."""
    base = hubert_base_config()
    return dataclasses.replace(
        base,
        extractor=tiny_extractor(base.extractor),
        encoder=tiny_transformer_encoder(base.encoder, pos_conv_kernel=16, pos_conv_groups=4),
        dropout_input=0.05,
        final_dim=64,
    )


for _size, _make in (
    ("tiny", hubert_tiny_config),
    ("base", hubert_base_config),
    ("large", hubert_large_config),
):
    register_model(
        f"hubert_{_size}", family="hubert", make_config=_make, build=build_hubert, size=_size
    )
