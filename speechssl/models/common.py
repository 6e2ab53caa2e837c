"""Plumbing shared by the model families (speech and vision): config coercion and checks,
the published encoder sizes the presets derive from, label-stream handling of the
masked-prediction families, the Gumbel-quantized contrastive parts of wav2vec 2.0 and
w2v-BERT, and the bookkeeping every ``forward``/``extract`` repeats.

Each helper holds logic that is the same in every family using it; what differs between
families (targets, objectives, defaults) stays in the family's module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from speechssl.core.masking import SpanMaskConfig
from speechssl.core.objectives.contrastive import sample_distractors
from speechssl.core.objectives.masked_prediction import IGNORE_INDEX, masked_accuracy
from speechssl.core.quantizers import GumbelVectorQuantizer, QuantizerOutput
from speechssl.core.transformer import EncoderOutput, TransformerEncoderConfig
from speechssl.errors import ConfigError
from speechssl.frontends.speech import ConvExtractorConfig
from speechssl.models.base import ExtractOutput

# --------------------------------------------------------------------------- configs


def coerce_subconfigs(config: object, groups: Mapping[str, type]) -> None:
    """Turn each field of ``config`` named in ``groups`` that holds a plain dict (Hydra,
    JSON) into its config dataclass."""
    for name, cls in groups.items():
        value = getattr(config, name)
        if isinstance(value, dict):
            setattr(config, name, cls(**value))


def check_gumbel_temp(family: str, gumbel_temp: Sequence[float]) -> tuple[float, float, float]:
    """``gumbel_temp`` as a float triple (start, floor, decay); a ConfigError otherwise."""
    temps = tuple(float(t) for t in gumbel_temp)
    if len(temps) != 3:
        raise ConfigError(f"{family}: gumbel_temp must be (max, min, decay), got {temps}")
    return temps


def check_num_negatives(family: str, num_negatives: int) -> None:
    if num_negatives < 1:
        raise ConfigError(f"{family}: num_negatives must be >= 1, got {num_negatives}")


def check_label_streams(
    family: str, label_streams: Sequence[str], num_classes: Sequence[int]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Normalised ``(label_streams, num_classes)``; named streams must match the classes."""
    streams = tuple(str(s) for s in label_streams)
    classes = tuple(int(k) for k in num_classes)
    if streams and len(streams) != len(classes):
        raise ConfigError(
            f"{family}: {len(streams)} label_streams {streams} but "
            f"{len(classes)} num_classes {classes}"
        )
    return streams, classes


# --------------------------------------------------------------------------- presets

#: narrow conv stack with the same 320-sample (20 ms) total stride as the base stack
TINY_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    ((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2
)


def base_transformer_encoder(
    *, pos_conv_kernel: int = 128, pos_conv_groups: int = 16
) -> TransformerEncoderConfig:
    """The Base encoder of wav2vec 2.0 / HuBERT / data2vec audio: 12 post-LN layers of 768
    (12 heads, FFN 3072), dropout 0.1, attention dropout 0.1, activation dropout 0, layer
    drop 0.05; the position convolution is the family's."""
    return TransformerEncoderConfig(
        dim=768,
        num_layers=12,
        num_heads=12,
        ffn_dim=3072,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        layer_norm_first=False,
        layer_drop=0.05,
        pos_conv_kernel=pos_conv_kernel,
        pos_conv_groups=pos_conv_groups,
    )


def large_transformer_encoder(base: TransformerEncoderConfig) -> TransformerEncoderConfig:
    """The Large encoder from a Base one: 24 pre-LN layers of 1024 (16 heads, FFN 4096), no
    dropout or layer drop."""
    return dataclasses.replace(
        base,
        dim=1024,
        num_layers=24,
        num_heads=16,
        ffn_dim=4096,
        dropout=0.0,
        attention_dropout=0.0,
        layer_norm_first=True,
        layer_drop=0.0,
    )


def tiny_transformer_encoder(
    base: TransformerEncoderConfig, *, num_layers: int = 2, **overrides: Any
) -> TransformerEncoderConfig:
    """A tiny encoder from a Base one: ``num_layers`` layers of 128 (4 heads, FFN 256),
    dropout 0.05, no attention dropout or layer drop; ``overrides`` adjust the rest."""
    return dataclasses.replace(
        base,
        dim=128,
        num_layers=num_layers,
        num_heads=4,
        ffn_dim=256,
        dropout=0.05,
        attention_dropout=0.0,
        layer_drop=0.0,
        **overrides,
    )


def base_group_norm_extractor() -> ConvExtractorConfig:
    """The Base conv stack of wav2vec 2.0 / HuBERT: GroupNorm in the first layer, no conv
    bias, feature grad mult 0.1."""
    return ConvExtractorConfig(mode="group_norm", conv_bias=False, feature_grad_mult=0.1)


def tiny_extractor(base: ConvExtractorConfig) -> ConvExtractorConfig:
    """The 64-channel conv stack (20 ms frames) with full conv gradient."""
    return dataclasses.replace(base, conv_layers=TINY_CONV_LAYERS, feature_grad_mult=1.0)


def span_mask(mask_prob: float) -> SpanMaskConfig:
    """The published span masking: spans of 10 frames, at least 2, ``mask_prob`` starts."""
    return SpanMaskConfig(mask_prob=mask_prob, mask_length=10, min_masks=2)


# --------------------------------------------------------------------------- forward bookkeeping


def extract_output(
    encoder: EncoderOutput,
    padding_mask: Tensor | None,
    frame_rate: float,
    num_layers: int | None,
    total_layers: int,
) -> ExtractOutput:
    """The :class:`ExtractOutput` of an encoder pass run with ``output_hidden_states``;
    ``last_hidden_state`` only when all ``total_layers`` layers ran."""
    hidden = encoder.hidden_states
    assert hidden is not None
    complete = num_layers is None or num_layers == total_layers
    return ExtractOutput(
        hidden_states=hidden,
        padding_mask=padding_mask,
        frame_rate=frame_rate,
        last_hidden_state=encoder.last_hidden_state if complete else None,
    )


def real_frame_count(time_mask: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Frames that are not padding, as a scalar tensor on the mask's device."""
    if padding_mask is not None:
        return (~padding_mask).sum()
    n, s = time_mask.shape
    return torch.tensor(n * s, device=time_mask.device)


def mask_fraction(time_mask: Tensor, real: Tensor) -> Tensor:
    """Masked share of the ``real`` frames (detached float32 scalar, a logged metric)."""
    return (time_mask.sum() / real.clamp(min=1)).detach().float()


def masked_accuracy_metrics(
    logits: Mapping[str, Tensor], targets: Mapping[str, Tensor], mask: Tensor
) -> dict[str, Tensor]:
    """Accuracies of every label stream: the first stream's under the plain names
    (``acc_masked``, ...), and with several streams each also as ``<name>/<stream>``."""
    names = list(logits)
    metrics: dict[str, Tensor] = {}
    for i, name in enumerate(names):
        for key, value in masked_accuracy(logits[name], targets[name], mask).items():
            if i == 0:
                metrics[key] = value
            if len(names) > 1:
                metrics[f"{key}/{name}"] = value
    return metrics


def resolve_label_streams(
    family: str,
    label_streams: Sequence[str],
    num_classes: Sequence[int],
    available: Mapping[str, Tensor],
) -> list[str]:
    """The batch's label streams in ``num_classes`` order: the configured names, or all of
    the batch's in sorted order; a ConfigError when they do not match the classes."""
    names = list(label_streams) or sorted(available)
    missing = [n for n in names if n not in available]
    if missing or len(names) != len(num_classes):
        raise ConfigError(
            f"{family} expects {len(num_classes)} label stream(s) "
            f"{list(label_streams) or ''} (num_classes {tuple(num_classes)}), "
            f"batch has {sorted(available)}"
        )
    return names


def first_out_of_range(labels: Tensor, num_classes: int) -> int | None:
    """Index of the first row of ``labels`` holding a label outside ``[0, num_classes)``
    (``-100`` padding allowed), or None."""
    bad = ((labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_classes))).any(dim=1)
    if bool(bad.any()):
        return int(bad.nonzero()[0])
    return None


# --------------------------------------------------------------------------- quantized contrast


@dataclass
class QuantizedContrast:
    """The contrastive task of one pass: predictions at the masked frames, their quantized
    targets, and the sampled distractors.

    Attributes:
        quantized: the quantizer's output on the masked frames' features.
        pred: ``[M, final_dim]`` projected context vectors of the masked frames.
        targets: ``[M, final_dim]`` projected quantized targets.
        distractors: ``[M, K, final_dim]`` targets of other masked frames.
        valid: ``[M, K]`` True where a distractor was drawn.
    """

    quantized: QuantizerOutput
    pred: Tensor
    targets: Tensor
    distractors: Tensor
    valid: Tensor


class GumbelContrastMixin(nn.Module):
    """Quantizer, projections and feature dropout of wav2vec 2.0's contrastive task, with
    the annealed Gumbel temperature kept as state (``num_updates`` buffer) so a resumed
    run continues from it. Put before the model's base class."""

    quantizer: GumbelVectorQuantizer
    project_q: nn.Linear
    final_proj: nn.Linear
    dropout_features: nn.Dropout
    num_updates: Tensor

    def init_contrast_parts(
        self,
        quantizer: GumbelVectorQuantizer,
        *,
        codevector_dim: int,
        context_dim: int,
        final_dim: int,
        dropout_features: float,
    ) -> None:
        self.quantizer = quantizer
        self.project_q = nn.Linear(codevector_dim, final_dim)
        self.final_proj = nn.Linear(context_dim, final_dim)
        self.dropout_features = nn.Dropout(dropout_features)

    def init_temperature_state(self) -> None:
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def after_optimizer_step(self, num_updates: int) -> None:
        self.num_updates.fill_(num_updates)
        self.quantizer.set_num_updates(num_updates)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.quantizer.set_num_updates(int(self.num_updates))

    def quantized_contrast(
        self,
        features: Tensor,
        context: Tensor,
        time_mask: Tensor,
        num_negatives: int,
        generator: torch.Generator | None = None,
    ) -> QuantizedContrast:
        """Quantize the (dropped-out) unmasked ``features`` at the masked frames, project
        them and the ``context`` there, and draw ``num_negatives`` distractors per frame
        from the same utterance."""
        q = self.quantizer(self.dropout_features(features)[time_mask], generator=generator)
        targets = self.project_q(q.quantized)
        pred = self.final_proj(context[time_mask])
        index, valid = sample_distractors(time_mask.sum(dim=1), num_negatives, generator=generator)
        return QuantizedContrast(
            quantized=q, pred=pred, targets=targets, distractors=targets[index], valid=valid
        )


class GumbelQuantizerSettings(Protocol):
    """The config fields a Gumbel quantizer is built from (wav2vec 2.0, w2v-BERT)."""

    codebook_groups: int
    codebook_vars: int
    gumbel_temp: tuple[float, float, float]
    distributed_perplexity: bool


def build_gumbel_quantizer(
    config: GumbelQuantizerSettings, input_dim: int, codevector_dim: int
) -> GumbelVectorQuantizer:
    """The Gumbel quantizer of ``config``'s codebooks and temperature schedule, quantizing
    ``input_dim`` features into ``codevector_dim`` code vectors."""
    return GumbelVectorQuantizer(
        input_dim,
        config.codebook_groups,
        config.codebook_vars,
        codevector_dim,
        config.gumbel_temp,
        distributed=config.distributed_perplexity,
    )


def quantizer_metrics(q: QuantizerOutput) -> dict[str, Tensor]:
    """The quantizer's logged metrics: code and softmax perplexities, Gumbel temperature."""
    return {
        "code_perplexity": q.code_perplexity,
        "prob_perplexity": q.prob_perplexity.detach(),
        "temperature": torch.tensor(q.temperature),
    }
