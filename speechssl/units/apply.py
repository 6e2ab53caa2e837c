"""``kmeans apply``: unit labels of a feature store, or straight from a data dir's audio.

Label shard ``r`` of ``N`` of a feature store holds the utterances at positions
``shard_range(U, N, r)`` of the store's global order (see :mod:`speechssl.units.labels`).
Labels straight from audio use the dump's shards of the data dir's sorted utterance list:
features are computed in batches by the extractor the model was trained on (rebuilt from
its metadata) and each utterance's labels are written as soon as its features exist, so
nothing but the labels touches the disk. Bad audio is handled as in a feature dump: an error
naming the utterance, or with ``tolerant`` skipped and recorded in the shard's
``done.json`` (written + skipped always equals the shard's utterance count).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechssl.data.audio import AudioChannelError
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.errors import ConfigError, DataDirError, ItemError
from speechssl.features.dump import DumpOptions, ExtractorRequest, iter_features, shard_range
from speechssl.features.store import FeatureStore, shard_stem, utterance_digest
from speechssl.units.kmeans import KMeansModel
from speechssl.units.labels import (
    LabelShardWriter,
    LabelsMeta,
    frame_window_from_extractor,
    label_dtype,
    label_itemsize,
    label_shard_is_complete,
    write_labels_meta,
)
from speechssl.units.stream import StoreStream, extractor_option, store_fingerprint
from speechssl.utils.device import resolve_device
from speechssl.utils.files import check_output_dir
from speechssl.utils.lock import exclusive_lock

log = logging.getLogger(__name__)


def _check_model_matches_store(model: KMeansModel, store: FeatureStore) -> None:
    feat = model.meta.get("feature", {})
    if model.dim != store.dim:
        raise ConfigError(
            f"k-means model has dim {model.dim}, feature store {store.root} has {store.dim}"
        )
    if feat.get("kind") not in (None, store.meta.kind):
        raise ConfigError(
            f"k-means model was fitted on {feat.get('kind')!r} features, "
            f"store {store.root} holds {store.meta.kind!r}"
        )
    layer = extractor_option(store.meta.extractor, "layer")
    if feat.get("layer") != layer:
        raise ConfigError(
            f"k-means model was fitted on layer {feat.get('layer')!r}, store {store.root} holds layer {layer!r}"
        )
    if feat.get("extractor") not in (None, store.meta.extractor):
        log.warning(
            "feature options differ between the k-means training store and %s: %s vs %s",
            store.root, feat.get("extractor"), store.meta.extractor,
        )  # fmt: skip


def _labels_meta(
    model_dir: str | os.PathLike[str],
    model: KMeansModel,
    nshard: int,
    kind: str,
    extractor: Mapping[str, Any],
    frame_rate: float,
    frame_window_s: float | None,
    source: dict[str, Any],
    source_skipped: list[dict[str, str]],
) -> LabelsMeta:
    return LabelsMeta(
        label_rate=frame_rate,
        k=model.k,
        nshard=nshard,
        dtype=label_dtype(model.k),
        frame_window_s=(
            frame_window_from_extractor(extractor) if frame_window_s is None else frame_window_s
        ),
        source={
            "kind": kind,
            "layer": extractor_option(extractor, "layer"),
            "frame_rate": frame_rate,
            **source,
        },
        kmeans={
            "path": str(model_dir),
            "sha256": model.sha256,
            "normalization": model.meta.get("normalization"),
        },
        source_skipped=source_skipped,
    )


def shard_lock(out: Path, rank: int, nshard: int) -> contextlib.AbstractContextManager[Path]:
    """The exclusive lock one writer of label shard ``rank`` holds while it checks and
    writes the shard: a second writer of it is refused naming the holder, other ranks of the
    same label dir are written at once."""
    what = f"shard {rank} of {nshard} of a label dir"
    return exclusive_lock(out, what, name=f".{shard_stem(rank, nshard)}.lock")


def _start_shard(out: Path, meta: LabelsMeta, rank: int, overwrite: bool) -> dict[str, Any] | None:
    """Write (or check) the label dir's ``meta.json``; the summary of an already complete
    shard ``rank`` (rerun: nothing to do), else None."""
    write_labels_meta(out, meta, overwrite=overwrite)
    itemsize = label_itemsize(meta.dtype)
    if overwrite or not label_shard_is_complete(out, rank, meta.nshard, itemsize):
        return None
    stem = shard_stem(rank, meta.nshard)
    info = json.loads((out / f"{stem}.done.json").read_text())
    log.info("%s/%s is complete; skipping (use --overwrite to redo)", out, stem)
    return {
        "shard": stem,
        "utterances": info["utterances"],
        "frames": info["frames"],
        "seconds": 0.0,
        "skipped_existing": True,
    }


def _store_utterances(model: KMeansModel, stream: StoreStream) -> Iterator[tuple[str, np.ndarray]]:
    """``(utt, labels)`` of every utterance of ``stream``, in stream order (utterances with
    zero frames never appear in a block: they are given no labels at the end)."""
    cur_utt: str | None = None
    parts: list[np.ndarray] = []
    seen: set[str] = set()
    for block in stream.blocks():
        lab = model.labels(torch.from_numpy(block.rows)).cpu().numpy()
        for seg in block.segments:
            if seg.utt != cur_utt:
                if cur_utt is not None:
                    seen.add(cur_utt)
                    yield cur_utt, np.concatenate(parts)
                cur_utt, parts = seg.utt, []
            parts.append(lab[seg.start : seg.start + seg.count])
    if cur_utt is not None:
        seen.add(cur_utt)
        yield cur_utt, np.concatenate(parts)
    for utt, count in stream.utterances():
        if count == 0 and utt not in seen:
            yield utt, np.empty(0, dtype=np.int64)


def _write_label_shard(
    labelled: Iterator[tuple[str, np.ndarray]],
    out: Path,
    meta: LabelsMeta,
    rank: int,
    extra: Callable[[int], dict[str, Any]],
) -> dict[str, Any]:
    """Write label shard ``rank`` from ``(utt, labels)`` pairs; ``extra(utterances written)``
    gives what ``done.json`` records beyond the counts, once all pairs are written."""
    t0 = time.perf_counter()
    writer = LabelShardWriter(out, rank, meta.nshard, meta.dtype)
    try:
        for utt, labels in labelled:
            writer.add(utt, labels)
        seconds = time.perf_counter() - t0
        writer.close({"seconds": round(seconds, 3), **extra(writer.utts)})
    except BaseException:
        writer.abort()
        raise
    return {
        "shard": shard_stem(rank, meta.nshard),
        "utterances": writer.utts,
        "frames": writer.frames,
        "seconds": seconds,
        "skipped_existing": False,
    }


def apply_to_store(
    model_dir: str | os.PathLike[str],
    store: FeatureStore | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    nshard: int = 1,
    rank: int = 0,
    device: str = "auto",
    block_frames: int | None = None,
    overwrite: bool = False,
    frame_window_s: float | None = None,
) -> dict[str, Any]:
    """Label the utterances of label shard ``rank`` of ``nshard`` of a feature store.

    A complete shard is skipped (rerun-safe) unless ``overwrite``; a partial one is redone.
    Returns a summary: ``{"shard", "utterances", "frames", "seconds", "skipped_existing"}``.
    """
    if not 0 <= rank < nshard:
        raise ConfigError(f"rank must be in [0, {nshard}), got {rank}")
    model = KMeansModel.load(model_dir, device=resolve_device(device))
    if not isinstance(store, FeatureStore):
        store = FeatureStore(store)
    _check_model_matches_store(model, store)
    source = {
        "features": str(store.root),
        "data_dir": store.meta.source,
        "data_hash": store_fingerprint(store),
    }
    meta = _labels_meta(
        model_dir, model, nshard, store.meta.kind, store.meta.extractor,
        store.meta.frame_rate, frame_window_s, source, store.skipped(),
    )  # fmt: skip
    out = Path(out_dir)
    check_output_dir(out, "meta.json", "label dir")
    with shard_lock(out, rank, nshard):
        done = _start_shard(out, meta, rank, overwrite)
        if done is not None:
            return done
        lo, hi = shard_range(len(store), nshard, rank)
        stream = StoreStream(store, block_frames=block_frames, utt_ranges=(lo, hi))
        return _write_label_shard(
            _store_utterances(model, stream), out, meta, rank, lambda _: {"utt_range": [lo, hi]}
        )


def _flat_options(tree: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat_options(value))
        else:
            flat[key] = value
    return flat


def training_extractor(
    model: KMeansModel, device: torch.device | str
) -> tuple[ExtractorRequest, str]:
    """The feature extractor the model's training store was made with, rebuilt from the
    description recorded in the model (``feature.kind`` and ``feature.extractor``), and the
    channel policy the store's audio was read with (``features dump --channels``).

    Raises ConfigError if the registered extractor no longer describes itself the same way
    (the labels would come from different features than the centroids).
    """
    feat = model.meta.get("feature", {})
    kind, described = feat.get("kind"), feat.get("extractor")
    if not kind or not isinstance(described, Mapping):
        raise ConfigError("the k-means model records no feature extractor to rebuild")
    described = dict(described)
    channels = str(described.pop("channels", "error"))
    request = ExtractorRequest(kind=str(kind), options=_flat_options(described), device=str(device))
    rebuilt = request.build().describe()
    if rebuilt != described:
        raise ConfigError(
            f"cannot rebuild the {kind!r} extractor of the k-means training features: "
            f"recorded {described}, rebuilt {rebuilt}"
        )
    return request, channels


def apply_to_audio(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    nshard: int = 1,
    rank: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    tolerant: bool = False,
    batch_seconds: float = 200.0,
    frame_window_s: float | None = None,
) -> dict[str, Any]:
    """Label shard ``rank`` of ``nshard`` of a Kaldi data dir straight from its audio,
    streaming features into labels (module doc). Returns the summary of
    :func:`apply_to_store` plus ``skipped_audio`` (utterances skipped in tolerant mode)."""
    if not 0 <= rank < nshard:
        raise ConfigError(f"rank must be in [0, {nshard}), got {rank}")
    dev = resolve_device(device)
    model = KMeansModel.load(model_dir, device=dev)
    request, channels = training_extractor(model, dev)
    extractor = request.build()
    ddir = KaldiDataDir(data_dir)
    if not ddir.utt_ids():
        raise DataDirError(str(data_dir), "the data dir has no utterances (utt2spk is empty)")
    described = extractor.describe()
    if channels != "error":  # as features dump records it
        described = {**described, "channels": channels}
    source = {
        "data_dir": str(Path(data_dir).resolve()),
        "extractor": described,
        "utterances": utterance_digest(ddir.utt_ids()),  # a changed set is refused on rerun
    }
    meta = _labels_meta(
        model_dir, model, nshard, request.kind, described, extractor.frame_rate,
        frame_window_s, source, [],
    )  # fmt: skip
    out = Path(out_dir)
    check_output_dir(out, "meta.json", "label dir")
    with shard_lock(out, rank, nshard):
        done = _start_shard(out, meta, rank, overwrite)
        if done is not None:
            return done
        utts = ddir.utt_ids()
        lo, hi = shard_range(len(utts), nshard, rank)
        mine = utts[lo:hi]
        skipped: list[dict[str, str]] = []

        def bad(utt: str, err: ItemError) -> None:
            if isinstance(err, AudioChannelError):  # the policy is the store's, not ours to pick
                hint = (
                    f"labels from audio read it as the k-means model's store was dumped "
                    f"(--channels {channels}); dump and fit one with features dump --channels "
                    "select:N or --channels mean"
                )
                err = AudioChannelError(err.item, f"{err.reason}; {hint}", err.where)
            if not tolerant:
                raise err
            log.warning("skipping %s", err)
            skipped.append({"utt": utt, "reason": f"{type(err).kind}: {err.reason}"})

        opts = DumpOptions(
            nshard=nshard, tolerant=tolerant, batch_seconds=batch_seconds, channels=channels
        )
        labelled = (
            (utt, model.labels(feats).cpu().numpy())
            for utt, feats, _ in iter_features(ddir, mine, extractor, opts, bad)
        )

        def extra(written: int) -> dict[str, Any]:
            if written + len(skipped) != len(mine):  # a bug, never bad input
                raise AssertionError(f"{written} labelled + {len(skipped)} skipped != {len(mine)}")
            return {"inputs": len(mine), "skipped": skipped}

        summary = _write_label_shard(labelled, out, meta, rank, extra)
        summary["skipped_audio"] = len(skipped)
        return summary
