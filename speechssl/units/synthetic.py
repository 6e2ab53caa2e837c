"""Gaussian-mixture feature stores with known cluster structure, for tests and benchmarks.

Real features (MFCCs of the bundled corpus) are preferred wherever they are available; this
exists so k-means can be tested and benchmarked at arbitrary sizes without extracting
features first. Each "utterance" is a sequence of runs of frames from one mixture component
(like phones), so duration statistics and sharding behave like speech features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from speechssl.features.store import ShardWriter, StoreMeta, write_meta


@dataclass
class MixtureSpec:
    """Shape of the synthetic data."""

    num_frames: int = 20_000
    """Total frames (approximately; whole utterances are generated)."""
    dim: int = 39
    """Feature dimension."""
    components: int = 20
    """Number of Gaussian components (true clusters)."""
    spread: float = 6.0
    """Standard deviation of component means (unit-variance components)."""
    utt_frames: tuple[int, int] = (80, 400)
    """Range of frames per utterance."""
    run_frames: tuple[int, int] = (3, 15)
    """Range of frames per run of one component."""
    offset: float = 0.0
    """Added to every feature (large values test numerical robustness)."""
    seed: int = 0


def write_mixture_store(
    root: str | os.PathLike[str],
    spec: MixtureSpec,
    nshard: int = 1,
    dtype: str = "float32",
    frame_rate: float = 100.0,
) -> dict[str, np.ndarray]:
    """Write a store of ``spec``; returns the true component of every frame by utterance.

    Utterances are distributed over shards round-robin in generation order.
    """
    rng = np.random.default_rng(spec.seed)
    means = rng.standard_normal((spec.components, spec.dim)) * spec.spread + spec.offset
    write_meta(
        root,
        StoreMeta(
            kind="mfcc",
            dim=spec.dim,
            dtype=dtype,
            frame_rate=frame_rate,
            nshard=nshard,
            extractor={"synthetic": "gaussian-mixture", "seed": spec.seed},
        ),
        overwrite=True,
    )
    truth: dict[str, np.ndarray] = {}
    writers = [ShardWriter(root, r, nshard, dim=spec.dim, dtype=dtype) for r in range(nshard)]
    total = 0
    n = 0
    try:
        while total < spec.num_frames:
            length = int(rng.integers(spec.utt_frames[0], spec.utt_frames[1] + 1))
            comps = np.empty(length, dtype=np.int64)
            pos = 0
            while pos < length:
                run = int(rng.integers(spec.run_frames[0], spec.run_frames[1] + 1))
                comps[pos : pos + run] = rng.integers(spec.components)
                pos += run
            feats = means[comps] + rng.standard_normal((length, spec.dim))
            utt = f"utt{n:07d}"
            writers[n % nshard].add(utt, feats.astype(np.float32))
            truth[utt] = comps
            total += length
            n += 1
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return truth
