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


def extended_waves(
    waves: Tensor, lengths: Tensor, opts: FrameOptions, multiple: int = 1
) -> tuple[Tensor, int]:
    """The signal each frame reads, and the column where frame 0 starts.

    With ``snip_edges`` this is ``waves`` itself. Otherwise the batch is padded on both
    sides and each utterance's own reflection is written around it (left: ``L // 2`` mirrored
    samples; right: ``L`` mirrored samples starting at that utterance's length), so padding
    of a shorter utterance never enters its frames. With ``multiple > 1`` the width from the
    start column is padded up to a multiple of it (zeros; never read by real frames).
    """
    size = opts.window_size
    t = waves.shape[1]
    inplace = not (torch.is_grad_enabled() and waves.requires_grad)
    if opts.snip_edges:
        extra = -t % multiple
        return (F.pad(waves, (0, extra)) if extra else waves), 0
    offset = first_sample_offset(opts)
    left = max(0, -offset)
    start = left + offset
    width = left + t + size - start
    ext = F.pad(waves, (left, size + (-width % multiple)))
    if left:
        pos = torch.arange(-left, 0, device=waves.device).expand(waves.shape[0], left)
        mirrored = waves.gather(1, reflect_index(pos, lengths))
        if inplace:
            ext[:, :left] = mirrored
        else:
            ext = torch.cat([mirrored, ext[:, left:]], dim=1)
    pos = lengths.unsqueeze(1) + torch.arange(size, device=waves.device)
    vals = waves.gather(1, reflect_index(pos, lengths)) if t else pos.to(waves.dtype) * 0
    ext = ext.scatter_(1, pos + left, vals) if inplace else ext.scatter(1, pos + left, vals)
    return ext, start


def frame_grid(waves: Tensor, lengths: Tensor, opts: FrameOptions) -> tuple[Tensor, int]:
    """All frames of the batch as a strided view of the (extended) waveform: ``[N, F, L]``
    (no copy) and ``F``."""
    n, t = waves.shape
    nframes = num_frames_int(t, opts)
    if nframes == 0 or n == 0:
        return waves.new_zeros(n, 0, opts.window_size), 0
    ext, start = extended_waves(waves, lengths, opts)
    grid = ext[:, start:].unfold(1, opts.window_size, opts.window_shift)[:, :nframes]
    return grid, nframes


def flat_windows(waves: Tensor, lengths: Tensor, opts: FrameOptions) -> tuple[Tensor, int]:
    """All frame positions of the batch as rows of one 2-D strided view ``[W, L]``: frame
    ``f`` of utterance ``n`` is row ``n * per_utt + f``. Selecting rows from it
    (``index_select``) is a fast contiguous copy, unlike indexing the 3-D grid. Needs each
    utterance's row to span a whole number of shifts (padded so, copying only if needed)."""
    shift = opts.window_shift
    ext, start = extended_waves(waves, lengths, opts, multiple=shift)
    if start:
        ext = ext[:, start:].contiguous()
    elif not ext.is_contiguous():
        ext = ext.contiguous()
    per_utt = ext.shape[1] // shift
    return ext.reshape(-1).unfold(0, opts.window_size, shift), per_utt


#: FFT-buffer elements processed per chunk (4 MB in float32): a chunk's buffers stay in
#: cache across the passes and below glibc's mmap threshold (reused, not page-faulted
#: afresh); measured on CPU, FFTs of 1000-2000 rows run at 2x the per-row speed of 4000+
CHUNK_ELEMENTS = 1 << 20


def log_energy(rows: Tensor, floor: float) -> Tensor:
    """``max(log(max(sum(x^2), eps)), log(energy_floor))`` per row."""
    energy = torch.log(torch.clamp_min(rows.square().sum(-1), EPSILON))
    return energy if floor == -math.inf else torch.clamp_min(energy, floor)


def process_frames(
    frames: Tensor,
    utt: Tensor,
    frame: Tensor,
    opts: FrameOptions,
    seeds: Tensor | None,
    energy: Literal["raw", "windowed", "none"],
    floor: float,
    workspace: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Kaldi's ``ProcessWindow``: dither, DC removal, energy, pre-emphasis, window.

    ``frames [..., L]`` (read only; may be a view of the waveform). Returns the windowed
    frames zero-padded to the FFT size ``[..., P]`` and the log energy ``[...]`` (or None).
    Without autograd the work is done in place in one output buffer (a few passes over
    memory, no temporaries beyond one); with autograd the same operations run out of
    place, so both give the same numbers. ``workspace`` (``[..., P]`` shaped like the output,
    columns ``L:`` already zero) is used as the output buffer when given.
    """
    dtype = frames.dtype
    size, padded = opts.window_size, opts.padded_window_size
    inplace = not (torch.is_grad_enabled() and frames.requires_grad)
    x = frames
    if opts.dither != 0.0:
        if seeds is None:
            raise ConfigError("dither > 0 needs per-utterance seeds")
        keys = utterance_key(seeds.to(frames.device))[utt.reshape(-1)]
        noise = dither_noise(keys, frame.reshape(-1), size, dtype).view(frames.shape)
        x = frames + opts.dither * noise
    c = opts.preemphasis_coefficient
    window = cached_table("window", opts, frames.device, dtype)
    log_e: Tensor | None = None
    if inplace:
        if workspace is not None:
            buf = workspace
        else:
            buf = frames.new_empty(*frames.shape[:-1], padded)
            buf[..., size:].zero_()
        head = buf[..., :size]
        if opts.remove_dc_offset:
            torch.sub(x, x.mean(-1, keepdim=True), out=head)
        else:
            head.copy_(x)
        if energy == "raw":
            log_e = log_energy(head, floor)
        if c != 0.0:
            # x[i] - c * x[i-1] (x[-1] := x[0]) as a product then a difference: the
            # rounding steps of Kaldi and torchaudio in float32 (no fused multiply-add)
            first = head[..., :1] * c
            shifted = head[..., :-1] * c
            head[..., 1:].sub_(shifted)
            head[..., :1].sub_(first)
        head.mul_(window)
    else:
        if opts.remove_dc_offset:
            x = x - x.mean(-1, keepdim=True)
        if energy == "raw":
            log_e = log_energy(x, floor)
        if c != 0.0:
            prev = torch.cat([x[..., :1], x[..., :-1]], dim=-1)
            x = x - c * prev
        head = x * window
        buf = F.pad(head, (0, padded - size))
    if energy == "windowed":
        log_e = log_energy(head, floor)
    return buf, log_e


def power_spectrum(buf: Tensor) -> Tensor:
    """``|rfft(buf)|^2`` of zero-padded frames ``[..., P]``: ``[..., P // 2 + 1]``."""
    spec = torch.view_as_real(torch.fft.rfft(buf))
    re, im = spec[..., 0], spec[..., 1]
    return torch.addcmul(re.square(), im, im)


def _energy_mode(use: bool, raw: bool) -> Literal["raw", "windowed", "none"]:
    if not use:
        return "none"
    return "raw" if raw else "windowed"


def _floor_log(x: Tensor) -> Tensor:
    """``log(max(x, eps))``, in place on a temporary when no gradient is needed."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.log(torch.clamp_min(x, EPSILON))
    return x.clamp_min_(EPSILON).log_()


@functools.lru_cache(maxsize=64)
def mel_bands(
    mel: MelOptions, sample_frequency: float, padded: int
) -> tuple[tuple[int, int, int, int], ...]:
    """Groups of consecutive mel filters with the FFT-bin range they cover:
    ``(bin_lo, bin_hi, col_lo, col_hi)``. Each filter is non-zero on a short run of bins,
    so multiplying per group skips most of the dense matrix's zeros (~3x fewer flops)."""
    weights = _mel_banks64(mel, sample_frequency, padded)
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


_BAND_CACHE: dict[tuple[object, ...], list[tuple[int, int, Tensor]]] = {}


def apply_mel(power: Tensor, mel_table: Tensor, opts: FbankOptions | MfccOptions) -> Tensor:
    """``power @ mel_table`` computed band by band on CPU (same sums, fewer multiplications).
    On other devices, and under autograd, one dense product."""
    if (
        (torch.is_grad_enabled() and power.requires_grad)
        or not power.is_cpu
        or mel_table.shape[1] < 40  # few bins: one dense product measured faster
    ):
        return torch.matmul(power, mel_table)
    key = (opts.mel, opts.frame.sample_frequency, opts.frame.padded_window_size, mel_table.dtype)
    blocks = _BAND_CACHE.get(key)
    if blocks is None:
        bands = mel_bands(opts.mel, opts.frame.sample_frequency, opts.frame.padded_window_size)
        blocks = [(b0, b1, mel_table[b0:b1, c0:c1].contiguous()) for b0, b1, c0, c1 in bands]
        _BAND_CACHE[key] = blocks
    flat = power.reshape(-1, power.shape[-1])
    parts = [flat[:, b0:b1] @ block for b0, b1, block in blocks]
    return torch.cat(parts, dim=1).view(*power.shape[:-1], mel_table.shape[1])


def features_from_power(
    power: Tensor, log_e: Tensor | None, opts: FeatureOptions, tables: dict[str, Tensor]
) -> Tensor:
    """The per-kind head after the power spectrum: ``[..., K] -> [..., D]``."""
    if isinstance(opts, SpectrogramOptions):
        logp = _floor_log(power)
        assert log_e is not None
        return torch.cat([log_e.unsqueeze(-1), logp[..., 1:]], dim=-1)
    if isinstance(opts, FbankOptions) and not opts.use_power:
        power = power.sqrt()
    mel = apply_mel(power, tables["mel"], opts)
    if isinstance(opts, FbankOptions):
        if opts.use_log_fbank:
            mel = _floor_log(mel)
        if not opts.use_energy:
            return mel
        assert log_e is not None
        e = log_e.unsqueeze(-1)
        return torch.cat([mel, e] if opts.htk_compat else [e, mel], dim=-1)
    ceps = torch.matmul(_floor_log(mel), tables["dct"])
    if opts.use_energy:
        assert log_e is not None
        ceps = torch.cat([log_e.unsqueeze(-1), ceps[..., 1:]], dim=-1)
    if opts.htk_compat:
        c0 = ceps[..., :1] if opts.use_energy else ceps[..., :1] * math.sqrt(2.0)
        ceps = torch.cat([ceps[..., 1:], c0], dim=-1)
    return ceps


def _energy_spec(opts: FeatureOptions) -> tuple[Literal["raw", "windowed", "none"], float]:
    if isinstance(opts, SpectrogramOptions):
        return ("raw" if opts.raw_energy else "windowed"), log_energy_floor(opts.energy_floor)
    return _energy_mode(opts.use_energy, opts.raw_energy), log_energy_floor(opts.energy_floor)


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
    grid, nframes = frame_grid(waves, lengths, fo)
    n, dim = waves.shape[0], opts.dim
    if nframes == 0:
        return waves.new_zeros(n, 0, dim), nf
    tables: dict[str, Tensor] = {}
    if not isinstance(opts, SpectrogramOptions):
        tables["mel"] = cached_table("mel", opts, waves.device, dtype)
    if isinstance(opts, MfccOptions):
        tables["dct"] = cached_table("dct", opts, waves.device, dtype)
    energy, floor = _energy_spec(opts)

    def block(
        frames: Tensor, utt: Tensor, frame: Tensor, workspace: Tensor | None = None
    ) -> Tensor:
        buf, log_e = process_frames(frames, utt, frame, fo, seeds, energy, floor, workspace)
        return features_from_power(power_spectrum(buf), log_e, opts, tables)

    chunk_rows = max(1, CHUNK_ELEMENTS // fo.padded_window_size)
    device = waves.device
    if device.type == "cpu" and int(nf.sum()) < 0.9 * n * nframes:
        # gather only real frames (worth the copy when >10% of the grid is padding; the
        # counts are on the host already, so this costs no synchronisation)
        utt_all, frame_all = (torch.arange(nframes) < nf.unsqueeze(1)).nonzero(as_tuple=True)
        aligned = not fo.snip_edges or waves.shape[1] % fo.window_shift == 0
        if aligned:  # rows of one 2-D view: index_select is a plain row copy
            windows, per_utt = flat_windows(waves, lengths, fo)
            rows_all = utt_all * per_utt + frame_all
        inplace = not (torch.is_grad_enabled() and waves.requires_grad)
        workspace = None
        if inplace:
            workspace = waves.new_empty(min(chunk_rows, utt_all.numel()), fo.padded_window_size)
            workspace[:, fo.window_size :].zero_()
        out = waves.new_zeros(n * nframes, dim)
        parts = []
        for r0 in range(0, utt_all.numel(), chunk_rows):
            r1 = min(r0 + chunk_rows, utt_all.numel())
            u, f = utt_all[r0:r1], frame_all[r0:r1]
            if aligned:
                frames = windows.index_select(0, rows_all[r0:r1])
            else:  # (aligning would copy the whole batch; indexing the grid is cheaper)
                frames = grid[u, f]
            ws = None if workspace is None else workspace[: r1 - r0]
            feats = block(frames, u, f, ws)
            if inplace:
                out.index_copy_(0, utt_all[r0:r1] * nframes + frame_all[r0:r1], feats)
            else:
                parts.append(feats)
        if not inplace:
            flat = utt_all * nframes + frame_all
            out = out.index_copy(0, flat, torch.cat(parts))
        return out.view(n, nframes, dim), nf
    step = max(1, chunk_rows // max(n, 1))
    utt_grid = torch.arange(n, device=device).unsqueeze(1).expand(n, nframes)
    frame_grid_idx = torch.arange(nframes, device=device).unsqueeze(0).expand(n, nframes)
    parts = [
        block(
            grid[:, f0 : f0 + step], utt_grid[:, f0 : f0 + step], frame_grid_idx[:, f0 : f0 + step]
        )
        for f0 in range(0, nframes, step)
    ]
    feats = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    invalid = (torch.arange(nframes, device=device) >= nf.unsqueeze(1)).unsqueeze(-1)
    if torch.is_grad_enabled() and feats.requires_grad:
        return feats.masked_fill(invalid, 0.0), nf
    return feats.masked_fill_(invalid, 0.0), nf


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
