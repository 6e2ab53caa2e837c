"""Stacked-fbank front end of w2v-BERT 2.0 / Conformer models -> `Frames`.

Waveform ``[N, T]`` -> 80-dim Kaldi fbank (``speechssl.features.KaldiFbank``: 25 ms povey
window every 10 ms, pre-emphasis 0.97, DC removal, no dither, samples scaled to the 16-bit
range) -> per-utterance, per-mel-bin mean/variance normalisation over the real frames ->
stacking of ``stride`` consecutive frames into one (``[N, F // 2, 160]``: 20 ms, 50 Hz) ->
LayerNorm -> Linear to the encoder dim -> dropout.

This is what ``transformers``' ``SeamlessM4TFeatureExtractor`` feeds
``Wav2Vec2BertModel`` (its ``input_features``), followed by that model's
``feature_projection``; :meth:`FbankStackFrontend.features` returns the stacked features
(the ``input_features`` equivalent) and :meth:`FbankStackFrontend.project` the rest, so the
two halves can be checked separately. An utterance of ``F`` fbank frames gives
``F // stride`` stacked frames; a trailing odd frame is dropped (as the reference does), and
a stacked frame of a padded batch is real only if all its fbank frames are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechssl.core.frames import Frames
from speechssl.errors import ConfigError
from speechssl.features.modules import KaldiFbank
from speechssl.features.options import FbankOptions, FrameOptions, MelOptions
from speechssl.frontends.speech import FrontendOutput

NORMALIZATIONS = ("utterance", "none")


@dataclass(kw_only=True)
class FbankStackConfig:
    """Fbank extraction, normalisation and stacking."""

    num_mel_bins: int = 80
    """Mel filters of the fbank."""
    stride: int = 2
    """Consecutive fbank frames stacked into one encoder frame."""
    sample_rate: int = 16000
    """Sample rate of the waveforms."""
    waveform_scale: float = 32768.0
    """Samples are multiplied by this first (Kaldi works on the 16-bit integer range)."""
    dither: float = 0.0
    """Kaldi dither (0 = deterministic features, as the reference extractor)."""
    normalize: str = "utterance"
    """``utterance``: zero mean, unit variance per utterance and mel bin over its real
    frames (unbiased variance, epsilon 1e-7, as the reference); ``none``: raw log-mel."""

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"fbank stride must be >= 1, got {self.stride}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(
                f"fbank normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}"
            )

    @property
    def feature_dim(self) -> int:
        """Dimension of a stacked frame."""
        return self.num_mel_bins * self.stride

    def fbank_options(self) -> FbankOptions:
        return FbankOptions(
            frame=FrameOptions(sample_frequency=float(self.sample_rate), dither=self.dither),
            mel=MelOptions(num_mel_bins=self.num_mel_bins),
        )


def normalize_per_utterance(feats: Tensor, num_frames: Tensor, eps: float = 1e-7) -> Tensor:
    """``feats [N, F, D]`` minus each utterance's per-bin mean over its first
    ``num_frames[n]`` frames, divided by ``sqrt(unbiased var + eps)``; padding set to 0."""
    valid = torch.arange(feats.shape[1], device=feats.device) < num_frames.unsqueeze(1)
    valid_f = valid.unsqueeze(-1).to(feats.dtype)
    count = num_frames.clamp(min=1).to(feats.dtype).view(-1, 1, 1)
    mean = (feats * valid_f).sum(dim=1, keepdim=True) / count
    sq = (((feats - mean) * valid_f) ** 2).sum(dim=1, keepdim=True)
    var = sq / (num_frames - 1).clamp(min=1).to(feats.dtype).view(-1, 1, 1)
    return (feats - mean) * torch.rsqrt(var + eps) * valid_f


def stack_frames(feats: Tensor, num_frames: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """``[N, F, D]`` -> ``([N, F // stride, stride * D], num_frames // stride)``: frames
    ``stride*s .. stride*s + stride - 1`` concatenated into frame ``s``."""
    n, f, d = feats.shape
    s = f // stride
    stacked = feats[:, : s * stride].reshape(n, s, stride * d)
    return stacked, torch.div(num_frames, stride, rounding_mode="floor")


class FbankStackFrontend(nn.Module):
    """Waveforms -> stacked normalised fbank -> LayerNorm -> Linear -> dropout -> `Frames`."""

    def __init__(self, config: FbankStackConfig, out_dim: int, dropout_input: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.sample_rate = config.sample_rate
        self.fbank = KaldiFbank(config.fbank_options())
        self.layer_norm = nn.LayerNorm(config.feature_dim)
        self.projection = nn.Linear(config.feature_dim, out_dim)
        self.dropout_input = nn.Dropout(dropout_input)

    @property
    def frame_rate(self) -> float:
        return self.fbank.frame_rate / self.config.stride

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Encoder frames for waveforms of ``lengths`` samples."""
        from speechssl.features.kaldi import num_frames

        nf = num_frames(lengths, self.fbank.opts.frame)
        return torch.div(nf, self.config.stride, rounding_mode="floor")

    @torch.no_grad()
    def features(self, waveforms: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``([N, S, stride * num_mel_bins] float32, frames [N])``: the stacked features the
        projection takes (``Wav2Vec2BertModel``'s ``input_features``); padding is 0."""
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [N, T], got {tuple(waveforms.shape)}")
        c = self.config
        feats, nf = self.fbank(waveforms.float() * c.waveform_scale, lengths)
        feats = feats.float()
        if c.normalize == "utterance":
            feats = normalize_per_utterance(feats, nf)
        return stack_frames(feats, nf, c.stride)

    def project(self, stacked: Tensor, frame_lengths: Tensor) -> FrontendOutput:
        """LayerNorm + projection + dropout of stacked features."""
        padding_mask = Frames.padding_mask_from_lengths(frame_lengths, stacked.shape[1])
        has_padding = bool(padding_mask.any())
        normed = self.layer_norm(stacked)
        x = self.dropout_input(self.projection(normed))
        return FrontendOutput(
            frames=Frames(x, padding_mask if has_padding else None),
            features=normed,
            feature_penalty=stacked.new_zeros(()),
        )

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> FrontendOutput:
        """``features`` then ``project``; ``FrontendOutput.features`` are the LayerNorm'd
        stacked features (the quantizer input), the feature penalty is 0 (no conv stack)."""
        stacked, frame_lengths = self.features(waveforms, lengths)
        return self.project(stacked, frame_lengths)


__all__ = [
    "FbankStackConfig",
    "FbankStackFrontend",
    "normalize_per_utterance",
    "stack_frames",
]
