"""Full-batch Lloyd: the assignment kernel, one streaming pass of sufficient statistics,
the centroid update with empty-cluster splitting, and the iteration loop.

Each iteration streams every selected frame once: ``||c||^2 - 2 x.C^T`` is computed chunk by
chunk with one matmul (``chunk_elems`` bounds the ``[rows, k]`` matrix), its row minimum
gives the nearest centroid, and adding ``||x||^2`` the squared distance. Per-cluster sums,
counts and inertia are accumulated in float64 across chunks (float32 within a chunk) and
all-reduced across processes.

**Empty clusters** are re-seeded by *splitting the largest cluster*: the empty centroid and
the largest cluster's centroid are placed symmetrically around the latter's old position, a
quarter of that cluster's rms radius away along a random sign direction (seeded, identical
on every process). The next Lloyd step then separates them.

**Convergence**: stop when the relative decrease of the inertia between two iterations is
below ``tol``, when no point changes cluster, or after ``max_iter`` iterations.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl import distributed as udist

log = logging.getLogger(__name__)


def default_chunk_elems(device: torch.device) -> int:
    return 1 << 26 if device.type == "cuda" else 1 << 20


def chunk_rows(chunk_elems: int, k: int) -> int:
    """Rows per distance-matrix chunk of at most ``chunk_elems`` elements (at least 256)."""
    return max(256, chunk_elems // max(k, 1))


def assign_nearest(x: Tensor, centroids: Tensor, cnorm: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest centroid of each row of ``x`` ``[n, d]`` (float32, same device).

    ``cnorm`` is ``||c||^2`` ``[k]``. One matmul gives ``||c||^2 - 2 x.c``; its row minimum
    plus ``||x||^2`` is the squared distance (clamped at 0). That sum cancels digits when
    ``||x||`` is large next to the distances, so fitting first centres the data (it subtracts
    the mean of the initialisation sample, or normalises it).
    Returns ``(labels [n] int64, sq_dist [n] float32)``.
    """
    partial = torch.addmm(cnorm.unsqueeze(0), x, centroids.t(), beta=1.0, alpha=-2.0)
    best, idx = partial.min(dim=1)
    xnorm = torch.linalg.vector_norm(x, dim=1)
    return idx, best.add_(xnorm * xnorm).clamp_min_(0.0)


class PrevAssignments:
    """Last assignment of every frame, to count moved points: on the device when the data
    is cached, otherwise in an anonymous temporary file (4 bytes per frame on disk)."""

    def __init__(self, in_memory: bool) -> None:
        self.in_memory = in_memory
        self._mem: dict[int, Tensor] = {}
        # closed in close()
        self._fh = None if in_memory else tempfile.TemporaryFile(prefix="kmeans-assign-")  # noqa: SIM115
        self._written = 0

    def swap(self, row0: int, labels: Tensor) -> Tensor | None:
        """Store ``labels`` for rows ``row0...``; return what was stored before (or None)."""
        lab32 = labels.to(torch.int32)
        if self.in_memory:
            old = self._mem.get(row0)
            self._mem[row0] = lab32
            return old
        assert self._fh is not None
        n = lab32.shape[0]
        fd = self._fh.fileno()
        old_t: Tensor | None = None
        if row0 + n <= self._written:
            buf = np.empty(n, dtype=np.int32)
            os.preadv(fd, [buf.data.cast("B")], row0 * 4)
            old_t = torch.from_numpy(buf).to(labels.device)
        data = lab32.cpu().numpy()
        os.pwrite(fd, data.tobytes(), row0 * 4)
        self._written = max(self._written, row0 + n)
        return old_t

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class PassStats:
    """Sufficient statistics of one assignment pass."""

    sums: Tensor  # [k, d] float64
    counts: Tensor  # [k] int64
    cluster_inertia: Tensor  # [k] float64
    moved: int
    inertia: float  # total, float64

    @property
    def num_frames(self) -> int:
        return int(self.counts.sum().item())


def lloyd_pass(
    blocks: Iterable[tuple[int, Tensor]],
    centroids: Tensor,
    rows: int,
    prev: PrevAssignments | None = None,
    reduce: bool = True,
) -> PassStats:
    """Assign every row of ``(row0, x)`` blocks (``rows`` per chunk) and sum the statistics;
    ``reduce`` all-reduces them over processes."""
    k, d = centroids.shape
    dev = centroids.device
    sums = torch.zeros((k, d), dtype=torch.float64, device=dev)
    counts = torch.zeros(k, dtype=torch.int64, device=dev)
    cl_inertia = torch.zeros(k, dtype=torch.float64, device=dev)
    moved = torch.zeros(1, dtype=torch.int64, device=dev)
    cnorm = (centroids * centroids).sum(1)
    chunk_sums = torch.empty((k, d), dtype=torch.float32, device=dev)
    for row0, x in blocks:
        block_labels = []
        for s in range(0, x.shape[0], rows):
            xc = x[s : s + rows]
            idx, dist = assign_nearest(xc, centroids, cnorm)
            # per-chunk sums in float32 (a few hundred rows per cluster), running sums float64
            chunk_sums.zero_().index_add_(0, idx, xc)
            sums += chunk_sums
            cl_inertia.index_add_(0, idx, dist.to(torch.float64))
            counts += torch.bincount(idx, minlength=k)
            if prev is not None:
                block_labels.append(idx)
        if prev is not None and block_labels:
            lab = torch.cat(block_labels)
            old = prev.swap(row0, lab)
            moved += x.shape[0] if old is None else (old.to(lab.device) != lab).sum()
    if reduce:
        for t in (sums, counts, cl_inertia, moved):
            udist.all_reduce_sum(t)
    return PassStats(
        sums=sums,
        counts=counts,
        cluster_inertia=cl_inertia,
        moved=int(moved.item()),
        inertia=float(cl_inertia.sum().item()),
    )


def update_centroids(
    stats: PassStats, old: Tensor, generator: torch.Generator
) -> tuple[Tensor, int, int]:
    """New centroids = cluster means; empty clusters split the largest one (module doc).

    Returns ``(centroids float32, empty clusters before the split, clusters re-seeded)``.
    """
    counts = stats.counts.to(torch.float64)
    new = old.to(torch.float64).clone()
    full = counts > 0
    new[full] = stats.sums[full] / counts[full].unsqueeze(1)
    empty = (~full).nonzero().flatten().tolist()
    n_split = 0
    if empty:
        n_split = split_largest(
            new, counts.clone(), stats.cluster_inertia.clone(), empty, generator
        )
    return new.to(torch.float32), len(empty), n_split


def split_largest(
    centroids: Tensor, counts: Tensor, inertia: Tensor, empty: list[int], generator: torch.Generator
) -> int:
    """Re-seed ``empty`` clusters in place; returns how many could be re-seeded."""
    d = centroids.shape[1]
    n_split = 0
    for e in empty:
        # a cluster of identical points (zero inertia) cannot be split usefully
        splittable = torch.where((counts >= 2) & (inertia > 0), counts, torch.zeros_like(counts))
        donor = int(splittable.argmax().item())
        if splittable[donor] <= 0:
            break  # nothing left to split; the remaining clusters stay empty and are reported
        radius = math.sqrt(max(float(inertia[donor] / counts[donor]), 1e-12) / d)
        signs = torch.randint(0, 2, (d,), generator=generator).to(centroids) * 2 - 1
        delta = 0.25 * radius * signs.to(centroids.device)
        centroids[e] = centroids[donor] + delta
        centroids[donor] = centroids[donor] - delta
        counts[donor] /= 2
        counts[e] = counts[donor]
        inertia[donor] /= 2
        inertia[e] = inertia[donor]
        n_split += 1
    return n_split


def run_lloyd(
    blocks: Any,
    centroids: Tensor,
    max_iter: int,
    tol: float,
    rows: int,
    gen: torch.Generator,
    history: list[dict[str, Any]],
    in_memory: bool,
) -> tuple[Tensor, bool, int]:
    """Lloyd iterations over ``blocks()`` (a callable giving a fresh pass of ``(row0, x)``)
    until convergence (module doc); appends one record per iteration to ``history``.
    Returns ``(centroids, converged, iterations)``."""
    prev = PrevAssignments(in_memory=in_memory)
    last_inertia: float | None = None
    converged = False
    it = 0
    try:
        for it in range(1, max_iter + 1):
            t0 = time.perf_counter()
            st = lloyd_pass(blocks(), centroids, rows, prev)
            inertia = st.inertia / max(st.num_frames, 1)
            centroids, n_empty, n_split = update_centroids(st, centroids, gen)
            rel = None if last_inertia is None else (last_inertia - inertia) / max(inertia, 1e-30)
            rec = {
                "iter": it,
                "stage": "lloyd",
                "inertia": inertia,
                "rel_change": rel,
                "moved": st.moved if it > 1 else None,
                "empty": n_empty,
                "reseeded": n_split,
                "seconds": round(time.perf_counter() - t0, 4),
            }
            history.append(rec)
            log.info("k-means iter %d: %s", it, rec)
            # a re-seeded cluster changes the centroids: never stop right after a split
            if it > 1 and st.moved == 0 and n_split == 0:
                converged = True
                break
            if rel is not None and 0.0 <= rel < tol and n_split == 0:
                converged = True
                break
            last_inertia = inertia
    finally:
        prev.close()
    return centroids, converged, it
