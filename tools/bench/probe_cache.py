"""Probe training per epoch: cached layers (ours) vs the upstream run on every step (s3prl).

The same task (PR on the bundled SYNTHETIC corpus, built here with ``speechssl data synth``
unless ``--task-root`` is given), the same upstream, head, batches, seed and optimizer, run
through the same :class:`~speechssl.train.trainer.TrainLoop` ``train_step``; the only
difference is where the hidden states come from: ``data.cache=true`` reads the float16
layer cache (written once, its time reported as ``cache_seconds``), ``false`` loads the
audio and runs the frozen upstream for every batch, as s3prl does. Each mode runs in a fresh
child process (so its peak memory is its own: ``ru_maxrss`` on CPU, ``max_memory_allocated``
on CUDA), one after the other in this run, ``--repeats`` times alternately.

    python tools/bench/probe_cache.py --model hubert_tiny --hours 0.05 --device cpu
    python tools/bench/probe_cache.py --model hubert_base --hours 0.2 --device cuda

Prints one JSON line: what, device, ours/peer median seconds per epoch (epochs after the
first), ratio (peer / ours: how many times faster the cached epoch is), the one-off cache
time, peak memory of each mode, and the work size. The upstream has random weights (the
timing does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _child(args: argparse.Namespace) -> None:
    import dataclasses

    import torch

    from speechssl.distributed import init_distributed
    from speechssl.downstream.cache import cache_layers
    from speechssl.downstream.config import ProbeConfig, ProbeDataConfig, ProbeTaskConfig
    from speechssl.downstream.run import build_splits
    from speechssl.downstream.tasks import ProbeTask, get_task, load_task_data
    from speechssl.downstream.upstreams import load_upstream
    from speechssl.train.config import OptimConfig, TrainerConfig
    from speechssl.train.trainer import TrainLoop

    torch.set_num_threads(args.threads)
    env = init_distributed(args.device)
    upstream = load_upstream(args.upstream, env.device)
    layers = list(range(upstream.num_layers))
    root = Path(args.task_root)
    if args.child == "cache":
        t0 = time.perf_counter()
        for split in ("train", "dev", "test"):
            cache_layers(root / split, Path(args.cache_dir) / split, upstream, layers,
                         batch_seconds=args.extract_batch_seconds)  # fmt: skip
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        print(json.dumps({"cache_seconds": time.perf_counter() - t0}))
        return
    cfg = ProbeConfig(
        upstream=args.upstream,
        task=ProbeTaskConfig(name="pr"),
        data=ProbeDataConfig(dir=str(root), cache=args.child == "cached", cache_dir=args.cache_dir,
                             max_batch_frames=args.batch_frames, max_batch_utts=args.batch_utts,
                             extract_batch_seconds=args.extract_batch_seconds),
        optim=OptimConfig(name="adam", lr=1e-3, weight_decay=0.0, schedule="constant", warmup_steps=0),
        trainer=TrainerConfig(exp_dir=args.exp, device=args.device, max_steps=10**6, clip_norm=1.0,
                              progress_bar=False, tensorboard=False, export_final=False),
    )  # fmt: skip
    spec = get_task("pr")
    vocab, targets = load_task_data(spec, root)
    splits = build_splits(cfg, upstream, layers, targets, env)
    task = ProbeTask(
        spec, upstream, layers, vocab, splits, env, seed=1, layer=None, layer_norm=False,
        proj_dim=256, max_batch_frames=args.batch_frames, max_batch_utts=args.batch_utts,
    )  # fmt: skip
    loop = TrainLoop(task, env, trainer=cfg.trainer, optim=dataclasses.replace(cfg.optim))
    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    epochs = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for batch in task.batches(epoch, 0):
            loop.train_step([batch])
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        epochs.append(time.perf_counter() - t0)
    out: dict[str, Any] = {"epochs": epochs, "batches": task.batches_per_rank(0)}
    if env.device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(env.device) / 2**20
    out["frames"] = sum(splits["train"].frames.values())
    print(json.dumps(out))


def _run_child(args: argparse.Namespace, mode: str, exp: Path) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, __file__, "--child", mode, "--task-root", args.task_root,
           "--upstream", args.upstream, "--cache-dir", args.cache_dir, "--exp", str(exp),
           "--device", args.device, "--threads", str(args.threads), "--epochs", str(args.epochs),
           "--batch-frames", str(args.batch_frames), "--batch-utts", str(args.batch_utts),
           "--extract-batch-seconds", str(args.extract_batch_seconds)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} child failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default="hubert_tiny", help="registry model built with random weights"
    )
    ap.add_argument("--upstream", default="", help="an upstream dir instead of --model")
    ap.add_argument("--task-root", default="", help="a PR task root instead of a new synth corpus")
    ap.add_argument("--hours", type=float, default=0.05, help="size of the generated corpus")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per mode (the first is warmup)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternately")
    ap.add_argument("--batch-frames", type=int, default=8000)
    ap.add_argument("--batch-utts", type=int, default=16)
    ap.add_argument("--extract-batch-seconds", type=float, default=60.0)
    ap.add_argument("--workdir", default="", help="keep the corpus, model and caches here")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    ap.add_argument("--exp", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="probe_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.task_root:
        from speechssl.data.synth import SynthCorpusConfig, make_corpus
        from speechssl.downstream.prep_synth import prepare_synth_probing

        if not (work / "corpus" / "meta.json").is_file():
            make_corpus(
                work / "corpus", seed=0, nj=args.threads, config=SynthCorpusConfig(hours=args.hours)
            )
        prepare_synth_probing(work / "corpus", work / "tasks", tasks=("pr",))
        args.task_root = str(work / "tasks" / "pr")
    label = args.upstream or f"{args.model} (random weights)"
    if not args.upstream:
        import torch

        from speechssl.models import create_model
        from speechssl.models.io import save_model_dir

        torch.manual_seed(0)
        if not (work / "model" / "model.json").is_file():
            save_model_dir(create_model(args.model), work / "model")
        args.upstream = str(work / "model")
    args.cache_dir = str(work / "cache")
    cache, _ = _run_child(args, "cache", work / "exp_cache")
    ours: list[float] = []
    peer: list[float] = []
    info: dict[str, Any] = {}
    for r in range(args.repeats):
        for mode in ("cached", "uncached"):
            res, rss = _run_child(args, mode, work / f"exp_{mode}_{r}")
            (ours if mode == "cached" else peer).extend(res["epochs"][1:] or res["epochs"])
            info[mode] = {"rss_mib": rss, "gpu_mib": res.get("peak_gpu_mib")}
            info["batches"], info["frames"] = res["batches"], res["frames"]
    o, p = statistics.median(ours), statistics.median(peer)
    from speechssl.data.kaldi_dir import KaldiDataDir

    train = KaldiDataDir(Path(args.task_root) / "train")
    audio = sum(train.durations().values())
    print(json.dumps({
        "what": "probe_cache PR epoch (cached float16 layers vs upstream every step)",
        "device": args.device, "threads": args.threads, "upstream": label,
        "ours_epoch_s": round(o, 4), "peer_epoch_s": round(p, 4), "ratio": round(p / o, 2),
        "cache_seconds": round(cache["cache_seconds"], 3),
        "ours_peak_rss_mib": round(info["cached"]["rss_mib"], 1),
        "peer_peak_rss_mib": round(info["uncached"]["rss_mib"], 1),
        "ours_peak_gpu_mib": info["cached"]["gpu_mib"], "peer_peak_gpu_mib": info["uncached"]["gpu_mib"],
        "train_audio_seconds": round(audio, 1), "train_utts": len(train.utt_ids()),
        "batches_per_epoch": info["batches"], "frames": info["frames"],
        "epochs_timed": len(ours), "synthetic_corpus": True,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
