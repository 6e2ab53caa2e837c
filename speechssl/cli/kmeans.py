"""`speechssl kmeans fit|apply|report`: unit discovery on dumped features."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("kmeans", help="k-means units: fit, apply (labels), report (quality)")
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    fit = verbs.add_parser(
        "fit",
        help="fit k-means on a feature store (torchrun for several processes)",
        description="Fit k-means on a feature store, streaming its shards. Run under torchrun "
        "to split the shards over processes (gloo on CPU, NCCL on CUDA). "
        "Default schedule (--mode auto), from the work of one full pass, N*d*k multiply-adds "
        "(N selected frames of dimension d): up to 2e9, full-batch Lloyd from 3 k-means++ "
        "starts until the inertia changes by < 1e-4; above that with d <= 64 (MFCC-like), "
        "0.3 epochs of mini-batch updates (at least 30 batches) from one start and no "
        "full-batch iterations; above that with d > 64 (model layers), Lloyd from 3 starts "
        "until the change is < 1e-3. A tuning flag given explicitly overrides the rule. "
        "A rerun with the same settings on the same store does nothing; other settings need "
        "--overwrite.",
    )
    fit.add_argument("--features", required=True, help="feature store directory")
    fit.add_argument("--k", type=int, required=True, help="number of clusters")
    fit.add_argument("--out", required=True, help="output model directory")
    sample = fit.add_mutually_exclusive_group()
    sample.add_argument(
        "--fraction",
        type=float,
        help="use about this fraction (0 < F <= 1) of the utterances, chosen by hash of seed "
        "and id (fairseq learn_kmeans.py's --percent, which is a fraction too: 0.1 = a tenth)",
    )
    sample.add_argument(
        "--percent",
        type=float,
        help="the same in percent (0 < P <= 100): --percent 10 is --fraction 0.1",
    )
    sample.add_argument("--max-frames", type=int, help="use utterances up to this many frames")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--mode",
        choices=["auto", "lloyd", "minibatch"],
        default="auto",
        help="auto (default): the schedule rule above; lloyd: full-batch iterations (tol "
        "1e-4, or 1e-3 above 2e9 multiply-adds per pass); minibatch: mini-batch epochs",
    )
    fit.add_argument(
        "--max-iter",
        type=int,
        help="full-batch iterations (epochs in minibatch mode; default 100, or 0 for the "
        "mini-batch start); 0 with --minibatch-epochs: the mini-batch epochs alone",
    )
    fit.add_argument("--tol", type=float, help="relative inertia change to stop at (see above)")
    fit.add_argument("--n-init", type=int, help="k-means++ restarts (default 3, or 1 for the "
                     "mini-batch start)")  # fmt: skip
    fit.add_argument("--init-sample-frames", type=int, help="frames in the init sample")
    fit.add_argument(
        "--init-lloyd-iters",
        type=int,
        help="Lloyd iterations on the init sample refining each restart (default 10, or 3 "
        "for the mini-batch start)",
    )
    fit.add_argument("--batch-size", type=int, default=10000, help="mini-batch size (frames)")
    fit.add_argument(
        "--minibatch-epochs",
        type=float,
        help="lloyd mode: mini-batch epochs before the full-batch iterations (default 0, or "
        "0.3 for the mini-batch start)",
    )
    fit.add_argument("--normalize", choices=["none", "global_mv"], default="none")
    fit.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    fit.add_argument("--cache-gb", type=float, help="keep data in (device) memory up to this")
    fit.add_argument("--block-frames", type=int, help="rows per read (default: ~8 MiB)")
    fit.add_argument("--threads", type=int, help="torch CPU threads")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing model")
    fit.set_defaults(func=cmd_fit)

    apply = verbs.add_parser(
        "apply",
        help="write unit labels of a feature store, or of a data dir's audio",
        description="Assign every frame to its nearest centroid and write labels keyed by "
        "utterance (text + binary + meta.json). With --features, label shard RANK of NSHARD "
        "covers a contiguous slice of the store's utterances; with --data, features are "
        "computed from the audio by the extractor the model was trained on (rebuilt from "
        "its metadata) for the dump's shard RANK. Complete shards are skipped on rerun.",
    )
    apply.add_argument("--kmeans", required=True, help="model directory from `kmeans fit`")
    source = apply.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="feature store directory")
    source.add_argument("--data", help="Kaldi data dir: label straight from its audio")
    apply.add_argument("--tolerant", action="store_true", help="--data: skip bad audio, count it")
    apply.add_argument("--out", required=True, help="label directory")
    apply.add_argument("--nshard", type=int, default=1)
    apply.add_argument("--rank", type=int, default=0)
    apply.add_argument("--device", default="auto")
    apply.add_argument("--threads", type=int)
    apply.add_argument(
        "--frame-window",
        type=float,
        help="analysis window of a frame in seconds (default: from the store, else 0.025)",
    )
    apply.add_argument("--overwrite", action="store_true", help="redo complete shards too")
    apply.set_defaults(func=cmd_apply)

    report = verbs.add_parser(
        "report",
        help="unit quality: PNMI/purity with alignments; usage/entropy/durations",
        description="Write report.json and report.png (usage histogram; with alignments the "
        "p(phone|unit) matrix) and cooccurrence.tsv into OUT.",
    )
    report.add_argument("--labels", required=True, help="label directory")
    report.add_argument("--alignments", help="frame-level phone alignments (utt sym sym ...)")
    report.add_argument("--ali-rate", type=float, default=100.0, help="alignment frames/s")
    report.add_argument("--data", help="data dir to check label lengths against")
    report.add_argument("--tolerance", type=float, default=2.0, help="label length tolerance")
    report.add_argument("--exclude-phones", default="", help="comma-separated symbols to ignore")
    report.add_argument("--max-mismatch", type=float, default=0.05, help="seconds")
    report.add_argument("--tolerant", action="store_true", help="skip bad utterances, count them")
    report.add_argument("--out", required=True, help="report directory")
    report.set_defaults(func=cmd_report)


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_fit(args: argparse.Namespace) -> int:

    from speechssl import distributed as udist
    from speechssl.features.store import FeatureStore
    from speechssl.units.kmeans import KMeansConfig
    from speechssl.utils.lock import exclusive_lock

    _set_threads(args.threads)
    fraction = args.fraction
    if args.percent is not None:
        if args.percent < 1:
            log.warning(
                "--percent %g keeps %g%% of the utterances; fairseq's --percent %g (a "
                "fraction) is --fraction %g here",
                args.percent, args.percent, args.percent, args.percent,
            )  # fmt: skip
        fraction = _percent_to_fraction(args.percent)
    cfg = KMeansConfig(
        k=args.k,
        mode=args.mode,
        max_iter=args.max_iter,
        tol=args.tol,
        n_init=args.n_init,
        init_sample_frames=args.init_sample_frames,
        init_lloyd_iters=args.init_lloyd_iters,
        batch_size=args.batch_size,
        minibatch_epochs=args.minibatch_epochs,
        normalize=args.normalize,
        seed=args.seed,
        fraction=fraction,
        max_frames=args.max_frames,
        block_frames=args.block_frames,
        device=args.device,
        cache_gb=args.cache_gb,
    )
    env = udist.init_distributed(cfg.device)  # CUDA: this rank's LOCAL_RANK device
    try:
        rank, world = env.rank, env.world_size
        store = FeatureStore(args.features)
        out = Path(args.out)
        with contextlib.ExitStack() as held:
            if rank == 0:
                # one fit per output dir at a time; the lock file sits beside the dir, which
                # the save replaces as a whole
                held.enter_context(
                    exclusive_lock(
                        out.absolute().parent,
                        f"k-means output dir {out.name}",
                        name=f".{out.name}.kmeans.lock",
                    )
                )
            return _fit_into(args, cfg, store, out, rank, world)
    finally:
        udist.shutdown_distributed(env)


def _fit_into(
    args: argparse.Namespace, cfg: Any, store: Any, out: Path, rank: int, world: int
) -> int:
    """Fit unless the same fit exists in ``out`` (``--overwrite`` refits); rank 0 saves."""
    from speechssl import distributed as udist
    from speechssl.units.kmeans import fit_kmeans
    from speechssl.units.stream import store_fingerprint

    if not args.overwrite and cfg.same_fit_exists(out, store_fingerprint(store)):
        if rank == 0:
            print(f"{out}: model with the same settings and data exists; nothing to do")
        return 0
    result = fit_kmeans(store, cfg)
    if rank == 0:
        result.model.save(out, overwrite=True)
        m = result.model.meta
        keys = ("k", "num_frames", "schedule", "iterations", "converged",
                "inertia_per_frame", "empty_clusters", "seconds")  # fmt: skip
        print(json.dumps({"out": str(out), **{k: m[k] for k in keys}, "world_size": world}))
    udist.barrier()
    return 0


def _percent_to_fraction(percent: float) -> float:
    from speechssl.errors import ConfigError

    if not 0 < percent <= 100:
        raise ConfigError(f"--percent must be in (0, 100], got {percent:g}")
    return percent / 100.0


def cmd_apply(args: argparse.Namespace) -> int:
    from speechssl.units.apply import apply_to_audio, apply_to_store

    _set_threads(args.threads)
    # sharding, device and rerun options are the same for both label sources
    shared: dict[str, Any] = dict(
        nshard=args.nshard,
        rank=args.rank,
        device=args.device,
        overwrite=args.overwrite,
        frame_window_s=args.frame_window,
    )
    if args.features is not None:
        summary = apply_to_store(args.kmeans, args.features, args.out, **shared)
    else:
        summary = apply_to_audio(args.kmeans, args.data, args.out, tolerant=args.tolerant, **shared)
    fps = summary["frames"] / summary["seconds"] if summary["seconds"] > 0 else None
    print(json.dumps({**summary, "frames_per_second": fps}))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from speechssl.units.report import REPORT_JSON, write_report

    exclude = [p for p in args.exclude_phones.split(",") if p]
    report = write_report(
        args.labels,
        args.out,
        alignments=args.alignments,
        ali_rate=args.ali_rate,
        data_dir=args.data,
        tolerance=args.tolerance,
        exclude_phones=exclude,
        max_mismatch_s=args.max_mismatch,
        tolerant=args.tolerant,
    )
    usage = report["usage"]
    line = {
        "report": str(Path(args.out) / REPORT_JSON),
        "utts": report["num_utts"],
        "perplexity": round(usage["perplexity"], 2),
        "dead_clusters": usage["dead_clusters"],
        "mean_run_ms": round(usage["runs"]["mean_ms"], 1),
    }
    if "phones" in report:
        ph = report["phones"]
        line.update(
            pnmi=round(ph["pnmi"], 4),
            phone_purity=round(ph["phone_purity"], 4),
            cluster_purity=round(ph["cluster_purity"], 4),
        )
    print(json.dumps(line))
    sys.stdout.flush()
    return 0
