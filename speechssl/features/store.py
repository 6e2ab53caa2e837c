"""On-disk store of frame-level features, sharded and memory-mappable.

The same format holds acoustic features (``mfcc``, ``fbank``, ...) and hidden layers of a
trained model (``kind="model"``), so k-means and label dumping read one format.

Layout of a store directory::

    meta.json                          format, kind, dim, dtype, frame rate, nshard, extractor,
                                       source dir, count + SHA-256 of the utterance list
    utterances.txt                     the sorted utterance ids the store was made from
    shard-00000-of-00004.bin           raw little-endian rows [frames, dim] (float32 or float16)
    shard-00000-of-00004.index         "utt offset num_frames" per utterance, in write order
    shard-00000-of-00004.done.json     written last: utterances, frames, bytes, skipped items

A shard is complete iff its ``done.json`` exists, the ``.bin`` size matches it and it names
the SHA-256 of the store's current ``meta.json`` (so shards written under other settings or
from another utterance list, e.g. before ``features dump --overwrite``, count as incomplete
and are redone). A writer
writes ``.bin`` and ``.index`` under temporary names, renames both, then writes ``done.json``
atomically; a crash at any point leaves the shard incomplete and a rerun redoes it. Readers
memory-map shards, so nothing is loaded into RAM until it is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.errors import SpeechSSLError
from speechssl.utils.atomic import atomic_write_json, atomic_write_text

FORMAT = "speechssl-features/1"
META_FILE = "meta.json"
UTT_LIST = "utterances.txt"
_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class FeatureStoreError(SpeechSSLError):
    """The store is missing, incomplete or inconsistent."""


def shard_stem(rank: int, nshard: int) -> str:
    return f"shard-{rank:05d}-of-{nshard:05d}"


@dataclass
class StoreMeta:
    """What a store holds; written to ``meta.json``.

    Attributes:
        kind: ``mfcc``, ``fbank``, ``spectrogram`` or ``model``.
        dim: feature dimension.
        dtype: ``float32`` or ``float16`` (on disk; readers may upcast).
        frame_rate: frames per second (100 for 10 ms shift, 50 for a 20 ms model).
        nshard: number of shards the corpus was split into.
        extractor: options that produced the features (feature options, or model name,
            checkpoint and layer); compared on rerun so stale output is never mixed in.
        source: the data directory the features came from.
        utterances: ``{"count": N, "sha256": ...}`` of the sorted utterance ids the store
            was made from (:func:`utterance_digest`; the ids are in ``utterances.txt``).
    """

    kind: str
    dim: int
    dtype: str
    frame_rate: float
    nshard: int
    extractor: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    utterances: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "dtype": self.dtype,
            "frame_rate": self.frame_rate,
            "nshard": self.nshard,
            "extractor": self.extractor,
            "source": self.source,
            "utterances": self.utterances,
        }

    @staticmethod
    def from_json(obj: dict[str, Any], where: str) -> StoreMeta:
        if obj.get("format") != FORMAT:
            raise FeatureStoreError(f"{where}: not a {FORMAT} store (format={obj.get('format')!r})")
        if obj.get("dtype") not in _DTYPES:
            raise FeatureStoreError(f"{where}: unsupported dtype {obj.get('dtype')!r}")
        return StoreMeta(
            kind=str(obj["kind"]),
            dim=int(obj["dim"]),
            dtype=str(obj["dtype"]),
            frame_rate=float(obj["frame_rate"]),
            nshard=int(obj["nshard"]),
            extractor=dict(obj.get("extractor", {})),
            source=str(obj.get("source", "")),
            utterances=dict(obj.get("utterances") or {}),
        )


def utterance_digest(utts: Sequence[str]) -> dict[str, Any]:
    """``{"count", "sha256"}`` of an utterance list (one id per line, in the given order)."""
    digest = hashlib.sha256()
    for u in utts:
        digest.update(u.encode("utf-8") + b"\n")
    return {"count": len(utts), "sha256": digest.hexdigest()}


def read_meta(root: str | os.PathLike[str]) -> StoreMeta | None:
    """The store's ``meta.json``, or None when there is none."""
    path = Path(root) / META_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeatureStoreError(f"{path}: not valid JSON ({exc.msg})") from None
    return StoreMeta.from_json(obj, str(path))


def meta_sha256(root: str | os.PathLike[str]) -> str | None:
    """SHA-256 of the store's ``meta.json`` bytes (None without one): what each shard's
    ``done.json`` names, so a shard made under other settings is never taken as complete."""
    try:
        return hashlib.sha256((Path(root) / META_FILE).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def read_utterance_list(root: str | os.PathLike[str]) -> list[str] | None:
    """The utterance ids a store was made from (``utterances.txt``), None if not recorded."""
    try:
        return (Path(root) / UTT_LIST).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None


def write_meta(
    root: str | os.PathLike[str],
    meta: StoreMeta,
    overwrite: bool = False,
    utts: Sequence[str] | None = None,
) -> None:
    """Write ``meta.json`` (and ``utterances.txt`` from ``utts``, whose digest is then
    recorded in ``meta.utterances``); if one exists it must agree (else error unless
    ``overwrite``). Rewriting it makes every shard written before incomplete."""
    root = Path(root)
    path = root / META_FILE
    if utts is not None:
        meta.utterances = utterance_digest(utts)
    old = None if overwrite else read_meta(root)
    if old is not None:
        if old.to_json() == meta.to_json():
            return
        if not old.utterances and meta.utterances and _same_but_utterances(old, meta):
            raise FeatureStoreError(
                f"{root}: the store records no utterance list (written by an older speechssl), "
                "so its shards cannot be checked against the data dir; rerun with --overwrite "
                "to redo it"
            )
        if old.utterances != meta.utterances and _same_but_utterances(old, meta):
            raise FeatureStoreError(
                f"{root}: the store was made from other utterances "
                f"({_utterance_change(root, old, utts)}); rerun with --overwrite to redo it "
                "from the data dir as it is now, or use a new output directory"
            )
        raise FeatureStoreError(
            f"{path} exists with different settings; rerun with --overwrite to redo the store "
            f"or use a new output directory (old: {old.to_json()}, new: {meta.to_json()})"
        )
    if utts is not None:
        atomic_write_text(root / UTT_LIST, "".join(f"{u}\n" for u in utts))
    atomic_write_json(path, meta.to_json())


def _same_but_utterances(a: StoreMeta, b: StoreMeta) -> bool:
    return {**a.to_json(), "utterances": None} == {**b.to_json(), "utterances": None}


def _utterance_change(root: Path, old: StoreMeta, utts: Sequence[str] | None) -> str:
    then, now = old.utterances.get("count", "?"), len(utts) if utts is not None else "?"
    listed = read_utterance_list(root)
    if listed is None or utts is None:
        return f"{then} utterances then, {now} now"
    gone = sorted(set(listed) - set(utts))
    new = sorted(set(utts) - set(listed))

    def few(xs: list[str]) -> str:
        return ", ".join(xs[:3]) + (f" and {len(xs) - 3} more" if len(xs) > 3 else "")

    parts = [f"{then} utterances then, {now} now"]
    if gone:
        parts.append(f"no longer in the data dir: {few(gone)}")
    if new:
        parts.append(f"new: {few(new)}")
    return "; ".join(parts)


def shard_is_complete(root: str | os.PathLike[str], rank: int, nshard: int) -> bool:
    """True iff the shard's ``done.json`` exists, names the current ``meta.json`` and its
    ``.bin`` has the recorded size."""
    stem = Path(root) / shard_stem(rank, nshard)
    done = stem.with_name(stem.name + ".done.json")
    binp = stem.with_name(stem.name + ".bin")
    idx = stem.with_name(stem.name + ".index")
    if not (done.exists() and binp.exists() and idx.exists()):
        return False
    try:
        info = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("meta_sha256") != meta_sha256(root):
        return False
    return bool(binp.stat().st_size == int(info.get("bytes", -1)))


class ShardWriter:
    """Streams utterances into one shard; call :meth:`close` (or use as a context manager).

    ``skip(utt, reason)`` records an utterance that could not be processed, so the shard's
    ``done.json`` accounts for every input: ``utterances + len(skipped) == inputs``.
    Write the store's ``meta.json`` before the writer starts: ``done.json`` names its
    SHA-256 as read now, so a shard whose settings were replaced meanwhile is incomplete.
    """

    def __init__(
        self, root: str | os.PathLike[str], rank: int, nshard: int, dim: int, dtype: str
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rank, self.nshard, self.dim = rank, nshard, dim
        self._meta_sha256 = meta_sha256(self.root)
        self.np_dtype = _DTYPES[dtype]
        stem = shard_stem(rank, nshard)
        self._final_bin = self.root / f"{stem}.bin"
        self._final_idx = self.root / f"{stem}.index"
        self._done = self.root / f"{stem}.done.json"
        # a stale done marker must go first so a crash below leaves the shard incomplete
        self._done.unlink(missing_ok=True)
        suffix = f".tmp-{os.getpid()}"
        self._tmp_bin = self.root / f".{stem}.bin{suffix}"
        self._tmp_idx = self.root / f".{stem}.index{suffix}"
        self._bin = open(self._tmp_bin, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._idx = open(self._tmp_idx, "w", encoding="utf-8")  # noqa: SIM115
        self._offset = 0
        self._seen: set[str] = set()
        self.skipped: list[dict[str, str]] = []
        self.num_utts = 0
        self._closed = False

    def add(self, utt: str, feats: np.ndarray | Any) -> None:
        """Append ``feats`` ``[num_frames, dim]`` (numpy or torch) for ``utt``."""
        if utt in self._seen:
            raise FeatureStoreError(f"{utt}: written twice to shard {self.rank}")
        arr = feats.detach().cpu().numpy() if hasattr(feats, "detach") else np.asarray(feats)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise FeatureStoreError(
                f"{utt}: features of shape {arr.shape}, expected [frames, {self.dim}]"
            )
        if not np.isfinite(arr).all():
            raise FeatureStoreError(f"{utt}: features contain NaN or inf")
        arr = np.ascontiguousarray(arr, dtype=self.np_dtype)
        self._bin.write(arr.tobytes())
        self._idx.write(f"{utt} {self._offset} {arr.shape[0]}\n")
        self._offset += arr.shape[0]
        self._seen.add(utt)
        self.num_utts += 1

    def skip(self, utt: str, reason: str) -> None:
        self.skipped.append({"utt": utt, "reason": reason})

    def close(self, extra: dict[str, Any] | None = None) -> None:
        if self._closed:
            return
        for fh in (self._bin, self._idx):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        os.replace(self._tmp_bin, self._final_bin)
        os.replace(self._tmp_idx, self._final_idx)
        info = {
            "utterances": self.num_utts,
            "frames": self._offset,
            "bytes": self._offset * self.dim * self.np_dtype.itemsize,
            "skipped": self.skipped,
            "meta_sha256": self._meta_sha256,
            **(extra or {}),
        }
        atomic_write_json(self._done, info)
        self._closed = True

    def abort(self) -> None:
        if self._closed:
            return
        for fh in (self._bin, self._idx):
            fh.close()
        self._tmp_bin.unlink(missing_ok=True)
        self._tmp_idx.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class _Shard:
    rank: int
    data: np.ndarray  # memmap [frames, dim]
    utts: list[str]
    offsets: np.ndarray  # int64 [U]
    counts: np.ndarray  # int64 [U]
    skipped: list[dict[str, str]]


class FeatureStore:
    """Read-only view of a complete store; shards are memory-mapped lazily.

    Raises FeatureStoreError naming the shards that are missing or incomplete, unless
    ``allow_incomplete`` (then only complete shards are visible).
    """

    def __init__(self, root: str | os.PathLike[str], allow_incomplete: bool = False) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.exists():
            raise FeatureStoreError(f"{self.root}: no meta.json (not a feature store?)")
        self.meta = StoreMeta.from_json(json.loads(meta_path.read_text()), str(meta_path))
        missing = [
            r
            for r in range(self.meta.nshard)
            if not shard_is_complete(self.root, r, self.meta.nshard)
        ]
        if missing and not allow_incomplete:
            names = ", ".join(shard_stem(r, self.meta.nshard) for r in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise FeatureStoreError(
                f"{self.root}: incomplete shards: {names}{more} (killed while writing, or "
                "written under other settings; rerun features dump to redo them)"
            )
        self.ranks = [r for r in range(self.meta.nshard) if r not in set(missing)]
        self._shards: dict[int, _Shard] = {}
        self._where: dict[str, tuple[int, int]] | None = None

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def dtype(self) -> np.dtype[Any]:
        return _DTYPES[self.meta.dtype]

    def shard(self, rank: int) -> _Shard:
        if rank not in self._shards:
            stem = self.root / shard_stem(rank, self.meta.nshard)
            info = json.loads(stem.with_name(stem.name + ".done.json").read_text())
            utts: list[str] = []
            offs: list[int] = []
            cnts: list[int] = []
            with open(stem.with_name(stem.name + ".index"), encoding="utf-8") as fh:
                for line in fh:
                    u, o, c = line.split()
                    utts.append(u)
                    offs.append(int(o))
                    cnts.append(int(c))
            frames = int(info["frames"])
            if frames == 0:
                data = np.zeros((0, self.dim), dtype=self.dtype)
            else:
                data = np.memmap(
                    stem.with_name(stem.name + ".bin"),
                    dtype=self.dtype,
                    mode="r",
                    shape=(frames, self.dim),
                )
            self._shards[rank] = _Shard(
                rank=rank,
                data=data,
                utts=utts,
                offsets=np.asarray(offs, dtype=np.int64),
                counts=np.asarray(cnts, dtype=np.int64),
                skipped=list(info.get("skipped", [])),
            )
        return self._shards[rank]

    def _index(self) -> dict[str, tuple[int, int]]:
        if self._where is None:
            where: dict[str, tuple[int, int]] = {}
            for r in self.ranks:
                for i, u in enumerate(self.shard(r).utts):
                    if u in where:
                        raise FeatureStoreError(f"{u}: present in two shards of {self.root}")
                    where[u] = (r, i)
            self._where = where
        return self._where

    @property
    def utt_ids(self) -> list[str]:
        return list(self._index())

    def __len__(self) -> int:
        return len(self._index())

    def __contains__(self, utt: object) -> bool:
        return utt in self._index()

    def __getitem__(self, utt: str) -> np.ndarray:
        try:
            r, i = self._index()[utt]
        except KeyError:
            raise FeatureStoreError(f"{utt}: not in feature store {self.root}") from None
        sh = self.shard(r)
        o, c = int(sh.offsets[i]), int(sh.counts[i])
        return sh.data[o : o + c]

    def num_frames(self, utt: str | None = None) -> int:
        if utt is not None:
            r, i = self._index()[utt]
            return int(self.shard(r).counts[i])
        return int(sum(int(self.shard(r).counts.sum()) for r in self.ranks))

    def skipped(self) -> list[dict[str, str]]:
        return [s for r in self.ranks for s in self.shard(r).skipped]

    def iter_utterances(
        self, ranks: Sequence[int] | None = None
    ) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(utt, features)`` in shard order (memmap views; copy to keep)."""
        for r in self.ranks if ranks is None else ranks:
            sh = self.shard(r)
            for u, o, c in zip(sh.utts, sh.offsets, sh.counts):
                yield u, sh.data[int(o) : int(o + c)]

    def iter_blocks(
        self, block_frames: int, ranks: Sequence[int] | None = None
    ) -> Iterator[np.ndarray]:
        """Yield consecutive ``[<=block_frames, dim]`` float32 blocks over the given shards.

        Memory use is bounded by one block, whatever the size of the store.
        """
        for r in self.ranks if ranks is None else ranks:
            data = self.shard(r).data
            for start in range(0, data.shape[0], block_frames):
                yield np.asarray(data[start : start + block_frames], dtype=np.float32)
