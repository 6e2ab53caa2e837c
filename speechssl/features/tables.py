"""Kaldi's framing, window, mel, DCT and dither tables: the one definition every backend
(the torch path in :mod:`speechssl.features.kaldi`, the numba CPU kernels in
:mod:`speechssl.features.numba_kernels`, the Triton GPU kernels in
:mod:`speechssl.features.triton_kernels`) imports.

Nothing here depends on a backend: frame counts and sample positions (incl. Kaldi's
repeated reflection with ``snip_edges=False``), the window functions, the triangular mel
filters (dense, and as bands / per-filter runs for sparse products), the lifted DCT, the
energy mode, and the counter-based dither noise. Tables are built in float64 (as Kaldi does)
and cached per option set, device and dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.errors import ConfigError
from speechssl.features.options import (
    FbankOptions,
    FeatureOptions,
    FrameOptions,
    MelOptions,
    MfccOptions,
    SpectrogramOptions,
    log_energy_floor,
)

#: Kaldi floors energies at ``std::numeric_limits<float>::epsilon()`` whatever the dtype
EPSILON = float(torch.finfo(torch.float32).eps)

EnergyMode = Literal["raw", "windowed", "none"]

# --------------------------------------------------------------------------- frame counts


def num_frames(num_samples: Tensor, opts: FrameOptions) -> Tensor:
    """Kaldi's ``NumFrames`` for each length: ``[N]`` long.

    ``snip_edges=True``: ``1 + (n - L) // S`` if ``n >= L`` else 0 (a signal shorter than one
    frame has no frames, as in Kaldi and torchaudio). ``snip_edges=False``:
    ``(n + S // 2) // S``, so 0 for ``n < S - S // 2``.
    """
    size, shift = opts.window_size, opts.window_shift
    n = num_samples.long()
    if opts.snip_edges:
        return torch.where(n >= size, 1 + torch.div(n - size, shift, rounding_mode="floor"), 0)
    return torch.div(n + shift // 2, shift, rounding_mode="floor")


def num_frames_int(num_samples: int, opts: FrameOptions) -> int:
    """:func:`num_frames` for one Python int."""
    size, shift = opts.window_size, opts.window_shift
    if opts.snip_edges:
        return 0 if num_samples < size else 1 + (num_samples - size) // shift
    return (num_samples + shift // 2) // shift


def first_sample_offset(opts: FrameOptions) -> int:
    """Index of frame 0's first sample (negative with ``snip_edges=False``: reflected)."""
    if opts.snip_edges:
        return 0
    return opts.window_shift // 2 - opts.window_size // 2


def reflect_index(pos: Tensor, lengths: Tensor) -> Tensor:
    """Kaldi's repeated reflection of sample positions into ``[0, length)``.

    ``-1 -> 0, -2 -> 1, n -> n - 1, n + 1 -> n - 2``, repeated as often as needed (very
    short signals), which is the period-``2n`` map below. ``pos [N, K]``, ``lengths [N]``.
    """
    n = lengths.clamp_min(1).unsqueeze(1)
    u = torch.remainder(pos, 2 * n)
    return torch.where(u >= n, 2 * n - 1 - u, u)


# --------------------------------------------------------------------------- tables


def window_function(opts: FrameOptions, dtype: torch.dtype = torch.float64) -> Tensor:
    """Kaldi's ``FeatureWindowFunction`` (computed in float64, as Kaldi does)."""
    return _window64(opts.window_type, opts.window_size, opts.blackman_coeff).to(dtype)


@functools.lru_cache(maxsize=64)
def _window64(window_type: str, size: int, blackman_coeff: float) -> Tensor:
    i = torch.arange(size, dtype=torch.float64)
    a = 2 * math.pi / (size - 1)
    if window_type == "hanning":
        return 0.5 - 0.5 * torch.cos(a * i)
    if window_type == "sine":
        return torch.sin(0.5 * a * i)
    if window_type == "hamming":
        return 0.54 - 0.46 * torch.cos(a * i)
    if window_type == "povey":
        return (0.5 - 0.5 * torch.cos(a * i)).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    if window_type == "blackman":
        return (
            blackman_coeff - 0.5 * torch.cos(a * i) + (0.5 - blackman_coeff) * torch.cos(2 * a * i)
        )
    raise ConfigError(f"unknown window_type {window_type!r}")


def mel_scale(freq: Tensor) -> Tensor:
    """Kaldi's mel scale ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(freq / 700.0)


def mel_banks(mel: MelOptions, frame: FrameOptions) -> Tensor:
    """``[P // 2 + 1, num_mel_bins]`` float64 triangular filters over the power spectrum.

    Kaldi's ``MelBanks`` without VTLN; the Nyquist bin has weight 0, as in Kaldi.
    Raises ConfigError if a filter covers no FFT bin (too many bins for the FFT size).
    """
    return mel_banks64(mel, frame.sample_frequency, frame.padded_window_size).clone()


@functools.lru_cache(maxsize=64)
def mel_banks64(mel: MelOptions, sample_frequency: float, padded: int) -> Tensor:
    low, high = mel.edges(sample_frequency)
    num_fft_bins = padded // 2
    bin_width = sample_frequency / padded
    mel_low = mel_scale(torch.tensor(low, dtype=torch.float64))
    mel_high = mel_scale(torch.tensor(high, dtype=torch.float64))
    delta = (mel_high - mel_low) / (mel.num_mel_bins + 1)
    b = torch.arange(mel.num_mel_bins, dtype=torch.float64).unsqueeze(0)
    left = mel_low + b * delta
    center = mel_low + (b + 1) * delta
    right = mel_low + (b + 2) * delta
    m = mel_scale(bin_width * torch.arange(num_fft_bins, dtype=torch.float64)).unsqueeze(1)
    up = (m - left) / (center - left)
    down = (right - m) / (right - center)
    weights = torch.where((m > left) & (m < right), torch.where(m <= center, up, down), 0.0)
    empty = (weights.sum(0) == 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"mel bins {empty[:5]} cover no FFT bin (num_mel_bins={mel.num_mel_bins} is too "
            f"many for FFT size {padded} and range {low}..{high} Hz)"
        )
    return F.pad(weights, (0, 0, 0, 1))


def dct_matrix(num_ceps: int, num_mel_bins: int) -> Tensor:
    """``[num_mel_bins, num_ceps]`` float64: Kaldi's orthonormal DCT-II, first rows kept."""
    k = torch.arange(num_ceps, dtype=torch.float64).unsqueeze(0)
    n = torch.arange(num_mel_bins, dtype=torch.float64).unsqueeze(1)
    mat = math.sqrt(2.0 / num_mel_bins) * torch.cos(math.pi / num_mel_bins * (n + 0.5) * k)
    mat[:, 0] = math.sqrt(1.0 / num_mel_bins)
    return mat


def lifter_coeffs(num_ceps: int, cepstral_lifter: float) -> Tensor:
    """``[num_ceps]`` float64: ``1 + Q/2 sin(pi i / Q)`` (ones when Q is 0)."""
    i = torch.arange(num_ceps, dtype=torch.float64)
    if cepstral_lifter == 0.0:
        return torch.ones(num_ceps, dtype=torch.float64)
    return 1.0 + 0.5 * cepstral_lifter * torch.sin(math.pi * i / cepstral_lifter)


_TABLE_CACHE: dict[tuple[object, ...], Tensor] = {}


def cached_table(
    name: Literal["window", "mel", "dct"],
    opts: FrameOptions | FeatureOptions,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Window / mel / DCT tables per (options, device, dtype), built once (no per-call copy).

    ``window`` takes :class:`FrameOptions`, ``mel`` fbank or MFCC options, ``dct`` MFCC.
    """
    key = (name, opts, str(device), dtype)
    table = _TABLE_CACHE.get(key)
    if table is None:
        if name == "window" and isinstance(opts, FrameOptions):
            table = window_function(opts, torch.float64)
        elif name == "mel" and isinstance(opts, FbankOptions | MfccOptions):
            fo = opts.frame
            table = mel_banks64(opts.mel, fo.sample_frequency, fo.padded_window_size)
        elif name == "dct" and isinstance(opts, MfccOptions):
            table = dct_matrix(opts.num_ceps, opts.mel.num_mel_bins) * lifter_coeffs(
                opts.num_ceps, opts.cepstral_lifter
            )
        else:
            raise ConfigError(f"no table {name!r} for {type(opts).__name__}")
        table = table.to(device=device, dtype=dtype).contiguous()
        if len(_TABLE_CACHE) > 512:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = table
    return table


@functools.lru_cache(maxsize=64)
def mel_bands(
    mel: MelOptions, sample_frequency: float, padded: int
) -> tuple[tuple[int, int, int, int], ...]:
    """Groups of consecutive mel filters with the FFT-bin range they cover:
    ``(bin_lo, bin_hi, col_lo, col_hi)``. Each filter is non-zero on a short run of bins,
    so multiplying per group skips most of the dense matrix's zeros (~3x fewer flops)."""
    weights = mel_banks64(mel, sample_frequency, padded)
    nz = weights != 0
    bins = torch.arange(weights.shape[0]).unsqueeze(1)
    lo = torch.where(nz, bins, weights.shape[0]).min(0).values.tolist()
    hi = (torch.where(nz, bins, -1).max(0).values + 1).tolist()
    groups = []
    cols = len(lo)
    # 4 groups measured fastest on CPU (8: small products lose more than they save)
    per_group = max(4, -(-cols // 4))
    for c0 in range(0, cols, per_group):
        c1 = min(cols, c0 + per_group)
        groups.append((min(lo[c0:c1]), max(hi[c0:c1]), c0, c1))
    return tuple(groups)


# --------------------------------------------------------------------------- dither


_MASK32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (xorshift-multiply) on int64 tensors holding uint32 values.

    Both multipliers are below 2**31, so products stay below 2**63 (no signed overflow).
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def utterance_key(seeds: Tensor) -> Tensor:
    """Per-utterance 32-bit key from a 64-bit seed."""
    s = seeds.long()
    return _hash32((s & _MASK32) ^ _hash32((s >> 32) & _MASK32))


def dither_noise(keys: Tensor, frame_index: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """``[R, size]`` standard normal noise from (utterance key, frame, sample) counters.

    Box-Muller on two hashed uniforms; a pure function of its inputs, so the same frame of
    the same utterance gets the same noise in any batch and on any device.
    """
    ctr = (
        frame_index.long().unsqueeze(1) * size + torch.arange(size, device=keys.device)
    ) & _MASK32
    h1 = _hash32(ctr ^ keys.unsqueeze(1))
    h2 = _hash32(h1 ^ 0x5BD1E995)
    u1 = ((h1 >> 8) + 1).to(dtype) * (1.0 / (1 << 24))
    u2 = (h2 >> 8).to(dtype) * (1.0 / (1 << 24))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


# --------------------------------------------------------------------------- energy, chunks


def _energy_mode(use: bool, raw: bool) -> EnergyMode:
    if not use:
        return "none"
    return "raw" if raw else "windowed"


def energy_spec(opts: FeatureOptions) -> tuple[EnergyMode, float]:
    """Which energy the features need (``raw``, ``windowed`` or ``none``) and the floor on
    its log."""
    if isinstance(opts, SpectrogramOptions):
        return ("raw" if opts.raw_energy else "windowed"), log_energy_floor(opts.energy_floor)
    return _energy_mode(opts.use_energy, opts.raw_energy), log_energy_floor(opts.energy_floor)


#: FFT-buffer elements processed per chunk (4 MB in float32): a chunk's buffers stay in
#: cache across the passes and below glibc's mmap threshold (reused, not page-faulted
#: afresh); measured on CPU, FFTs of 1000-2000 rows run at 2x the per-row speed of 4000+
CHUNK_ELEMENTS = 1 << 20
