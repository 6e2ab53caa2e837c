"""Fused numba kernels for Kaldi features on CPU.

A batch is processed in chunks of frames (:data:`FFT_ELEMENTS` FFT-input elements, so a
chunk's buffers stay in cache and torch's FFT runs at its fastest size), each in three steps:

1. ``_frames``: one pass per frame row reads the samples straight from the padded waveform
   (Kaldi's reflection with ``snip_edges=False`` computed per utterance), removes the DC
   offset, takes the raw energy, pre-emphasises, windows and writes the row of the FFT input
   (columns past the frame length stay zero; the buffer is reused), plus the log energy.
2. ``torch.fft.rfft`` on the chunk.
3. ``_head``: blocks of 16 rows; per block the power (or magnitude) spectrum is formed once
   and stored transposed (a row per FFT bin) in L1-sized scratch, so every later sum runs
   over the block's frames in vectorised loops: each mel filter sums the bins it covers (a
   sparse product: every bin lies in at most two filters, ~40x fewer multiplications than
   the dense matrix), floors, takes the log, the lifted DCT for MFCC, and the rows go with
   their energy straight into the caller's ``[N, F, D]`` output. (Per row, the filters'
   short variable-length loops did not vectorise: that layout took ~1.6x the time for
   fbank.) Padding rows are zeroed once, nothing else is written twice.

Tables (window, mel filters, DCT) come from :mod:`speechssl.features.tables`, shared with the
torch and Triton paths. Numerics follow the torch path step by step in float32 (separate
multiply and subtract in pre-emphasis, float32 window product, float32 log); sums (the frame
mean, the energy, the mel and DCT products) are accumulated in float64 (in whatever order
vectorises: the kernels allow reassociation and no other fast-math), so they are at least as
close to an exact computation as the peers' float32 sums. Only float32 without
dither is fused here (dither and float64 run on the torch path).

The kernels are compiled on first use and cached on disk by numba (``cache=True``). With
more than one torch thread they run on numba's thread pool (as many threads as torch uses);
with one thread (e.g. in data-loader workers, where torch sets one thread) they run serially.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl.features import tables
from speechssl.features.options import FbankOptions, FeatureOptions, MfccOptions, SpectrogramOptions

try:  # numba is a dependency, but the torch path stands in when it cannot be imported
    import numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

ENERGY_CODES = {"none": 0, "raw": 1, "windowed": 2}
KIND_FBANK, KIND_MFCC, KIND_SPECTROGRAM = 0, 1, 2


def available() -> bool:
    """Whether the fused CPU kernels can run here (numba importable)."""
    return _HAVE_NUMBA


def _frames_impl(
    waves,
    lengths,
    row_utt,
    row_frame,
    r0,
    r1,
    window,
    buf,
    log_e,
    shift,
    offset,
    reflect,
    remove_dc,
    preemph,
    energy_mode,
    floor,
    eps,
):
    size = window.shape[0]
    for j in numba.prange(r1 - r0):
        r = r0 + j
        u = row_utt[r]
        n = lengths[u]
        start = offset + row_frame[r] * shift
        wave = waves[u]
        row = buf[j]
        if reflect and (start < 0 or start + size > n):
            # an edge frame (a few per utterance): gather the reflected samples into the row
            total = 0.0
            period = 2 * max(n, 1)
            for i in range(size):
                p = (start + i) % period  # Python semantics: in [0, period)
                if p >= n:
                    p = period - 1 - p
                row[i] = wave[p]
                total += row[i]
            mean = np.float32(total / size) if remove_dc else np.float32(0.0)
            energy = 0.0
            # backwards, so row[i - 1] still holds the DC-free sample pre-emphasis needs
            for i in range(size - 1, -1, -1):
                v = row[i] - mean
                if energy_mode == 1:
                    energy += np.float64(v) * np.float64(v)
                prev = row[i - 1] - mean if i > 0 else v
                x = (v - preemph * prev) * window[i]
                row[i] = x
                if energy_mode == 2:
                    energy += np.float64(x) * np.float64(x)
        else:
            # an inner frame: read the waveform in place, two straight (vectorised) loops
            seg = wave[start : start + size]
            total = 0.0
            for i in range(size):
                total += seg[i]
            mean = np.float32(total / size) if remove_dc else np.float32(0.0)
            v = seg[0] - mean
            x = (v - preemph * v) * window[0]
            row[0] = x
            if energy_mode == 1:
                energy = np.float64(v) * np.float64(v)
            elif energy_mode == 2:
                energy = np.float64(x) * np.float64(x)
            else:
                energy = 0.0
            if energy_mode == 1:
                for i in range(1, size):
                    v = seg[i] - mean
                    row[i] = (v - preemph * (seg[i - 1] - mean)) * window[i]
                    energy += np.float64(v) * np.float64(v)
            elif energy_mode == 2:
                for i in range(1, size):
                    x = (seg[i] - mean - preemph * (seg[i - 1] - mean)) * window[i]
                    row[i] = x
                    energy += np.float64(x) * np.float64(x)
            else:
                for i in range(1, size):
                    row[i] = (seg[i] - mean - preemph * (seg[i - 1] - mean)) * window[i]
        if energy_mode != 0:
            e = np.log(max(np.float32(energy), eps))
            log_e[j] = max(e, floor)


def _head_impl(
    spec,
    log_e,
    row_utt,
    row_frame,
    r0,
    r1,
    out,
    kind,
    mel_lo,
    mel_count,
    mel_offset,
    mel_weights,
    dct,
    use_power,
    use_log,
    use_energy,
    htk_compat,
    eps,
    sqrt2,
):
    n = r1 - r0
    num_mel = mel_lo.shape[0]
    bin_lo = mel_lo.min() if num_mel else 0
    bin_hi = (mel_lo + mel_count).max() if num_mel else 0
    nb = bin_hi - bin_lo
    num_ceps = dct.shape[0]
    first = 1 if (kind == 0 and use_energy and not htk_compat) else 0
    block = HEAD_BLOCK
    for q in numba.prange((n + block - 1) // block):
        j0 = q * block
        m = min(block, n - j0)
        if kind == 2:  # spectrogram: log power, bin 0 = log energy
            for jj in range(m):
                r = r0 + j0 + jj
                o = out[row_utt[r], row_frame[r]]
                s = spec[j0 + jj]
                o[0] = log_e[j0 + jj]
                for k in range(1, s.shape[0]):
                    p = s[k, 0] * s[k, 0] + s[k, 1] * s[k, 1]
                    o[k] = np.log(max(p, eps))
            continue
        # the block's power spectrum transposed (a row per FFT bin, a column per frame), so
        # every later sum runs over frames: contiguous, vectorised, no per-filter short loops
        pow_t = np.empty((nb, block), np.float32)
        mel_t = np.empty((num_mel, block), np.float32)
        acc = np.empty(block, np.float64)
        for jj in range(m):
            s = spec[j0 + jj]
            for k in range(nb):
                p = s[bin_lo + k, 0] * s[bin_lo + k, 0] + s[bin_lo + k, 1] * s[bin_lo + k, 1]
                pow_t[k, jj] = p if use_power else np.sqrt(p)
        for b in range(num_mel):
            # filter b covers bins mel_lo[b] .. + mel_count[b] (every bin lies in at most
            # two filters: ~40x fewer multiplications than the dense matrix)
            acc[:m] = 0.0
            lo = mel_lo[b] - bin_lo
            w0 = mel_offset[b]
            for t in range(mel_count[b]):
                w = np.float64(mel_weights[w0 + t])
                row = pow_t[lo + t]
                for jj in range(m):
                    acc[jj] += np.float64(row[jj]) * w
            mrow = mel_t[b]
            if use_log:
                for jj in range(m):
                    mrow[jj] = np.log(max(np.float32(acc[jj]), eps))
            else:
                for jj in range(m):
                    mrow[jj] = np.float32(acc[jj])
        if kind == 0:
            for jj in range(m):
                r = r0 + j0 + jj
                o = out[row_utt[r], row_frame[r]]
                for b in range(num_mel):
                    o[first + b] = mel_t[b, jj]
                if use_energy:
                    o[num_mel if htk_compat else 0] = log_e[j0 + jj]
            continue
        for c in range(num_ceps):
            acc[:m] = 0.0
            basis = dct[c]  # the lifted DCT transposed: a contiguous row per coefficient
            for b in range(num_mel):
                w = np.float64(basis[b])
                mrow = mel_t[b]
                for jj in range(m):
                    acc[jj] += np.float64(mrow[jj]) * w
            for jj in range(m):
                r = r0 + j0 + jj
                o = out[row_utt[r], row_frame[r]]
                v = log_e[j0 + jj] if (c == 0 and use_energy) else np.float32(acc[jj])
                if htk_compat:
                    if c == 0:
                        o[num_ceps - 1] = v if use_energy else v * sqrt2
                    else:
                        o[c - 1] = v
                else:
                    o[c] = v


def _zero_padding_impl(out, nf):
    for u in numba.prange(out.shape[0]):
        for f in range(nf[u], out.shape[1]):
            out[u, f, :] = 0.0


#: FFT-input elements per chunk and thread (256 frames of 512): torch's CPU rfft of 69.5k such frames
#: took 15 ms in 256-row calls against 23 ms in 2048-row calls (1 thread, CPU time)
FFT_ELEMENTS = 1 << 17

#: frames per block of the head kernel: the block's transposed power spectrum (257 bins x 16
#: frames, 16 KiB) stays in L1; blocks are what numba's threads share out
HEAD_BLOCK = 16

_KERNELS: dict[bool, tuple[Any, Any, Any]] = {}


def _kernels(parallel: bool) -> tuple[Any, Any, Any]:
    """The three kernels, compiled (lazily, cached on disk) serially or for numba's pool."""
    if parallel not in _KERNELS:
        # reassociation only (no contraction into FMAs, no other fast-math): it lets LLVM
        # vectorise the float64 sums; every float32 product and difference is unchanged
        jit = numba.njit(parallel=parallel, cache=True, nogil=True, fastmath={"reassoc"})
        _KERNELS[parallel] = (jit(_frames_impl), jit(_head_impl), jit(_zero_padding_impl))
    return _KERNELS[parallel]


_MEL_CACHE: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def mel_runs(
    opts: FbankOptions | MfccOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each mel filter as a run of FFT bins: ``(first bin, bin count, offset, weights)``,
    the float32 weights of filter ``b`` being ``weights[offset[b] : offset[b] + count[b]]``
    (the non-zero part of the dense float64 table, rounded as the torch path rounds it)."""
    fo = opts.frame
    key = (opts.mel, fo.sample_frequency, fo.padded_window_size)
    runs = _MEL_CACHE.get(key)
    if runs is None:
        dense = tables.mel_banks64(opts.mel, fo.sample_frequency, fo.padded_window_size)
        dense32 = dense.to(torch.float32).numpy()
        nz = dense.numpy() != 0
        lo = np.empty(dense32.shape[1], np.int64)
        count = np.empty(dense32.shape[1], np.int64)
        parts = []
        for b in range(dense32.shape[1]):
            bins = np.flatnonzero(nz[:, b])
            lo[b], count[b] = bins[0], bins[-1] + 1 - bins[0]
            parts.append(dense32[lo[b] : lo[b] + count[b], b])
        offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        runs = (lo, count, offset, np.ascontiguousarray(np.concatenate(parts), np.float32))
        _MEL_CACHE[key] = runs
    return runs


def _threads() -> int:
    pool = int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))
    return max(1, min(torch.get_num_threads(), pool))


def compute_features(waves: Tensor, lengths: Tensor, nf: Tensor, opts: FeatureOptions) -> Tensor:
    """``[N, F, D]`` float32 features of a padded float32 CPU batch (zeros past ``nf``).

    ``waves [N, T]``, ``lengths [N]`` and ``nf [N]`` (frame counts) on the CPU; no dither.
    """
    torch_threads = torch.get_num_threads()
    try:
        return _compute_features(waves, lengths, nf, opts)
    finally:
        # numba's OpenMP threading layer starts on the first call and sets the process's
        # OpenMP thread count, which torch shares: a data-loader worker (1 torch thread)
        # would otherwise run every later torch op on all cores
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def _compute_features(waves: Tensor, lengths: Tensor, nf: Tensor, opts: FeatureOptions) -> Tensor:
    fo = opts.frame
    if fo.dither != 0.0:
        raise ValueError("the numba kernels have no dither; use the torch path")
    n, t = waves.shape
    nframes = tables.num_frames_int(t, fo)
    dim = opts.dim
    out = torch.empty(n, nframes, dim, dtype=torch.float32)
    if n == 0 or nframes == 0:
        return out
    threads = _threads()
    parallel = threads > 1
    if parallel:
        numba.set_num_threads(threads)
    frames_k, head_k, zero_k = _kernels(parallel)
    wave_np = np.ascontiguousarray(waves.detach().to(torch.float32).numpy())
    len_np = lengths.to(torch.int64).numpy()
    nf_np = nf.to(torch.int64).numpy()
    out_np = out.numpy()
    zero_k(out_np, nf_np)
    total = int(nf_np.sum())
    if total == 0:
        return out
    row_utt = np.repeat(np.arange(n, dtype=np.int64), nf_np)
    starts = np.concatenate([[0], np.cumsum(nf_np)[:-1]])
    row_frame = np.arange(total, dtype=np.int64) - np.repeat(starts, nf_np)

    size, padded = fo.window_size, fo.padded_window_size
    # FFT_ELEMENTS per thread: torch splits the chunk's FFT over its threads, and fewer
    # chunks mean fewer parallel launches of the two kernels
    chunk = max(1, min(FFT_ELEMENTS // padded * threads, total))
    buf = torch.zeros(chunk, padded, dtype=torch.float32)
    buf_np = buf.numpy()
    log_e = np.zeros(chunk, np.float32)
    window = tables.window_function(fo, torch.float32).numpy()

    energy, floor = tables.energy_spec(opts)
    eps = np.float32(tables.EPSILON)
    floor32 = np.float32(floor)
    if isinstance(opts, SpectrogramOptions):
        kind, use_power, use_log, use_energy, htk = KIND_SPECTROGRAM, True, True, True, False
        runs = (np.zeros(0, np.int64),) * 3 + (np.zeros(0, np.float32),)
    else:
        runs = mel_runs(opts)
        use_energy, htk = opts.use_energy, opts.htk_compat
        if isinstance(opts, FbankOptions):
            kind, use_power, use_log = KIND_FBANK, opts.use_power, opts.use_log_fbank
        else:
            kind, use_power, use_log = KIND_MFCC, True, True
    if isinstance(opts, MfccOptions):
        dct = np.ascontiguousarray(
            tables.cached_table("dct", opts, torch.device("cpu"), torch.float32).numpy().T
        )
    else:
        dct = np.zeros((1, 1), np.float32)
    sqrt2 = np.float32(math.sqrt(2.0))
    for r0 in range(0, total, chunk):
        r1 = min(r0 + chunk, total)
        frames_k(
            wave_np,
            len_np,
            row_utt,
            row_frame,
            r0,
            r1,
            window,
            buf_np,
            log_e,
            fo.window_shift,
            tables.first_sample_offset(fo),
            not fo.snip_edges,
            fo.remove_dc_offset,
            np.float32(fo.preemphasis_coefficient),
            ENERGY_CODES[energy],
            floor32,
            eps,
        )
        # a fresh output: torch's rfft into a preallocated ``out=`` measured ~1.7x slower
        spec_np = torch.view_as_real(torch.fft.rfft(buf[: r1 - r0])).numpy()
        head_k(
            spec_np,
            log_e,
            row_utt,
            row_frame,
            r0,
            r1,
            out_np,
            kind,
            *runs,
            dct,
            use_power,
            use_log,
            use_energy,
            htk,
            eps,
            sqrt2,
        )
    assert size <= padded
    return out
