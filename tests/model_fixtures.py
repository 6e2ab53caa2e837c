"""Helpers for model/core tests: speech-like audio written to and read back from real WAV
files, log-mel features, and BEST-RQ style labels (no k-means needed).

The audio is a small source-filter synthesis (glottal pulse trains through formant
resonators for vowels, band-passed noise for fricatives, near-silence for pauses), so
frames have phone-like structure that a model can learn from; it is a stand-in used until
the bundled eSpeak NG corpus fixture is available.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from scipy.signal import butter, lfilter

from speechssl.core.quantizers import RandomProjectionQuantizer
from speechssl.data.batch import LABEL_PAD, AudioBatch

SR = 16000
# (F1, F2, F3) in Hz of a few vowels
VOWELS = [
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
]
FRICATIVES = [(3500, 7000), (1500, 3500)]


def _resonator(x: np.ndarray, freq: float, bw: float) -> np.ndarray:
    r = np.exp(-np.pi * bw / SR)
    theta = 2 * np.pi * freq / SR
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return lfilter([1.0 - r], a, x)


def synth_utterance(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """One utterance: float32 samples and the phone id of every 10 ms (100 Hz)."""
    n = int(seconds * SR)
    out = np.zeros(n, dtype=np.float64)
    phones = np.zeros(n // 160 + 1, dtype=np.int64)
    pos = 0
    f0 = rng.uniform(100, 190)
    while pos < n:
        dur = int(rng.uniform(0.06, 0.16) * SR)
        end = min(n, pos + dur)
        kind = int(rng.integers(0, len(VOWELS) + len(FRICATIVES) + 1))
        length = end - pos
        if kind < len(VOWELS):
            period = max(int(SR / (f0 * rng.uniform(0.9, 1.1))), 1)
            src = np.zeros(length)
            src[::period] = 1.0
            seg = sum(_resonator(src, f, 60 + 20 * i) for i, f in enumerate(VOWELS[kind]))
        elif kind < len(VOWELS) + len(FRICATIVES):
            lo, hi = FRICATIVES[kind - len(VOWELS)]
            b, a = butter(2, [lo / (SR / 2), min(hi / (SR / 2), 0.99)], btype="band")
            seg = 0.3 * lfilter(b, a, rng.standard_normal(length))
        else:
            seg = 0.003 * rng.standard_normal(length)
        seg = np.asarray(seg, dtype=np.float64)
        ramp = min(80, length // 2)
        if ramp > 0:
            win = np.ones(length)
            win[:ramp] = np.linspace(0, 1, ramp)
            win[-ramp:] = np.linspace(1, 0, ramp)
            seg = seg * win
        out[pos:end] = seg
        phones[pos // 160 : end // 160 + 1] = kind
        pos = end
        f0 *= rng.uniform(0.95, 1.05)
    out = out / (np.abs(out).max() + 1e-9) * 0.5 + 0.001 * rng.standard_normal(n)
    return out.astype(np.float32), phones


def write_corpus(
    root: Path, num_utts: int, seconds: tuple[float, float], seed: int = 0
) -> list[Path]:
    """Write ``num_utts`` 16 kHz WAV files under ``root``; returns their paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num_utts):
        audio, _ = synth_utterance(rng, float(rng.uniform(*seconds)))
        path = root / f"utt{i:03d}.wav"
        sf.write(path, audio, SR, subtype="PCM_16")
        paths.append(path)
    return paths


def load_waveforms(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read WAV files through soundfile into a right-padded ``[N, T]`` batch + lengths."""
    waves = []
    for p in paths:
        data, sr = sf.read(p, dtype="float32")
        assert sr == SR
        waves.append(torch.from_numpy(data))
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    return batch, lengths, [p.stem for p in paths]


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


def make_batch(paths: list[Path], codebook_size: int = 32, name: str = "rpq") -> AudioBatch:
    waves, lengths, ids = load_waveforms(paths)
    labels = random_projection_labels(waves, lengths, codebook_size)
    return AudioBatch(waves, lengths, {name: labels}, {name: 100.0}, ids)
