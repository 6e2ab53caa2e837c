"""``fit_kmeans``: select the data, pick the schedule, initialise, iterate, measure."""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from speechssl import distributed as udist
from speechssl.errors import ConfigError
from speechssl.features.store import FeatureStore
from speechssl.units.kmeans.config import KMeansConfig, resolve_schedule
from speechssl.units.kmeans.data import FitData, rank_shards
from speechssl.units.kmeans.init import initialize
from speechssl.units.kmeans.lloyd import chunk_rows, default_chunk_elems, lloyd_pass, run_lloyd
from speechssl.units.kmeans.minibatch import run_minibatch
from speechssl.units.kmeans.model import KMeansModel
from speechssl.units.stream import (
    StoreStream,
    extractor_option,
    select_utterances,
    store_fingerprint,
)
from speechssl.utils.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    model: KMeansModel
    history: list[dict[str, Any]]


def fit_kmeans(store: FeatureStore | str | os.PathLike[str], cfg: KMeansConfig) -> FitResult:
    """Fit k-means on a feature store (this process's shards if ``torch.distributed`` is
    initialised; every process must call it with the same arguments)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    env = udist.current_env()
    rank, world = env.rank, env.world_size
    selection = select_utterances(store, cfg.fraction, cfg.max_frames, cfg.seed)
    stream = StoreStream(store, rank_shards(store, rank, world), selection, cfg.block_frames)
    total = int(udist.all_reduce_sum(torch.tensor([stream.num_frames])).item())
    _check_selection(store, cfg, total)
    run, schedule = resolve_schedule(cfg, store.dim, total)
    data = FitData(stream, device, _cache_bytes(cfg, device))
    rows = chunk_rows(cfg.chunk_elems or default_chunk_elems(device), cfg.k)
    log.info(
        "k-means: k=%d on %d frames (%d on rank %d of %d), dim %d, device %s, schedule %s",
        cfg.k, total, stream.num_frames, rank, world, store.dim, device, schedule,
    )  # fmt: skip

    centroids, init_record = initialize(data, store, run, total, rows, rank)
    history: list[dict[str, Any]] = [init_record]
    log.info("k-means init: %s", init_record)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    centroids, converged, n_iter = _iterate(data, centroids, run, rows, gen, history, total)
    final: dict[str, Any] = {"inertia": None, "empty": None}
    if cfg.final_pass:
        final = _final_pass(data, centroids, rows, total, n_iter, history)
    _check_finite_result(store, cfg, centroids, final["inertia"])
    if data.shift is not None:
        centroids = (centroids.to(torch.float64) + data.shift.to(torch.float64)).to(torch.float32)
    meta = {
        "feature": _feature_meta(store),
        "normalization": cfg.normalize,
        "seed": cfg.seed,
        "mode": run.mode,
        "schedule": schedule,
        "config": asdict(cfg),
        "resolved_config": asdict(run),
        "num_frames": total,
        "iterations": n_iter,
        "converged": converged,
        "inertia_per_frame": final["inertia"],
        "empty_clusters": final["empty"],
        "init": {k: init_record[k] for k in ("sample_frames", "restart_inertia", "best")},
        "world_size": world,
        "device": device.type,
        "seconds": round(time.perf_counter() - t_start, 3),
        "history": history,
        "torch": torch.__version__,
    }
    model = KMeansModel(
        centroids=centroids.cpu(),
        mean=None if data.mean is None else data.mean.cpu(),
        std=None if data.std is None else data.std.cpu(),
        meta=meta,
    )
    return FitResult(model=model, history=history)


def _iterate(
    data: FitData,
    centroids: Tensor,
    run: KMeansConfig,
    rows: int,
    gen: torch.Generator,
    history: list[dict[str, Any]],
    total: int,
) -> tuple[Tensor, bool, int]:
    """The resolved schedule's iterations: mini-batch alone, or (optional mini-batch epochs
    as a start, then) Lloyd; returns ``(centroids, converged, iterations)``."""
    assert run.max_iter is not None and run.tol is not None and run.minibatch_epochs is not None
    if run.mode == "minibatch":
        return run_minibatch(data, centroids, run, rows, gen, history, total, run.max_iter)
    if run.minibatch_epochs > 0:
        centroids, _, _ = run_minibatch(
            data, centroids, run, rows, gen, history, total, run.minibatch_epochs
        )
    return run_lloyd(
        data.blocks, centroids, run.max_iter, run.tol, rows, gen, history, data.cache_enabled
    )


def _final_pass(
    data: FitData,
    centroids: Tensor,
    rows: int,
    total: int,
    n_iter: int,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """One more pass for the final inertia per frame and empty-cluster count (recorded in
    ``history`` as stage ``final``)."""
    t0 = time.perf_counter()
    st = lloyd_pass(data.blocks(), centroids, rows)
    final = {"inertia": st.inertia / total, "empty": int((st.counts == 0).sum().item())}
    history.append(
        {"iter": n_iter, "stage": "final", **final, "seconds": round(time.perf_counter() - t0, 4)}
    )
    return final


def _check_selection(store: FeatureStore, cfg: KMeansConfig, total: int) -> None:
    if total == 0:
        how = (
            f"fraction={cfg.fraction} selected no utterance (utterances are chosen by a hash "
            "of their id; use a larger --fraction)"
            if cfg.fraction is not None
            else "it holds no frames"
        )
        raise ConfigError(f"{store.root}: nothing to fit k-means on: {how}")
    if total < cfg.k:
        raise ConfigError(
            f"{store.root}: {total} selected frames, fewer than k={cfg.k} "
            "(use more data, a larger --fraction, or a smaller --k)"
        )


def _check_finite_result(
    store: FeatureStore, cfg: KMeansConfig, centroids: torch.Tensor, inertia: float | None
) -> None:
    """Finite features can still overflow float32 distances (values beyond ~1e19)."""
    if bool(torch.isfinite(centroids).all()) and (inertia is None or math.isfinite(inertia)):
        return
    hint = (
        "scale them" if cfg.normalize == "global_mv" else "use --normalize global_mv or scale them"
    )
    raise ConfigError(
        f"{store.root}: k-means overflowed float32 arithmetic (feature values too large for "
        f"squared distances); {hint}"
    )


def _cache_bytes(cfg: KMeansConfig, device: torch.device) -> float:
    if cfg.cache_gb is not None:
        return cfg.cache_gb * 2**30
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.6 * free
    return 0.0


def _feature_meta(store: FeatureStore) -> dict[str, Any]:
    return {
        "kind": store.meta.kind,
        "layer": extractor_option(store.meta.extractor, "layer"),
        "frame_rate": store.meta.frame_rate,
        "dim": store.dim,
        "store": str(store.root),
        "store_dtype": store.meta.dtype,
        "extractor": store.meta.extractor,
        "data_hash": store_fingerprint(store),
    }
