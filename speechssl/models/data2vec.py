"""data2vec (audio): regress the student's masked frames onto an EMA teacher's averaged
top-K layer outputs of the unmasked input (Baevski et al., 2022).

Parts (all from the core, shared with HuBERT / wav2vec 2.0 and data2vec vision):

* waveform conv front end with a LayerNorm in every conv layer, span masking, and a post-LN
  transformer encoder whose position embedding is data2vec's stack of 5 convolutions
  (:class:`~speechssl.core.positions.StackedConvPositionalEmbedding`);
* :class:`~speechssl.core.teacher.EMATeacher` - an EMA copy of the *encoder* (fairseq's
  ``ema_transformer_only``) fed the student's unmasked front end output; with
  ``ema_layers_only`` the teacher's position embedding and encoder LayerNorm are copied
  from the student instead of averaged; the decay is annealed from ``ema_decay`` to
  ``ema_end_decay`` over ``ema_anneal_steps`` updates in :meth:`after_optimizer_step`;
* targets: :func:`~speechssl.core.teacher.average_top_k_targets` over the output of each
  teacher layer's feed-forward block (before its residual), instance-normalised over time;
* :class:`~speechssl.core.objectives.RegressionObjective` on the masked frames (squared
  error with ``loss_beta = 0``, smooth L1 otherwise, per-frame sum scaled by 1/sqrt(D)).

Loss term ``regression``; metrics ``target_std``, ``pred_std`` (mean per-dimension standard
deviation over the masked frames; both falling towards 0 means collapse), ``ema_decay``,
``mask_fraction``. The encoder exports to ``transformers.Data2VecAudioModel``.

One difference from fairseq: the teacher sees the front end output *after* input dropout
(fairseq takes it before); the published base sets ``dropout_input = 0``, where both agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.objectives.regression import RegressionObjective, feature_std
from speechssl.core.positions import StackedConvPositionalEmbedding
from speechssl.core.teacher import (
    LAYER_SOURCES,
    TARGET_NORMS,
    EMATeacher,
    average_top_k_targets,
    collect_layer_outputs,
)
from speechssl.core.transformer import (
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
)
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.frontends.speech import ConvExtractorConfig, WaveformFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.common import (
    base_transformer_encoder,
    coerce_subconfigs,
    mask_fraction,
    real_frame_count,
    span_mask,
    tiny_extractor,
    tiny_transformer_encoder,
)
from speechssl.models.registry import register_model
from speechssl.models.waveform import WaveformEncoderModel


@dataclass(kw_only=True)
class Data2VecTargetConfig:
    """How the EMA teacher and its targets are made (shared by audio and vision)."""

    top_k: int = 8
    """Average the outputs of the top this many teacher layers (all if fewer)."""
    layer_source: str = "ffn"
    """``ffn``: each layer's feed-forward output before its residual (data2vec); ``layer``:
    the layer outputs."""
    layer_norm: str = "instance"
    """Normalisation of each layer output: ``instance`` (over time), ``layer``, ``none``."""
    final_norm: str = "none"
    """Normalisation of the average: ``instance``, ``layer`` or ``none``."""
    loss_beta: float = 0.0
    """Smooth-L1 beta of the regression; 0 = squared error."""
    loss_scale: float | None = None
    """Per-position loss scale; None = 1/sqrt(D)."""
    ema_decay: float = 0.999
    """Teacher decay at the first update."""
    ema_end_decay: float = 0.9999
    """Teacher decay after the anneal."""
    ema_anneal_steps: int = 30000
    """Updates over which the decay goes linearly from ``ema_decay`` to ``ema_end_decay``."""
    ema_layers_only: bool = True
    """Average only the encoder layers; copy the position embedding and encoder LayerNorm
    from the student (fairseq's ``ema_layers_only``)."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"data2vec: top_k must be >= 1, got {self.top_k}")
        if self.layer_source not in LAYER_SOURCES:
            raise ConfigError(f"data2vec: layer_source must be one of {LAYER_SOURCES}")
        for name in ("layer_norm", "final_norm"):
            if getattr(self, name) not in TARGET_NORMS:
                raise ConfigError(f"data2vec: {name} must be one of {TARGET_NORMS}")
        if self.loss_beta < 0:
            raise ConfigError(f"data2vec: loss_beta must be >= 0, got {self.loss_beta}")


#: encoder parameters copied (not averaged) into the teacher with ``ema_layers_only``
NON_LAYER_PREFIXES = ("pos_conv.", "layer_norm.")


def make_teacher(encoder: nn.Module, targets: Data2VecTargetConfig) -> EMATeacher:
    """The EMA teacher of ``encoder`` with ``targets``' schedule."""
    return EMATeacher(
        encoder,
        start=targets.ema_decay,
        end=targets.ema_end_decay,
        anneal_steps=targets.ema_anneal_steps,
        copy_prefixes=NON_LAYER_PREFIXES if targets.ema_layers_only else (),
    )


def teacher_targets(
    teacher: EMATeacher, frames: Tensor, padding_mask: Tensor | None, targets: Data2VecTargetConfig
) -> Tensor:
    """``[N, S, D]`` float32 regression targets from the teacher run on unmasked ``frames``."""
    encoder = teacher.model
    with torch.no_grad():
        outs = collect_layer_outputs(
            encoder, frames.detach(), padding_mask, source=targets.layer_source
        )
        return average_top_k_targets(
            outs,
            min(targets.top_k, len(outs)),
            padding_mask,
            layer_norm=targets.layer_norm,
            final_norm=targets.final_norm,
        )


def regression_metrics(
    target: Tensor, pred: Tensor, mask: Tensor, teacher: EMATeacher
) -> dict[str, Tensor]:
    """Collapse watch of the regression at the masked positions (``target_std``,
    ``pred_std``: both falling towards 0 means collapse) and the teacher's ``ema_decay``."""
    return {
        "target_std": feature_std(target[mask]),
        "pred_std": feature_std(pred[mask]),
        "ema_decay": torch.tensor(teacher.decay),
    }


class EMARegressionMixin(nn.Module):
    """The student projection, EMA teacher and regression objective of data2vec (audio and
    vision), and the teacher update after each optimizer step. Put before the model's base
    class, whose ``encoder`` the teacher follows."""

    final_proj: nn.Linear
    teacher: EMATeacher
    objective: RegressionObjective

    def init_regression_parts(
        self, dim: int, teacher: EMATeacher, objective: RegressionObjective
    ) -> None:
        self.final_proj = nn.Linear(dim, dim)
        self.teacher = teacher
        self.objective = objective

    def after_optimizer_step(self, num_updates: int) -> None:
        self.teacher.update(self.get_submodule("encoder"), num_updates)

    def regression_loss(
        self,
        teacher_input: Tensor,
        padding_mask: Tensor | None,
        student_output: Tensor,
        mask: Tensor,
        targets: Data2VecTargetConfig,
    ) -> tuple[LossRecord, dict[str, Tensor]]:
        """The regression record of the projected ``student_output`` at the ``mask``ed
        positions onto the teacher's targets for the unmasked ``teacher_input``, and
        :func:`regression_metrics`."""
        target = teacher_targets(self.teacher, teacher_input, padding_mask, targets)
        pred = self.final_proj(student_output)
        record = self.objective(pred, target, mask)
        return record, regression_metrics(target, pred, mask, self.teacher)


@dataclass(kw_only=True)
class Data2VecAudioConfig:
    """data2vec audio pretraining model."""

    extractor: ConvExtractorConfig = field(
        default_factory=lambda: ConvExtractorConfig(mode="layer_norm", feature_grad_mult=1.0)
    )
    """Waveform conv stack (LayerNorm in every layer)."""
    encoder: TransformerEncoderConfig = field(
        default_factory=lambda: TransformerEncoderConfig(pos_conv_kernel=19, pos_conv_groups=16)
    )
    """Transformer encoder; ``pos_conv_kernel``/``pos_conv_groups`` describe each layer of the
    stacked position convolution."""
    pos_conv_depth: int = 5
    """Layers of the position convolution (data2vec: 5 of kernel 19)."""
    padding_aware_positions: bool = True
    """Zero padded frames between the position conv layers, so padding never changes a real
    frame (off reproduces fairseq/transformers exactly on padded batches)."""
    mask: SpanMaskConfig = field(default_factory=lambda: SpanMaskConfig(mask_prob=0.65))
    """Span masking of the encoder input."""
    dropout_input: float = 0.0
    """Dropout on the projected front end output."""
    targets: Data2VecTargetConfig = field(default_factory=Data2VecTargetConfig)
    """Teacher, targets and regression loss."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "extractor": ConvExtractorConfig,
                "encoder": TransformerEncoderConfig,
                "mask": SpanMaskConfig,
                "targets": Data2VecTargetConfig,
            },
        )
        if self.pos_conv_depth < 1 or self.encoder.pos_conv_kernel < 1:
            raise ConfigError("data2vec: pos_conv_depth and encoder.pos_conv_kernel must be >= 1")


class Data2VecAudioModel(EMARegressionMixin, WaveformEncoderModel):
    """data2vec audio for pretraining: ``forward(AudioBatch)`` -> regression loss record."""

    def __init__(
        self,
        config: Data2VecAudioConfig,
        frontend: WaveformFrontend,
        masker: SpanMasker,
        encoder: TransformerEncoder,
        teacher: EMATeacher,
        objective: RegressionObjective,
    ) -> None:
        super().__init__(frontend, masker, encoder)
        self.config = config
        self.init_regression_parts(config.encoder.dim, teacher, objective)

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        res = self.encode(batch.waveforms, batch.lengths, mask=mask, generator=generator)
        assert res.mask is not None
        record, metrics = self.regression_loss(
            res.front.frames.seqs,
            res.padding_mask,
            res.encoder.last_hidden_state,
            res.mask,
            self.config.targets,
        )
        real = real_frame_count(res.mask, res.padding_mask)
        metrics["mask_fraction"] = mask_fraction(res.mask, real)
        return PretrainOutput(loss=record, metrics=metrics, num_frames=int(real))


def build_data2vec_encoder(
    encoder: TransformerEncoderConfig, depth: int, padding_aware: bool
) -> TransformerEncoder:
    """The standard transformer encoder with its position convolution swapped for data2vec's
    stacked one (the factory habit: one part replaced, the rest untouched)."""
    built = build_transformer_encoder(dataclasses.replace(encoder, pos_conv_kernel=0))
    built.pos_conv = StackedConvPositionalEmbedding(
        encoder.dim,
        depth,
        encoder.pos_conv_kernel,
        encoder.pos_conv_groups,
        padding_aware=padding_aware,
    )
    return built


def build_data2vec_audio(config: Data2VecAudioConfig) -> Data2VecAudioModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend = WaveformFrontend(config.extractor, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_data2vec_encoder(
        config.encoder, config.pos_conv_depth, config.padding_aware_positions
    )
    teacher = make_teacher(encoder, config.targets)
    objective = RegressionObjective(config.targets.loss_beta, config.targets.loss_scale)
    return Data2VecAudioModel(config, frontend, masker, encoder, teacher, objective)


def data2vec_audio_base_config() -> Data2VecAudioConfig:
    """data2vec Base, audio (fairseq ``examples/data2vec/config/audio/pretraining/
    base_librispeech.yaml`` on the wav2vec 2.0 base defaults): LayerNorm conv extractor
    without conv bias, feature grad mult 1.0, 12 post-LN layers of 768 (12 heads, FFN 3072),
    position conv 5 x (kernel 19, 16 groups), dropout 0.1, attention dropout 0.1, layer drop
    0.05, input dropout 0, mask 0.65 x 10; targets: top 8 FFN outputs instance-normalised,
    squared error (beta 0) scaled by 1/sqrt(768); EMA 0.999 -> 0.9999 over 30k updates,
    encoder layers only."""
    return Data2VecAudioConfig(
        extractor=ConvExtractorConfig(mode="layer_norm", conv_bias=False, feature_grad_mult=1.0),
        encoder=base_transformer_encoder(pos_conv_kernel=19, pos_conv_groups=16),
        pos_conv_depth=5,
        mask=span_mask(0.65),
        dropout_input=0.0,
        targets=Data2VecTargetConfig(
            top_k=8,
            layer_source="ffn",
            layer_norm="instance",
            final_norm="none",
            loss_beta=0.0,
            loss_scale=None,
            ema_decay=0.999,
            ema_end_decay=0.9999,
            ema_anneal_steps=30000,
            ema_layers_only=True,
        ),
    )


def data2vec_audio_tiny_config() -> Data2VecAudioConfig:
    """Tiny data2vec audio for tests and demos: 64-channel conv stack (20 ms frames), 4
    layers of 128 (4 heads, FFN 256), the base's position conv (5 x kernel 19, 16 groups:
    a narrower one cannot tell apart the frames inside a 10-frame masked span, and the
    student then cannot beat a constant prediction), top 3 layers as targets, light
    dropout, no layer drop, EMA 0.99 -> 0.999 over 1000 updates."""
    base = data2vec_audio_base_config()
    return dataclasses.replace(
        base,
        extractor=tiny_extractor(base.extractor),
        encoder=tiny_transformer_encoder(base.encoder, num_layers=4),
        targets=dataclasses.replace(
            base.targets, top_k=3, ema_decay=0.99, ema_end_decay=0.999, ema_anneal_steps=1000
        ),
    )


for _size, _make in (("tiny", data2vec_audio_tiny_config), ("base", data2vec_audio_base_config)):
    register_model(
        f"data2vec_audio_{_size}",
        family="data2vec_audio",
        make_config=_make,
        build=build_data2vec_audio,
        size=_size,
    )

__all__ = [
    "Data2VecAudioConfig",
    "Data2VecAudioModel",
    "Data2VecTargetConfig",
    "EMARegressionMixin",
    "build_data2vec_audio",
    "build_data2vec_encoder",
    "data2vec_audio_base_config",
    "data2vec_audio_tiny_config",
    "make_teacher",
    "regression_metrics",
    "teacher_targets",
]
