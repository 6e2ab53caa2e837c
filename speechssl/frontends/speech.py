"""Waveform front end of wav2vec 2.0 / HuBERT / data2vec: a strided conv stack -> `Frames`.

The default stack (``512 x (10,5)`` then ``(3,2) x 4`` and ``(2,2) x 2``) has a total stride
of 320 samples: 20 ms frames (50 Hz) at 16 kHz. Frame ``t`` covers samples
``[320 t, 320 t + 400)``; an utterance of ``L`` samples gives ``conv_output_lengths(L)``
frames, each of which sees only real samples, so padding content never reaches a real
frame. The one statistic that spans time, the per-channel GroupNorm of the first layer
(base models), is computed over real frames only when ``padding_aware_norm`` is on; with
it off the layer reproduces the original (padding-dependent) behaviour exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.frames import Frames
from speechssl.errors import ConfigError

#: wav2vec 2.0 / HuBERT conv stack: (channels, kernel, stride) per layer
BASE_CONV_LAYERS: tuple[tuple[int, int, int], ...] = (
    ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
)


@dataclass(kw_only=True)
class ConvExtractorConfig:
    """The waveform convolution stack and what happens right after it."""

    conv_layers: tuple[tuple[int, int, int], ...] = BASE_CONV_LAYERS
    """``(channels, kernel, stride)`` per conv layer."""
    mode: str = "group_norm"
    """``group_norm``: GroupNorm in the first layer only (base); ``layer_norm``: LayerNorm in
    every layer (large)."""
    conv_bias: bool = False
    """Whether the convolutions have a bias (True for wav2vec 2.0 large)."""
    padding_aware_norm: bool = True
    """Compute the first layer's GroupNorm statistics over real frames only, so an
    utterance's features do not depend on how much padding its batch has."""
    normalize_waveform: bool = False
    """Normalise each waveform to zero mean, unit variance first (large models)."""
    feature_grad_mult: float = 0.1
    """Scale of the gradient flowing into the conv stack (0 freezes it, 1 leaves it)."""

    def __post_init__(self) -> None:
        self.conv_layers = tuple(tuple(int(v) for v in layer) for layer in self.conv_layers)  # type: ignore[misc]
        if self.mode not in ("group_norm", "layer_norm"):
            raise ConfigError(f"extractor mode must be group_norm or layer_norm, got {self.mode!r}")
        if not self.conv_layers or any(len(layer) != 3 for layer in self.conv_layers):
            raise ConfigError(
                f"conv_layers must be (channels, kernel, stride) triples: {self.conv_layers}"
            )
        if self.feature_grad_mult < 0:
            raise ConfigError(f"feature_grad_mult must be >= 0, got {self.feature_grad_mult}")

    @property
    def out_dim(self) -> int:
        return self.conv_layers[-1][0]

    @property
    def total_stride(self) -> int:
        stride = 1
        for _, _, s in self.conv_layers:
            stride *= s
        return stride


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def grad_multiply(x: Tensor, scale: float) -> Tensor:
    return x if scale == 1.0 else GradMultiply.apply(x, scale)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``[N, C, T]``."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def masked_instance_norm(
    x: Tensor, lengths: Tensor, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """Per-channel normalisation of ``x [N, C, T]`` over the first ``lengths[n]`` steps
    (GroupNorm with one channel per group, padding excluded from the statistics)."""
    valid = (torch.arange(x.shape[-1], device=x.device) < lengths.unsqueeze(1)).unsqueeze(1)
    xf = x.float()
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1).to(xf.dtype)
    mean = (xf * valid).sum(dim=-1, keepdim=True) / count
    var = (((xf - mean) * valid) ** 2).sum(dim=-1, keepdim=True) / count
    y = (xf - mean) * torch.rsqrt(var + eps)
    return (y * weight.view(1, -1, 1) + bias.view(1, -1, 1)).to(x.dtype)


class ConvBlock(nn.Module):
    """Conv1d -> optional norm -> GELU."""

    def __init__(self, conv: nn.Conv1d, norm: nn.Module | None) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: Tensor, lengths: Tensor | None, padding_aware: bool) -> Tensor:
        x = self.conv(x)
        if isinstance(self.norm, nn.GroupNorm) and padding_aware and lengths is not None:
            x = masked_instance_norm(x, lengths, self.norm.weight, self.norm.bias, self.norm.eps)
        elif self.norm is not None:
            x = self.norm(x)
        return F.gelu(x)


def conv_output_lengths(lengths: Tensor, conv_layers: tuple[tuple[int, int, int], ...]) -> Tensor:
    """Number of output frames for inputs of ``lengths`` samples (never negative)."""
    out = lengths
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
        out = out.clamp(min=0)
    return out


class ConvFeatureExtractor(nn.Module):
    """Waveform ``[N, T]`` -> conv features ``[N, S, C]`` and frame lengths."""

    def __init__(self, config: ConvExtractorConfig) -> None:
        super().__init__()
        self.config = config
        blocks = []
        in_ch = 1
        for i, (ch, kernel, stride) in enumerate(config.conv_layers):
            conv = nn.Conv1d(in_ch, ch, kernel, stride=stride, bias=config.conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            norm: nn.Module | None = None
            if config.mode == "group_norm" and i == 0:
                norm = nn.GroupNorm(ch, ch, affine=True)
            elif config.mode == "layer_norm":
                norm = ChannelLayerNorm(ch, elementwise_affine=True)
            blocks.append(ConvBlock(conv, norm))
            in_ch = ch
        self.conv_layers = nn.ModuleList(blocks)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.config.conv_layers)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [N, T], got {tuple(waveforms.shape)}")
        if lengths is None:
            lengths = torch.full(
                (waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device
            )
        x = waveforms.unsqueeze(1)
        cur = lengths
        padded = bool((lengths < waveforms.shape[1]).any())
        for block, (_, kernel, stride) in zip(
            self.conv_layers, self.config.conv_layers, strict=True
        ):
            cur = (torch.div(cur - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)
            x = block(x, cur if padded else None, self.config.padding_aware_norm)
        return x.transpose(1, 2), cur


def normalize_waveforms(waveforms: Tensor, lengths: Tensor, eps: float = 1e-7) -> Tensor:
    """Zero mean, unit variance per utterance over its real samples; padding set to 0.

    ``eps`` matches ``transformers``' ``Wav2Vec2FeatureExtractor(do_normalize=True)`` so an
    export reproduces the model exactly (fairseq's ``layer_norm`` used 1e-5; the two agree
    to ~1e-4 relative for speech at normal levels)."""
    valid = torch.arange(waveforms.shape[1], device=waveforms.device) < lengths.unsqueeze(1)
    count = lengths.clamp(min=1).unsqueeze(1).to(waveforms.dtype)
    mean = (waveforms * valid).sum(dim=1, keepdim=True) / count
    var = (((waveforms - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return ((waveforms - mean) * torch.rsqrt(var + eps)) * valid


@dataclass
class FrontendOutput:
    """What the waveform front end hands the rest of the model.

    Attributes:
        frames: projected frames ``[N, S, D]`` (after input dropout) with their padding mask.
        features: LayerNorm'd conv features ``[N, S, C]`` before projection (the
            quantizer input of wav2vec 2.0).
        feature_penalty: mean squared conv feature over real frames (fairseq's
            ``features_pen``), a scalar.
    """

    frames: Frames
    features: Tensor
    feature_penalty: Tensor


class WaveformFrontend(nn.Module):
    """Conv extractor -> LayerNorm -> Linear to the encoder dim -> dropout -> `Frames`."""

    #: samples per second the front end expects
    sample_rate: int = 16000

    def __init__(
        self, config: ConvExtractorConfig, out_dim: int, dropout_input: float = 0.0
    ) -> None:
        super().__init__()
        self.config = config
        self.extractor = ConvFeatureExtractor(config)
        self.layer_norm = nn.LayerNorm(config.out_dim)
        self.projection = nn.Linear(config.out_dim, out_dim)
        self.dropout_input = nn.Dropout(dropout_input)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.config.total_stride

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames for waveforms of ``lengths`` samples."""
        return self.extractor.output_lengths(lengths)

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> FrontendOutput:
        if lengths is None:
            lengths = torch.full(
                (waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device
            )
        if self.config.normalize_waveform:
            waveforms = normalize_waveforms(waveforms, lengths)
        mult = self.config.feature_grad_mult
        if mult > 0:
            feats, frame_lengths = self.extractor(waveforms, lengths)
            feats = grad_multiply(feats, mult)
        else:
            with torch.no_grad():
                feats, frame_lengths = self.extractor(waveforms, lengths)
        padding_mask = Frames.padding_mask_from_lengths(frame_lengths, feats.shape[1])
        has_padding = bool(padding_mask.any())
        sq = feats.float().pow(2)
        if has_padding:
            valid = (~padding_mask).unsqueeze(-1)
            penalty = (sq * valid).sum() / (valid.sum().clamp(min=1) * feats.shape[-1])
        else:
            penalty = sq.mean()
        normed = self.layer_norm(feats)
        x = self.dropout_input(self.projection(normed))
        return FrontendOutput(
            frames=Frames(x, padding_mask if has_padding else None),
            features=normed,
            feature_penalty=penalty,
        )
