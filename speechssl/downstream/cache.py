"""Cached layers: a frozen upstream's hidden states, computed once per utterance.

A layer cache is a feature store (:mod:`speechssl.features.store`, ``kind="layers"``) whose
rows are the chosen hidden states of one frame side by side (``dim = L x D``, float16 by
default); ``meta.json``'s ``extractor`` records the upstream's identity (name, source,
weights SHA-256) and the layer indices. :func:`open_layer_cache` refuses a cache made from
another upstream or other layers, and :func:`cache_layers` reuses a complete one (a rerun
redoes only incomplete shards).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from speechssl.downstream.upstreams import Upstream
from speechssl.errors import ConfigError
from speechssl.features.dump import (
    DumpOptions,
    ShardResult,
    dump_shard,
    store_meta,
)
from speechssl.features.store import FeatureStore, write_meta

KIND = "layers"


class LayerCacheError(ConfigError):
    """A layer cache does not belong to the upstream/layers asked for."""


class LayerExtractor:
    """The chosen hidden states of ``upstream`` as one feature row per frame."""

    def __init__(self, upstream: Upstream, layers: Sequence[int] | None = None) -> None:
        self.upstream = upstream
        self.layers = list(range(upstream.num_layers)) if layers is None else list(layers)
        bad = [i for i in self.layers if not 0 <= i < upstream.num_layers]
        if bad or not self.layers:
            raise ConfigError(
                f"layers {self.layers} invalid for upstream {upstream.name} "
                f"(hidden states 0..{upstream.num_layers - 1})"
            )

    @property
    def dim(self) -> int:
        return self.upstream.dim * len(self.layers)

    @property
    def frame_rate(self) -> float:
        return self.upstream.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.upstream.sample_rate

    def describe(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "upstream": self.upstream.identity(),
            "layers": self.layers,
            "layer_dim": self.upstream.dim,
        }

    def __call__(
        self, waves: Tensor, lengths: Tensor, utt_ids: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        out = self.upstream(waves, lengths, self.layers)
        stacked = torch.cat(out.hidden_states, dim=-1)
        return stacked.cpu(), out.frames.cpu()


@dataclass
class LayerCache:
    """A complete layer cache opened for reading."""

    store: FeatureStore
    layers: list[int]
    layer_dim: int
    frame_rate: float

    def frames(self, utt: str) -> int:
        return self.store.num_frames(utt)

    def get(self, utt: str) -> np.ndarray:
        """``[frames, L, D]`` (the store's dtype; a memory-mapped view)."""
        rows = self.store[utt]
        return rows.reshape(rows.shape[0], len(self.layers), self.layer_dim)


def cache_layers(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    upstream: Upstream,
    layers: Sequence[int] | None = None,
    *,
    dtype: str = "float16",
    nshard: int = 1,
    batch_seconds: float = 100.0,
    tolerant: bool = False,
) -> list[ShardResult]:
    """Write (or complete) the layer cache of data dir ``data`` at ``out``; a cache there
    from another upstream or other layers is refused."""
    from speechssl.data.kaldi_dir import KaldiDataDir

    extractor = LayerExtractor(upstream, layers)
    opts = DumpOptions(nshard=nshard, dtype=dtype, batch_seconds=batch_seconds, tolerant=tolerant)
    KaldiDataDir(data)  # a missing or broken data dir fails before anything is written
    out_dir = Path(out)
    if (out_dir / "meta.json").is_file():
        _check_identity(out_dir, extractor.describe())
    write_meta(out_dir, store_meta(extractor, KIND, opts, Path(data)))
    # the upstream is already built here (no registered kind to rebuild it from a request)
    return [dump_shard(data, out_dir, None, opts, r, extractor) for r in range(nshard)]


def _check_identity(root: Path, want: dict[str, Any]) -> None:
    import json

    meta = json.loads((root / "meta.json").read_text())
    have = meta.get("extractor", {})
    if meta.get("kind") != KIND:
        raise LayerCacheError(f"{root}: a {meta.get('kind')!r} feature store, not a layer cache")
    if have.get("upstream") != want["upstream"]:
        old, new = have.get("upstream", {}), want["upstream"]
        raise LayerCacheError(
            f"{root}: layer cache made from another upstream ({old.get('name')}, weights "
            f"{str(old.get('weights_sha256', old.get('extractor', '')))[:12]}) than "
            f"{new.get('name')} (weights {str(new.get('weights_sha256', new.get('extractor', '')))[:12]}); "
            "use another cache dir or delete this one"
        )
    if have.get("layers") != want["layers"]:
        raise LayerCacheError(
            f"{root}: layer cache holds layers {have.get('layers')}, not {want['layers']}; "
            "use another cache dir or delete this one"
        )


def open_layer_cache(
    root: str | os.PathLike[str], upstream: Upstream, layers: Sequence[int] | None = None
) -> LayerCache:
    """Open a complete cache, refusing one made from another upstream or other layers."""
    root = Path(root)
    want = LayerExtractor(upstream, layers).describe()
    if not (root / "meta.json").is_file():
        raise LayerCacheError(f"{root}: no layer cache here (run speechssl probe cache first)")
    _check_identity(root, want)
    store = FeatureStore(root)
    return LayerCache(
        store=store,
        layers=list(want["layers"]),
        layer_dim=int(want["layer_dim"]),
        frame_rate=store.meta.frame_rate,
    )
