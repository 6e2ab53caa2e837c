"""``nn.Module`` front ends: Kaldi features inside a model.

The modules hold only options (window, mel and DCT tables are cached per device and dtype,
so ``state_dict`` stays empty and checkpoints do not depend on feature tables). ``forward``
is differentiable w.r.t. the waveform (torch path); under ``torch.no_grad`` on CUDA it runs
the fused Triton kernels. Neither path synchronises with the device.
"""

from __future__ import annotations

from torch import Tensor, nn

from speechssl.features.kaldi import Backend, compute_features
from speechssl.features.options import (
    FbankOptions,
    FeatureOptions,
    MfccOptions,
    SpectrogramOptions,
    options_to_dict,
)


class KaldiFeatures(nn.Module):
    """Kaldi-compatible features of a padded batch: ``(waves [N, T], lengths [N])`` ->
    ``(features [N, F, D], num_frames [N])``."""

    def __init__(self, opts: FeatureOptions, backend: Backend = "auto") -> None:
        super().__init__()
        self.opts = opts
        self.backend: Backend = backend

    @property
    def dim(self) -> int:
        return self.opts.dim

    @property
    def frame_rate(self) -> float:
        return self.opts.frame.frame_rate

    def forward(
        self, waves: Tensor, lengths: Tensor | None = None, seeds: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return compute_features(waves, lengths, self.opts, seeds=seeds, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{type(self.opts).__name__}({options_to_dict(self.opts)})"


class KaldiFbank(KaldiFeatures):
    """Log mel filterbank front end (e.g. 80-dim fbank for w2v-BERT / Conformer models)."""

    def __init__(self, opts: FbankOptions | None = None, backend: Backend = "auto") -> None:
        super().__init__(opts or FbankOptions(), backend)


class KaldiMfcc(KaldiFeatures):
    """MFCC front end."""

    def __init__(self, opts: MfccOptions | None = None, backend: Backend = "auto") -> None:
        super().__init__(opts or MfccOptions(), backend)


class KaldiSpectrogram(KaldiFeatures):
    """Log power spectrogram front end."""

    def __init__(self, opts: SpectrogramOptions | None = None, backend: Backend = "auto") -> None:
        super().__init__(opts or SpectrogramOptions(), backend)
