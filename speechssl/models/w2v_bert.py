"""w2v-BERT: contrastive learning and masked prediction trained together (Chung et al., 2021).

The model is a front end plus core parts:

* stacked-fbank front end (:mod:`speechssl.frontends.fbank_stack`: 80-dim fbank, two frames
  stacked, 50 Hz) and span masking of its projected frames (:class:`SpanMasker`);
* one conformer stack (:mod:`speechssl.core.conformer`) whose lower
  ``num_layers - num_mlm_layers`` layers are the *contrastive module* and whose top
  ``num_mlm_layers`` layers are the *masked-prediction (MLM) module*;
* contrastive module output -> InfoNCE against Gumbel-quantized (unmasked) features at the
  masked frames, plus the codebook diversity loss (wav2vec 2.0's objective,
  :class:`~speechssl.core.objectives.ContrastiveObjective`);
* MLM module output -> a linear classifier predicting, at each masked frame, the index the
  quantizer chose for it in each of the first ``num_target_codebooks`` codebooks
  (:func:`~speechssl.core.objectives.masked_prediction_loss`); the targets are the
  quantizer's argmax codes, so the discretisation is learned end to end with the model.

``loss = contrastive_weight * (InfoNCE + diversity_weight * diversity) + mlm_weight * MLM``
(1, 0.1, 1 in the paper and in fairseq2). Loss terms: ``contrastive``, ``diversity``,
``mlm``; metrics: ``acc_masked`` (MLM accuracy), ``acc_contrastive``, ``code_perplexity``,
``prob_perplexity``, ``temperature``, ``mask_fraction``.

The ``base`` preset is w2v-BERT 2.0's architecture (fairseq2 ``w2vbert`` "600m" and the
``transformers`` ``Wav2Vec2BertConfig`` defaults); the encoder exports to
``transformers.Wav2Vec2BertModel`` (:mod:`speechssl.interop.hf.w2v_bert`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from speechssl.core.conformer import (
    ConformerEncoder,
    ConformerEncoderConfig,
    build_conformer_encoder,
)
from speechssl.core.loss import LossRecord
from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.objectives.contrastive import ContrastiveObjective, contrastive_accuracy
from speechssl.core.objectives.masked_prediction import (
    MaskedPredictionHead,
    masked_accuracy,
    masked_prediction_loss,
)
from speechssl.core.quantizers import GumbelVectorQuantizer, diversity_loss
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.frontends.fbank_stack import FbankStackConfig, FbankStackFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.common import (
    GumbelContrastMixin,
    build_gumbel_quantizer,
    check_gumbel_temp,
    check_num_negatives,
    coerce_subconfigs,
    mask_fraction,
    quantizer_metrics,
    real_frame_count,
    span_mask,
)
from speechssl.models.registry import register_model
from speechssl.models.waveform import WaveformEncoderModel


@dataclass(kw_only=True)
class W2VBertConfig:
    """w2v-BERT pretraining model."""

    frontend: FbankStackConfig = field(default_factory=FbankStackConfig)
    """Stacked-fbank front end."""
    encoder: ConformerEncoderConfig = field(default_factory=ConformerEncoderConfig)
    """Conformer stack (contrastive module below, MLM module on top)."""
    mask: SpanMaskConfig = field(default_factory=lambda: SpanMaskConfig(mask_prob=0.65))
    """Span masking of the projected front end frames."""
    num_mlm_layers: int = 16
    """Top conformer layers forming the masked-prediction module (the rest are the
    contrastive module)."""
    dropout_input: float = 0.0
    """Dropout on the projected front end output."""
    dropout_features: float = 0.0
    """Dropout on the quantizer input."""
    final_dim: int = 768
    """Dim in which contrastive predictions and quantized targets are compared."""
    logit_temp: float = 0.1
    """Temperature of the InfoNCE cosine similarities."""
    num_negatives: int = 100
    """Distractors per masked frame, from the same utterance."""
    codebook_groups: int = 1
    """Gumbel quantizer codebooks G."""
    codebook_vars: int = 1024
    """Entries per codebook V (the MLM module's classes)."""
    vq_dim: int = 1024
    """Dim of the concatenated code vectors."""
    gumbel_temp: tuple[float, float, float] = (2.0, 0.1, 0.999995)
    """Gumbel temperature (start, floor, decay per update)."""
    num_target_codebooks: int = 1
    """The first this many codebooks are MLM targets (one classifier each)."""
    contrastive_weight: float = 1.0
    """Weight of the contrastive module's loss (InfoNCE + weighted diversity)."""
    mlm_weight: float = 1.0
    """Weight of the masked-prediction loss."""
    diversity_weight: float = 0.1
    """Weight of the codebook diversity loss inside the contrastive loss."""
    distributed_perplexity: bool = False
    """Average the code distribution of the diversity loss over all ranks."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "frontend": FbankStackConfig,
                "encoder": ConformerEncoderConfig,
                "mask": SpanMaskConfig,
            },
        )
        self.gumbel_temp = check_gumbel_temp("w2v_bert", self.gumbel_temp)
        if not 1 <= self.num_mlm_layers < self.encoder.num_layers:
            raise ConfigError(
                f"w2v_bert: num_mlm_layers must be in [1, encoder.num_layers="
                f"{self.encoder.num_layers}), got {self.num_mlm_layers}"
            )
        if not 1 <= self.num_target_codebooks <= self.codebook_groups:
            raise ConfigError(
                f"w2v_bert: num_target_codebooks must be in [1, codebook_groups="
                f"{self.codebook_groups}], got {self.num_target_codebooks}"
            )
        check_num_negatives("w2v_bert", self.num_negatives)

    @property
    def num_contrastive_layers(self) -> int:
        return self.encoder.num_layers - self.num_mlm_layers


class W2VBertModel(GumbelContrastMixin, WaveformEncoderModel):
    """w2v-BERT for pretraining: ``forward(AudioBatch)`` -> contrastive + MLM loss record."""

    def __init__(
        self,
        config: W2VBertConfig,
        frontend: FbankStackFrontend,
        masker: SpanMasker,
        encoder: ConformerEncoder,
        quantizer: GumbelVectorQuantizer,
        contrastive: ContrastiveObjective,
        mlm_head: MaskedPredictionHead,
    ) -> None:
        super().__init__(frontend, masker, encoder)
        self.config = config
        self.init_contrast_parts(
            quantizer,
            codevector_dim=config.vq_dim,
            context_dim=config.encoder.dim,
            final_dim=config.final_dim,
            dropout_features=config.dropout_features,
        )
        self.contrastive = contrastive
        self.mlm_head = mlm_head
        self.init_temperature_state()

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        c = self.config
        res = self.encode(
            batch.waveforms,
            batch.lengths,
            mask=mask,
            output_hidden_states=True,
            generator=generator,
        )
        assert res.mask is not None and res.encoder.hidden_states is not None
        time_mask = res.mask
        context = res.encoder.hidden_states[c.num_contrastive_layers]

        # contrastive module: InfoNCE against quantized unmasked features + diversity
        contrast = self.quantized_contrast(
            res.front.features, context, time_mask, c.num_negatives, generator=generator
        )
        q = contrast.quantized
        diversity = diversity_loss(q.prob_perplexity, q.num_codes)
        contrastive, logits = self.contrastive(
            contrast.pred,
            contrast.targets,
            contrast.distractors,
            contrast.valid,
            diversity=diversity,
        )

        # masked-prediction module: classify each masked frame's code in each target codebook
        top = res.encoder.last_hidden_state[time_mask]
        mlm_logits = self.mlm_head(top)
        all_masked = torch.ones(top.shape[0], dtype=torch.bool, device=top.device)
        mlm_terms = [
            masked_prediction_loss(lg, q.codes[:, g], all_masked).terms["masked"]
            for g, lg in enumerate(mlm_logits)
        ]
        mlm = torch.stack(mlm_terms).mean()

        total = c.contrastive_weight * contrastive.total + c.mlm_weight * mlm
        record = LossRecord(
            total=total,
            terms={
                "contrastive": contrastive.terms["contrastive"],
                "diversity": diversity,
                "mlm": mlm,
            },
            weights={
                "contrastive": c.contrastive_weight,
                "diversity": c.contrastive_weight * c.diversity_weight,
                "mlm": c.mlm_weight,
            },
            sample_size=top.shape[0],
        )
        real = real_frame_count(time_mask, res.padding_mask)
        metrics = {
            "acc_masked": masked_accuracy(mlm_logits[0], q.codes[:, 0], all_masked)["acc_masked"],
            "acc_contrastive": contrastive_accuracy(logits),
            **quantizer_metrics(q),
            "mask_fraction": mask_fraction(time_mask, real),
        }
        return PretrainOutput(loss=record, metrics=metrics, num_frames=int(real))


def build_w2v_bert(config: W2VBertConfig) -> W2VBertModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend = FbankStackFrontend(config.frontend, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_conformer_encoder(config.encoder)
    quantizer = build_gumbel_quantizer(config, config.frontend.feature_dim, config.vq_dim)
    contrastive = ContrastiveObjective(
        config.logit_temp, config.diversity_weight, feature_penalty_weight=0.0
    )
    mlm_head = MaskedPredictionHead(
        config.encoder.dim,
        [config.codebook_vars] * config.num_target_codebooks,
        kind="linear",
    )
    return W2VBertModel(config, frontend, masker, encoder, quantizer, contrastive, mlm_head)


def w2v_bert_base_config() -> W2VBertConfig:
    """w2v-BERT 2.0 (fairseq2 ``w2vbert`` "600m", ``transformers`` ``Wav2Vec2BertConfig``
    defaults): 80-dim fbank stacked by 2 (160 in), 24 conformer layers of 1024 (16 heads,
    FFN 4096, swish, causal depthwise kernel 31, relative key positions clipped at 64 left
    / 8 right), no dropout or layer drop; the top 16 layers are the MLM module; mask 0.65 x
    10 (min 2 spans); one codebook of 1024 entries (1024-dim), Gumbel temperature (2, 0.1,
    0.999995), final dim 768, 100 distractors, logit temperature 0.1; loss weights 1
    (contrastive), 0.1 (diversity), 1 (MLM)."""
    return W2VBertConfig(
        frontend=FbankStackConfig(num_mel_bins=80, stride=2),
        encoder=ConformerEncoderConfig(
            dim=1024,
            num_layers=24,
            num_heads=16,
            ffn_dim=4096,
            activation="swish",
            depthwise_kernel=31,
            causal_depthwise=True,
            position_encoding="relative_key",
            max_left_distance=64,
            max_right_distance=8,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            conv_dropout=0.0,
            layer_drop=0.0,
        ),
        mask=span_mask(0.65),
        num_mlm_layers=16,
        final_dim=768,
        logit_temp=0.1,
        num_negatives=100,
        codebook_groups=1,
        codebook_vars=1024,
        vq_dim=1024,
        gumbel_temp=(2.0, 0.1, 0.999995),
        num_target_codebooks=1,
        contrastive_weight=1.0,
        mlm_weight=1.0,
        diversity_weight=0.1,
    )


def w2v_bert_tiny_config() -> W2VBertConfig:
    """Tiny w2v-BERT for tests and demos: the base layout with 4 conformer layers of 128 (4
    heads, FFN 256, depthwise kernel 15), the top 2 forming the MLM module, final dim 64,
    one codebook of 64 entries (64-dim), 20 distractors, light dropout."""
    base = w2v_bert_base_config()
    return dataclasses.replace(
        base,
        encoder=dataclasses.replace(
            base.encoder,
            dim=128,
            num_layers=4,
            num_heads=4,
            ffn_dim=256,
            depthwise_kernel=15,
            dropout=0.05,
        ),
        num_mlm_layers=2,
        final_dim=64,
        codebook_vars=64,
        vq_dim=64,
        num_negatives=20,
    )


for _size, _make in (("tiny", w2v_bert_tiny_config), ("base", w2v_bert_base_config)):
    register_model(
        f"w2v_bert_{_size}", family="w2v_bert", make_config=_make, build=build_w2v_bert, size=_size
    )

__all__ = [
    "W2VBertConfig",
    "W2VBertModel",
    "build_w2v_bert",
    "w2v_bert_base_config",
    "w2v_bert_tiny_config",
]
