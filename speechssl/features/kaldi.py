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

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.errors import ConfigError
from speechssl.features import tables
from speechssl.features.options import (
    FbankOptions,
    FeatureOptions,
    FrameOptions,
    MfccOptions,
    SpectrogramOptions,
)
from speechssl.features.tables import (
    EPSILON,
    EnergyMode,
    cached_table,
    dither_noise,
    energy_spec,
    first_sample_offset,
    mel_bands,
    num_frames,
    num_frames_int,
    reflect_index,
    utterance_key,
)

#: ``auto``: Triton on CUDA, numba on CPU (float32, no autograd, numba importable), else
#: the torch operations below (the reference: float64, autograd, fallback)
Backend = Literal["auto", "torch", "numba", "triton"]


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
    energy: EnergyMode,
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


def _floor_log(x: Tensor) -> Tensor:
    """``log(max(x, eps))``, in place on a temporary when no gradient is needed."""
    if torch.is_grad_enabled() and x.requires_grad:
        return torch.log(torch.clamp_min(x, EPSILON))
    return x.clamp_min_(EPSILON).log_()


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
    power: Tensor, log_e: Tensor | None, opts: FeatureOptions, mats: dict[str, Tensor]
) -> Tensor:
    """The per-kind head after the power spectrum: ``[..., K] -> [..., D]``."""
    if isinstance(opts, SpectrogramOptions):
        logp = _floor_log(power)
        assert log_e is not None
        return torch.cat([log_e.unsqueeze(-1), logp[..., 1:]], dim=-1)
    if isinstance(opts, FbankOptions) and not opts.use_power:
        power = power.sqrt()
    mel = apply_mel(power, mats["mel"], opts)
    if isinstance(opts, FbankOptions):
        if opts.use_log_fbank:
            mel = _floor_log(mel)
        if not opts.use_energy:
            return mel
        assert log_e is not None
        e = log_e.unsqueeze(-1)
        return torch.cat([mel, e] if opts.htk_compat else [e, mel], dim=-1)
    ceps = torch.matmul(_floor_log(mel), mats["dct"])
    if opts.use_energy:
        assert log_e is not None
        ceps = torch.cat([log_e.unsqueeze(-1), ceps[..., 1:]], dim=-1)
    if opts.htk_compat:
        c0 = ceps[..., :1] if opts.use_energy else ceps[..., :1] * math.sqrt(2.0)
        ceps = torch.cat([ceps[..., 1:], c0], dim=-1)
    return ceps


def _numba_refusal(waves: Tensor, opts: FeatureOptions) -> str | None:
    """Why the fused CPU kernels cannot compute this batch (None: they can)."""
    if waves.is_cuda:
        return "the batch is on CUDA"
    if waves.dtype != torch.float32:
        return "float64 input stays exact on the torch path"
    if torch.is_grad_enabled() and waves.requires_grad:
        return "the kernels have no backward"
    if opts.frame.dither != 0.0:
        return "dither runs on the torch path"
    from speechssl.features import numba_kernels

    if not numba_kernels.available():
        return "numba is not installed"
    return None


def select_backend(waves: Tensor, opts: FeatureOptions, backend: Backend = "auto") -> str:
    """The backend that computes this batch: ``torch``, ``numba`` or ``triton``.

    ``auto`` takes Triton on CUDA and numba on CPU for float32 without autograd (and, for
    numba, without dither), falling back to the torch path otherwise (e.g. numba missing).
    An explicit ``numba`` that cannot run raises ConfigError saying why.
    """
    if backend in ("torch", "triton"):
        return backend
    if backend == "numba":
        why = _numba_refusal(waves, opts)
        if why:
            raise ConfigError(f"backend 'numba' cannot compute this batch: {why}")
        return "numba"
    if backend != "auto":
        raise ConfigError(f"backend must be auto, torch, numba or triton, got {backend!r}")
    if not waves.is_cuda:
        return "numba" if _numba_refusal(waves, opts) is None else "torch"
    if waves.dtype != torch.float32 or (torch.is_grad_enabled() and waves.requires_grad):
        return "torch"  # float64 stays exact in the torch path; the kernels have no backward
    from speechssl.features import triton_kernels

    return "triton" if triton_kernels.available() else "torch"


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
        backend: ``auto`` (Triton on CUDA, numba on CPU; see :func:`select_backend`),
            ``torch`` (the reference), ``numba`` or ``triton``.
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
    chosen = select_backend(waves, opts, backend)
    if chosen == "triton":
        from speechssl.features import triton_kernels

        return triton_kernels.compute_features(waves, lengths, nf, opts, seeds), nf
    if chosen == "numba":
        from speechssl.features import numba_kernels

        return numba_kernels.compute_features(waves, lengths, nf, opts), nf
    grid, nframes = frame_grid(waves, lengths, fo)
    n, dim = waves.shape[0], opts.dim
    if nframes == 0:
        return waves.new_zeros(n, 0, dim), nf
    mats: dict[str, Tensor] = {}
    if not isinstance(opts, SpectrogramOptions):
        mats["mel"] = cached_table("mel", opts, waves.device, dtype)
    if isinstance(opts, MfccOptions):
        mats["dct"] = cached_table("dct", opts, waves.device, dtype)
    energy, floor = energy_spec(opts)

    def block(
        frames: Tensor, utt: Tensor, frame: Tensor, workspace: Tensor | None = None
    ) -> Tensor:
        buf, log_e = process_frames(frames, utt, frame, fo, seeds, energy, floor, workspace)
        return features_from_power(power_spectrum(buf), log_e, opts, mats)

    chunk_rows = max(1, tables.CHUNK_ELEMENTS // fo.padded_window_size)
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
