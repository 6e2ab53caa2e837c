"""Reference implementations for feature parity tests: torchaudio.compliance.kaldi and
kaldi-native-fbank, called per utterance with options mapped from ours; and a speech-like
test signal (harmonic source, moving formants, pauses, int16 quantisation)."""

from __future__ import annotations

import numpy as np
import torch

from speechssl.features.options import FbankOptions, MfccOptions, SpectrogramOptions


def speech_like(sample_rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced speech-like signal in the int16 range (float32): a glottal-like harmonic
    source with a wandering pitch, two moving resonances, pauses and a noise floor from
    16-bit quantisation. Not a recording, but it has speech's dynamic range."""
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    f0 = 110 + 30 * np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    nyq = sample_rate / 2
    x = np.zeros(n)
    for k in range(1, 60):
        fk = k * f0
        f1 = 500 + 300 * np.sin(2 * np.pi * 1.1 * t)
        f2 = 1500 + 700 * np.sin(2 * np.pi * 0.7 * t + 1)
        gain = 1 / (1 + ((fk - f1) / 150) ** 2) + 0.5 / (1 + ((fk - f2) / 250) ** 2)
        x += np.where(fk < nyq, gain / k, 0.0) * np.sin(k * phase)
    x += 0.02 * rng.standard_normal(n) * (np.sin(2 * np.pi * 4 * t) > 0.6)  # fricative-ish
    x *= np.sin(2 * np.pi * 1.5 * t + rng.uniform(0, 6)) > -0.5  # pauses (digital silence)
    x = x / (np.abs(x).max() + 1e-9) * 20000
    return np.round(x).astype(np.float32)


def ta_kwargs(opts: FbankOptions | MfccOptions | SpectrogramOptions) -> dict:
    fo = opts.frame
    kw = dict(
        sample_frequency=fo.sample_frequency,
        frame_length=fo.frame_length,
        frame_shift=fo.frame_shift,
        dither=0.0,
        preemphasis_coefficient=fo.preemphasis_coefficient,
        remove_dc_offset=fo.remove_dc_offset,
        window_type=fo.window_type,
        blackman_coeff=fo.blackman_coeff,
        round_to_power_of_two=fo.round_to_power_of_two,
        snip_edges=fo.snip_edges,
        energy_floor=opts.energy_floor,
        raw_energy=opts.raw_energy,
    )
    if not isinstance(opts, SpectrogramOptions):
        kw.update(
            num_mel_bins=opts.mel.num_mel_bins,
            low_freq=opts.mel.low_freq,
            high_freq=opts.mel.high_freq,
            use_energy=opts.use_energy,
            htk_compat=opts.htk_compat,
        )
    if isinstance(opts, FbankOptions):
        kw.update(use_log_fbank=opts.use_log_fbank, use_power=opts.use_power)
    if isinstance(opts, MfccOptions):
        kw.update(num_ceps=opts.num_ceps, cepstral_lifter=opts.cepstral_lifter)
    return kw


def torchaudio_features(wave: torch.Tensor, opts) -> torch.Tensor:
    """``[F, D]`` from torchaudio.compliance.kaldi for one utterance ``[T]``."""
    import torchaudio.compliance.kaldi as K

    fn = {FbankOptions: K.fbank, MfccOptions: K.mfcc, SpectrogramOptions: K.spectrogram}[type(opts)]
    return fn(wave.unsqueeze(0), **ta_kwargs(opts))


def knf_features(wave: np.ndarray, opts: FbankOptions | MfccOptions) -> np.ndarray:
    """``[F, D]`` from kaldi-native-fbank for one utterance."""
    import kaldi_native_fbank as knf

    ko = knf.FbankOptions() if isinstance(opts, FbankOptions) else knf.MfccOptions()
    fo = opts.frame
    ko.frame_opts.samp_freq = fo.sample_frequency
    ko.frame_opts.frame_length_ms = fo.frame_length
    ko.frame_opts.frame_shift_ms = fo.frame_shift
    ko.frame_opts.dither = 0.0
    ko.frame_opts.preemph_coeff = fo.preemphasis_coefficient
    ko.frame_opts.remove_dc_offset = fo.remove_dc_offset
    ko.frame_opts.window_type = fo.window_type
    ko.frame_opts.blackman_coeff = fo.blackman_coeff
    ko.frame_opts.round_to_power_of_two = fo.round_to_power_of_two
    ko.frame_opts.snip_edges = fo.snip_edges
    ko.mel_opts.num_bins = opts.mel.num_mel_bins
    ko.mel_opts.low_freq = opts.mel.low_freq
    ko.mel_opts.high_freq = opts.mel.high_freq
    ko.use_energy = opts.use_energy
    ko.energy_floor = opts.energy_floor
    ko.raw_energy = opts.raw_energy
    ko.htk_compat = opts.htk_compat
    if isinstance(opts, FbankOptions):
        ko.use_log_fbank = opts.use_log_fbank
        ko.use_power = opts.use_power
        comp = knf.OnlineFbank(ko)
    else:
        ko.num_ceps = opts.num_ceps
        ko.cepstral_lifter = opts.cepstral_lifter
        comp = knf.OnlineMfcc(ko)
    comp.accept_waveform(fo.sample_frequency, np.asarray(wave, dtype=np.float32).tolist())
    comp.input_finished()
    n = comp.num_frames_ready
    if n == 0:
        return np.zeros((0, opts.dim), dtype=np.float32)
    return np.stack([np.asarray(comp.get_frame(i), dtype=np.float32) for i in range(n)])
