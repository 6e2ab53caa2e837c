"""Fused Triton kernels for Kaldi features on CUDA (and on CPU under ``TRITON_INTERPRET=1``).

The batch makes three passes over memory instead of a dozen:

1. ``_frames_kernel``: one program per ``(utterance, frame)`` row reads its samples
   straight from the padded waveform (Kaldi's reflection computed per utterance), adds the
   dither, removes the DC offset, takes the energy, pre-emphasises, windows and writes the
   zero-padded FFT input row (plus the log energy).
2. cuFFT (``torch.fft.rfft``) on all rows.
3. ``_head_kernel``: a block of rows reads the complex spectrum, forms the power (or
   magnitude) spectrum, multiplies by the mel matrix (``tl.dot`` in IEEE float32), floors,
   takes the log, applies the DCT x lifter for MFCC, places the energy and writes the final
   ``[N, F, D]`` features, zeros past each utterance's frame count. For the spectrogram the
   head is elementwise (no matmul).

Tables come from :mod:`speechssl.features.tables` (shared with every backend). Numerics
mirror :mod:`speechssl.features.kaldi` step by step (separate multiply and
subtract in pre-emphasis, float32 throughout; kernels are launched with floating-point
contraction disabled so the rounding matches the torch path). Only float32 is fused; float64
input and autograd use the torch path.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

from speechssl.features.options import (
    FbankOptions,
    FeatureOptions,
    MfccOptions,
    SpectrogramOptions,
)
from speechssl.features.tables import (
    EPSILON,
    cached_table,
    energy_spec,
    first_sample_offset,
    num_frames_int,
    utterance_key,
)

try:  # triton is optional at import time (CPU-only installs)
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    _HAVE_TRITON = False


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether the fused kernels can run here (Triton and CUDA, or the interpreter)."""
    return _HAVE_TRITON and (torch.cuda.is_available() or interpreted())


if _HAVE_TRITON:

    @triton.jit
    def _hash32(x):
        # same mixer as speechssl.features.tables._hash32, on int64 holding uint32 values
        x = x ^ (x >> 16)
        x = (x * 0x21F0AAAD) & 0xFFFFFFFF
        x = x ^ (x >> 15)
        x = (x * 0x735A2D97) & 0xFFFFFFFF
        return x ^ (x >> 15)

    @triton.jit
    def _gauss(key, ctr):
        h1 = _hash32((ctr & 0xFFFFFFFF) ^ key)
        h2 = _hash32(h1 ^ 0x5BD1E995)
        u1 = ((h1 >> 8) + 1).to(tl.float32) * (1.0 / 16777216.0)
        u2 = (h2 >> 8).to(tl.float32) * (1.0 / 16777216.0)
        return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)

    @triton.jit
    def _load_samples(wave_ptr, pos, length, mask, REFLECT: tl.constexpr):
        if REFLECT:
            period = 2 * tl.maximum(length, 1)
            u = pos % period
            u = tl.where(u < 0, u + period, u)
            idx = tl.where(u >= length, period - 1 - u, u)
        else:
            idx = pos
        return tl.load(wave_ptr + idx, mask=mask, other=0.0)

    @triton.jit
    def _frames_kernel(
        waves_ptr,
        lengths_ptr,
        nframes_ptr,
        keys_ptr,
        window_ptr,
        out_ptr,
        energy_ptr,
        stride_wave,
        num_frames_max,
        shift,
        offset,
        dither,
        preemph,
        energy_floor,
        eps,
        SIZE: tl.constexpr,
        PADDED: tl.constexpr,
        BLOCK: tl.constexpr,
        REFLECT: tl.constexpr,
        DITHER: tl.constexpr,
        REMOVE_DC: tl.constexpr,
        PREEMPH: tl.constexpr,
        ENERGY: tl.constexpr,  # 0 none, 1 raw, 2 windowed
    ):
        row = tl.program_id(0).to(tl.int64)
        utt = row // num_frames_max
        frame = row % num_frames_max
        length = tl.load(lengths_ptr + utt)
        valid = frame < tl.load(nframes_ptr + utt)
        j = tl.arange(0, BLOCK)
        in_frame = j < SIZE
        mask = in_frame & valid
        wave_ptr = waves_ptr + utt * stride_wave
        pos = frame * shift + offset + j
        x = _load_samples(wave_ptr, pos, length, mask, REFLECT)
        # x[j - 1] (x[-1] := x[0]) reloaded rather than shifted in registers
        prev_j = tl.maximum(j - 1, 0)
        xp = _load_samples(wave_ptr, pos - (j - prev_j), length, mask, REFLECT)
        if DITHER:
            key = tl.load(keys_ptr + utt)
            x += dither * _gauss(key, frame * SIZE + j)
            xp += dither * _gauss(key, frame * SIZE + prev_j)
        x = tl.where(in_frame, x, 0.0)
        xp = tl.where(in_frame, xp, 0.0)
        if REMOVE_DC:
            mean = tl.sum(x, axis=0) / SIZE
            x = tl.where(in_frame, x - mean, 0.0)
            xp = tl.where(in_frame, xp - mean, 0.0)
        if ENERGY == 1:
            energy = tl.sum(x * x, axis=0)
        if PREEMPH:
            x = x - preemph * xp
        w = tl.load(window_ptr + j, mask=in_frame, other=0.0)
        y = x * w
        if ENERGY == 2:
            energy = tl.sum(y * y, axis=0)
        y = tl.where(valid, y, 0.0)
        tl.store(out_ptr + row * PADDED + j, y, mask=j < PADDED)
        if ENERGY != 0:
            log_e = tl.maximum(tl.log(tl.maximum(energy, eps)), energy_floor)
            tl.store(energy_ptr + row, log_e)

    @triton.jit
    def _head_kernel(
        spec_ptr,
        energy_ptr,
        nframes_ptr,
        mel_ptr,
        dct_ptr,
        out_ptr,
        num_rows,
        num_frames_max,
        eps,
        NUM_BINS: tl.constexpr,
        MEL: tl.constexpr,
        CEPS: tl.constexpr,
        OUT_DIM: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_C: tl.constexpr,
        MODE: tl.constexpr,  # 0 fbank, 1 mfcc
        USE_POWER: tl.constexpr,
        USE_LOG: tl.constexpr,
        ENERGY_COL: tl.constexpr,  # -1 none; fbank: output column of the energy; mfcc: >= 0
        MEL_COL0: tl.constexpr,  # output column of mel bin 0 (fbank)
        HTK_MFCC: tl.constexpr,  # MFCC in HTK order (C0/energy last)
        C0_SCALE: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_in = rows < num_rows
        valid = row_in & (
            (rows % num_frames_max)
            < tl.load(nframes_ptr + rows // num_frames_max, mask=row_in, other=0)
        )
        m = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)
        for k0 in range(0, NUM_BINS, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = row_in[:, None] & (k[None, :] < NUM_BINS)
            base = spec_ptr + rows[:, None] * (2 * NUM_BINS) + 2 * k[None, :]
            re = tl.load(base, mask=kmask, other=0.0)
            im = tl.load(base + 1, mask=kmask, other=0.0)
            p = re * re + im * im
            if not USE_POWER:
                p = tl.sqrt(p)
            wmask = (k[:, None] < NUM_BINS) & (m[None, :] < MEL)
            w = tl.load(mel_ptr + k[:, None] * MEL + m[None, :], mask=wmask, other=0.0)
            acc += tl.dot(p, w, input_precision="ieee")
        if USE_LOG:
            acc = tl.log(tl.maximum(acc, eps))
        if ENERGY_COL >= 0:
            log_e = tl.load(energy_ptr + rows, mask=row_in, other=0.0)
        out_rows = out_ptr + rows[:, None] * OUT_DIM
        if MODE == 0:
            vals = tl.where(valid[:, None], acc, 0.0)
            smask = row_in[:, None] & (m[None, :] < MEL)
            tl.store(out_rows + MEL_COL0 + m[None, :], vals, mask=smask)
        else:
            # padded mel columns hold log(eps); their DCT rows are zero-masked here
            c = tl.arange(0, BLOCK_C)
            dmask = (m[:, None] < MEL) & (c[None, :] < CEPS)
            d = tl.load(dct_ptr + m[:, None] * CEPS + c[None, :], mask=dmask, other=0.0)
            ceps = tl.dot(acc, d, input_precision="ieee")
            if HTK_MFCC:
                ceps = tl.where(c[None, :] == 0, ceps * C0_SCALE, ceps)
                col = tl.where(c == 0, CEPS - 1, c - 1)
            else:
                col = c
            vals = tl.where(valid[:, None], ceps, 0.0)
            if ENERGY_COL >= 0:
                vals = tl.where(c[None, :] == 0, tl.where(valid, log_e, 0.0)[:, None], vals)
            smask = row_in[:, None] & (c[None, :] < CEPS)
            tl.store(out_rows + col[None, :], vals, mask=smask)
        if ENERGY_COL >= 0 and MODE == 0:
            e_ptr = out_ptr + rows * OUT_DIM + ENERGY_COL
            tl.store(e_ptr, tl.where(valid, log_e, 0.0), mask=row_in)

    @triton.jit
    def _spectrogram_kernel(
        spec_ptr,
        energy_ptr,
        nframes_ptr,
        out_ptr,
        num_rows,
        num_frames_max,
        eps,
        NUM_BINS: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        row_in = rows < num_rows
        valid = row_in & (
            (rows % num_frames_max)
            < tl.load(nframes_ptr + rows // num_frames_max, mask=row_in, other=0)
        )
        log_e = tl.load(energy_ptr + rows, mask=row_in, other=0.0)
        for k0 in range(0, NUM_BINS, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = row_in[:, None] & (k[None, :] < NUM_BINS)
            base = spec_ptr + rows[:, None] * (2 * NUM_BINS) + 2 * k[None, :]
            re = tl.load(base, mask=kmask, other=0.0)
            im = tl.load(base + 1, mask=kmask, other=0.0)
            logp = tl.log(tl.maximum(re * re + im * im, eps))
            vals = tl.where(k[None, :] == 0, log_e[:, None], logp)
            vals = tl.where(valid[:, None], vals, 0.0)
            tl.store(out_ptr + rows[:, None] * NUM_BINS + k[None, :], vals, mask=kmask)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def _launch_options() -> dict[str, Any]:
    # no fused multiply-add: pre-emphasis must round like the torch path (and Kaldi)
    return {"enable_fp_fusion": False}


def frames(
    waves: Tensor,
    lengths: Tensor,
    nframes: Tensor,
    opts: FeatureOptions,
    seeds: Tensor | None,
) -> tuple[Tensor, Tensor | None, int]:
    """Pass 1: windowed, zero-padded FFT input rows ``[N * F, P]`` and log energy ``[N * F]``."""
    fo = opts.frame
    n, t = waves.shape
    f_max = num_frames_int(t, fo)
    size, padded = fo.window_size, fo.padded_window_size
    rows = n * f_max
    out = torch.empty(rows, padded, device=waves.device, dtype=torch.float32)
    energy_mode, floor = energy_spec(opts)
    energy = (
        torch.empty(rows, device=waves.device, dtype=torch.float32)
        if energy_mode != "none"
        else out
    )
    if rows == 0:
        return out, (energy if energy_mode != "none" else None), f_max
    keys = utterance_key(seeds) if seeds is not None else lengths
    window = cached_table("window", fo, waves.device, torch.float32)
    waves = waves.contiguous()
    _frames_kernel[(rows,)](
        waves,
        lengths,
        nframes,
        keys,
        window,
        out,
        energy,
        waves.stride(0),
        f_max,
        fo.window_shift,
        first_sample_offset(fo),
        fo.dither,
        fo.preemphasis_coefficient,
        floor if floor != -math.inf else -3.0e38,
        EPSILON,
        SIZE=size,
        PADDED=padded,
        BLOCK=_pow2(padded),
        REFLECT=not fo.snip_edges,
        DITHER=fo.dither != 0.0,
        REMOVE_DC=fo.remove_dc_offset,
        PREEMPH=fo.preemphasis_coefficient != 0.0,
        ENERGY={"none": 0, "raw": 1, "windowed": 2}[energy_mode],
        **_launch_options(),
    )
    return out, (energy if energy_mode != "none" else None), f_max


def compute_features(
    waves: Tensor, lengths: Tensor, nframes: Tensor, opts: FeatureOptions, seeds: Tensor | None
) -> Tensor:
    """All three passes; ``[N, F, D]`` float32 (float64 input is computed in float32 here:
    callers route float64 to the torch path)."""
    waves = waves.float()
    n = waves.shape[0]
    rows_t, energy, f_max = frames(waves, lengths, nframes, opts, seeds)
    dim = opts.dim
    out = torch.empty(n * f_max, dim, device=waves.device, dtype=torch.float32)
    rows = n * f_max
    if rows == 0:
        return out.view(n, f_max, dim)
    spec = torch.view_as_real(torch.fft.rfft(rows_t, dim=-1)).contiguous()
    num_bins = spec.shape[1]
    energy_arg = energy if energy is not None else out
    if isinstance(opts, SpectrogramOptions):
        block_r, block_k = 16, 64
        _spectrogram_kernel[(triton.cdiv(rows, block_r),)](
            spec,
            energy_arg,
            nframes,
            out,
            rows,
            f_max,
            EPSILON,
            NUM_BINS=num_bins,
            BLOCK_R=block_r,
            BLOCK_K=block_k,
            **_launch_options(),
        )
        return out.view(n, f_max, dim)
    mel = cached_table("mel", opts, waves.device, torch.float32)
    num_mel = opts.mel.num_mel_bins
    if isinstance(opts, MfccOptions):
        dct = cached_table("dct", opts, waves.device, torch.float32)
        mode, ceps, use_power, use_log = 1, opts.num_ceps, True, True
        energy_col = 0 if opts.use_energy else -1
        mel_col0, htk = 0, opts.htk_compat
        c0_scale = 1.0 if opts.use_energy else math.sqrt(2.0)
    else:
        assert isinstance(opts, FbankOptions)
        dct = mel
        mode, ceps, use_power, use_log = 0, 1, opts.use_power, opts.use_log_fbank
        energy_col = (num_mel if opts.htk_compat else 0) if opts.use_energy else -1
        mel_col0 = 1 if opts.use_energy and not opts.htk_compat else 0
        htk, c0_scale = False, 1.0
    block_r = 32
    _head_kernel[(triton.cdiv(rows, block_r),)](
        spec,
        energy_arg,
        nframes,
        mel,
        dct,
        out,
        rows,
        f_max,
        EPSILON,
        NUM_BINS=num_bins,
        MEL=num_mel,
        CEPS=ceps,
        OUT_DIM=dim,
        BLOCK_R=block_r,
        BLOCK_K=32,
        BLOCK_M=_pow2(num_mel),
        BLOCK_C=_pow2(ceps),
        MODE=mode,
        USE_POWER=use_power,
        USE_LOG=use_log,
        ENERGY_COL=energy_col,
        MEL_COL0=mel_col0,
        HTK_MFCC=htk,
        C0_SCALE=c0_scale,
        **_launch_options(),
    )
    return out.view(n, f_max, dim)
