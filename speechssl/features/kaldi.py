"""Kaldi-compatible fbank, MFCC and spectrogram on a padded batch.

Every function takes ``waves [N, T]`` (right-padded) and ``lengths [N]`` and returns
``(features [N, F, D], num_frames [N])`` where ``F = num_frames(T)`` and rows at or past an
utterance's own frame count are zero. An utterance's features do not depend on what else is
in the batch: frame counts, the reflection at the end (``snip_edges=False``) and the dither
noise all use that utterance's own length and seed.

Numerics follow Kaldi's order of operations exactly (dither, DC removal, raw energy,
pre-emphasis, window, FFT, power, mel, floor at float32 epsilon, log), computed in the input
dtype: float32 in, float32 out, with the same rounding steps as Kaldi and
``torchaudio.compliance.kaldi`` (this matters: on 16-bit speech with a quiet high band the
float32 pre-emphasis alone moves log mel energies by ~3e-3 against an exact computation, and
the reference implementations share that error); float64 in gives float64 results that match
an exact computation. Other dtypes are computed in float32.

On CUDA, without autograd, the memory-bound parts run as two fused Triton kernels around
cuFFT (:mod:`speechssl.features.triton_kernels`); elsewhere (CPU, or when gradients are
needed) the same computation runs as torch operations, differentiable w.r.t. ``waves``.
Nothing here synchronises with the device or loops over the batch in Python; on CPU only the
rows of real frames are computed (the padding is skipped, which needs the frame counts on the
host, free on CPU).
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

Backend = Literal["auto", "torch", "triton"]


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
    return _mel_banks64(mel, frame.sample_frequency, frame.padded_window_size).clone()


@functools.lru_cache(maxsize=64)
def _mel_banks64(mel: MelOptions, sample_frequency: float, padded: int) -> Tensor:
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
            table = _mel_banks64(opts.mel, fo.sample_frequency, fo.padded_window_size)
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


# --------------------------------------------------------------------------- pipeline


def _compute_dtype(waves: Tensor) -> torch.dtype:
    return torch.float64 if waves.dtype == torch.float64 else torch.float32


def _check_inputs(waves: Tensor, lengths: Tensor | None) -> Tensor:
    if waves.dim() != 2:
        raise ConfigError(f"waves must be [N, T], got shape {tuple(waves.shape)}")
    n, t = waves.shape
    if lengths is None:
        return torch.full((n,), t, dtype=torch.long, device=waves.device)
    if lengths.shape != (n,):
        raise ConfigError(f"lengths must be [N]={n}, got shape {tuple(lengths.shape)}")
    lengths = lengths.to(device=waves.device, dtype=torch.long)
    # bounds check only where it costs no device synchronisation
    if lengths.device.type == "cpu" and n > 0 and (lengths.min() < 0 or lengths.max() > t):
        raise ConfigError(f"lengths must be in [0, T={t}], got {lengths.tolist()}")
    return lengths


def extended_waves(waves: Tensor, lengths: Tensor, opts: FrameOptions) -> tuple[Tensor, int]:
    """The signal each frame reads, and the column where frame 0 starts.

    With ``snip_edges`` this is ``waves`` itself. Otherwise the batch is padded on both
    sides and each utterance's own reflection is written around it (left: ``L // 2`` mirrored
    samples; right: ``L`` mirrored samples starting at that utterance's length), so padding
    of a shorter utterance never enters its frames.
    """
    if opts.snip_edges:
        return waves, 0
    size = opts.window_size
    offset = first_sample_offset(opts)
    left = max(0, -offset)
    ext = F.pad(waves, (left, size))
    if left:
        pos = torch.arange(-left, 0, device=waves.device).expand(waves.shape[0], left)
        ext = torch.cat([waves.gather(1, reflect_index(pos, lengths)), ext[:, left:]], dim=1)
    pos = lengths.unsqueeze(1) + torch.arange(size, device=waves.device)
    vals = (
        waves.gather(1, reflect_index(pos, lengths)) if waves.shape[1] else pos.to(waves.dtype) * 0
    )
    ext = ext.scatter(1, pos + left, vals)
    return ext, left + offset


def frame_rows(
    waves: Tensor, lengths: Tensor, opts: FrameOptions, compact: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, int]:
    """Raw (unprocessed) frames as rows.

    Returns ``(rows [R, L], utt_of_row [R], frame_of_row [R], flat_index or None, F)``.
    With ``compact`` only real frames are rows (``flat_index`` is their position in the
    ``N * F`` grid); otherwise every ``(n, f)`` of the grid is a row.
    """
    n, t = waves.shape
    nframes = num_frames_int(t, opts)
    size, shift = opts.window_size, opts.window_shift
    device = waves.device
    if nframes == 0 or n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return waves.new_zeros(0, size), empty, empty, empty if compact else None, 0
    ext, start = extended_waves(waves, lengths, opts)
    grid = ext[:, start:].unfold(1, size, shift)[:, :nframes]  # [N, F, L] view, no copy
    if compact:
        valid = torch.arange(nframes, device=device) < num_frames(lengths, opts).unsqueeze(1)
        utt, frame = valid.nonzero(as_tuple=True)
        return grid[utt, frame], utt, frame, utt * nframes + frame, nframes
    utt = torch.arange(n, device=device).repeat_interleave(nframes)
    frame = torch.arange(nframes, device=device).repeat(n)
    return grid.reshape(n * nframes, size), utt, frame, None, nframes


def log_energy(rows: Tensor, floor: float) -> Tensor:
    """``max(log(max(sum(x^2), eps)), log(energy_floor))`` per row."""
    energy = torch.log(torch.clamp_min(rows.square().sum(-1), EPSILON))
    return energy if floor == -math.inf else torch.clamp_min(energy, floor)


def process_frames(
    rows: Tensor,
    utt: Tensor,
    frame: Tensor,
    opts: FrameOptions,
    seeds: Tensor | None,
    energy: Literal["raw", "windowed", "none"],
    floor: float,
) -> tuple[Tensor, Tensor | None]:
    """Kaldi's ``ProcessWindow``: dither, DC removal, energy, pre-emphasis, window.

    Returns the windowed rows ``[R, L]`` and the log energy ``[R]`` (or None).
    """
    dtype = rows.dtype
    if opts.dither != 0.0:
        if seeds is None:
            raise ConfigError("dither > 0 needs per-utterance seeds")
        keys = utterance_key(seeds.to(rows.device))[utt]
        rows = rows + opts.dither * dither_noise(keys, frame, opts.window_size, dtype)
    if opts.remove_dc_offset:
        rows = rows - rows.mean(-1, keepdim=True)
    log_e = log_energy(rows, floor) if energy == "raw" else None
    c = opts.preemphasis_coefficient
    if c != 0.0:
        # x[i] - c * x[i-1] (x[-1] := x[0]) as a product then a difference, the rounding
        # steps of Kaldi and torchaudio in float32 (a fused multiply-add would differ)
        prev = torch.cat([rows[:, :1], rows[:, :-1]], dim=1)
        rows = rows - c * prev
    rows = rows * cached_table("window", opts, rows.device, dtype)
    if energy == "windowed":
        log_e = log_energy(rows, floor)
    return rows, log_e


def power_spectrum(rows: Tensor, padded: int) -> Tensor:
    """``|rfft(rows, padded)|^2``: ``[R, padded // 2 + 1]``."""
    spec = torch.view_as_real(torch.fft.rfft(rows, n=padded))
    return spec.square().sum(-1)


def _energy_mode(use: bool, raw: bool) -> Literal["raw", "windowed", "none"]:
    if not use:
        return "none"
    return "raw" if raw else "windowed"


def features_from_power(
    power: Tensor, log_e: Tensor | None, opts: FeatureOptions, tables: dict[str, Tensor]
) -> Tensor:
    """The per-kind head after the power spectrum: ``[R, D]``."""
    if isinstance(opts, SpectrogramOptions):
        logp = torch.log(torch.clamp_min(power, EPSILON))
        assert log_e is not None
        return torch.cat([log_e.unsqueeze(1), logp[:, 1:]], dim=1)
    if isinstance(opts, FbankOptions) and not opts.use_power:
        power = power.sqrt()
    mel = power @ tables["mel"]
    if isinstance(opts, FbankOptions):
        if opts.use_log_fbank:
            mel = torch.log(torch.clamp_min(mel, EPSILON))
        if not opts.use_energy:
            return mel
        assert log_e is not None
        e = log_e.unsqueeze(1)
        return torch.cat([mel, e] if opts.htk_compat else [e, mel], dim=1)
    ceps = torch.log(torch.clamp_min(mel, EPSILON)) @ tables["dct"]
    if opts.use_energy:
        assert log_e is not None
        ceps = torch.cat([log_e.unsqueeze(1), ceps[:, 1:]], dim=1)
    if opts.htk_compat:
        c0 = ceps[:, :1] if opts.use_energy else ceps[:, :1] * math.sqrt(2.0)
        ceps = torch.cat([ceps[:, 1:], c0], dim=1)
    return ceps


def _energy_spec(opts: FeatureOptions) -> tuple[Literal["raw", "windowed", "none"], float]:
    if isinstance(opts, SpectrogramOptions):
        return ("raw" if opts.raw_energy else "windowed"), log_energy_floor(opts.energy_floor)
    return _energy_mode(opts.use_energy, opts.raw_energy), log_energy_floor(opts.energy_floor)


def feature_dim(opts: FeatureOptions) -> int:
    return opts.dim


def _use_triton(waves: Tensor, backend: Backend) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        return True
    if waves.dtype != torch.float32 or not waves.is_cuda:
        return False  # float64 stays exact in the torch path; CPU has no kernels
    if torch.is_grad_enabled() and waves.requires_grad:
        return False  # the kernels have no backward
    from speechssl.features import triton_kernels

    return triton_kernels.available()


def compute_features(
    waves: Tensor,
    lengths: Tensor | None,
    opts: FeatureOptions,
    *,
    seeds: Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Features of any kind for a padded batch: ``([N, F, D], num_frames [N])``.

    Args:
        waves: ``[N, T]`` samples (any scale; Kaldi recipes use the int16 range).
        lengths: ``[N]`` real samples per utterance (None: all ``T``).
        opts: :class:`FbankOptions`, :class:`MfccOptions` or :class:`SpectrogramOptions`.
        seeds: ``[N]`` int64 per-utterance dither seeds (needed only with dither; default:
            drawn from torch's global generator).
        backend: ``auto`` (Triton on CUDA without autograd), ``torch`` or ``triton``.
    """
    lengths = _check_inputs(waves, lengths)
    dtype = _compute_dtype(waves)
    waves = waves.to(dtype)
    fo = opts.frame
    if fo.dither != 0.0 and seeds is None:
        seeds = torch.randint(0, 2**62, (waves.shape[0],), dtype=torch.long)
    if seeds is not None:
        seeds = seeds.to(device=waves.device, dtype=torch.long)
    nf = num_frames(lengths, fo)
    if _use_triton(waves, backend):
        from speechssl.features import triton_kernels

        return triton_kernels.compute_features(waves, lengths, nf, opts, seeds), nf
    compact = waves.device.type == "cpu"
    rows, utt, frame, flat, nframes = frame_rows(waves, lengths, fo, compact)
    if rows.shape[0] == 0:  # no frames at all (FFT libraries reject empty batches)
        return waves.new_zeros(waves.shape[0], nframes, opts.dim), nf
    energy, floor = _energy_spec(opts)
    rows, log_e = process_frames(rows, utt, frame, fo, seeds, energy, floor)
    power = power_spectrum(rows, fo.padded_window_size)
    tables: dict[str, Tensor] = {}
    if not isinstance(opts, SpectrogramOptions):
        tables["mel"] = cached_table("mel", opts, waves.device, dtype)
    if isinstance(opts, MfccOptions):
        tables["dct"] = cached_table("dct", opts, waves.device, dtype)
    feats = features_from_power(power, log_e, opts, tables)
    n, dim = waves.shape[0], opts.dim
    if flat is not None:
        out = feats.new_zeros(n * nframes, dim).index_copy(0, flat, feats)
        return out.view(n, nframes, dim), nf
    valid = torch.arange(nframes, device=waves.device) < nf.unsqueeze(1)
    return feats.view(n, nframes, dim) * valid.unsqueeze(-1).to(feats.dtype), nf


def fbank(
    waves: Tensor,
    lengths: Tensor | None = None,
    opts: FbankOptions | None = None,
    *,
    seeds: Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Log mel filterbank energies ``([N, F, num_mel_bins (+1)], num_frames [N])``."""
    return compute_features(waves, lengths, opts or FbankOptions(), seeds=seeds, backend=backend)


def mfcc(
    waves: Tensor,
    lengths: Tensor | None = None,
    opts: MfccOptions | None = None,
    *,
    seeds: Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """MFCCs ``([N, F, num_ceps], num_frames [N])``."""
    return compute_features(waves, lengths, opts or MfccOptions(), seeds=seeds, backend=backend)


def spectrogram(
    waves: Tensor,
    lengths: Tensor | None = None,
    opts: SpectrogramOptions | None = None,
    *,
    seeds: Tensor | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Log power spectrum ``([N, F, P // 2 + 1], num_frames [N])``, bin 0 = log energy."""
    return compute_features(
        waves, lengths, opts or SpectrogramOptions(), seeds=seeds, backend=backend
    )
