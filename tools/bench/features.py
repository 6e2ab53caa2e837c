"""Benchmark speechssl's batched Kaldi features against their peers, same inputs, same process.

Cases (one JSON line per case and peer, medians of ``--repeats`` timed runs after a warm-up;
on CPU ours and one peer at a time run interleaved, one of each per round, so drift in the
machine's speed hits both sides alike):

* ``one-long``: one utterance of ``--long-seconds`` (15 s) at 16 kHz.
* ``batch``: ``--num-utts`` (64) utterances of uniformly random length in
  [``--min-seconds``, ``--max-seconds``] (2-20 s). Ours computes the padded batch in one call;
  the peers loop over utterances (that is how they are used).

Peers on CPU: ``torchaudio.compliance.kaldi.fbank`` (per utterance), ``kaldi-native-fbank``
(per utterance), ``librosa`` log-mel (per utterance; not Kaldi-compatible, a speed
reference). Features: 80-dim fbank (and 13-dim MFCC against torchaudio).
``ratio = peer_seconds / ours_seconds`` (> 1: ours is faster).

On CUDA (when present): ours (fused Triton kernels + cuFFT) vs ``torchaudio`` on the GPU per
utterance, plus ours on the torch path, and the achieved bandwidth of our three passes
(frames kernel, FFT, head kernel) against the HBM peak (``--hbm-gbs``, default looked up
from the device name), from CUDA-event timings and the bytes each pass must move.

    OMP_NUM_THREADS=2 python tools/bench/features.py                      # full CPU + CUDA
    python tools/bench/features.py --long-seconds 3 --num-utts 8 --repeats 3   # quick
    OMP_NUM_THREADS=1 python tools/bench/features.py --threads 1 --clock cpu  # busy machine
    OMP_NUM_THREADS=2 python tools/bench/features.py --profile    # + where our CPU time goes
    python tools/bench/features.py --peers torchaudio --profile   # the issue-21 figures only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from speechssl.features import (
    FbankOptions,
    FrameOptions,
    MelOptions,
    MfccOptions,
    compute_features,
    kaldi,
    numba_kernels,
    tables,
)

RATE = 16000

HBM_PEAK_GBS = {"H100 SXM": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0, "H200": 4800.0}
HBM_PEAK_GBS.update({"A100-SXM4-80GB": 2039.0, "A100": 1555.0})


#: ``wall`` (default) or ``cpu`` (process CPU time: on a shared, oversubscribed machine the
#: work each side does, without the time spent descheduled; use with --threads 1)
CLOCK = {"fn": time.perf_counter}


def median_time(fn: Callable[[], Any], repeats: int, sync: bool = False) -> float:
    fn()  # warm-up (tables, kernel compilation, FFT plans)
    if sync:
        torch.cuda.synchronize()
    clock = CLOCK["fn"]
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median time of each function, the runs interleaved (one of each per round), so a
    machine whose speed drifts during the run (a shared VM) slows every side alike."""
    clock = CLOCK["fn"]
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def make_inputs(args: argparse.Namespace) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(args.seed)

    def utt(seconds: float) -> np.ndarray:
        n = int(seconds * RATE)
        # speech-like scale and spectrum: a few harmonics plus noise, int16 range
        t = np.arange(n) / RATE
        x = sum(np.sin(2 * np.pi * 130 * k * t) / k for k in range(1, 12))
        x = 3000 * x + 300 * rng.standard_normal(n)
        return np.round(x).astype(np.float32)

    lengths = rng.uniform(args.min_seconds, args.max_seconds, args.num_utts)
    return {"one-long": [utt(args.long_seconds)], "batch": [utt(s) for s in lengths]}


def padded(waves: list[np.ndarray], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in waves])
    out = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, : len(w)] = torch.from_numpy(w)
    return out.to(device), lengths.to(device)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


#: the CPU peers (--peers): ours is timed against each of them, one at a time
CPU_PEERS = ("torchaudio", "kaldi-native-fbank", "librosa")

#: torchaudio's median seconds per (feature, case), kept for --profile's 5x budget
PEER_SECONDS: dict[tuple[str, str], float] = {}


def cpu_cases(args: argparse.Namespace, inputs: dict[str, list[np.ndarray]]) -> None:
    import kaldi_native_fbank as knf
    import librosa

    fbank_opts = FbankOptions(
        frame=FrameOptions(sample_frequency=RATE), mel=MelOptions(num_mel_bins=80)
    )
    mfcc_opts = MfccOptions(frame=FrameOptions(sample_frequency=RATE))
    kn = knf.FbankOptions()
    kn.frame_opts.dither = 0.0
    kn.frame_opts.samp_freq = RATE
    kn.mel_opts.num_bins = 80

    def knf_run(waves: list[np.ndarray]) -> None:
        for w in waves:
            comp = knf.OnlineFbank(kn)
            comp.accept_waveform(RATE, w)
            comp.input_finished()
            np.stack([comp.get_frame(i) for i in range(comp.num_frames_ready)])

    def librosa_run(waves: list[np.ndarray]) -> None:
        for w in waves:
            mel = librosa.feature.melspectrogram(
                y=w, sr=RATE, n_fft=512, hop_length=160, win_length=400, n_mels=80, center=False
            )
            np.log(np.maximum(mel, 1.1920929e-07))

    for case, waves in inputs.items():
        cpu_case(args, case, waves, fbank_opts, mfcc_opts, knf_run, librosa_run)


def cpu_case(
    args: argparse.Namespace,
    case: str,
    waves: list[np.ndarray],
    fbank_opts: FbankOptions,
    mfcc_opts: MfccOptions,
    knf_run: Callable[[list[np.ndarray]], None],
    librosa_run: Callable[[list[np.ndarray]], None],
) -> None:
    import torchaudio.compliance.kaldi as K

    tw = [torch.from_numpy(w) for w in waves]
    batch, lengths = padded(waves, "cpu")
    audio_s = sum(len(w) for w in waves) / RATE
    with torch.inference_mode():
        peers: dict[str, dict[str, Callable[[], Any]]] = {
            "fbank": {
                "torchaudio.compliance.kaldi.fbank": lambda: [
                    K.fbank(w.unsqueeze(0), num_mel_bins=80, dither=0.0, energy_floor=0.0)
                    for w in tw
                ],
                "kaldi-native-fbank": lambda: knf_run(waves),
                "librosa-logmel": lambda: librosa_run(waves),
            },
            "mfcc": {
                "torchaudio.compliance.kaldi.mfcc": lambda: [
                    K.mfcc(w.unsqueeze(0), dither=0.0, energy_floor=0.0) for w in tw
                ],
            },
        }
        opts_of = {"fbank": fbank_opts, "mfcc": mfcc_opts}
        ours_fn = {
            "fbank": lambda: compute_features(batch, lengths, fbank_opts),
            "mfcc": lambda: compute_features(batch, lengths, mfcc_opts),
        }
        wanted = set(args.peers.split(","))
        for feat in ("fbank", "mfcc"):
            for peer, fn in peers[feat].items():
                if not any(peer.startswith(w) for w in wanted):
                    continue
                # ours against one peer at a time: a peer's own thread pool (numpy's BLAS
                # under librosa) spins after its calls and would slow whatever runs next
                t = interleaved_medians({"ours": ours_fn[feat], peer: fn}, args.repeats)
                ours, t_peer = t["ours"], t[peer]
                if peer.startswith("torchaudio"):
                    PEER_SECONDS[(feat, case)] = t_peer
                emit(
                    {
                        "what": f"{feat} {case}",
                        "device": "cpu",
                        "threads": torch.get_num_threads(),
                        "clock": args.clock,
                        "ours_s": round(ours, 5),
                        "peer": peer,
                        "peer_s": round(t_peer, 5),
                        "ratio": round(t_peer / ours, 2),
                        "utterances": len(waves),
                        "audio_s": round(audio_s, 2),
                        "ours_backend": kaldi.select_backend(batch, opts_of[feat]),
                    }
                )


#: aten operators of our CPU fbank path, grouped by pipeline stage (for --profile)
STAGES = {
    "gather frames": ("aten::index_select", "aten::index", "aten::nonzero"),
    "dc/preemph/window": ("aten::mean", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_"),
    "rfft": ("aten::_fft_r2c",),
    "power": ("aten::pow", "aten::square", "aten::addcmul"),
    "mel": ("aten::mm", "aten::cat"),
    "log": ("aten::clamp_min_", "aten::log_"),
    "write output": ("aten::index_copy_", "aten::zeros", "aten::fill_", "aten::zero_"),
}


def cpu_profile(args: argparse.Namespace, waves: list[np.ndarray], feat: str) -> None:
    """Where our CPU time goes on the batch case (``feat``: fbank or mfcc): self CPU time
    per pipeline stage (torch profiler, summed over ``--repeats`` calls, reported per call),
    the FFT alone on as many frames (the floor of anything built on torch.fft) against our
    whole call, and what the 5x target leaves, from torchaudio's time in the batch case of
    this run (run with the torchaudio peer; without it the profile times torchaudio here)."""
    import torchaudio.compliance.kaldi as K
    from torch.profiler import ProfilerActivity, profile

    frame = FrameOptions(sample_frequency=RATE)
    opts: FbankOptions | MfccOptions = (
        FbankOptions(frame=frame, mel=MelOptions(num_mel_bins=80))
        if feat == "fbank"
        else MfccOptions(frame=frame)
    )
    batch, lengths = padded(waves, "cpu")
    tw = [torch.from_numpy(w) for w in waves]
    nf = kaldi.num_frames(lengths, opts.frame)
    frames = int(nf.sum())
    padded_size = opts.frame.padded_window_size
    # our CPU chunk: the numba path's FFT size, or the torch path's
    numba_path = kaldi.select_backend(batch, opts) == "numba"
    rows = (numba_kernels.FFT_ELEMENTS if numba_path else tables.CHUNK_ELEMENTS) // padded_size
    chunk = torch.randn(rows, padded_size)
    chunk_out = torch.empty_like(chunk)
    tail = torch.randn(frames % rows, padded_size)

    def fft_only() -> None:
        # the FFT alone, on as many zero-padded frames, in our chunk size: a floor for any
        # implementation built on torch.fft (which torchaudio calls too)
        for _ in range(frames // rows):
            torch.fft.rfft(chunk)
        torch.fft.rfft(tail)

    def one_pass() -> None:
        # one elementwise read+write pass over as many frames, chunk by chunk (in cache)
        for _ in range(-(-frames // rows)):
            torch.mul(chunk, 0.5, out=chunk_out)

    def padded_output() -> None:
        # a fresh zeroed [N, F, D] output, as every call returns (page-faulted anew)
        torch.zeros(len(waves), int(nf.max()), opts.dim)

    def peer_run() -> None:
        if feat == "fbank":
            for w in tw:
                K.fbank(w.unsqueeze(0), num_mel_bins=80, dither=0.0, energy_floor=0.0)
        else:
            for w in tw:
                K.mfcc(w.unsqueeze(0), dither=0.0, energy_floor=0.0)

    fns: dict[str, Callable[[], Any]] = {
        "ours": lambda: compute_features(batch, lengths, opts),
        "fft": fft_only,
        "pass": one_pass,
        "output": padded_output,
    }
    peer_seconds = PEER_SECONDS.get((feat, "batch"))
    if peer_seconds is None:
        fns["peer"] = peer_run
    with torch.inference_mode():
        t = interleaved_medians(fns, args.repeats)
        ours, fft_alone = t["ours"], t["fft"]
        peer = t["peer"] if peer_seconds is None else peer_seconds
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                compute_features(batch, lengths, opts)
    per_op = {e.key: e.self_cpu_time_total / 1e3 / args.repeats for e in prof.key_averages()}
    stages = {name: sum(per_op.get(op, 0.0) for op in ops) for name, ops in STAGES.items()}
    listed = {op for ops in STAGES.values() for op in ops}
    stages["other"] = sum(v for k, v in per_op.items() if k not in listed)
    budget_ms = peer / 5 * 1e3
    emit(
        {
            "what": f"{feat} batch profile",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "clock": args.clock,
            "ours_ms": round(ours * 1e3, 2),
            "peer": f"torchaudio.compliance.kaldi.{feat}",
            "peer_ms": round(peer * 1e3, 2),
            "peer_timed": "in the batch case above" if peer_seconds is not None else "here",
            "ratio": round(peer / ours, 2),
            "stage_ms_profiled": {k: round(v, 2) for k, v in stages.items()},
            "rfft_alone_ms": round(fft_alone * 1e3, 2),
            "target_5x_ms": round(budget_ms, 2),
            "rfft_alone_share_of_target": round(fft_alone * 1e3 / budget_ms, 2),
            "rfft_alone_share_of_ours": round(fft_alone / ours, 2),
            "ours_backend": kaldi.select_backend(batch, opts),
            "elementwise_pass_ms": round(t["pass"] * 1e3, 2),
            "fresh_padded_output_ms": round(t["output"] * 1e3, 2),
            "utterances": len(waves),
            "frames": frames,
        }
    )


def hbm_peak(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key in sorted(HBM_PEAK_GBS, key=len, reverse=True):
        if key.lower() in name.lower():
            return HBM_PEAK_GBS[key]
    return None


def cuda_pass_bandwidth(
    batch: torch.Tensor, lengths: torch.Tensor, opts: FbankOptions
) -> dict[str, Any]:
    """CUDA-event time of each of our three passes and the bytes each must move."""
    from speechssl.features import kaldi
    from speechssl.features import triton_kernels as tk

    nf = kaldi.num_frames(lengths, opts.frame)
    rows_t, _, f_max = tk.frames(batch, lengths, nf, opts, None)
    rows = rows_t.shape[0]
    padded_size = opts.frame.padded_window_size
    bins = padded_size // 2 + 1

    def timed(fn: Callable[[], Any], reps: int = 20) -> float:
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps / 1e3

    t_frames = timed(lambda: tk.frames(batch, lengths, nf, opts, None))
    t_fft = timed(lambda: torch.fft.rfft(rows_t, dim=-1))
    t_all = timed(lambda: tk.compute_features(batch, lengths, nf, opts, None))
    t_head = max(t_all - t_frames - t_fft, 1e-9)
    wave_bytes = batch.numel() * 4
    frames_bytes = wave_bytes + rows * padded_size * 4
    fft_bytes = rows * padded_size * 4 + rows * bins * 8
    head_bytes = rows * bins * 8 + rows * opts.dim * 4
    return {
        "rows": rows,
        "frames_per_utt_max": f_max,
        "pass_s": {"frames": t_frames, "fft": t_fft, "head": t_head, "total": t_all},
        "pass_gbs": {
            "frames": frames_bytes / t_frames / 1e9,
            "fft": fft_bytes / t_fft / 1e9,
            "head": head_bytes / t_head / 1e9,
            "total": (frames_bytes + fft_bytes + head_bytes) / t_all / 1e9,
        },
    }


def cuda_cases(args: argparse.Namespace, inputs: dict[str, list[np.ndarray]]) -> None:

    name = torch.cuda.get_device_name()
    peak = hbm_peak(name, args.hbm_gbs)
    opts = FbankOptions(frame=FrameOptions(sample_frequency=RATE), mel=MelOptions(num_mel_bins=80))
    big = inputs["batch"] * max(1, args.gpu_batch_repeat)
    for case, waves in (*inputs.items(), (f"batch-x{args.gpu_batch_repeat}", big)):
        cuda_case(args, case, waves, opts, name, peak)


def cuda_case(
    args: argparse.Namespace,
    case: str,
    waves: list[np.ndarray],
    opts: FbankOptions,
    name: str,
    peak: float | None,
) -> None:
    import torchaudio.compliance.kaldi as K

    batch, lengths = padded(waves, "cuda")
    tw = [torch.from_numpy(w).cuda() for w in waves]
    audio_s = sum(len(w) for w in waves) / RATE
    with torch.inference_mode():
        ours = median_time(lambda: compute_features(batch, lengths, opts), args.repeats, sync=True)
        ours_torch = median_time(
            lambda: compute_features(batch, lengths, opts, backend="torch"), args.repeats, sync=True
        )
        ta = median_time(
            lambda: [
                K.fbank(w.unsqueeze(0), num_mel_bins=80, dither=0.0, energy_floor=0.0) for w in tw
            ],
            args.repeats,
            sync=True,
        )
        bw = cuda_pass_bandwidth(batch, lengths, opts)
    for peer, t in (
        ("torchaudio.compliance.kaldi.fbank (GPU, per utterance)", ta),
        ("ours torch path (GPU)", ours_torch),
    ):
        emit(
            {
                "what": f"fbank {case}",
                "device": name,
                "ours_s": round(ours, 6),
                "peer": peer,
                "peer_s": round(t, 6),
                "ratio": round(t / ours, 2),
                "utterances": len(waves),
                "audio_s": round(audio_s, 2),
            }
        )
    emit(
        {
            "what": f"fbank {case} bandwidth",
            "device": name,
            "hbm_peak_gbs": peak,
            **bw,
            "fraction_of_peak": (
                {k: round(v / peak, 3) for k, v in bw["pass_gbs"].items()} if peak else None
            ),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--long-seconds", type=float, default=15.0)
    parser.add_argument("--num-utts", type=int, default=64)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument(
        "--gpu-batch-repeat", type=int, default=8, help="GPU: also a batch this many times larger"
    )
    parser.add_argument(
        "--hbm-gbs", type=float, default=None, help="HBM peak GB/s (default: by device name)"
    )
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="CPU: also a per-stage profile of the batch case"
    )
    parser.add_argument(
        "--profile-feats",
        default="fbank,mfcc",
        help="comma list of features --profile covers (fbank, mfcc)",
    )
    parser.add_argument(
        "--peers",
        default=",".join(CPU_PEERS),
        help=f"CPU: comma list of peers to time ours against (of {', '.join(CPU_PEERS)})",
    )
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time"
    )
    args = parser.parse_args()
    unknown = set(args.peers.split(",")) - set(CPU_PEERS) - {""}
    if unknown:
        parser.error(f"unknown --peers {sorted(unknown)}; known: {', '.join(CPU_PEERS)}")
    bad = set(args.profile_feats.split(",")) - {"fbank", "mfcc"}
    if bad:
        parser.error(f"unknown --profile-feats {sorted(bad)}; known: fbank, mfcc")
    if args.clock == "cpu":
        CLOCK["fn"] = time.process_time
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args)
    if not args.no_cpu:
        cpu_cases(args, inputs)
        if args.profile:
            for feat in args.profile_feats.split(","):
                cpu_profile(args, inputs["batch"], feat)
    if torch.cuda.is_available():
        cuda_cases(args, inputs)


if __name__ == "__main__":
    main()
