"""Acoustic degradations so the synthetic corpus is not trivially clean.

* Reverberation: convolution with a synthetic room impulse response, a direct-path impulse
  followed by exponentially decaying Gaussian noise whose energy falls by 60 dB after RT60.
* Additive noise at a chosen SNR: white, pink (1/f power) or babble (a mixture of other
  synthetic talkers, supplied by the caller).
* A very low noise floor, so no sample stretch is digital silence.

Every function is a pure function of its inputs and the ``numpy.random.Generator`` it is
given. Signals are float64 mono arrays at one sample rate; SNRs are in dB, computed against
the power of the speech samples the caller marks (silence excluded).
"""

from __future__ import annotations

import numpy as np


def synthetic_rir(
    rng: np.random.Generator, sample_rate: int, rt60: float, direct_to_reverb_db: float
) -> np.ndarray:
    """A room impulse response: unit direct path then a decaying noise tail.

    Args:
        rt60: seconds for the reverberant energy to decay by 60 dB.
        direct_to_reverb_db: energy of the direct impulse over the energy of the tail.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    length = max(2, round(rt60 * sample_rate))
    t = np.arange(length) / sample_rate
    # amplitude decays by 10^(-3) (energy by 60 dB) at t = rt60
    tail = rng.standard_normal(length) * np.exp(-3.0 * np.log(10.0) * t / rt60)
    tail[0] = 0.0
    # a short onset gap, as the first reflections arrive a few ms after the direct sound
    onset = int(0.0025 * sample_rate)
    tail[1 : onset + 1] = 0.0
    tail_energy = float(np.sum(tail**2))
    if tail_energy > 0:
        tail *= np.sqrt(10 ** (-direct_to_reverb_db / 10) / tail_energy)
    rir = tail
    rir[0] = 1.0
    return rir


def reverberate(signal: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve and keep the input's length (the direct path stays time-aligned)."""
    n = len(signal) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(rir, size), size)[: len(signal)]
    return out


def white_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    return rng.standard_normal(length)


def pink_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum (DC removed)."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.arange(len(spectrum), dtype=float)
    freqs[0] = 1.0
    spectrum /= np.sqrt(freqs)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, length)


def babble_noise(rng: np.random.Generator, talkers: list[np.ndarray], length: int) -> np.ndarray:
    """Sum of talker signals, each level-matched, looped and started at a random offset."""
    if not talkers:
        raise ValueError("babble needs at least one talker")
    out = np.zeros(length)
    for talker in talkers:
        power = float(np.mean(talker**2)) if len(talker) else 0.0
        if power <= 0:
            continue
        reps = int(np.ceil((length + len(talker)) / len(talker)))
        looped = np.tile(talker, reps)
        start = int(rng.integers(len(talker)))
        out += looped[start : start + length] / np.sqrt(power)
    return out


def add_noise(
    signal: np.ndarray, noise: np.ndarray, snr_db: float, speech_mask: np.ndarray | None = None
) -> np.ndarray:
    """``signal + g * noise`` with ``g`` set so speech power / noise power = ``snr_db``.

    ``speech_mask`` (bool, same length) selects the samples whose power counts as speech;
    without it the whole signal counts.
    """
    if len(noise) != len(signal):
        raise ValueError(f"noise length {len(noise)} != signal length {len(signal)}")
    speech = signal[speech_mask] if speech_mask is not None and speech_mask.any() else signal
    p_speech = float(np.mean(speech**2)) if len(speech) else 0.0
    p_noise = float(np.mean(noise**2))
    if p_speech <= 0 or p_noise <= 0:
        return signal.copy()
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    return signal + gain * noise


def normalize_level(
    signal: np.ndarray, rms_dbfs: float, speech_mask: np.ndarray | None = None, peak: float = 0.98
) -> np.ndarray:
    """Scale so the speech RMS is ``rms_dbfs`` (full scale = 1.0), never past ``peak``."""
    speech = signal[speech_mask] if speech_mask is not None and speech_mask.any() else signal
    rms = float(np.sqrt(np.mean(speech**2))) if len(speech) else 0.0
    if rms <= 0:
        return signal.copy()
    gain = 10 ** (rms_dbfs / 20) / rms
    max_abs = float(np.max(np.abs(signal)))
    if max_abs * gain > peak:
        gain = peak / max_abs
    return signal * gain


def to_int16(signal: np.ndarray) -> np.ndarray:
    """Round a [-1, 1] float signal to 16-bit PCM, clipping anything outside."""
    return np.clip(np.round(signal * 32767.0), -32768, 32767).astype(np.int16)
