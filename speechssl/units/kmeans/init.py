"""Initialisation: the sample, greedy k-means++ restarts, and the choice between them.

A sample of about ``init_sample_frames`` frames is drawn: each frame with the same
probability, decided by a hash of (utterance id, frame index, seed), so the sample does not
depend on sharding or the number of processes. Unless a full read is needed anyway
(``normalize="global_mv"``) or the sample is a large part of the data, only a hash-chosen
subset of utterances (``INIT_UTT_FACTOR`` times the sample's share) is read and frames are
drawn within it. The sample is gathered on every process in a canonical order; rank 0 runs
greedy k-means++ on it ``n_init`` times (in lockstep), refines each candidate with
``init_lloyd_iters`` Lloyd steps on the sample and keeps the one with the lowest sample
inertia; the winner is broadcast. Without normalisation the data are centred on the sample
mean while fitting (distances are unchanged; it keeps ``||x||^2`` small, see
:func:`~speechssl.units.kmeans.lloyd.assign_nearest`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl import distributed as udist
from speechssl.errors import ConfigError
from speechssl.features.store import FeatureStore
from speechssl.units.kmeans.config import KMeansConfig
from speechssl.units.kmeans.data import FitData, device_blocks
from speechssl.units.kmeans.lloyd import lloyd_pass, update_centroids
from speechssl.units.stream import (
    Block,
    StoreStream,
    frame_uniforms,
    subselect_utterances,
    utt_hash,
)

#: initialisation reads this many times more utterances than its frame share (frames are
#: then drawn within them), so the sample spans many utterances without a full read
INIT_UTT_FACTOR = 8.0


def _sqdist_to(x: Tensor, xnorm: Tensor, y: Tensor) -> Tensor:
    """``[m, n]`` squared distances from rows of ``y`` to rows of ``x`` (clamped at 0)."""
    ynorm = (y * y).sum(1, keepdim=True)
    # x @ y.T (tall output) then transposed: measured ~25% faster on CPU than y @ x.T when
    # y has a few rows (the product is bound by reading x)
    d = torch.mm(x, y.t()).t().contiguous()
    return d.mul_(-2.0).add_(xnorm.unsqueeze(0)).add_(ynorm).clamp_min_(0.0)


def kmeans_plusplus(
    x: Tensor,
    k: int,
    generator: torch.Generator,
    n_local_trials: int | None = None,
    restarts: int | None = None,
) -> Tensor:
    """Greedy k-means++ seeding of ``k`` centroids from rows of ``x`` ``[n, d]`` (float32).

    Each new centroid is the best of ``n_local_trials`` (default ``2 + ln k``) candidates
    sampled with probability proportional to the squared distance to the nearest chosen
    centroid, "best" meaning the lowest resulting potential. ``generator`` is a CPU
    generator; the result is deterministic for its state.

    ``restarts=R`` runs R independent seedings in lockstep and returns ``[R, k, d]``
    (without it: ``[k, d]``). Each step's distances for all R restarts come from one
    product over ``x``, so R restarts cost about what one does: a step reads all of ``x``
    for a handful of candidates, which is bound by memory, not arithmetic.
    """
    n, d = x.shape
    if n < k:
        raise ConfigError(f"cannot pick {k} centroids from {n} frames; lower k or use more data")
    r_count = restarts or 1
    trials = n_local_trials or 2 + int(math.log(k))
    xnorm = (x * x).sum(1)
    centers = x.new_empty((r_count, k, d))
    first = torch.randint(n, (r_count,), generator=generator).to(x.device)
    centers[:, 0] = x.index_select(0, first)
    closest = _sqdist_to(x, xnorm, centers[:, 0])  # [R, n]
    pot = closest.sum(1, dtype=torch.float64).cpu()
    rows = torch.arange(r_count, device=x.device)
    for c in range(1, k):
        cum = torch.cumsum(closest, 1, dtype=torch.float64)
        u = torch.rand((r_count, trials), generator=generator, dtype=torch.float64)
        cand = torch.searchsorted(cum, (u * pot.unsqueeze(1)).to(x.device)).clamp_(max=n - 1)
        # a restart whose points all coincide with its centroids: draw rows uniformly
        flat = pot <= 0.0
        if bool(flat.any()):
            uniform = torch.randint(n, (r_count, trials), generator=generator).to(x.device)
            cand = torch.where(flat.to(x.device).unsqueeze(1), uniform, cand)
        dc = _sqdist_to(x, xnorm, x.index_select(0, cand.flatten())).view(r_count, trials, n)
        torch.minimum(dc, closest.unsqueeze(1), out=dc)
        pots = dc.sum(2, dtype=torch.float64)  # [R, trials]
        best = pots.argmin(1)
        centers[:, c] = x.index_select(0, cand[rows, best])
        closest = dc[rows, best]
        pot = pots[rows, best].cpu()
    return centers if restarts is not None else centers[0]


def first_pass(
    blocks: Iterable[tuple[int, Tensor, Block | None]],
    dim: int,
    device: torch.device,
    frame_prob: float,
    seed: int,
    with_moments: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One read: (optionally) mean/var sums, and this rank's part of the init sample, each
    frame drawn with probability ``frame_prob`` from its utterance key and index alone.

    Returns ``(sum [d] f64, sumsq [d] f64, sample rows [m, d] f32 raw, sample keys [m, 2])``.
    """
    s1 = torch.zeros(dim, dtype=torch.float64, device=device)
    s2 = torch.zeros(dim, dtype=torch.float64, device=device)
    rows: list[Tensor] = []
    keys: list[np.ndarray] = []
    utt_keys: dict[str, int] = {}
    for _, raw, block in blocks:
        x = raw.to(torch.float32)
        if with_moments:
            x64 = x.to(torch.float64)
            s1 += x64.sum(0)
            s2 += (x64 * x64).sum(0)
        assert block is not None  # the first pass always reads from the store
        if not block.segments:
            continue
        seg_keys = np.empty(len(block.segments), dtype=np.int64)
        for i, seg in enumerate(block.segments):
            key = utt_keys.get(seg.utt)
            if key is None:
                utt_keys.clear()  # only the utterance that may continue in the next block
                key = utt_keys[seg.utt] = utt_hash(seed, seg.utt, "init")
            seg_keys[i] = key
        counts = np.fromiter((seg.count for seg in block.segments), np.int64, len(seg_keys))
        starts = np.fromiter((seg.start for seg in block.segments), np.int64, len(seg_keys))
        frame0 = np.fromiter((seg.frame0 for seg in block.segments), np.int64, len(seg_keys))
        row_keys = np.repeat(seg_keys, counts)
        within = np.arange(int(counts.sum())) - np.repeat(starts, counts)
        frames = within + np.repeat(frame0, counts)
        sel = np.flatnonzero(frame_uniforms(row_keys, frames) < frame_prob)
        if sel.size:
            rows.append(x.index_select(0, torch.from_numpy(sel).to(device)).cpu())
            keys.append(np.stack([row_keys[sel], frames[sel]], axis=1))
    sample = torch.cat(rows) if rows else torch.empty((0, dim), dtype=torch.float32)
    sample_keys = torch.from_numpy(np.concatenate(keys) if keys else np.empty((0, 2), np.int64))
    return s1, s2, sample, sample_keys


def choose_init(sample: Tensor, cfg: KMeansConfig, rows: int) -> tuple[Tensor, list[float], int]:
    """k-means++ restarts refined on the sample; returns (best centroids, inertias, best)."""
    assert cfg.n_init is not None and cfg.init_lloyd_iters is not None  # resolved config
    gen = torch.Generator().manual_seed(cfg.seed)
    best: Tensor | None = None
    inertias: list[float] = []
    for c in kmeans_plusplus(sample, cfg.k, gen, restarts=cfg.n_init):
        for _ in range(cfg.init_lloyd_iters):
            st = lloyd_pass([(0, sample)], c, rows, reduce=False)
            c, _, _ = update_centroids(st, c, gen)
        st = lloyd_pass([(0, sample)], c, rows, reduce=False)
        inertias.append(st.inertia / max(sample.shape[0], 1))
        if best is None or inertias[-1] < min(inertias[:-1], default=math.inf):
            best = c
    assert best is not None
    return best, inertias, int(np.argmin(inertias))


def initialize(
    data: FitData,
    store: FeatureStore,
    cfg: KMeansConfig,
    total_frames: int,
    rows: int,
    rank: int,
) -> tuple[Tensor, dict[str, Any]]:
    """Normalisation statistics (set on ``data``) and the initial centroids (on every
    process); returns ``(centroids, history record of the init stage)``."""
    t0 = time.perf_counter()
    device, stream = data.device, data.stream
    q = min(1.0, cfg.sample_frames / total_frames)
    if cfg.normalize == "global_mv" or q * INIT_UTT_FACTOR >= 1.0:
        # a full read is needed (statistics), or the sample is most of the data anyway
        blocks = data.raw_blocks()
        frame_prob = q
    else:
        # read only a random subset of utterances (about INIT_UTT_FACTOR * q of the data)
        # and draw frames within them, so initialisation costs a fraction of one pass
        q_utt = q * INIT_UTT_FACTOR
        init_sel = subselect_utterances(store, stream, q_utt, cfg.seed)
        blocks = device_blocks(StoreStream(store, stream.ranks, init_sel, cfg.block_frames), device)
        frame_prob = q / q_utt
    with_moments = cfg.normalize == "global_mv"
    s1, s2, sample, keys = first_pass(blocks, store.dim, device, frame_prob, cfg.seed, with_moments)
    if with_moments:
        udist.all_reduce_sum(s1)
        udist.all_reduce_sum(s2)
        mean64 = s1 / total_frames
        var64 = (s2 / total_frames - mean64 * mean64).clamp_min(1e-10)
        data.mean = mean64.to(torch.float32)
        data.std = var64.sqrt().to(torch.float32)
    sample = udist.all_gather_rows(sample)
    keys = udist.all_gather_rows(keys)
    order = np.lexsort((keys[:, 1].numpy(), keys[:, 0].numpy()))
    sample = sample[torch.from_numpy(order)].to(device)
    if cfg.normalize == "none" and sample.shape[0] > 0:
        data.shift = sample.to(torch.float64).mean(0).to(torch.float32)
    sample = data.normalized(sample)
    if sample.shape[0] < cfg.k:
        raise ConfigError(
            f"the initialisation sample has {sample.shape[0]} frames < k={cfg.k} "
            "(use a larger --init-sample-frames or a smaller --k)"
        )
    centroids = torch.empty((cfg.k, store.dim), dtype=torch.float32, device=device)
    inertias: list[float] = []
    best = 0
    if rank == 0:
        centroids, inertias, best = choose_init(sample, cfg, rows)
    udist.broadcast(centroids, src=0)
    record = {
        "iter": 0,
        "stage": "init",
        "sample_frames": int(keys.shape[0]),
        "restart_inertia": inertias,
        "best": best,
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return centroids, record
