"""Kaldi-compatible features (fbank, MFCC, spectrogram, deltas, CMVN) and corpus-scale dumping.

Batched functions take ``waves [N, T]`` and ``lengths [N]`` and return
``(features [N, F, D], num_frames [N])``; see :mod:`speechssl.features.kaldi`. Names are
imported lazily so ``speechssl.features.store`` and the CLI parser do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CmvnStats": "cmvn",
    "GlobalCMVN": "cmvn",
    "utterance_cmvn": "cmvn",
    "add_deltas": "deltas",
    "compute_features": "kaldi",
    "fbank": "kaldi",
    "mfcc": "kaldi",
    "num_frames": "kaldi",
    "num_frames_int": "kaldi",
    "spectrogram": "kaldi",
    "KaldiFbank": "modules",
    "KaldiFeatures": "modules",
    "KaldiMfcc": "modules",
    "KaldiSpectrogram": "modules",
    "FbankOptions": "options",
    "FrameOptions": "options",
    "MelOptions": "options",
    "MfccOptions": "options",
    "SpectrogramOptions": "options",
    "register_extractor": "extractors",
    "ExtractorSpec": "extractors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"speechssl.features.{module}"), name)
