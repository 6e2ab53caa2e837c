"""Kaldi-compatible features (fbank, MFCC, spectrogram, deltas, CMVN) and corpus-scale dumping.

Batched functions take ``waves [N, T]`` and ``lengths [N]`` and return
``(features [N, F, D], num_frames [N])``; see :mod:`speechssl.features.kaldi`.
"""

from speechssl.features.cmvn import CmvnStats, GlobalCMVN, utterance_cmvn
from speechssl.features.deltas import add_deltas
from speechssl.features.kaldi import (
    compute_features,
    fbank,
    mfcc,
    num_frames,
    num_frames_int,
    spectrogram,
)
from speechssl.features.modules import KaldiFbank, KaldiFeatures, KaldiMfcc, KaldiSpectrogram
from speechssl.features.options import (
    FbankOptions,
    FrameOptions,
    MelOptions,
    MfccOptions,
    SpectrogramOptions,
)

__all__ = [
    "CmvnStats",
    "FbankOptions",
    "FrameOptions",
    "GlobalCMVN",
    "KaldiFbank",
    "KaldiFeatures",
    "KaldiMfcc",
    "KaldiSpectrogram",
    "MelOptions",
    "MfccOptions",
    "SpectrogramOptions",
    "add_deltas",
    "compute_features",
    "fbank",
    "mfcc",
    "num_frames",
    "num_frames_int",
    "spectrogram",
    "utterance_cmvn",
]
