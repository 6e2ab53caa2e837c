"""Scalable k-means in torch (CPU and CUDA, one code path), streaming over a feature store.

The algorithm:

* **Initialisation.** A sample of about ``init_sample_frames`` frames is drawn: each frame
  with the same probability, decided by a hash of (utterance id, frame index, seed), so the
  sample does not depend on sharding or the number of processes. Unless a full read is
  needed anyway (``normalize="global_mv"``) or the sample is a large part of the data, only a
  hash-chosen subset of utterances (8x the sample's share) is read and frames are drawn
  within it. The sample is gathered on every process in a canonical order; rank 0 runs
  greedy k-means++ on it ``n_init`` times, refines each candidate with ``init_lloyd_iters``
  Lloyd steps on the sample and keeps the one with the lowest sample inertia; the winner is
  broadcast. Without normalisation the data are centred on the sample mean while fitting
  (distances are unchanged; it keeps ``||x||^2`` small, see :func:`assign_nearest`).
* **Full-batch Lloyd** (``mode="lloyd"``). Each iteration streams every selected frame once:
  ``||c||^2 - 2 x.C^T`` is computed chunk by chunk with one matmul (``chunk_elems`` bounds
  the ``[rows, k]`` matrix), its row minimum gives the nearest centroid, and adding
  ``||x||^2`` the squared distance. Sufficient statistics (per-cluster sums, counts and
  inertia) are accumulated in float64 across chunks (float32 within a chunk) and
  all-reduced across processes; float16 stores are upcast to float32 before any
  arithmetic. ``minibatch_epochs > 0`` first runs that many mini-batch epochs (below), a
  cheap way to get close before the full passes.
* **Mini-batch** (``mode="minibatch"``). Sculley's update with per-centroid counts (the same
  rule as scikit-learn's ``MiniBatchKMeans`` without random reassignment), batches drawn from
  a shuffle buffer; stops after ``max_iter`` epochs or when the smoothed batch inertia has not
  improved for ``max_no_improvement`` batches.
* **Empty clusters** are re-seeded by *splitting the largest cluster*: the empty centroid and
  the largest cluster's centroid are placed symmetrically around the latter's old position,
  a quarter of that cluster's rms radius away along a random sign direction (seeded, identical
  on every process). The next Lloyd step then separates them.
* **Convergence**: stop when the relative decrease of the inertia between two iterations is
  below ``tol``, when no point changes cluster, or after ``max_iter`` iterations. A final
  pass measures the inertia of the centroids actually saved.

Memory is bounded by a few blocks of ``block_frames`` rows plus the ``[chunk, k]`` distance
matrix, independent of the corpus size; ``cache_gb`` optionally keeps the (raw) data in RAM or
on the GPU between iterations when it fits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl import distributed as udist
from speechssl.errors import ConfigError, ItemError
from speechssl.features.store import FeatureStore
from speechssl.units.stream import (
    Block,
    StoreStream,
    extractor_option,
    frame_uniforms,
    select_utterances,
    store_fingerprint,
    subselect_utterances,
    utt_hash,
)
from speechssl.utils.atomic import atomic_dir

log = logging.getLogger(__name__)

MODEL_FORMAT = "speechssl-kmeans/1"
MODEL_WEIGHTS = "kmeans.safetensors"
MODEL_META = "kmeans.json"
NORMALIZATIONS = ("none", "global_mv")
MODES = ("lloyd", "minibatch")


class KMeansError(ItemError):
    """A k-means model directory is missing, partial or inconsistent."""

    kind = "kmeans-model"


@dataclass(kw_only=True)
class KMeansConfig:
    """Settings of one k-means fit (stored in the model's metadata)."""

    k: int = 100
    """Number of clusters."""
    mode: str = "lloyd"
    """``lloyd`` (full batch, streaming) or ``minibatch``."""
    max_iter: int = 100
    """Lloyd: maximum iterations; 0 with ``minibatch_epochs > 0`` runs the mini-batch epochs
    alone (the fastest setting; the final pass still measures the inertia on all frames).
    Mini-batch: maximum epochs over the data."""
    tol: float = 1e-4
    """Stop when the relative inertia decrease between iterations falls below this."""
    n_init: int = 3
    """k-means++ restarts on the initialisation sample; the best one is kept."""
    init_sample_frames: int | None = None
    """Frames in the initialisation sample (default ``max(10000, 32 * k)``)."""
    init_lloyd_iters: int = 10
    """Lloyd iterations on the sample that refine each restart before comparing them."""
    minibatch_epochs: float = 0.0
    """Lloyd mode: first run this many epochs of mini-batch updates (cheap progress from the
    initialisation), then the full-batch iterations."""
    batch_size: int = 10000
    """Mini-batch updates: frames per batch (over all processes)."""
    max_no_improvement: int = 100
    """Mini-batch mode: stop after this many batches without a better smoothed inertia."""
    shuffle_frames: int = 200_000
    """Mini-batch mode: frames in the shuffle buffer batches are drawn from."""
    normalize: str = "none"
    """``none`` or ``global_mv`` (subtract the global mean, divide by the global std; the
    statistics are stored in the model and applied at label time)."""
    seed: int = 0
    """Seed of the sampling, the initialisation and empty-cluster splits."""
    percent: float | None = None
    """Use about this percentage of utterances (chosen by hash of seed and utterance id)."""
    max_frames: int | None = None
    """Use utterances (in hash order) up to this many frames in total."""
    block_frames: int | None = None
    """Rows read from the store per block (default: about 8 MiB of float32 rows)."""
    chunk_elems: int | None = None
    """Upper bound on the elements of one ``[rows, k]`` distance matrix (default: 2**20 on
    CPU, cache friendly; 2**26 on CUDA, large enough to keep the GPU busy)."""
    device: str = "auto"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    cache_gb: float | None = None
    """Keep the raw data in memory (on the device) between iterations when this rank's part
    fits in this many GiB; default 0 on CPU (the OS page cache serves re-reads) and 60% of
    free GPU memory on CUDA."""
    final_pass: bool = True
    """Measure the inertia of the final centroids with one more assignment pass."""

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.n_init < 1 or self.batch_size < 1 or self.init_lloyd_iters < 0:
            raise ConfigError("n_init and batch_size must be >= 1, init_lloyd_iters >= 0")
        if self.max_iter < 0 or (
            self.max_iter == 0 and not (self.mode == "lloyd" and self.minibatch_epochs > 0)
        ):
            raise ConfigError(
                f"max_iter must be >= 1, or 0 in lloyd mode with minibatch_epochs > 0 "
                f"(mini-batch epochs only); got max_iter={self.max_iter}, mode={self.mode!r}, "
                f"minibatch_epochs={self.minibatch_epochs}"
            )
        if self.minibatch_epochs < 0:
            raise ConfigError(f"minibatch_epochs must be >= 0, got {self.minibatch_epochs}")
        if self.tol < 0:
            raise ConfigError(f"tol must be >= 0, got {self.tol}")

    @property
    def sample_frames(self) -> int:
        return self.init_sample_frames or max(10_000, 32 * self.k)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


# --------------------------------------------------------------------------- model


@dataclass
class KMeansModel:
    """Centroids (in normalised feature space) plus the normalisation and metadata."""

    centroids: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def to(self, device: torch.device | str) -> KMeansModel:
        return KMeansModel(
            centroids=self.centroids.to(device),
            mean=None if self.mean is None else self.mean.to(device),
            std=None if self.std is None else self.std.to(device),
            meta=self.meta,
        )

    def normalize(self, x: Tensor) -> Tensor:
        """float32 copy of ``x`` with the model's normalisation applied."""
        x = x.to(device=self.centroids.device, dtype=torch.float32)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x

    def _checked_input(self, x: Tensor | np.ndarray) -> Tensor:
        """Raw features ``[N, dim]`` (tensor or array) -> normalised float32 on the model's
        device; a ConfigError when the shape does not fit."""
        if isinstance(x, np.ndarray):
            arr = np.ascontiguousarray(x)
            xt = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        else:
            xt = x
        if xt.ndim != 2 or xt.shape[1] != self.dim:
            raise ConfigError(f"features of shape {tuple(xt.shape)}, model expects [N, {self.dim}]")
        return self.normalize(xt)

    def assign(
        self, x: Tensor | np.ndarray, chunk_elems: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Nearest centroid of each row of ``x`` ``[N, dim]`` (raw features) and its squared
        distance (see :func:`assign_nearest` on precision).

        Returns ``(labels [N] int64, squared distance [N] float32)``.
        """
        xn = self._checked_input(x)
        cnorm = (self.centroids * self.centroids).sum(1)
        rows = _chunk_rows(chunk_elems or default_chunk_elems(self.centroids.device), self.k)
        labels, dists = [], []
        for s in range(0, xn.shape[0], rows):
            idx, dist = assign_nearest(xn[s : s + rows], self.centroids, cnorm)
            labels.append(idx)
            dists.append(dist)
        if not labels:
            return torch.empty(0, dtype=torch.int64), torch.empty(0)
        return torch.cat(labels), torch.cat(dists)

    def labels(self, x: Tensor | np.ndarray, chunk_elems: int | None = None) -> Tensor:
        """Nearest centroid of each row of ``x`` ``[N, dim]`` (raw features), ``[N]`` int64;
        like :meth:`assign` without computing the distances."""
        xn = self._checked_input(x)
        cnorm = (self.centroids * self.centroids).sum(1).unsqueeze(0)
        ct = self.centroids.t()
        rows = _chunk_rows(chunk_elems or default_chunk_elems(self.centroids.device), self.k)
        out = torch.empty(xn.shape[0], dtype=torch.int64, device=xn.device)
        for s in range(0, xn.shape[0], rows):
            xc = xn[s : s + rows]
            torch.argmin(
                torch.addmm(cnorm, xc, ct, beta=1.0, alpha=-2.0), dim=1, out=out[s : s + rows]
            )
        return out

    def save(self, out_dir: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write ``kmeans.safetensors`` and ``kmeans.json`` into ``out_dir`` atomically."""
        from safetensors.torch import save_file

        tensors = {"centroids": self.centroids.detach().float().cpu().contiguous()}
        tensors["centroid_norms"] = (tensors["centroids"] ** 2).sum(1)
        if self.mean is not None and self.std is not None:
            tensors["mean"] = self.mean.detach().float().cpu().contiguous()
            tensors["std"] = self.std.detach().float().cpu().contiguous()
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / MODEL_WEIGHTS))
            meta = dict(self.meta)
            meta.update(
                format=MODEL_FORMAT,
                k=self.k,
                dim=self.dim,
                weights_sha256=_sha256_file(tmp / MODEL_WEIGHTS),
            )
            (tmp / MODEL_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.meta = meta

    @staticmethod
    def load(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> KMeansModel:
        """Load a model written by :meth:`save`, checking its files agree."""
        from safetensors.torch import load_file

        root = Path(model_dir)
        meta_path, weights = root / MODEL_META, root / MODEL_WEIGHTS
        if not meta_path.exists() or not weights.exists():
            raise KMeansError(
                str(root), f"not a k-means model dir (needs {MODEL_META} and {MODEL_WEIGHTS})"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise KMeansError(str(meta_path), f"corrupt metadata: {exc}") from None
        if meta.get("format") != MODEL_FORMAT:
            raise KMeansError(
                str(meta_path), f"format {meta.get('format')!r}, expected {MODEL_FORMAT}"
            )
        if _sha256_file(weights) != meta.get("weights_sha256"):
            raise KMeansError(
                str(weights), "checksum differs from kmeans.json (partial or edited?)"
            )
        t = load_file(str(weights))
        model = KMeansModel(
            centroids=t["centroids"], mean=t.get("mean"), std=t.get("std"), meta=meta
        )
        if model.k != meta["k"] or model.dim != meta["dim"]:
            raise KMeansError(str(weights), "centroid shape disagrees with kmeans.json")
        return model.to(device)

    @property
    def sha256(self) -> str:
        return str(self.meta.get("weights_sha256", ""))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- kernels


def default_chunk_elems(device: torch.device) -> int:
    return 1 << 26 if device.type == "cuda" else 1 << 20


def _chunk_rows(chunk_elems: int, k: int) -> int:
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


# --------------------------------------------------------------------------- data


class _Data:
    """This rank's selected frames as device tensors: streamed, or cached after one pass."""

    def __init__(self, stream: StoreStream, device: torch.device, cache_bytes: float) -> None:
        self.stream = stream
        self.device = device
        nbytes = stream.num_frames * stream.dim * stream.np_dtype.itemsize
        self.cache_enabled = nbytes <= cache_bytes and stream.num_frames > 0
        self._cache: list[tuple[int, Tensor]] | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        # without normalisation the data are still centred on this shift while fitting
        # (distances do not change; see assign_nearest); centroids are shifted back at the end
        self.shift: Tensor | None = None

    def raw_blocks(self) -> Iterator[tuple[int, Tensor, Block | None]]:
        """``(row0, raw block on device, Block or None when cached)``."""
        if self._cache is not None:
            for row0, t in self._cache:
                yield row0, t, None
            return
        filling: list[tuple[int, Tensor]] | None = [] if self.cache_enabled else None
        for block in self.stream.blocks():
            t = torch.from_numpy(block.rows)
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            if filling is not None:
                filling.append((block.row0, t))
            yield block.row0, t, block
        if filling is not None:
            self._cache = filling

    def normalized(self, raw: Tensor) -> Tensor:
        x = raw.to(torch.float32)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        elif self.shift is not None:
            x = x - self.shift
        return x

    def blocks(self) -> Iterator[tuple[int, Tensor]]:
        for row0, raw, _ in self.raw_blocks():
            yield row0, self.normalized(raw)


class _PrevAssignments:
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
class _PassStats:
    sums: Tensor  # [k, d] float64
    counts: Tensor  # [k] int64
    cluster_inertia: Tensor  # [k] float64
    moved: int
    inertia: float  # total, float64

    @property
    def num_frames(self) -> int:
        return int(self.counts.sum().item())


def _lloyd_pass(
    blocks: Iterable[tuple[int, Tensor]],
    centroids: Tensor,
    chunk_rows: int,
    prev: _PrevAssignments | None = None,
    reduce: bool = True,
) -> _PassStats:
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
        for s in range(0, x.shape[0], chunk_rows):
            xc = x[s : s + chunk_rows]
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
    return _PassStats(
        sums=sums,
        counts=counts,
        cluster_inertia=cl_inertia,
        moved=int(moved.item()),
        inertia=float(cl_inertia.sum().item()),
    )


def _update_centroids(
    stats: _PassStats, old: Tensor, generator: torch.Generator
) -> tuple[Tensor, int, int]:
    """New centroids = cluster means; empty clusters split the largest one (see module doc).

    Returns ``(centroids float32, empty clusters before the split, clusters re-seeded)``.
    """
    counts = stats.counts.to(torch.float64)
    new = old.to(torch.float64).clone()
    full = counts > 0
    new[full] = stats.sums[full] / counts[full].unsqueeze(1)
    empty = (~full).nonzero().flatten().tolist()
    n_split = 0
    if empty:
        n_split = _split_largest(
            new, counts.clone(), stats.cluster_inertia.clone(), empty, generator
        )
    return new.to(torch.float32), len(empty), n_split


def _split_largest(
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


# --------------------------------------------------------------------------- fitting


@dataclass
class FitResult:
    model: KMeansModel
    history: list[dict[str, Any]]


def _rank_shards(store: FeatureStore, rank: int, world: int) -> list[int]:
    return [r for i, r in enumerate(store.ranks) if i % world == rank]


def _first_pass(
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
    d = dim
    dev = device
    s1 = torch.zeros(d, dtype=torch.float64, device=dev)
    s2 = torch.zeros(d, dtype=torch.float64, device=dev)
    q = frame_prob
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
        # each frame is drawn with probability q from (utterance key, frame index) alone
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
        sel = np.flatnonzero(frame_uniforms(row_keys, frames) < q)
        if sel.size:
            rows.append(x.index_select(0, torch.from_numpy(sel).to(dev)).cpu())
            keys.append(np.stack([row_keys[sel], frames[sel]], axis=1))
    sample = torch.cat(rows) if rows else torch.empty((0, d), dtype=torch.float32)
    sample_keys = torch.from_numpy(np.concatenate(keys) if keys else np.empty((0, 2), np.int64))
    return s1, s2, sample, sample_keys


#: initialisation reads this many times more utterances than its frame share (frames are
#: then drawn within them), so the sample spans many utterances without a full read
_INIT_UTT_FACTOR = 8.0


def _device_blocks(
    stream: StoreStream, device: torch.device
) -> Iterator[tuple[int, Tensor, Block | None]]:
    for block in stream.blocks():
        yield block.row0, torch.from_numpy(block.rows).to(device), block


def _choose_init(
    sample: Tensor, cfg: KMeansConfig, chunk_rows: int
) -> tuple[Tensor, list[float], int]:
    """k-means++ restarts refined on the sample; returns (best centroids, inertias, best)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    best: Tensor | None = None
    inertias: list[float] = []
    seeds = kmeans_plusplus(sample, cfg.k, gen, restarts=cfg.n_init)
    for c in seeds:
        for _ in range(cfg.init_lloyd_iters):
            st = _lloyd_pass([(0, sample)], c, chunk_rows, reduce=False)
            c, _, _ = _update_centroids(st, c, gen)
        st = _lloyd_pass([(0, sample)], c, chunk_rows, reduce=False)
        inertias.append(st.inertia / max(sample.shape[0], 1))
        if best is None or inertias[-1] < min(inertias[:-1], default=math.inf):
            best = c
    assert best is not None
    return best, inertias, int(np.argmin(inertias))


def fit_kmeans(store: FeatureStore | str | os.PathLike[str], cfg: KMeansConfig) -> FitResult:
    """Fit k-means on a feature store (this process's shards if ``torch.distributed`` is
    initialised; every process must call it with the same arguments)."""
    cfg.validate()
    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    env = udist.current_env()
    rank, world = env.rank, env.world_size
    selection = select_utterances(store, cfg.percent, cfg.max_frames, cfg.seed)
    stream = StoreStream(store, _rank_shards(store, rank, world), selection, cfg.block_frames)
    n_total = torch.tensor([stream.num_frames], dtype=torch.int64)
    total_frames = int(udist.all_reduce_sum(n_total).item())
    if total_frames < cfg.k:
        raise ConfigError(
            f"{store.root}: {total_frames} selected frames, fewer than k={cfg.k} "
            "(use more data, a larger --percent, or a smaller k)"
        )
    if cfg.cache_gb is not None:
        cache_bytes = cfg.cache_gb * 2**30
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cache_bytes = 0.6 * free
    else:
        cache_bytes = 0.0
    data = _Data(stream, device, cache_bytes)
    chunk_rows = _chunk_rows(cfg.chunk_elems or default_chunk_elems(device), cfg.k)
    log.info(
        "k-means: k=%d on %d frames (%d on rank %d of %d), dim %d, device %s, cache %s",
        cfg.k, total_frames, stream.num_frames, rank, world, store.dim, device, data.cache_enabled,
    )  # fmt: skip

    # pass 0: normalisation statistics and the initialisation sample
    t0 = time.perf_counter()
    q = min(1.0, cfg.sample_frames / total_frames)
    if cfg.normalize == "global_mv" or q * _INIT_UTT_FACTOR >= 1.0:
        # a full read is needed (statistics), or the sample is most of the data anyway
        s1, s2, sample, keys = _first_pass(
            data.raw_blocks(), store.dim, device, q, cfg.seed, cfg.normalize == "global_mv"
        )
    else:
        # read only a random subset of utterances (about _INIT_UTT_FACTOR * q of the data)
        # and draw frames within them, so initialisation costs a fraction of one pass
        q_utt = q * _INIT_UTT_FACTOR
        init_sel = subselect_utterances(store, stream, q_utt, cfg.seed)
        init_stream = StoreStream(store, stream.ranks, init_sel, cfg.block_frames)
        s1, s2, sample, keys = _first_pass(
            _device_blocks(init_stream, device), store.dim, device, q / q_utt, cfg.seed, False
        )
    if cfg.normalize == "global_mv":
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
        raise ConfigError(f"initialisation sample has {sample.shape[0]} frames < k={cfg.k}")
    centroids = torch.empty((cfg.k, store.dim), dtype=torch.float32, device=device)
    init_inertias: list[float] = []
    best_init = 0
    if rank == 0:
        centroids, init_inertias, best_init = _choose_init(sample, cfg, chunk_rows)
    udist.broadcast(centroids, src=0)
    del sample
    history: list[dict[str, Any]] = [
        {
            "iter": 0,
            "stage": "init",
            "sample_frames": int(keys.shape[0]),
            "restart_inertia": init_inertias,
            "seconds": round(time.perf_counter() - t0, 4),
        }
    ]
    log.info("k-means init: %s", history[0])

    gen = torch.Generator().manual_seed(cfg.seed + 1)
    converged = False
    if cfg.mode == "lloyd":
        if cfg.minibatch_epochs > 0:
            centroids, _, _ = _run_minibatch(
                data, centroids, cfg, chunk_rows, gen, history, total_frames, cfg.minibatch_epochs
            )
        centroids, converged, n_iter = _run_lloyd(data, centroids, cfg, chunk_rows, gen, history)
    else:
        centroids, converged, n_iter = _run_minibatch(
            data, centroids, cfg, chunk_rows, gen, history, total_frames, cfg.max_iter
        )

    final_inertia: float | None = None
    final_empty: int | None = None
    if cfg.final_pass:
        t0 = time.perf_counter()
        st = _lloyd_pass(data.blocks(), centroids, chunk_rows)
        final_inertia = st.inertia / total_frames
        final_empty = int((st.counts == 0).sum().item())
        history.append(
            {
                "iter": n_iter,
                "stage": "final",
                "inertia": final_inertia,
                "empty": final_empty,
                "seconds": round(time.perf_counter() - t0, 4),
            }
        )
    layer = extractor_option(store.meta.extractor, "layer")
    meta = {
        "feature": {
            "kind": store.meta.kind,
            "layer": layer,
            "frame_rate": store.meta.frame_rate,
            "dim": store.dim,
            "store": str(store.root),
            "store_dtype": store.meta.dtype,
            "extractor": store.meta.extractor,
            "data_hash": store_fingerprint(store),
        },
        "normalization": cfg.normalize,
        "seed": cfg.seed,
        "mode": cfg.mode,
        "config": asdict(cfg),
        "num_frames": total_frames,
        "iterations": n_iter,
        "converged": converged,
        "inertia_per_frame": final_inertia,
        "empty_clusters": final_empty,
        "init": {
            "sample_frames": int(keys.shape[0]),
            "restart_inertia": init_inertias,
            "best": best_init,
        },
        "world_size": world,
        "device": device.type,
        "seconds": round(time.perf_counter() - t_start, 3),
        "history": history,
        "torch": torch.__version__,
    }
    if data.shift is not None:
        centroids = (centroids.to(torch.float64) + data.shift.to(torch.float64)).to(torch.float32)
    model = KMeansModel(
        centroids=centroids.cpu(),
        mean=None if data.mean is None else data.mean.cpu(),
        std=None if data.std is None else data.std.cpu(),
        meta=meta,
    )
    return FitResult(model=model, history=history)


def _run_lloyd(
    data: _Data,
    centroids: Tensor,
    cfg: KMeansConfig,
    chunk_rows: int,
    gen: torch.Generator,
    history: list[dict[str, Any]],
) -> tuple[Tensor, bool, int]:
    prev = _PrevAssignments(in_memory=data.cache_enabled)
    last_inertia: float | None = None
    converged = False
    it = 0
    try:
        for it in range(1, cfg.max_iter + 1):
            t0 = time.perf_counter()
            st = _lloyd_pass(data.blocks(), centroids, chunk_rows, prev)
            n = max(st.num_frames, 1)
            inertia = st.inertia / n
            centroids, n_empty, n_split = _update_centroids(st, centroids, gen)
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
            if rel is not None and 0.0 <= rel < cfg.tol and n_split == 0:
                converged = True
                break
            last_inertia = inertia
    finally:
        prev.close()
    return centroids, converged, it


def _shuffled_batches(
    data: _Data, local_bs: int, buffer_frames: int, gen: torch.Generator
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
                pool = torch.cat(buf)
                perm = torch.randperm(pool.shape[0], generator=gen).to(pool.device)
                pool = pool.index_select(0, perm)
                full = pool.shape[0] // local_bs * local_bs
                for s in range(0, full, local_bs):
                    yield pool[s : s + local_bs]
                carry = pool[full:]
                buf, filled = [carry], carry.shape[0]
        if buf and filled:
            pool = torch.cat(buf)
            perm = torch.randperm(pool.shape[0], generator=gen).to(pool.device)
            pool = pool.index_select(0, perm)
            full = pool.shape[0] // local_bs * local_bs
            for s in range(0, full, local_bs):
                yield pool[s : s + local_bs]
            carry = pool[full:] if full < pool.shape[0] else None
        else:
            carry = None


def _run_minibatch(
    data: _Data,
    centroids: Tensor,
    cfg: KMeansConfig,
    chunk_rows: int,
    gen: torch.Generator,
    history: list[dict[str, Any]],
    total_frames: int,
    epochs: float,
) -> tuple[Tensor, bool, int]:
    k = cfg.k
    dev = centroids.device
    c64 = centroids.to(torch.float64)
    seen = torch.zeros(k, dtype=torch.float64, device=dev)
    seen_inertia = torch.zeros(k, dtype=torch.float64, device=dev)
    local_bs = round(cfg.batch_size * data.stream.num_frames / total_frames)
    steps_per_epoch = math.ceil(total_frames / cfg.batch_size)
    batches = _shuffled_batches(data, local_bs, max(cfg.shuffle_frames, local_bs), gen)
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
            xb = next(batches)
            st = _lloyd_pass([(0, xb)], c32, chunk_rows)
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
            if ewa < best * (1 - cfg.tol) or best == math.inf:
                best = ewa
                no_improvement = 0
            else:
                no_improvement += 1
            if no_improvement >= cfg.max_no_improvement:
                converged = True
                break
        n_empty = int((seen == 0).sum().item())
        rec = {
            "iter": epoch,
            "stage": "minibatch",
            "inertia_ewa": ewa,
            "moved": None,  # not tracked in mini-batch mode
            "empty": n_empty,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        history.append(rec)
        log.info("mini-batch k-means epoch %d: %s", epoch, rec)
        if converged:
            break
    centroids = c64.to(torch.float32)
    empty = (seen == 0).nonzero().flatten().tolist()
    if empty:
        _split_largest(centroids, seen.clone(), seen_inertia.clone(), empty, gen)
    return centroids, converged, epoch
