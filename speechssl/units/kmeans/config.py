"""Settings of one k-means fit, the default schedule rule, and the "same fit exists" rule.

Tuning fields left at ``None`` are chosen by :func:`resolve_schedule` from the size of the
problem once the selected data are known; a value given explicitly always wins.

**The default schedule** (``mode="auto"``). One full pass over ``N`` selected frames of
dimension ``d`` costs ``N * d * k`` multiply-adds (the distance matmul):

* up to ``SMALL_WORK`` (2e9; a pass takes well under a second): full-batch Lloyd from 3
  k-means++ starts (each refined by 10 Lloyd steps on the sample) until the relative inertia
  change is below 1e-4;
* larger, ``d <= LOW_DIM`` (64: MFCC-like features): 0.3 epochs of mini-batch updates (at
  least 30 batches) from one k-means++ start refined by 3 steps, no full-batch iterations
  (the final pass still measures the inertia on every frame);
* larger, ``d > LOW_DIM`` (model layers): full-batch Lloyd from 3 starts until the change is
  below 1e-3 (mini-batch updates measured worse optima there).

Measured on 2 CPU cores against scikit-learn's ``MiniBatchKMeans`` with fairseq's HuBERT
settings: see ``docs/results/bench/kmeans_default*.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from speechssl.errors import ConfigError
from speechssl.units.kmeans.model import MODEL_META
from speechssl.utils.files import check_output_dir

NORMALIZATIONS = ("none", "global_mv")
MODES = ("auto", "lloyd", "minibatch")
#: multiply-adds of one full pass (N * d * k) up to which data count as small
SMALL_WORK = 2e9
#: dimensions up to which large data get the mini-batch schedule
LOW_DIM = 64
#: the tuning fields the schedule rule fills in when they are None
TUNING = ("max_iter", "tol", "n_init", "init_lloyd_iters", "minibatch_epochs")
#: settings that change where and how fast a fit runs, not its result
RUNTIME_FIELDS = ("device", "cache_gb", "block_frames", "chunk_elems")

_SCHEDULES: dict[str, dict[str, Any]] = {
    "lloyd": dict(max_iter=100, tol=1e-4, n_init=3, init_lloyd_iters=10, minibatch_epochs=0.0),
    "lloyd-large": dict(
        max_iter=100, tol=1e-3, n_init=3, init_lloyd_iters=10, minibatch_epochs=0.0
    ),
    "minibatch-start": dict(
        max_iter=0, tol=1e-4, n_init=1, init_lloyd_iters=3, minibatch_epochs=0.3
    ),
    "minibatch": dict(max_iter=100, tol=1e-4, n_init=3, init_lloyd_iters=10, minibatch_epochs=0.0),
}


@dataclass(kw_only=True)
class KMeansConfig:
    """Settings of one k-means fit (stored in the model's metadata). Invalid values raise a
    :class:`~speechssl.errors.ConfigError` on construction."""

    k: int = 100
    """Number of clusters."""
    mode: str = "auto"
    """``auto`` (the schedule rule of the module doc), ``lloyd`` (full batch, streaming) or
    ``minibatch``."""
    max_iter: int | None = None
    """Lloyd: maximum iterations; 0 with ``minibatch_epochs > 0`` runs the mini-batch epochs
    alone (the final pass still measures the inertia on all frames). Mini-batch: maximum
    epochs over the data. None: from the schedule rule (100, or 0 for the mini-batch start)."""
    tol: float | None = None
    """Stop when the relative inertia decrease between iterations falls below this
    (None: 1e-4, or 1e-3 for large high-dimensional data)."""
    n_init: int | None = None
    """k-means++ restarts on the initialisation sample; the best one is kept (None: 3, or 1
    for the mini-batch start)."""
    init_sample_frames: int | None = None
    """Frames in the initialisation sample (default ``max(10000, 32 * k)``)."""
    init_lloyd_iters: int | None = None
    """Lloyd iterations on the sample that refine each restart before comparing them
    (None: 10, or 3 for the mini-batch start)."""
    minibatch_epochs: float | None = None
    """Lloyd mode: first run this many epochs of mini-batch updates (cheap progress from the
    initialisation), then the full-batch iterations (None: 0, or 0.3 and at least 30 batches
    for the mini-batch start)."""
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
    fraction: float | None = None
    """Use about this fraction (0 < f <= 1) of the utterances, chosen by hash of seed and
    utterance id (fairseq's ``learn_kmeans.py --percent``, which is a fraction too)."""
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first invalid field."""
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if (self.n_init is not None and self.n_init < 1) or self.batch_size < 1:
            raise ConfigError("n_init and batch_size must be >= 1")
        if self.init_lloyd_iters is not None and self.init_lloyd_iters < 0:
            raise ConfigError(f"init_lloyd_iters must be >= 0, got {self.init_lloyd_iters}")
        if self.minibatch_epochs is not None and not (
            math.isfinite(self.minibatch_epochs) and self.minibatch_epochs >= 0
        ):
            raise ConfigError(f"minibatch_epochs must be >= 0, got {self.minibatch_epochs}")
        mb_only = self.mode != "minibatch" and (self.minibatch_epochs or 0) > 0
        if self.max_iter is not None and (
            self.max_iter < 0 or (self.max_iter == 0 and not mb_only)
        ):
            raise ConfigError(
                f"max_iter must be >= 1, or 0 in lloyd mode with minibatch_epochs > 0 "
                f"(mini-batch epochs only); got max_iter={self.max_iter}, mode={self.mode!r}, "
                f"minibatch_epochs={self.minibatch_epochs}"
            )
        if self.tol is not None and not (math.isfinite(self.tol) and self.tol >= 0):
            raise ConfigError(f"tol must be >= 0, got {self.tol}")
        if self.fraction is not None and self.max_frames is not None:
            raise ConfigError("give a fraction or max_frames, not both")
        if self.fraction is not None and not (0.0 < self.fraction <= 1.0):
            raise ConfigError(
                f"fraction must be in (0, 1] (0.1 is a tenth of the utterances), "
                f"got {self.fraction}"
            )
        if self.max_frames is not None and self.max_frames <= 0:
            raise ConfigError(f"max_frames must be positive, got {self.max_frames}")
        if self.init_sample_frames is not None and self.init_sample_frames < 1:
            raise ConfigError(f"init_sample_frames must be >= 1, got {self.init_sample_frames}")
        if self.cache_gb is not None and not self.cache_gb >= 0:
            raise ConfigError(f"cache_gb must be >= 0, got {self.cache_gb}")

    @property
    def sample_frames(self) -> int:
        return self.init_sample_frames or max(10_000, 32 * self.k)

    def same_fit_exists(self, model_dir: str | os.PathLike[str], data_hash: str) -> bool:
        """Whether ``model_dir`` already holds this fit (the same settings on the same data:
        a rerun has nothing to do). False when there is no model; a ConfigError when there
        is one with other settings or data (the caller may overwrite it if told to)."""
        path = Path(model_dir) / MODEL_META
        if not path.exists():
            check_output_dir(model_dir, MODEL_META, "k-means model dir")  # before the fit
            return False
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        old = old if isinstance(old, dict) else {}
        old_cfg = old.get("config", {})
        if (
            isinstance(old_cfg, dict)
            and old.get("feature", {}).get("data_hash") == data_hash
            and _result_fields(old_cfg) == _result_fields(asdict(self))
        ):
            return True
        raise ConfigError(
            f"{model_dir} holds a k-means model with other settings or data; "
            "use another --out or --overwrite"
        )


def _result_fields(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}


def schedule_name(cfg: KMeansConfig, dim: int, num_frames: int) -> str:
    """Which schedule of the module doc the rule picks for these data."""
    large = num_frames * dim * cfg.k > SMALL_WORK
    if cfg.mode == "minibatch":
        return "minibatch"
    if not large:
        return "lloyd"
    if cfg.mode == "auto" and dim <= LOW_DIM:
        return "minibatch-start"
    return "lloyd-large"


def resolve_schedule(cfg: KMeansConfig, dim: int, num_frames: int) -> tuple[KMeansConfig, str]:
    """``cfg`` with every tuning field that is None filled in by the schedule rule, and the
    schedule's name; ``mode`` becomes ``lloyd`` or ``minibatch``."""
    name = schedule_name(cfg, dim, num_frames)
    chosen = dict(_SCHEDULES[name])
    if name == "minibatch-start":
        chosen["minibatch_epochs"] = max(0.3, 30 * cfg.batch_size / max(num_frames, 1))
    values = {f: chosen[f] if getattr(cfg, f) is None else getattr(cfg, f) for f in TUNING}
    mode = "minibatch" if name == "minibatch" else "lloyd"
    if mode == "lloyd" and values["max_iter"] == 0 and values["minibatch_epochs"] == 0:
        values["max_iter"] = 100  # an explicit --minibatch-epochs 0 on the mini-batch start
    return replace(cfg, mode=mode, **values), name
