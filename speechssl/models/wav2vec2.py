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
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.objectives.contrastive import (
    ContrastiveObjective,
    contrastive_accuracy,
    sample_distractors,
)
from speechssl.core.quantizers import GumbelVectorQuantizer, diversity_loss
from speechssl.core.transformer import TransformerEncoderConfig, build_transformer_encoder
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.frontends.speech import ConvExtractorConfig, WaveformFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.hubert import TINY_CONV_LAYERS
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
        self.gumbel_temp = tuple(float(t) for t in self.gumbel_temp)  # type: ignore[assignment]
        if len(self.gumbel_temp) != 3:
            raise ConfigError(
                f"wav2vec2: gumbel_temp must be (max, min, decay), got {self.gumbel_temp}"
            )
        if self.num_negatives < 1:
            raise ConfigError(f"wav2vec2: num_negatives must be >= 1, got {self.num_negatives}")
        for name in ("extractor", "encoder", "mask"):
            value = getattr(self, name)
            if isinstance(value, dict):
                cls = {
                    "extractor": ConvExtractorConfig,
                    "encoder": TransformerEncoderConfig,
                    "mask": SpanMaskConfig,
                }[name]
                setattr(self, name, cls(**value))

    @property
    def codevector_dim(self) -> int:
        return self.vq_dim or self.final_dim


class Wav2Vec2Model(WaveformEncoderModel):
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
        self.quantizer = quantizer
        self.project_q = nn.Linear(config.codevector_dim, config.final_dim)
        self.final_proj = nn.Linear(config.encoder.dim, config.final_dim)
        self.dropout_features = nn.Dropout(config.dropout_features)
        self.objective = objective
        # the annealed temperature is state: saved with the weights so a resumed run
        # continues from it
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    num_updates: Tensor

    def after_optimizer_step(self, num_updates: int) -> None:
        self.num_updates.fill_(num_updates)
        self.quantizer.set_num_updates(num_updates)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.quantizer.set_num_updates(int(self.num_updates))

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
        feats = self.dropout_features(res.front.features)
        q = self.quantizer(feats[time_mask], generator=generator)
        targets = self.project_q(q.quantized)
        pred = self.final_proj(res.encoder.last_hidden_state[time_mask])
        index, valid = sample_distractors(
            time_mask.sum(dim=1), self.config.num_negatives, generator=generator
        )
        distractors = targets[index]
        record, logits = self.objective(
            pred,
            targets,
            distractors,
            valid,
            diversity=diversity_loss(q.prob_perplexity, q.num_codes),
            feature_penalty=res.front.feature_penalty,
        )
        n, s = time_mask.shape
        real = (
            (~res.padding_mask).sum()
            if res.padding_mask is not None
            else torch.tensor(n * s, device=time_mask.device)
        )
        metrics = {
            "acc_masked": contrastive_accuracy(logits),
            "code_perplexity": q.code_perplexity,
            "prob_perplexity": q.prob_perplexity.detach(),
            "temperature": torch.tensor(q.temperature),
            "mask_fraction": (time_mask.sum() / real.clamp(min=1)).detach().float(),
        }
        return PretrainOutput(loss=record, metrics=metrics, num_frames=int(real))


def build_wav2vec2(config: Wav2Vec2Config) -> Wav2Vec2Model:
    """Factory: build each part from its config and hand them to the model."""
    frontend = WaveformFrontend(config.extractor, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_transformer_encoder(config.encoder)
    quantizer = GumbelVectorQuantizer(
        config.extractor.out_dim,
        config.codebook_groups,
        config.codebook_vars,
        config.codevector_dim,
        config.gumbel_temp,
        distributed=config.distributed_perplexity,
    )
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
        extractor=ConvExtractorConfig(mode="group_norm", conv_bias=False, feature_grad_mult=0.1),
        encoder=TransformerEncoderConfig(
            dim=768,
            num_layers=12,
            num_heads=12,
            ffn_dim=3072,
            dropout=0.1,
            attention_dropout=0.1,
            activation_dropout=0.0,
            layer_norm_first=False,
            layer_drop=0.05,
            pos_conv_kernel=128,
            pos_conv_groups=16,
        ),
        mask=SpanMaskConfig(mask_prob=0.65, mask_length=10, min_masks=2),
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
        encoder=dataclasses.replace(
            base.encoder,
            dim=1024,
            num_layers=24,
            num_heads=16,
            ffn_dim=4096,
            dropout=0.0,
            attention_dropout=0.0,
            layer_norm_first=True,
            layer_drop=0.0,
        ),
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
        extractor=dataclasses.replace(
            base.extractor, conv_layers=TINY_CONV_LAYERS, feature_grad_mult=1.0
        ),
        encoder=dataclasses.replace(
            base.encoder,
            dim=128,
            num_layers=2,
            num_heads=4,
            ffn_dim=256,
            dropout=0.05,
            attention_dropout=0.0,
            layer_drop=0.0,
            pos_conv_kernel=16,
            pos_conv_groups=4,
        ),
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
