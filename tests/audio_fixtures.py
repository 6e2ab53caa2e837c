"""Helpers that build real audio files and Kaldi data dirs for tests (import as a module).

Everything is written with soundfile, so tests exercise the real decoding path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_audio(
    path: Path,
    seconds: float = 0.5,
    rate: int = 16000,
    channels: int = 1,
    *,
    subtype: str | None = None,
    fill: str = "noise",
    seed: int = 0,
) -> Path:
    """Write a real audio file (format from the suffix).

    ``fill``: ``noise`` (quiet Gaussian noise), ``zeros``, ``nan`` (float WAV with NaNs),
    ``inf``. Returns ``path``.
    """
    n = round(seconds * rate)
    rng = np.random.default_rng(seed)
    data = (0.1 * rng.standard_normal((n, channels))).astype(np.float32)
    if fill == "zeros":
        data[:] = 0.0
    elif fill == "nan":
        data[n // 2 :: 7] = np.nan
        subtype = "FLOAT"
    elif fill == "inf":
        data[n // 3] = np.inf
        subtype = "FLOAT"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data if channels > 1 else data[:, 0], rate, subtype=subtype)
    return path


def make_data_dir(
    root: Path,
    *,
    speakers: int = 2,
    utts_per_speaker: int = 3,
    seconds: float = 0.5,
    rate: int = 16000,
    text: bool = True,
    utt2dur: bool = True,
    suffix: str = "wav",
) -> Path:
    """A small valid data dir ``root/data`` with audio in ``root/audio``; returns the dir."""
    from speechssl.data.kaldi_dir import write_data_dir

    wav_scp, utt2spk, transcripts, durs = {}, {}, {}, {}
    for s in range(speakers):
        spk = f"spk{s}"
        for u in range(utts_per_speaker):
            utt = f"{spk}-u{u:03d}"
            dur = seconds + 0.1 * u
            p = write_audio(root / "audio" / f"{utt}.{suffix}", dur, rate, seed=s * 100 + u)
            wav_scp[utt] = str(p)
            utt2spk[utt] = spk
            transcripts[utt] = f"HELLO WORLD {u}"
            durs[utt] = round(dur * rate) / rate
    out = root / "data"
    write_data_dir(
        out,
        wav_scp=wav_scp,
        utt2spk=utt2spk,
        text=transcripts if text else None,
        utt2dur=durs if utt2dur else None,
    )
    return out
