"""Helpers for model/core tests: bundled-corpus audio (the session ``synth_corpus``
fixture) loaded through the data loader, log-mel features, and BEST-RQ style labels (a
frozen random-projection quantizer: no k-means needed).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchaudio

from speechssl.core.quantizers import RandomProjectionQuantizer
from speechssl.data.audio import LoadOptions
from speechssl.data.batch import LABEL_PAD, AudioBatch
from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance

SR = 16000


def load_synth(
    corpus_root: Path, num_utts: int, max_seconds: float | None = None, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``num_utts`` utterances of the bundled corpus's ``split`` through the data
    loader (``speechssl.data.audio``), cropped to ``max_seconds``, right-padded ``[N, T]``."""
    data = KaldiDataDir(Path(corpus_root) / split)
    ids = data.utt_ids()[:num_utts]
    waves = []
    for utt in ids:
        wave, rate = load_utterance(data, utt, LoadOptions(sample_rate=SR))
        assert rate == SR
        waves.append(wave if max_seconds is None else wave[: int(max_seconds * SR)])
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths, ids


def log_mel(
    waveforms: torch.Tensor, lengths: torch.Tensor, n_mels: int = 40
) -> tuple[torch.Tensor, torch.Tensor]:
    """25 ms / 10 ms log-mel frames ``[N, F, n_mels]`` (snip-edges framing) and frame counts."""
    spec = (
        torch.stft(
            waveforms,
            n_fft=400,
            hop_length=160,
            win_length=400,
            window=torch.hann_window(400),
            center=False,
            return_complex=True,
        )
        .abs()
        .pow(2)
    )
    fb = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, n_mels, SR)
    mel = torch.log(spec.transpose(1, 2) @ fb + 1e-6)
    frames = ((lengths - 400) // 160 + 1).clamp(min=0)
    return mel, frames


def random_projection_labels(
    waveforms: torch.Tensor, lengths: torch.Tensor, codebook_size: int = 32, seed: int = 0
) -> torch.Tensor:
    """BEST-RQ labels at 100 Hz, ``-100`` padded: log-mel -> normalise -> random projection
    -> nearest random code."""
    mel, frames = log_mel(waveforms, lengths)
    valid = torch.arange(mel.shape[1]) < frames.unsqueeze(1)
    rpq = RandomProjectionQuantizer(mel.shape[-1], codebook_size, 16, seed=seed)
    rpq.fit_normalizer(mel[valid])
    labels = rpq(mel)
    return labels.masked_fill(~valid, LABEL_PAD)


def make_batch(
    corpus_root: Path,
    num_utts: int,
    max_seconds: float | None = 1.5,
    codebook_size: int = 32,
    name: str = "rpq",
) -> AudioBatch:
    """A pretraining batch of bundled-corpus audio with 100 Hz BEST-RQ labels."""
    waves, lengths, ids = load_synth(corpus_root, num_utts, max_seconds)
    labels = random_projection_labels(waves, lengths, codebook_size)
    return AudioBatch(waves, lengths, {name: labels}, {name: 100.0}, ids)
