"""Mini-batch k-means: Sculley's update with per-centroid counts (the same rule as
scikit-learn's ``MiniBatchKMeans`` without random reassignment), batches drawn from a
shuffle buffer; stops after the given epochs or when the smoothed batch inertia has not
improved for ``max_no_improvement`` batches. Used alone (``mode="minibatch"``) or as the
start of a Lloyd fit (``minibatch_epochs``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from speechssl.units.kmeans.config import KMeansConfig
from speechssl.units.kmeans.data import FitData
from speechssl.units.kmeans.lloyd import lloyd_pass, split_largest

log = logging.getLogger(__name__)


def _shuffled(pool: Tensor, local_bs: int, gen: torch.Generator) -> tuple[list[Tensor], Tensor]:
    """``pool`` shuffled and cut into full batches, and the rest."""
    perm = torch.randperm(pool.shape[0], generator=gen).to(pool.device)
    pool = pool.index_select(0, perm)
    full = pool.shape[0] // local_bs * local_bs
    return [pool[s : s + local_bs] for s in range(0, full, local_bs)], pool[full:]


def shuffled_batches(
    data: FitData, local_bs: int, buffer_frames: int, gen: torch.Generator
) -> Iterator[Tensor]:
    """Endless mini-batches of ``local_bs`` rows drawn from a shuffle buffer over this
    rank's data (cycled epoch after epoch)."""
    dim = data.stream.dim
    if local_bs == 0 or data.stream.num_frames == 0:
        while True:
            yield torch.empty((0, dim), dtype=torch.float32, device=data.device)
    carry: Tensor | None = None
    while True:
        buf: list[Tensor] = [] if carry is None else [carry]
        filled = 0 if carry is None else carry.shape[0]
        for _, x in data.blocks():
            buf.append(x)
            filled += x.shape[0]
            if filled >= buffer_frames:
                batches, carry = _shuffled(torch.cat(buf), local_bs, gen)
                yield from batches
                buf, filled = [carry], carry.shape[0]
        if buf and filled:
            batches, rest = _shuffled(torch.cat(buf), local_bs, gen)
            yield from batches
            carry = rest if rest.shape[0] else None
        else:
            carry = None


def run_minibatch(
    data: FitData,
    centroids: Tensor,
    cfg: KMeansConfig,
    rows: int,
    gen: torch.Generator,
    history: list[dict[str, Any]],
    total_frames: int,
    epochs: float,
) -> tuple[Tensor, bool, int]:
    """``epochs`` epochs of mini-batch updates; returns ``(centroids, converged, epochs run)``."""
    tol = cfg.tol if cfg.tol is not None else 0.0
    k, dev = cfg.k, centroids.device
    c64 = centroids.to(torch.float64)
    seen = torch.zeros(k, dtype=torch.float64, device=dev)
    seen_inertia = torch.zeros(k, dtype=torch.float64, device=dev)
    local_bs = round(cfg.batch_size * data.stream.num_frames / total_frames)
    steps_per_epoch = math.ceil(total_frames / cfg.batch_size)
    batches = shuffled_batches(data, local_bs, max(cfg.shuffle_frames, local_bs), gen)
    alpha = min(1.0, 2.0 * cfg.batch_size / (total_frames + 1))
    ewa: float | None = None
    best = math.inf
    no_improvement = 0
    converged = False
    epoch = 0
    steps_left = math.ceil(epochs * steps_per_epoch)
    for epoch in range(1, math.ceil(epochs) + 1):
        t0 = time.perf_counter()
        c32 = c64.to(torch.float32)
        for _ in range(min(steps_per_epoch, steps_left)):
            steps_left -= 1
            st = lloyd_pass([(0, next(batches))], c32, rows)
            n = st.counts.to(torch.float64)
            hit = n > 0
            c64[hit] = (c64[hit] * seen[hit].unsqueeze(1) + st.sums[hit]) / (
                seen[hit] + n[hit]
            ).unsqueeze(1)
            seen += n
            seen_inertia += st.cluster_inertia
            c32 = c64.to(torch.float32)
            batch_inertia = st.inertia / max(st.num_frames, 1)
            ewa = batch_inertia if ewa is None else ewa * (1 - alpha) + batch_inertia * alpha
            if ewa < best * (1 - tol) or best == math.inf:
                best = ewa
                no_improvement = 0
            else:
                no_improvement += 1
            if no_improvement >= cfg.max_no_improvement:
                converged = True
                break
        rec = {
            "iter": epoch,
            "stage": "minibatch",
            "inertia_ewa": ewa,
            "moved": None,  # not tracked in mini-batch mode
            "empty": int((seen == 0).sum().item()),
            "seconds": round(time.perf_counter() - t0, 4),
        }
        history.append(rec)
        log.info("mini-batch k-means epoch %d: %s", epoch, rec)
        if converged:
            break
    centroids = c64.to(torch.float32)
    empty = (seen == 0).nonzero().flatten().tolist()
    if empty:
        split_largest(centroids, seen.clone(), seen_inertia.clone(), empty, gen)
    return centroids, converged, epoch
