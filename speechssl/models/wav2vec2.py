"""wav2vec 2.0: contrastive prediction of quantized latents (Baevski et al., 2020).

Presets ``wav2vec2_tiny``, ``wav2vec2_base``, ``wav2vec2_large`` derive from
:func:`wav2vec2_base_config`; base and large match fairseq's
``wav2vec2_base_librispeech.yaml`` and ``wav2vec2_large_librivox.yaml`` (the LV-60k large
model: LayerNorm extractor with conv bias, pre-LN encoder).

One step: conv features (LayerNorm'd, before projection) are the quantizer input and,
after ``dropout_features``, the targets; the projected features are masked and encoded;
for each masked frame the projected context vector must pick its quantized target among
``num_negatives`` distractors drawn from other masked frames of the same utterance.
Loss = InfoNCE + ``diversity_weight`` x codebook diversity + ``feature_penalty_weight``
x feature penalty. The Gumbel temperature anneals with the trainer's update count
(:meth:`Wav2Vec2Model.after_optimizer_step`) and is saved in the state dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.objectives.contrastive import ContrastiveObjective, contrastive_accuracy
from speechssl.core.quantizers import GumbelVectorQuantizer, diversity_loss
from speechssl.core.transformer import TransformerEncoderConfig, build_transformer_encoder
from speechssl.data.batch import AudioBatch
from speechssl.frontends.speech import ConvExtractorConfig, WaveformFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.common import (
    GumbelContrastMixin,
    base_group_norm_extractor,
    base_transformer_encoder,
    build_gumbel_quantizer,
    check_gumbel_temp,
    check_num_negatives,
    coerce_subconfigs,
    large_transformer_encoder,
    mask_fraction,
    quantizer_metrics,
    real_frame_count,
    span_mask,
    tiny_extractor,
    tiny_transformer_encoder,
)
from speechssl.models.registry import register_model
from speechssl.models.waveform import WaveformEncoderModel


@dataclass(kw_only=True)
class Wav2Vec2Config:
    """wav2vec 2.0 pretraining model."""

    extractor: ConvExtractorConfig = field(default_factory=ConvExtractorConfig)
    """Waveform conv stack."""
    encoder: TransformerEncoderConfig = field(default_factory=TransformerEncoderConfig)
    """Transformer encoder."""
    mask: SpanMaskConfig = field(default_factory=lambda: SpanMaskConfig(mask_prob=0.65))
    """Span masking of the encoder input."""
    dropout_input: float = 0.1
    """Dropout on the projected front end output."""
    dropout_features: float = 0.1
    """Dropout on the quantizer input (the unmasked features)."""
    final_dim: int = 256
    """Dim in which context vectors and targets are compared."""
    logit_temp: float = 0.1
    """Temperature of the InfoNCE cosine similarities."""
    num_negatives: int = 100
    """Distractors per masked frame, from the same utterance."""
    codebook_groups: int = 2
    """Gumbel quantizer groups G."""
    codebook_vars: int = 320
    """Entries per group V."""
    vq_dim: int = 0
    """Dim of the concatenated code vectors; 0 means ``final_dim``."""
    gumbel_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    """Gumbel temperature (start, floor, decay per update)."""
    diversity_weight: float = 0.1
    """Weight of the codebook diversity loss."""
    feature_penalty_weight: float = 10.0
    """Weight of the mean squared conv feature penalty."""
    distributed_perplexity: bool = False
    """Average the code distribution of the diversity loss over all ranks."""

    def __post_init__(self) -> None:
        self.gumbel_temp = check_gumbel_temp("wav2vec2", self.gumbel_temp)
        check_num_negatives("wav2vec2", self.num_negatives)
        coerce_subconfigs(
            self,
            {
                "extractor": ConvExtractorConfig,
                "encoder": TransformerEncoderConfig,
                "mask": SpanMaskConfig,
            },
        )

    @property
    def codevector_dim(self) -> int:
        return self.vq_dim or self.final_dim


class Wav2Vec2Model(GumbelContrastMixin, WaveformEncoderModel):
    """wav2vec 2.0 for pretraining: ``forward(AudioBatch)`` -> contrastive loss record."""

    def __init__(
        self,
        config: Wav2Vec2Config,
        frontend: WaveformFrontend,
        masker: SpanMasker,
        encoder: torch.nn.Module,
        quantizer: GumbelVectorQuantizer,
        objective: ContrastiveObjective,
    ) -> None:
        super().__init__(frontend, masker, encoder)  # type: ignore[arg-type]
        self.config = config
        self.init_contrast_parts(
            quantizer,
            codevector_dim=config.codevector_dim,
            context_dim=config.encoder.dim,
            final_dim=config.final_dim,
            dropout_features=config.dropout_features,
        )
        self.objective = objective
        self.init_temperature_state()

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        res = self.encode(batch.waveforms, batch.lengths, mask=mask, generator=generator)
        assert res.mask is not None
        time_mask = res.mask
        contrast = self.quantized_contrast(
            res.front.features,
            res.encoder.last_hidden_state,
            time_mask,
            self.config.num_negatives,
            generator=generator,
        )
        q = contrast.quantized
        record, logits = self.objective(
            contrast.pred,
            contrast.targets,
            contrast.distractors,
            contrast.valid,
            diversity=diversity_loss(q.prob_perplexity, q.num_codes),
            feature_penalty=res.front.feature_penalty,
        )
        real = real_frame_count(time_mask, res.padding_mask)
        metrics = {
            "acc_masked": contrastive_accuracy(logits),
            **quantizer_metrics(q),
            "mask_fraction": mask_fraction(time_mask, real),
        }
        return PretrainOutput(loss=record, metrics=metrics, num_frames=int(real))


def build_wav2vec2(config: Wav2Vec2Config) -> Wav2Vec2Model:
    """Factory: build each part from its config and hand them to the model."""
    frontend = WaveformFrontend(config.extractor, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_transformer_encoder(config.encoder)
    quantizer = build_gumbel_quantizer(config, config.extractor.out_dim, config.codevector_dim)
    objective = ContrastiveObjective(
        config.logit_temp, config.diversity_weight, config.feature_penalty_weight
    )
    return Wav2Vec2Model(config, frontend, masker, encoder, quantizer, objective)


def wav2vec2_base_config() -> Wav2Vec2Config:
    """wav2vec 2.0 Base (fairseq ``wav2vec2_base_librispeech.yaml`` + model defaults):
    GroupNorm extractor without conv bias, 12 post-LN layers of 768 (12 heads, FFN 3072),
    conv pos 128/16, mask 0.65 x 10, final dim 256, 2 x 320 codebook, Gumbel temperature
    (2, 0.5, 0.999995), 100 distractors, logit temp 0.1, loss weights 0.1 (diversity) and
    10 (feature penalty), dropout 0.1, attention dropout 0.1, activation dropout 0, input
    and feature dropout 0.1, layer drop 0.05, feature grad mult 0.1."""
    return Wav2Vec2Config(
        extractor=base_group_norm_extractor(),
        encoder=base_transformer_encoder(pos_conv_kernel=128, pos_conv_groups=16),
        mask=span_mask(0.65),
        dropout_input=0.1,
        dropout_features=0.1,
        final_dim=256,
        logit_temp=0.1,
        num_negatives=100,
        codebook_groups=2,
        codebook_vars=320,
        gumbel_temp=(2.0, 0.5, 0.999995),
        diversity_weight=0.1,
        feature_penalty_weight=10.0,
    )


def wav2vec2_large_config() -> Wav2Vec2Config:
    """wav2vec 2.0 Large, LV-60k (fairseq ``wav2vec2_large_librivox.yaml``): LayerNorm
    extractor with conv bias, normalised waveforms, 24 pre-LN layers of 1024 (16 heads, FFN
    4096), final dim 768, Gumbel temperature (2, 0.1, 0.999995), no dropout or layer drop,
    feature grad mult 1.0, loss weights 0.1 (diversity) and 0 (feature penalty)."""
    base = wav2vec2_base_config()
    return dataclasses.replace(
        base,
        extractor=dataclasses.replace(
            base.extractor,
            mode="layer_norm",
            conv_bias=True,
            normalize_waveform=True,
            feature_grad_mult=1.0,
        ),
        encoder=large_transformer_encoder(base.encoder),
        dropout_input=0.0,
        dropout_features=0.0,
        final_dim=768,
        gumbel_temp=(2.0, 0.1, 0.999995),
        feature_penalty_weight=0.0,
    )


def wav2vec2_tiny_config() -> Wav2Vec2Config:
    """Tiny wav2vec 2.0 for tests and demos: 20 ms frames from a 64-channel conv stack, 2
    layers of 128 (4 heads, FFN 256), conv pos 16/4, final dim 64, 2 x 32 codebook, 20
    distractors, light dropout, no layer drop, full conv gradient."""
    base = wav2vec2_base_config()
    return dataclasses.replace(
        base,
        extractor=tiny_extractor(base.extractor),
        encoder=tiny_transformer_encoder(base.encoder, pos_conv_kernel=16, pos_conv_groups=4),
        dropout_input=0.05,
        dropout_features=0.05,
        final_dim=64,
        codebook_vars=32,
        num_negatives=20,
    )


for _size, _make in (
    ("tiny", wav2vec2_tiny_config),
    ("base", wav2vec2_base_config),
    ("large", wav2vec2_large_config),
):
    register_model(
        f"wav2vec2_{_size}", family="wav2vec2", make_config=_make, build=build_wav2vec2, size=_size
    )

__all__ = [
    "Wav2Vec2Config",
    "Wav2Vec2Model",
    "build_wav2vec2",
    "wav2vec2_base_config",
    "wav2vec2_large_config",
    "wav2vec2_tiny_config",
]
