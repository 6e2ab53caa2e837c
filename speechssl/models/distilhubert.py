"""DistilHuBERT: layer-to-layer distillation of a frozen teacher (Chang et al., 2022).

The student is the teacher's waveform front end plus a short transformer stack (2 layers),
initialised from the teacher (front end, positional convolution, encoder LayerNorm and the
first ``num_layers`` transformer layers copied: :func:`init_student_from_teacher`). On the
student's last layer sit one linear prediction head per chosen teacher layer; head ``k``
regresses teacher hidden state ``target_layers[k]`` (``hidden_states`` indexing of
:class:`~speechssl.models.base.ExtractOutput`: 1 = output of the first transformer layer).

Loss, per target layer ``l`` and averaged over the real (non-padding) frames::

    L1_l  = mean |pred_l - teacher_l|            (over frames and dims)
    cos_l = mean -log sigmoid(cos(pred_l, teacher_l))   (over frames)
    total = sum_l (L1_l + cos_weight * cos_l)    (cos_weight = lambda = 1, as in the paper)

Every term is in the loss record (``l1_L``, ``cos_L``); the mean cosine similarity per layer
is logged as ``cos_sim_L``. No masking, no labels.

Target layers (:func:`default_target_layers`): for a teacher of ``L`` transformer layers,
``round(L * k / 3)`` for ``k = 1, 2, 3`` (at least 1, duplicates dropped): 4, 8, 12 for
12 layers (the paper's), 8, 16, 24 for 24, 1, 2 for 2.

The teacher is attached for training (:meth:`DistilHubertModel.attach_teacher`), frozen and
in eval mode, and is never part of the student's state dict, checkpoints or exports;
``speechssl-train model=distilhubert_tiny model.teacher=DIR`` does this (see
:mod:`speechssl.train.pretrain`). Alternatively the trainer reads the teacher's layers from a
probing layer cache (``model.teacher_cache``) and hands them to :meth:`DistilHubertModel.forward`
as ``targets``, so the teacher does not run on every step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.core.masking import SpanMaskConfig, SpanMasker
from speechssl.core.transformer import TransformerEncoderConfig, build_transformer_encoder
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.frontends.speech import ConvExtractorConfig, WaveformFrontend
from speechssl.models.base import PretrainModel, PretrainOutput
from speechssl.models.common import (
    base_group_norm_extractor,
    base_transformer_encoder,
    coerce_subconfigs,
    tiny_extractor,
    tiny_transformer_encoder,
)
from speechssl.models.registry import register_model
from speechssl.models.waveform import WaveformEncoderModel


def default_target_layers(teacher_layers: int) -> tuple[int, ...]:
    """The teacher layers to predict: ``round(L * k / 3)``, ``k = 1, 2, 3`` (>= 1, unique)."""
    if teacher_layers < 1:
        raise ConfigError(f"distilhubert: the teacher needs >= 1 layer, got {teacher_layers}")
    return tuple(sorted({max(1, round(teacher_layers * k / 3)) for k in (1, 2, 3)}))


@dataclass(kw_only=True)
class DistilHubertConfig:
    """DistilHuBERT student."""

    extractor: ConvExtractorConfig = field(default_factory=ConvExtractorConfig)
    """Waveform conv stack (the teacher's)."""
    encoder: TransformerEncoderConfig = field(default_factory=TransformerEncoderConfig)
    """Student transformer (the teacher's layer shape, 2 layers)."""
    mask: SpanMaskConfig = field(default_factory=lambda: SpanMaskConfig(mask_prob=0.0))
    """Masking (off in distillation; the mask embedding exists for the HuBERT export)."""
    dropout_input: float = 0.1
    """Dropout on the projected front end output."""
    teacher_layers: int = 12
    """Transformer layers of the teacher."""
    teacher_dim: int = 768
    """Hidden size of the teacher (output size of each head)."""
    target_layers: tuple[int, ...] = ()
    """Teacher layers predicted, one head each (1-based); empty: :func:`default_target_layers`."""
    cos_weight: float = 1.0
    """lambda: weight of the ``-log sigmoid(cos)`` term of each layer."""

    def __post_init__(self) -> None:
        coerce_subconfigs(
            self,
            {
                "extractor": ConvExtractorConfig,
                "encoder": TransformerEncoderConfig,
                "mask": SpanMaskConfig,
            },
        )
        self.target_layers = tuple(int(i) for i in self.target_layers) or default_target_layers(
            self.teacher_layers
        )
        bad = [i for i in self.target_layers if not 1 <= i <= self.teacher_layers]
        if bad or len(set(self.target_layers)) != len(self.target_layers):
            raise ConfigError(
                f"distilhubert: target_layers must be distinct layers in 1..{self.teacher_layers}"
                f" (teacher_layers), got {list(self.target_layers)}"
            )
        if self.teacher_dim < 1 or self.cos_weight < 0:
            raise ConfigError(
                f"distilhubert: teacher_dim must be >= 1 and cos_weight >= 0, got "
                f"{self.teacher_dim}, {self.cos_weight}"
            )


def distillation_loss(
    pred: Tensor, target: Tensor, padding_mask: Tensor | None, cos_weight: float = 1.0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DistilHuBERT's loss of one layer.

    Args:
        pred, target: ``[N, S, D]``.
        padding_mask: ``[N, S]`` True at padding (excluded), or None.
        cos_weight: lambda.

    Returns:
        ``(loss, l1, cos_term, cos_sim)``: ``loss = l1 + cos_weight * cos_term``, ``l1`` the
        mean absolute error over real frames and dims, ``cos_term`` the mean
        ``-log sigmoid(cos)`` over real frames, ``cos_sim`` the mean cosine (detached).
    """
    if pred.shape != target.shape:
        raise ConfigError(
            f"distilhubert: prediction {tuple(pred.shape)} and teacher layer "
            f"{tuple(target.shape)} differ in shape"
        )
    target = target.to(pred.dtype)
    keep = (
        torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
        if padding_mask is None
        else ~padding_mask
    )
    frames = keep.sum().clamp(min=1)
    w = keep.to(pred.dtype)
    l1 = ((pred - target).abs().mean(-1) * w).sum() / frames
    cos = F.cosine_similarity(pred, target, dim=-1)
    cos_term = (-F.logsigmoid(cos) * w).sum() / frames
    cos_sim = ((cos * w).sum() / frames).detach()
    return l1 + cos_weight * cos_term, l1, cos_term, cos_sim


class DistilHubertModel(WaveformEncoderModel):
    """DistilHuBERT student: ``forward(AudioBatch)`` -> distillation loss record."""

    def __init__(
        self,
        config: DistilHubertConfig,
        frontend: WaveformFrontend,
        masker: SpanMasker,
        encoder: nn.Module,
        heads: nn.ModuleList,
    ) -> None:
        super().__init__(frontend, masker, encoder)  # type: ignore[arg-type]
        self.config = config
        self.heads = heads
        # the teacher is kept outside the module tree: not trained, saved or exported
        self._teacher: list[PretrainModel] = []

    @property
    def attached_teacher(self) -> PretrainModel | None:
        """The teacher given to :meth:`attach_teacher` (None before)."""
        return self._teacher[0] if self._teacher else None

    def attach_teacher(self, teacher: PretrainModel) -> None:
        """Use ``teacher`` (frozen here, eval mode) for the targets of :meth:`forward`."""
        check_teacher(self.config, teacher)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher]

    def train(self, mode: bool = True) -> DistilHubertModel:
        super().train(mode)
        for t in self._teacher:  # the teacher stays in eval mode
            t.eval()
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> DistilHubertModel:
        # .to(device) / .half() move the attached teacher along with the student
        out = super()._apply(fn, recurse)
        for t in self._teacher:
            t._apply(fn, recurse)
        return out

    def predict(
        self, waveforms: Tensor, lengths: Tensor | None
    ) -> tuple[list[Tensor], Tensor | None]:
        """Each head's prediction ``[N, S, teacher_dim]`` and the padding mask."""
        res = self.encode(waveforms, lengths, apply_mask=False)
        x = res.encoder.last_hidden_state
        return [head(x) for head in self.heads], res.padding_mask

    @torch.no_grad()
    def teacher_targets(self, waveforms: Tensor, lengths: Tensor | None) -> list[Tensor]:
        """The attached teacher's hidden states at ``target_layers``."""
        if self.attached_teacher is None:
            raise ConfigError(
                "distilhubert: no teacher attached; train with model.teacher=DIR "
                "(speechssl-train) or call attach_teacher()"
            )
        out = self.attached_teacher.extract(
            waveforms, lengths, num_layers=max(self.config.target_layers)
        )
        return [out.hidden_states[i] for i in self.config.target_layers]

    def forward(self, batch: AudioBatch, *, targets: list[Tensor] | None = None) -> PretrainOutput:
        """Distillation loss of ``batch``; ``targets`` (one ``[N, S, teacher_dim]`` per target
        layer) replaces running the attached teacher."""
        if targets is None:
            targets = self.teacher_targets(batch.waveforms, batch.lengths)
        preds, padding_mask = self.predict(batch.waveforms, batch.lengths)
        if len(targets) != len(preds):
            raise ConfigError(
                f"distilhubert: {len(targets)} target layers given, the student has "
                f"{len(preds)} heads"
            )
        terms: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        metrics: dict[str, Tensor] = {}
        total = preds[0].new_zeros(())
        for layer, pred, target in zip(self.config.target_layers, preds, targets, strict=True):
            loss, l1, cos_term, cos_sim = distillation_loss(
                pred, target, padding_mask, self.config.cos_weight
            )
            total = total + loss
            terms[f"l1_{layer}"] = l1
            terms[f"cos_{layer}"] = cos_term
            weights[f"l1_{layer}"] = 1.0
            weights[f"cos_{layer}"] = self.config.cos_weight
            metrics[f"cos_sim_{layer}"] = cos_sim
        frames = (
            preds[0].shape[0] * preds[0].shape[1]
            if padding_mask is None
            else int((~padding_mask).sum())
        )
        record = LossRecord(total=total, terms=terms, weights=weights, sample_size=frames)
        return PretrainOutput(loss=record, metrics=metrics, num_frames=frames)


def check_teacher(config: DistilHubertConfig, teacher: PretrainModel) -> None:
    """The teacher must be a waveform transformer model matching the student's config."""
    tcfg = teacher.config
    enc = getattr(tcfg, "encoder", None)
    if (
        not isinstance(teacher, WaveformEncoderModel)
        or not isinstance(teacher.frontend, WaveformFrontend)
        or type(enc) is not TransformerEncoderConfig
    ):
        raise ConfigError(
            f"distilhubert: the teacher ({teacher.model_name or type(teacher).__name__}) must "
            "be a waveform transformer model (hubert, wav2vec2, data2vec_audio)"
        )
    if enc.num_layers != config.teacher_layers or enc.dim != config.teacher_dim:
        raise ConfigError(
            f"distilhubert: the teacher has {enc.num_layers} layers of {enc.dim}, the student "
            f"was configured for {config.teacher_layers} of {config.teacher_dim}"
        )


def student_overrides(teacher: PretrainModel, num_layers: int = 2) -> dict[str, object]:
    """Config overrides making a student of ``teacher``: its conv stack and layer shape,
    ``num_layers`` layers (no layer drop), its layer count and size for the heads."""
    tcfg = teacher.config
    enc = getattr(tcfg, "encoder", None)
    if type(enc) is not TransformerEncoderConfig or not hasattr(tcfg, "extractor"):
        raise ConfigError(
            f"distilhubert: the teacher ({teacher.model_name}) must be a waveform transformer "
            "model (hubert, wav2vec2, data2vec_audio)"
        )
    return {
        "extractor": dataclasses.asdict(tcfg.extractor),
        "encoder": {
            **dataclasses.asdict(enc),
            "num_layers": min(num_layers, enc.num_layers),
            "layer_drop": 0.0,
        },
        "teacher_layers": enc.num_layers,
        "teacher_dim": enc.dim,
        "target_layers": default_target_layers(enc.num_layers),
    }


def init_student_from_teacher(student: DistilHubertModel, teacher: PretrainModel) -> list[str]:
    """Copy the teacher's front end, mask embedding, positional convolution, encoder
    LayerNorm and first layers into ``student``; returns the copied names."""
    check_teacher(student.config, teacher)
    own = student.state_dict()
    src = teacher.state_dict()
    copied = []
    for name, value in own.items():
        if name.startswith("heads."):
            continue
        if name not in src or src[name].shape != value.shape:
            raise ConfigError(
                f"distilhubert: the teacher has no weight {name!r} of shape "
                f"{tuple(value.shape)} to initialise the student from"
            )
        copied.append(name)
    student.load_state_dict({**own, **{n: src[n] for n in copied}}, strict=True)
    return copied


def build_distilhubert(config: DistilHubertConfig) -> DistilHubertModel:
    """Factory: build each part from its config and hand them to the model."""
    frontend = WaveformFrontend(config.extractor, config.encoder.dim, config.dropout_input)
    masker = SpanMasker(config.encoder.dim, config.mask)
    encoder = build_transformer_encoder(config.encoder)
    heads = nn.ModuleList(
        nn.Linear(config.encoder.dim, config.teacher_dim) for _ in config.target_layers
    )
    return DistilHubertModel(config, frontend, masker, encoder, heads)


def distilhubert_base_config() -> DistilHubertConfig:
    """DistilHuBERT (paper / S3PRL): HuBERT Base's conv stack, 2 post-LN layers of 768
    (12 heads, FFN 3072), no layer drop, heads for teacher layers 4, 8, 12 of a 12-layer
    768-dim teacher, lambda 1."""
    return DistilHubertConfig(
        extractor=base_group_norm_extractor(),
        encoder=dataclasses.replace(
            base_transformer_encoder(pos_conv_kernel=128, pos_conv_groups=16),
            num_layers=2,
            layer_drop=0.0,
        ),
        teacher_layers=12,
        teacher_dim=768,
    )


def distilhubert_tiny_config() -> DistilHubertConfig:
    """Tiny student of ``hubert_tiny``-shaped teachers (tests, demos): the 64-channel conv
    stack, 2 layers of 128, heads for teacher layers 1, 2 of a 2-layer 128-dim teacher.
    ``speechssl-train`` replaces the shapes with the teacher's (:func:`student_overrides`)."""
    base = distilhubert_base_config()
    return dataclasses.replace(
        base,
        extractor=tiny_extractor(base.extractor),
        encoder=tiny_transformer_encoder(
            base.encoder, num_layers=2, pos_conv_kernel=16, pos_conv_groups=4
        ),
        dropout_input=0.05,
        teacher_layers=2,
        teacher_dim=128,
        target_layers=(),
    )


for _size, _make in (("tiny", distilhubert_tiny_config), ("base", distilhubert_base_config)):
    register_model(
        f"distilhubert_{_size}",
        family="distilhubert",
        make_config=_make,
        build=build_distilhubert,
        size=_size,
    )

__all__ = [
    "DistilHubertConfig",
    "DistilHubertModel",
    "build_distilhubert",
    "default_target_layers",
    "distilhubert_base_config",
    "distilhubert_tiny_config",
    "distillation_loss",
    "init_student_from_teacher",
    "student_overrides",
]
