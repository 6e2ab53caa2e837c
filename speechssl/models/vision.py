"""Vision on the shared core: patch front end + 2-D block masking + the same encoder and
objectives as the speech families.

* ``data2vec_vision_tiny`` - data2vec: regression of masked patches onto an EMA teacher's
  averaged top-K layer outputs of the unmasked image (the same teacher, target builder and
  regression objective as ``data2vec_audio``);
* ``hubert_vision_tiny`` - HuBERT's idea on images: k-means units of raw patch vectors
  (:func:`speechssl.units.patches.write_patch_store` + :func:`speechssl.units.kmeans.fit_kmeans`
  + :func:`speechssl.units.patches.patch_unit_labels`) are predicted at masked patches with
  HuBERT's cosine head and masked-prediction objective.

Both take an :class:`~speechssl.data.images.ImageBatch` and mirror the speech models'
interface: ``forward(batch, mask=, generator=) -> PretrainOutput``,
``extract(images, lengths=None, num_layers=None) -> ExtractOutput`` (one "frame" per patch,
row-major; ``frame_rate`` is 0: patches have no time axis), ``after_optimizer_step``.
The encoder is pre-LN (ViT style) without the convolutional position embedding: positions
come from the front end's fixed 2-D sine-cosine table, added after masking (BEiT/MAE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from speechssl.core.masking import BlockMaskConfig, BlockMasker
from speechssl.core.objectives.masked_prediction import (
    MaskedPredictionHead,
    MaskedPredictionObjective,
)
from speechssl.core.objectives.regression import RegressionObjective
from speechssl.core.teacher import EMATeacher
from speechssl.core.transformer import (
    EncoderOutput,
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
)
from speechssl.data.images import ImageBatch
from speechssl.errors import ConfigError, LabelError
from speechssl.frontends.vision import PatchEmbeddingConfig, PatchFrontend, PatchFrontendOutput
from speechssl.models.base import ExtractOutput, PretrainModel, PretrainOutput
from speechssl.models.common import (
    check_label_streams,
    coerce_subconfigs,
    extract_output,
    first_out_of_range,
    masked_accuracy_metrics,
    resolve_label_streams,
)
from speechssl.models.data2vec import Data2VecTargetConfig, EMARegressionMixin, make_teacher
from speechssl.models.registry import register_model


@dataclass
class VisionEncodeResult:
    """One pass of a vision model: front end output, block mask (or None), encoder output."""

    front: PatchFrontendOutput
    mask: Tensor | None
    encoder: EncoderOutput


class VisionEncoderModel(PretrainModel[ImageBatch]):
    """Patch front end + block masker + transformer encoder, plus ``extract``."""

    frame_rate = 0.0

    def __init__(
        self, frontend: PatchFrontend, masker: BlockMasker, encoder: TransformerEncoder
    ) -> None:
        super().__init__()
        self.frontend = frontend
        self.masker = masker
        self.encoder = encoder

    def encode(
        self,
        images: Tensor,
        *,
        apply_mask: bool = True,
        mask: Tensor | None = None,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
        generator: torch.Generator | None = None,
    ) -> VisionEncodeResult:
        front = self.frontend(images)
        x = front.frames.seqs
        used: Tensor | None = None
        if apply_mask or mask is not None:
            x, used = self.masker(x, front.grid, mask=mask, generator=generator)
        x = self.frontend.add_positions(x)
        enc = self.encoder(
            x, None, output_hidden_states=output_hidden_states, num_layers=num_layers
        )
        return VisionEncodeResult(front=front, mask=used, encoder=enc)

    def teacher_input(self, res: VisionEncodeResult) -> Tensor:
        """The unmasked patch frames with their positions (what an EMA teacher sees)."""
        return self.frontend.add_positions(res.front.frames.seqs)

    def extract(
        self, waveforms: Tensor, lengths: Tensor | None = None, num_layers: int | None = None
    ) -> ExtractOutput:
        """Hidden states of images ``[N, C, H, W]`` (the first argument; ``lengths`` is
        unused: every image has all its patches)."""
        res = self.encode(
            waveforms, apply_mask=False, output_hidden_states=True, num_layers=num_layers
        )
        return extract_output(res.encoder, None, 0.0, num_layers, self.encoder.num_layers)

    @staticmethod
    def _mask_fraction(mask: Tensor) -> Tensor:
        return mask.float().mean().detach()


def build_vision_parts(
    family: str, config: Data2VecVisionConfig | PatchHubertConfig
) -> tuple[PatchFrontend, BlockMasker, TransformerEncoder]:
    """Factory part shared by the vision families: patch front end, block masker and an
    encoder without conv positions (the front end adds positions)."""
    if config.encoder.pos_conv_kernel:
        raise ConfigError(
            f"{family}: positions come from the patch front end; set pos_conv_kernel=0"
        )
    frontend = PatchFrontend(config.patch, config.encoder.dim, config.dropout_input)
    masker = BlockMasker(config.encoder.dim, config.mask)
    return frontend, masker, build_transformer_encoder(config.encoder)


def tiny_vision_encoder() -> TransformerEncoderConfig:
    """4 pre-LN layers of 64 (4 heads, FFN 128), no dropout or layer drop, no conv positions."""
    return TransformerEncoderConfig(
        dim=64,
        num_layers=4,
        num_heads=4,
        ffn_dim=128,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layer_norm_first=True,
        layer_drop=0.0,
        pos_conv_kernel=0,
    )


def digits_patches() -> PatchEmbeddingConfig:
    """8x8 grey images (scikit-learn's digits) in 2x2 patches: a 4x4 grid."""
    return PatchEmbeddingConfig(image_size=(8, 8), channels=1, patch_size=2, position="sincos")


# --------------------------------------------------------------------------- data2vec vision


@dataclass(kw_only=True)
class Data2VecVisionConfig:
    """data2vec vision pretraining model."""

    patch: PatchEmbeddingConfig = field(default_factory=digits_patches)
    """Image geometry and patch embedding."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Transformer encoder (pre-LN, no conv position embedding)."""
    mask: BlockMaskConfig = field(default_factory=lambda: BlockMaskConfig(mask_prob=0.5))
    """2-D block masking of the patch grid."""
    dropout_input: float = 0.0
    """Dropout on the embedded patches."""
    targets: Data2VecTargetConfig = field(
        default_factory=lambda: Data2VecTargetConfig(
            top_k=3, final_norm="layer", loss_beta=2.0, ema_layers_only=False
        )
    )
    """Teacher, targets and regression loss."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "patch": PatchEmbeddingConfig,
                "encoder": TransformerEncoderConfig,
                "mask": BlockMaskConfig,
                "targets": Data2VecTargetConfig,
            },
        )


class Data2VecVisionModel(EMARegressionMixin, VisionEncoderModel):
    """data2vec for images: ``forward(ImageBatch)`` -> regression loss record."""

    def __init__(
        self,
        config: Data2VecVisionConfig,
        frontend: PatchFrontend,
        masker: BlockMasker,
        encoder: TransformerEncoder,
        teacher: EMATeacher,
        objective: RegressionObjective,
    ) -> None:
        super().__init__(frontend, masker, encoder)
        self.config = config
        self.init_regression_parts(config.encoder.dim, teacher, objective)

    def forward(
        self,
        batch: ImageBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        res = self.encode(batch.images, mask=mask, generator=generator)
        assert res.mask is not None
        record, metrics = self.regression_loss(
            self.teacher_input(res),
            None,
            res.encoder.last_hidden_state,
            res.mask,
            self.config.targets,
        )
        metrics["mask_fraction"] = self._mask_fraction(res.mask)
        return PretrainOutput(loss=record, metrics=metrics, num_frames=res.mask.numel())


def build_data2vec_vision(config: Data2VecVisionConfig) -> Data2VecVisionModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend, masker, encoder = build_vision_parts("data2vec vision", config)
    teacher = make_teacher(encoder, config.targets)
    objective = RegressionObjective(config.targets.loss_beta, config.targets.loss_scale)
    return Data2VecVisionModel(config, frontend, masker, encoder, teacher, objective)


def data2vec_vision_tiny_config() -> Data2VecVisionConfig:
    """Tiny data2vec vision for 8x8 digits: 2x2 patches (4x4 grid), 4 pre-LN layers of 64,
    2x2 block masks over half the grid; targets: top 3 FFN outputs, instance-normalised,
    averaged and layer-normalised (data2vec vision's ``layer_norm_targets``), smooth L1 with
    beta 2; EMA 0.99 -> 0.999 over 500 updates, all encoder weights averaged."""
    return Data2VecVisionConfig(
        patch=digits_patches(),
        encoder=tiny_vision_encoder(),
        mask=BlockMaskConfig(mask_prob=0.5, block_size=(2, 2)),
        dropout_input=0.0,
        targets=Data2VecTargetConfig(
            top_k=3,
            layer_source="ffn",
            layer_norm="instance",
            final_norm="layer",
            loss_beta=2.0,
            ema_decay=0.99,
            ema_end_decay=0.999,
            ema_anneal_steps=500,
            ema_layers_only=False,
        ),
    )


# --------------------------------------------------------------------------- HuBERT on images


@dataclass(kw_only=True)
class PatchHubertConfig:
    """Masked prediction of k-means patch units (HuBERT on images)."""

    patch: PatchEmbeddingConfig = field(default_factory=digits_patches)
    """Image geometry and patch embedding."""
    encoder: TransformerEncoderConfig = field(default_factory=tiny_vision_encoder)
    """Transformer encoder (pre-LN, no conv position embedding)."""
    mask: BlockMaskConfig = field(default_factory=lambda: BlockMaskConfig(mask_prob=0.5))
    """2-D block masking of the patch grid."""
    dropout_input: float = 0.0
    """Dropout on the embedded patches."""
    final_dim: int = 32
    """Projection dim of the cosine-similarity head."""
    logit_temp: float = 0.1
    """Temperature of the cosine-similarity logits."""
    num_classes: tuple[int, ...] = (32,)
    """Units of each label stream (k of its k-means)."""
    label_streams: tuple[str, ...] = ()
    """Names of the label streams in ``ImageBatch.labels``, in ``num_classes`` order; empty:
    the batch's streams in sorted name order."""
    head_kind: str = "cosine"
    """``cosine`` (HuBERT's label-embedding logits) or ``linear``."""
    masked_weight: float = 1.0
    """Weight of the loss on masked patches."""
    unmasked_weight: float = 0.0
    """Weight of the loss on unmasked patches (still logged)."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "patch": PatchEmbeddingConfig,
                "encoder": TransformerEncoderConfig,
                "mask": BlockMaskConfig,
            },
        )
        self.label_streams, self.num_classes = check_label_streams(
            "hubert_vision", self.label_streams, self.num_classes
        )


class PatchHubertModel(VisionEncoderModel):
    """HuBERT on images: ``forward(ImageBatch)`` -> masked-prediction loss over patch units."""

    def __init__(
        self,
        config: PatchHubertConfig,
        frontend: PatchFrontend,
        masker: BlockMasker,
        encoder: TransformerEncoder,
        head: MaskedPredictionHead,
        objective: MaskedPredictionObjective,
    ) -> None:
        super().__init__(frontend, masker, encoder)
        self.config = config
        self.head = head
        self.objective = objective

    def patch_targets(self, batch: ImageBatch, num_patches: int) -> dict[str, Tensor]:
        """Each stream's ``[N, P]`` unit labels, checked (errors name the image)."""
        names = resolve_label_streams(
            "hubert_vision", self.config.label_streams, self.config.num_classes, batch.labels
        )
        out = {}
        for name, classes in zip(names, self.config.num_classes, strict=True):
            labels = batch.labels[name].long().to(batch.images.device)
            if labels.dim() != 2 or labels.shape != (batch.batch_size, num_patches):
                raise LabelError(
                    batch.image_id(0),
                    f"label stream {name!r} has shape {tuple(labels.shape)}, expected "
                    f"[{batch.batch_size}, {num_patches}] (one unit per patch)",
                )
            i = first_out_of_range(labels, classes)
            if i is not None:
                raise LabelError(
                    batch.image_id(i), f"label stream {name!r} has a unit outside [0, {classes})"
                )
            out[name] = labels
        return out

    def forward(
        self,
        batch: ImageBatch,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        res = self.encode(batch.images, mask=mask, generator=generator)
        assert res.mask is not None
        x = res.encoder.last_hidden_state
        targets = self.patch_targets(batch, x.shape[1])
        names = list(targets)
        logits = dict(zip(names, self.head(x), strict=True))
        record = self.objective(logits, targets, res.mask)
        metrics = masked_accuracy_metrics(logits, targets, res.mask)
        metrics["mask_fraction"] = self._mask_fraction(res.mask)
        return PretrainOutput(loss=record, metrics=metrics, num_frames=res.mask.numel())


def build_patch_hubert(config: PatchHubertConfig) -> PatchHubertModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend, masker, encoder = build_vision_parts("hubert_vision", config)
    head = MaskedPredictionHead(
        config.encoder.dim,
        config.num_classes,
        config.final_dim,
        kind=config.head_kind,
        temperature=config.logit_temp,
    )
    objective = MaskedPredictionObjective(config.masked_weight, config.unmasked_weight)
    return PatchHubertModel(config, frontend, masker, encoder, head, objective)


def hubert_vision_tiny_config() -> PatchHubertConfig:
    """Tiny HuBERT on 8x8 digits: 2x2 patches, 4 pre-LN layers of 64, 2x2 block masks over
    half the grid, 32 patch units, cosine head of dim 32."""
    return PatchHubertConfig(
        patch=digits_patches(),
        encoder=tiny_vision_encoder(),
        mask=BlockMaskConfig(mask_prob=0.5, block_size=(2, 2)),
        final_dim=32,
        num_classes=(32,),
    )


register_model(
    "data2vec_vision_tiny",
    family="data2vec_vision",
    make_config=data2vec_vision_tiny_config,
    build=build_data2vec_vision,
    size="tiny",
    modality="image",
)
register_model(
    "hubert_vision_tiny",
    family="hubert_vision",
    make_config=hubert_vision_tiny_config,
    build=build_patch_hubert,
    size="tiny",
    modality="image",
)

__all__ = [
    "Data2VecVisionConfig",
    "Data2VecVisionModel",
    "PatchHubertConfig",
    "PatchHubertModel",
    "VisionEncoderModel",
    "build_data2vec_vision",
    "build_patch_hubert",
    "data2vec_vision_tiny_config",
    "hubert_vision_tiny_config",
]
