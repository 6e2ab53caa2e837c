"""BEST-RQ: masked prediction of random-projection quantized speech features (Chiu et al., 2022).

The model is a front end plus core parts:

* stacked-fbank front end (:mod:`speechssl.frontends.fbank_stack`, w2v-BERT's: 80-dim fbank
  normalised per utterance and mel bin, two frames stacked, 50 Hz) and span masking of its
  projected frames (:class:`~speechssl.core.masking.SpanMasker`);
* a conformer stack (:mod:`speechssl.core.conformer`);
* targets from :class:`~speechssl.core.quantizers.RandomProjectionQuantizer`: the stacked
  (normalised, unmasked) features go through a frozen Xavier-initialised projection to
  ``codebook_dim`` (16) and take the index of the nearest entry, by cosine, of a frozen
  normalised random codebook of ``codebook_size`` (8192) entries. ``num_codebooks``
  quantizers (seeds ``seed``, ``seed + 1``, ...) give that many target streams;
* a linear classifier per codebook on the encoder output; cross-entropy at the masked
  frames (``loss/masked``, averaged over the codebooks).

The quantizers are buffers: never trained, saved with every checkpoint and export (and
drawn from ``seed``, so a model built from the config alone has the same ones), which makes
resumed training and feature extraction exact. No k-means labels are needed:
``speechssl-train model=best_rq_tiny data.dir=DIR``.

Masking: the paper masks 400 ms spans of the input with probability 0.01 per 10 ms frame
(about 1/3 of the frames); on 20 ms frames that is ``mask_prob`` 0.4 with 20-frame spans
under this toolkit's span semantics (:class:`~speechssl.core.masking.SpanMaskConfig`),
masking the projected frames with a learned embedding rather than the input with noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from speechssl.core.conformer import (
    ConformerEncoder,
    ConformerEncoderConfig,
    build_conformer_encoder,
)
from speechssl.core.loss import LossRecord
from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.objectives.masked_prediction import (
    IGNORE_INDEX,
    MaskedPredictionHead,
    masked_accuracy,
    masked_prediction_loss,
)
from speechssl.core.quantizers import RandomProjectionQuantizer
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.frontends.fbank_stack import FbankStackConfig, FbankStackFrontend
from speechssl.models.base import PretrainOutput
from speechssl.models.common import coerce_subconfigs, mask_fraction, real_frame_count
from speechssl.models.registry import register_model
from speechssl.models.w2v_bert import w2v_bert_base_config
from speechssl.models.waveform import EncodeResult, WaveformEncoderModel


@dataclass(kw_only=True)
class BestRQConfig:
    """BEST-RQ pretraining model."""

    frontend: FbankStackConfig = field(default_factory=FbankStackConfig)
    """Stacked-fbank front end (its stacked features are also the quantizer input)."""
    encoder: ConformerEncoderConfig = field(default_factory=ConformerEncoderConfig)
    """Conformer stack."""
    mask: SpanMaskConfig = field(
        default_factory=lambda: SpanMaskConfig(mask_prob=0.4, mask_length=20, min_masks=1)
    )
    """Span masking of the projected front end frames."""
    dropout_input: float = 0.0
    """Dropout on the projected front end output."""
    codebook_size: int = 8192
    """Entries of each random codebook (classes of each target stream)."""
    codebook_dim: int = 16
    """Dim of the random projection and the codebook entries."""
    num_codebooks: int = 1
    """Random quantizers (target streams), one classifier each."""
    seed: int = 0
    """Seed of the first quantizer's projection and codebook (codebook ``g`` uses
    ``seed + g``)."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "frontend": FbankStackConfig,
                "encoder": ConformerEncoderConfig,
                "mask": SpanMaskConfig,
            },
        )
        if self.codebook_size < 2 or self.codebook_dim < 1 or self.num_codebooks < 1:
            raise ConfigError(
                "best_rq: codebook_size must be >= 2, codebook_dim and num_codebooks >= 1; got "
                f"{self.codebook_size}, {self.codebook_dim}, {self.num_codebooks}"
            )


class BestRQModel(WaveformEncoderModel):
    """BEST-RQ for pretraining: ``forward(AudioBatch)`` -> masked cross-entropy record."""

    frontend: FbankStackFrontend

    def __init__(
        self,
        config: BestRQConfig,
        frontend: FbankStackFrontend,
        masker: SpanMasker,
        encoder: ConformerEncoder,
        quantizers: list[RandomProjectionQuantizer],
        head: MaskedPredictionHead,
    ) -> None:
        super().__init__(frontend, masker, encoder)
        self.config = config
        self.quantizers = nn.ModuleList(quantizers)
        self.head = head

    def targets(self, stacked: Tensor, frame_lengths: Tensor) -> Tensor:
        """``[N, S, num_codebooks]`` labels of stacked features ``[N, S, F]``, ``-100`` at
        padding."""
        labels = torch.stack([q(stacked) for q in self.quantizers], dim=-1)
        pad = torch.arange(stacked.shape[1], device=stacked.device) >= frame_lengths[:, None]
        return labels.masked_fill(pad.unsqueeze(-1), IGNORE_INDEX)

    def _encode(
        self, batch: AudioBatch, mask: Tensor | None, generator: torch.Generator | None
    ) -> tuple[EncodeResult, Tensor]:
        """One fbank pass feeding both the targets and the encoder."""
        stacked, frame_lengths = self.frontend.features(batch.waveforms, batch.lengths)
        targets = self.targets(stacked, frame_lengths.to(stacked.device))
        front = self.frontend.project(stacked, frame_lengths)
        padding_mask = front.frames.padding_mask
        x, time_mask = self.masker(front.frames.seqs, padding_mask, mask=mask, generator=generator)
        if padding_mask is not None:
            time_mask = time_mask & ~padding_mask
        enc = self.encoder(x, padding_mask)
        return EncodeResult(front, time_mask, enc, padding_mask), targets

    def forward(
        self,
        batch: AudioBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        res, targets = self._encode(batch, mask, generator)
        assert res.mask is not None
        time_mask = res.mask
        logits = self.head(res.encoder.last_hidden_state)
        terms = [
            masked_prediction_loss(lg, targets[..., g], time_mask).terms["masked"]
            for g, lg in enumerate(logits)
        ]
        masked = torch.stack(terms).mean()
        real = real_frame_count(time_mask, res.padding_mask)
        record = LossRecord(
            total=masked,
            terms={"masked": masked},
            weights={"masked": 1.0},
            sample_size=int(time_mask.sum()),
        )
        metrics = {
            "acc_masked": masked_accuracy(logits[0], targets[..., 0], time_mask)["acc_masked"],
            "mask_fraction": mask_fraction(time_mask, real),
        }
        return PretrainOutput(loss=record, metrics=metrics, num_frames=int(real))


def build_best_rq(config: BestRQConfig) -> BestRQModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend = FbankStackFrontend(config.frontend, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_conformer_encoder(config.encoder)
    quantizers = [
        RandomProjectionQuantizer(
            config.frontend.feature_dim, config.codebook_size, config.codebook_dim, config.seed + g
        )
        for g in range(config.num_codebooks)
    ]
    head = MaskedPredictionHead(
        config.encoder.dim, [config.codebook_size] * config.num_codebooks, kind="linear"
    )
    return BestRQModel(config, frontend, masker, encoder, quantizers, head)


def best_rq_base_config() -> BestRQConfig:
    """BEST-RQ with the w2v-BERT 2.0 conformer (600M: 24 layers of 1024, 16 heads, FFN
    4096, relative key positions, depthwise kernel 31), 80-dim fbank stacked by 2, one
    random codebook of 8192 16-dim entries, 400 ms mask spans (``mask_prob`` 0.4 x 20
    frames), no dropout."""
    w2v = w2v_bert_base_config()
    return BestRQConfig(frontend=w2v.frontend, encoder=w2v.encoder)


def best_rq_tiny_config() -> BestRQConfig:
    """Tiny BEST-RQ for tests and demos: 4 conformer layers of 128 (4 heads, FFN 256,
    depthwise kernel 15), light dropout; the paper's quantizer (8192 x 16) and masking."""
    base = best_rq_base_config()
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
    )


for _size, _make in (("tiny", best_rq_tiny_config), ("base", best_rq_base_config)):
    register_model(
        f"best_rq_{_size}", family="best_rq", make_config=_make, build=build_best_rq, size=_size
    )

__all__ = [
    "BestRQConfig",
    "BestRQModel",
    "best_rq_base_config",
    "best_rq_tiny_config",
    "build_best_rq",
]
