"""Benchmark speechssl k-means against scikit-learn and faiss; label throughput; peak RSS.

Every case prints one JSON line. Peers run on the same data in the same process; in ``fit``
they are interleaved with ours (each repeat runs every peer once, then each of ours once);
times are medians of ``--repeats`` runs; ``ratio`` is peer time / our time (> 1: we are
faster) and the inertia of every result is measured by one evaluator (exact float64
``||x - c||^2`` of the nearest centroid, averaged over frames).

Cases (sizes are flags; the defaults are the issue's sizes, use small ones on a busy box)::

    python tools/bench/kmeans.py fit --frames 1000000 --dim 39 --k 100 --data synth-mfcc
    python tools/bench/kmeans.py fit --frames 200000 --dim 768 --k 500 --data gmm
    python tools/bench/kmeans.py assign --frames 1000000 --dim 39 --k 100
    python tools/bench/kmeans.py rss --sizes 1000000,4000000 --dim 39 --k 100
    python tools/bench/kmeans.py gpu --frames 17000000 --dim 768 --k 500 --device cuda
    ... --threads 1 --clock cpu      # on a busy shared machine (process CPU time)

Data: ``synth-mfcc`` synthesises the bundled eSpeak corpus (``--synth-hours``) and takes
Kaldi MFCCs (13 ceps + deltas + delta-deltas = 39 dims, ``torchaudio.compliance.kaldi``,
dither 0) of it; when more frames are asked for than the corpus has, it is repeated with
small Gaussian jitter (1% of each dimension's std) and the JSON line says so. ``gmm`` is a
Gaussian mixture (``speechssl.units.synthetic``, k unit-variance components whose means
are about 2.5 std apart, so they overlap),
used for dims other than 39. Peers: scikit-learn ``MiniBatchKMeans`` with fairseq's HuBERT
settings (``examples/hubert/simple_kmeans/learn_kmeans.py``: batch 10000, k-means++,
n_init 20, max_iter 100, max_no_improvement 100, reassignment_ratio 0, tol 0) and
``faiss.Kmeans`` (niter 25, its default, on all points: ``max_points_per_centroid`` raised
so faiss does not subsample).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from speechssl.features.store import FeatureStore, ShardWriter, StoreMeta, write_meta  # noqa: E402
from speechssl.units.kmeans import KMeansConfig, KMeansModel, fit_kmeans  # noqa: E402
from speechssl.units.synthetic import MixtureSpec, write_mixture_store  # noqa: E402

#: our configurations timed by `fit`: the default (`kmeans fit` without tuning flags: the
#: schedule rule of speechssl.units.kmeans.config), the former default (Lloyd to a relative
#: change of 1e-4 from 3 starts), and the mini-batch start spelled out
DEFAULT_OURS: dict[str, dict[str, Any]] = {
    "default": {},
    "lloyd-tol1e-4": {"mode": "lloyd", "tol": 1e-4},
    "mb0.3-only": {"minibatch_epochs": 0.3, "max_iter": 0, "n_init": 1, "init_lloyd_iters": 3},
}

#: the clock `timed` uses (--clock): wall time, or this process's CPU time (all threads),
#: which a busy shared machine disturbs less
CLOCK: dict[str, Callable[[], float]] = {"fn": time.perf_counter}


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls and the last result."""
    clock = CLOCK["fn"]
    times, out = [], None
    for _ in range(repeats):
        t0 = clock()
        out = fn()
        times.append(clock() - t0)
    return statistics.median(times), out


def inertia_per_frame(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> float:
    """Exact mean squared distance to the nearest centroid, in float64."""
    c = torch.from_numpy(np.asarray(centroids, dtype=np.float64))
    total = 0.0
    for s in range(0, x.shape[0], chunk):
        xc = torch.from_numpy(np.asarray(x[s : s + chunk], dtype=np.float64))
        total += float(torch.cdist(xc, c).min(1).values.square().sum())
    return total / x.shape[0]


# ----------------------------------------------------------------------------- data


def synth_mfcc_store(root: Path, frames: int, hours: float, seed: int) -> dict[str, Any]:
    """MFCC(13)+deltas+delta-deltas of the bundled synth corpus, repeated with jitter."""
    import soundfile as sf
    import torchaudio

    from speechssl.data.kaldi_dir import KaldiDataDir
    from speechssl.data.synth import make_corpus

    corpus = root / "corpus"
    if not (corpus / "train" / "wav.scp").exists():
        make_corpus(corpus, hours=hours, seed=seed, nj=max(1, (os.cpu_count() or 1)))
    feats: list[np.ndarray] = []
    names: list[str] = []
    for split in ("train", "dev", "test"):
        ddir = KaldiDataDir(corpus / split)
        for utt in ddir.utt_ids():
            wav, sr = sf.read(ddir.audio_source(utt).path, dtype="float32")
            m = torchaudio.compliance.kaldi.mfcc(
                torch.from_numpy(wav).unsqueeze(0) * 32768, sample_frequency=sr, dither=0.0
            )
            d1 = torchaudio.functional.compute_deltas(m.t()).t()
            d2 = torchaudio.functional.compute_deltas(d1.t()).t()
            feats.append(torch.cat([m, d1, d2], 1).numpy())
            names.append(f"{split}-{utt}")
    base = sum(f.shape[0] for f in feats)
    std = np.concatenate(feats).std(0)
    rng = np.random.default_rng(seed)
    write_meta(root / "store", StoreMeta(kind="mfcc", dim=39, dtype="float32", frame_rate=100.0,
                                         nshard=4, extractor={"bench": "synth-mfcc"}), overwrite=True)  # fmt: skip
    writers = [ShardWriter(root / "store", r, 4, dim=39, dtype="float32") for r in range(4)]
    total, n, copy = 0, 0, 0
    while total < frames:
        for name, f in zip(names, feats):
            if total >= frames:
                break
            x = f if copy == 0 else f + rng.standard_normal(f.shape).astype(np.float32) * 0.01 * std
            writers[n % 4].add(f"{name}-r{copy}", x)
            total += f.shape[0]
            n += 1
        copy += 1
    for w in writers:
        w.close()
    return {"data": "synth-mfcc", "corpus_frames": base, "copies": copy, "jitter_std_frac": 0.01}


def gmm_store(root: Path, frames: int, dim: int, k: int, seed: int) -> dict[str, Any]:
    # means ~2.5 noise std apart on average: overlapping components, so k-means acts as a
    # quantiser of a continuous distribution (as on real features), not a cluster finder
    spread = 2.5 / np.sqrt(2 * dim)
    spec = MixtureSpec(num_frames=frames, dim=dim, components=k, spread=spread, seed=seed)
    write_mixture_store(root / "store", spec, nshard=4)
    return {"data": "gmm", "components": k, "spread": round(float(spread), 4)}


def make_store(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    if args.use_store:
        # an existing store (e.g. one `synth-mfcc` left in --tmp): link it in, do not copy
        (root / "store").symlink_to(Path(args.use_store).resolve())
        return {"data": f"store:{args.use_store}"}
    if args.data == "synth-mfcc":
        if args.dim != 39:
            raise SystemExit("--data synth-mfcc gives 39-dim features; use --data gmm for others")
        return synth_mfcc_store(root, args.frames, args.synth_hours, args.seed)
    return gmm_store(root, args.frames, args.dim, args.k, args.seed)


def load_all(store: FeatureStore) -> np.ndarray:
    return np.concatenate([np.asarray(x, dtype=np.float32) for _, x in store.iter_utterances()])


# ----------------------------------------------------------------------------- peers


def sklearn_fit(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=k, init="k-means++", max_iter=100, batch_size=10000, verbose=0,
        compute_labels=False, tol=0.0, max_no_improvement=100, init_size=None, n_init=20,
        reassignment_ratio=0.0, random_state=seed,
    )  # fmt: skip
    km.fit(x)
    return np.asarray(km.cluster_centers_)


def faiss_fit(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(
        x.shape[1], k, niter=25, seed=seed, verbose=False,
        max_points_per_centroid=x.shape[0] // k + 1,
    )  # fmt: skip
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids)


# ----------------------------------------------------------------------------- cases


def case_fit(args: argparse.Namespace) -> None:
    """Peers and our configurations interleaved: each repeat runs every peer once, then each
    of ours once, so a busy machine slows all of them alike; medians per configuration."""
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        info = make_store(args, Path(tmp))
        store = FeatureStore(Path(tmp) / "store")
        n = store.num_frames()
        x = load_all(store)
        peers = [p for p in args.peers.split(",") if p]
        ours = json.loads(args.ours)
        fits: dict[str, Callable[[], Any]] = {
            f"peer:{p}": functools.partial(
                {"sklearn": sklearn_fit, "faiss": faiss_fit}[p], x, args.k, args.seed
            )
            for p in peers
        }
        for name, overrides in ours.items():
            cfg = KMeansConfig(k=args.k, device=args.device, seed=args.seed, **overrides)
            fits[f"ours:{name}"] = functools.partial(fit_kmeans, store, cfg)
        # both clocks for every run: wall time, and this process's CPU time (all threads),
        # which other processes on a shared machine disturb less
        times: dict[str, list[float]] = {key: [] for key in fits}
        cpu: dict[str, list[float]] = {key: [] for key in fits}
        last: dict[str, Any] = {}
        clock = CLOCK["fn"]
        for _ in range(max(args.repeats, args.peer_repeats if peers else 0)):
            for key, fit in fits.items():
                budget = args.peer_repeats if key.startswith("peer:") else args.repeats
                if len(times[key]) >= budget:
                    continue
                t0, c0 = clock(), time.process_time()
                last[key] = fit()
                times[key].append(clock() - t0)
                cpu[key].append(time.process_time() - c0)
        peer_results = {
            p: (statistics.median(times[f"peer:{p}"]), inertia_per_frame(x, last[f"peer:{p}"]))
            for p in peers
        }
        for name, overrides in ours.items():
            res = last[f"ours:{name}"]
            ours_s = statistics.median(times[f"ours:{name}"])
            ours_inertia = inertia_per_frame(x, res.model.centroids.numpy())
            base = {
                "what": "kmeans_fit", "device": args.device, "frames": n, "dim": args.dim,
                "k": args.k, "threads": torch.get_num_threads(), "clock": args.clock, **info,
                "ours": name, "ours_settings": overrides,
                "ours_schedule": res.model.meta["schedule"], "ours_s": round(ours_s, 3),
                "ours_runs_s": [round(t, 3) for t in times[f"ours:{name}"]],
                "ours_cpu_s": round(statistics.median(cpu[f"ours:{name}"]), 3),
                "ours_inertia": ours_inertia, "ours_iterations": res.model.meta["iterations"],
                # initialisation (sample read, k-means++ restarts, their Lloyd refinement)
                "ours_init_s": res.model.meta["history"][0]["seconds"],
            }  # fmt: skip
            if args.recorded_peer:
                emit({**base, **recorded_peer(args.recorded_peer, base, ours_s, ours_inertia)})
            elif not peers:
                emit(base)
            for peer, (peer_s, peer_inertia) in peer_results.items():
                emit({
                    **base, "peer": peer, "peer_s": round(peer_s, 3),
                    "peer_runs_s": [round(t, 3) for t in times[f"peer:{peer}"]],
                    "peer_cpu_s": round(statistics.median(cpu[f"peer:{peer}"]), 3),
                    "cpu_ratio": round(
                        statistics.median(cpu[f"peer:{peer}"])
                        / statistics.median(cpu[f"ours:{name}"]), 2
                    ),
                    "peer_inertia": peer_inertia, "ratio": round(peer_s / ours_s, 2),
                    "inertia_ratio": round(ours_inertia / peer_inertia, 5),
                })  # fmt: skip


def recorded_peer(
    path: str, base: dict[str, Any], ours_s: float, ours_inertia: float
) -> dict[str, Any]:
    """The scikit-learn line of an earlier run of this script on the same generated data
    (same case, frames, dim, k, data and generator settings), for a peer too slow to rerun:
    the inertias compare exactly, the ratio only as far as the two machines are alike."""
    same = ("frames", "dim", "k", "data", "components", "spread", "corpus_frames", "copies")
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if (
            rec.get("what") == "kmeans_fit"
            and rec.get("peer") == "sklearn"
            and all(rec.get(f) == base.get(f) for f in same)
        ):
            return {
                "peer": "sklearn", "peer_source": f"recorded: {path}",
                "peer_s": rec["peer_s"], "peer_inertia": rec["peer_inertia"],
                "peer_threads": rec.get("threads"), "peer_clock": rec.get("clock"),
                "ratio": round(rec["peer_s"] / ours_s, 2),
                "inertia_ratio": round(ours_inertia / rec["peer_inertia"], 5),
            }  # fmt: skip
    raise SystemExit(f"kmeans.py: error: {path} has no sklearn line for these data")


def case_assign(args: argparse.Namespace) -> None:
    from speechssl.units.apply import apply_to_store

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        info = make_store(args, Path(tmp))
        store = FeatureStore(Path(tmp) / "store")
        n = store.num_frames()
        x = load_all(store)
        rng = np.random.default_rng(args.seed)
        centroids = x[rng.choice(n, args.k, replace=False)]
        model = KMeansModel(centroids=torch.from_numpy(centroids.copy()))
        km_dir = Path(tmp) / "km"
        model.meta = {"feature": {"kind": store.meta.kind, "layer": None}}
        model.save(km_dir)
        xt = torch.from_numpy(x)
        ours_s, labels = timed(lambda: model.labels(xt), args.repeats)

        def apply() -> None:
            apply_to_store(km_dir, store, Path(tmp) / "labels", device=args.device, overwrite=True)

        apply_s, _ = timed(apply, args.repeats)
        base = {
            "what": "kmeans_assign", "device": args.device, "frames": n, "dim": args.dim,
            "k": args.k, "threads": torch.get_num_threads(), "clock": args.clock, **info,
            "ours_fps": round(n / ours_s), "ours_apply_to_store_fps": round(n / apply_s),
        }  # fmt: skip
        for peer in [p for p in args.peers.split(",") if p]:
            if peer == "sklearn":
                from sklearn.metrics import pairwise_distances_argmin

                peer_s, plab = timed(
                    lambda: pairwise_distances_argmin(x, centroids), args.peer_repeats
                )
            else:
                import faiss

                index = faiss.IndexFlatL2(args.dim)
                index.add(np.ascontiguousarray(centroids))
                peer_s, res = timed(functools.partial(index.search, x, 1), args.peer_repeats)
                plab = res[1][:, 0]
            agree = float((np.asarray(plab) == labels.numpy()).mean())
            emit({**base, "peer": peer, "peer_fps": round(n / peer_s),
                  "ratio": round(peer_s / ours_s, 2), "label_agreement": agree})  # fmt: skip


def case_rss(args: argparse.Namespace) -> None:
    """Fit + apply in a fresh process per size; report each process's peak RSS."""
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            a = argparse.Namespace(**{**vars(args), "frames": n})
            info = make_store(a, Path(tmp))
            store_dir = Path(tmp) / "store"
            cmd = [sys.executable, __file__, "_rss_child", "--store", str(store_dir),
                   "--k", str(args.k), "--device", args.device, "--seed", str(args.seed),
                   "--rss-max-iter", str(args.rss_max_iter)]  # fmt: skip
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            child = json.loads(out.stdout.strip().splitlines()[-1])
            store_mb = sum(p.stat().st_size for p in store_dir.glob("*.bin")) / 2**20
            emit({"what": "kmeans_peak_rss", "device": args.device, "dim": args.dim, "k": args.k,
                  **info, **child, "store_mb": round(store_mb, 1)})  # fmt: skip


def rss_child(args: argparse.Namespace) -> None:
    from speechssl.units.apply import apply_to_store

    store = FeatureStore(args.store)
    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    cfg = KMeansConfig(k=args.k, device=args.device, seed=args.seed, max_iter=args.rss_max_iter)
    res = fit_kmeans(store, cfg)
    with tempfile.TemporaryDirectory(dir=Path(args.store).parent) as tmp:
        res.model.save(Path(tmp) / "km")
        apply_to_store(Path(tmp) / "km", store, Path(tmp) / "labels", device=args.device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "frames": store.num_frames(), "peak_rss_mb": round(peak, 1),
        "rss_after_imports_mb": round(after_import, 1), "fit_apply_s": round(time.perf_counter() - t0, 2),
        "iterations": res.model.meta["iterations"],
    }))  # fmt: skip


def case_gpu(args: argparse.Namespace) -> None:
    """Seconds per Lloyd iteration on float16 data resident on the device (one GPU), against
    the FLOP bound ``2 N D K / (measured matmul FLOP/s)``. ``--device cuda`` for the issue's
    case; on ``cpu`` (small sizes) it checks the measurement itself."""
    dev = torch.device("cuda" if args.device == "auto" else args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        emit({"what": "kmeans_lloyd_iter", "skipped": "no CUDA device on this machine"})
        return
    from speechssl.units.kmeans.lloyd import chunk_rows, default_chunk_elems, lloyd_pass

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator(device=dev).manual_seed(args.seed)
    means = torch.randn(args.k, args.dim, device=dev, generator=g) * (2.5 / np.sqrt(2 * args.dim))
    block = 1 << 20
    blocks: list[tuple[int, torch.Tensor]] = []
    for s in range(0, args.frames, block):
        n = min(block, args.frames - s)
        comp = torch.randint(args.k, (n,), device=dev, generator=g)
        x = means[comp] + torch.randn(n, args.dim, device=dev, generator=g)
        blocks.append((s, x.to(torch.float16)))
        del x, comp
    centroids = (means + 0.01).contiguous()
    flops = 2.0 * args.frames * args.dim * args.k
    rows = chunk_rows(args.chunk_elems or default_chunk_elems(dev), args.k)
    probe = 8192 if dev.type == "cuda" else 2048
    for tf32 in (False, True) if dev.type == "cuda" else (False,):
        torch.backends.cuda.matmul.allow_tf32 = tf32

        def one_iter() -> None:
            st = lloyd_pass(((r, b.float()) for r, b in blocks), centroids, rows, reduce=False)
            sync()
            assert st.num_frames == args.frames

        one_iter()  # warm-up
        sec, _ = timed(one_iter, args.repeats)
        a = torch.randn(probe, probe, device=dev)

        def matmul(a: torch.Tensor = a) -> None:
            a @ a
            sync()

        matmul()
        mm_s, _ = timed(matmul, 5)
        peak = 2 * probe**3 / mm_s
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        emit({
            "what": "kmeans_lloyd_iter", "device": name, "frames": args.frames, "dim": args.dim,
            "k": args.k, "data_dtype": "float16", "tf32": tf32, "chunk_rows": rows,
            "threads": torch.get_num_threads(), "clock": args.clock,
            "seconds_per_iter": round(sec, 4), "matmul_tflops_measured": round(peak / 1e12, 3),
            "flop_bound_s": round(flops / peak, 4), "fraction_of_bound": round(flops / peak / sec, 3),
        })  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("case", choices=["fit", "assign", "rss", "gpu", "_rss_child"])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=39)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--data", choices=["synth-mfcc", "gmm"], default="gmm")
    ap.add_argument("--synth-hours", type=float, default=0.3)
    ap.add_argument("--use-store", help="benchmark an existing feature store instead")
    ap.add_argument("--peers", default="sklearn,faiss", help="comma list; empty for none")
    ap.add_argument(
        "--ours",
        default=json.dumps(DEFAULT_OURS),
        help="fit: JSON {name: KMeansConfig overrides} of our configurations to time",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-repeats", type=int, default=3)
    ap.add_argument("--sizes", default="1000000,4000000", help="rss: frame counts")
    ap.add_argument(
        "--rss-max-iter", type=int, default=5, help="rss: Lloyd iterations (peak is reached early)"
    )
    ap.add_argument("--threads", type=int, help="torch/faiss/OpenMP threads (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: this process's CPU time"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-elems", type=int, help="distance-matrix elements per chunk")
    ap.add_argument("--tmp", help="where to put generated stores (default: system temp)")
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument(
        "--recorded-peer",
        help="fit with --peers '': compare ours with the sklearn line of this earlier "
        "JSON-lines file on the same generated data (for a peer too slow to rerun)",
    )
    args = ap.parse_args()
    if args.clock == "cpu":
        CLOCK["fn"] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            pass
    {"fit": case_fit, "assign": case_assign, "rss": case_rss, "gpu": case_gpu,
     "_rss_child": rss_child}[args.case](args)  # fmt: skip


if __name__ == "__main__":
    main()
