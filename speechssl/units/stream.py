"""Bounded-memory streaming over a feature store, and deterministic utterance sampling.

k-means passes over the data many times. The store's ``FeatureStore`` memory-maps shards,
which is convenient but makes every page touched count towards the process's resident
memory until it is unmapped; here blocks are read with plain file reads into fresh arrays
instead, so resident memory stays at a few blocks whatever the corpus size (the OS page
cache still makes repeated passes cheap).

Sampling (``--fraction`` / ``--max-frames``, as in HuBERT's k-means recipe) decides per
utterance from a keyed hash of ``(seed, utterance id)``, never from shard layout or
process count: one process and N processes select exactly the same frames.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from speechssl.errors import ConfigError
from speechssl.features.store import FeatureStore, shard_stem


def utt_hash(seed: int, utt: str, salt: str = "select") -> int:
    """A 63-bit integer from ``(seed, salt, utt)``; stable across runs and machines."""
    digest = hashlib.blake2b(f"{seed}\x00{salt}\x00{utt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def utt_uniform(seed: int, utt: str, salt: str = "select") -> float:
    """A number in ``[0, 1)`` drawn from the utterance id and seed (see :func:`utt_hash`)."""
    return utt_hash(seed, utt, salt) / float(1 << 63)


def extractor_option(tree: Any, name: str) -> Any:
    """The first value of key ``name`` in a store's nested extractor description (depth
    first, e.g. ``options.frame.frame_length``), or None."""
    if isinstance(tree, dict):
        if name in tree:
            return tree[name]
        for value in tree.values():
            found = extractor_option(value, name)
            if found is not None:
                return found
    return None


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def frame_uniforms(utt_keys: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Numbers in ``[0, 1)``, one per ``(utterance key, frame index)`` pair (vectorised
    splitmix64 of the pair): per-frame random draws that do not depend on how the frames
    are split into blocks, shards or processes."""
    z = utt_keys.astype(np.uint64) ^ (frames.astype(np.uint64) * _GOLDEN)
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def store_fingerprint(store: FeatureStore) -> str:
    """SHA-256 over the store's ``meta.json`` and every shard index, in shard order.

    Identifies the exact data a model was fitted on (utterances, frame counts, features
    settings) without reading the feature values.
    """
    h = hashlib.sha256()
    h.update((store.root / "meta.json").read_bytes())
    for r in store.ranks:
        stem = shard_stem(r, store.meta.nshard)
        h.update(stem.encode())
        h.update((store.root / f"{stem}.index").read_bytes())
    return h.hexdigest()


def select_utterances(
    store: FeatureStore,
    fraction: float | None = None,
    max_frames: int | None = None,
    seed: int = 0,
) -> dict[int, np.ndarray] | None:
    """Which utterances of each shard to use: ``{shard rank: sorted utterance indices}``.

    ``fraction`` keeps each utterance with that probability (fairseq's ``learn_kmeans.py
    --percent``, also a fraction: 0.1 keeps about a tenth); ``max_frames`` keeps utterances in
    hash order while the running frame total stays within ``max_frames`` (at least one
    utterance). ``None`` for both means everything (returns ``None``).
    """
    if fraction is not None and max_frames is not None:
        raise ConfigError("give --fraction or --max-frames, not both")
    if fraction is None and max_frames is None:
        return None
    selected: dict[int, list[int]] = {r: [] for r in store.ranks}
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
        for r in store.ranks:
            for i, u in enumerate(store.shard(r).utts):
                if utt_uniform(seed, u) < fraction:
                    selected[r].append(i)
    else:
        assert max_frames is not None
        if max_frames <= 0:
            raise ConfigError(f"max_frames must be positive, got {max_frames}")
        order: list[tuple[int, int, int, int]] = []
        for r in store.ranks:
            sh = store.shard(r)
            for i, (u, c) in enumerate(zip(sh.utts, sh.counts)):
                order.append((utt_hash(seed, u), r, i, int(c)))
        order.sort()
        total = 0
        for n, (_, r, i, c) in enumerate(order):
            if n > 0 and total + c > max_frames:
                break
            selected[r].append(i)
            total += c
    return {r: np.asarray(sorted(v), dtype=np.int64) for r, v in selected.items()}


def subselect_utterances(
    store: FeatureStore, stream: StoreStream, prob: float, seed: int
) -> dict[int, np.ndarray]:
    """The utterances of ``stream`` kept with probability ``prob`` (by hash of seed and id,
    independent of ``select_utterances``' draw), as a selection for :class:`StoreStream`."""
    out: dict[int, np.ndarray] = {}
    for r in stream.ranks:
        sh = store.shard(r)
        keep = [
            i
            for i, _ in stream.utterance_indices(r)
            if utt_uniform(seed, sh.utts[i], "init-utt") < prob
        ]
        out[r] = np.asarray(keep, dtype=np.int64)
    return out


#: default block size in bytes of float32 rows: large enough for efficient reads and
#: matmuls, small enough that a few blocks in flight stay far below the data size
BLOCK_BYTES = 8 << 20


@dataclass
class Segment:
    """Part of one utterance inside a block: rows ``[start, start + count)`` of the block
    are frames ``[frame0, frame0 + count)`` of utterance ``utt``."""

    utt: str
    start: int
    count: int
    frame0: int


@dataclass
class Block:
    """A ``[rows, dim]`` float array read from the store, with its utterance segments.

    ``row0`` is the position of the block's first row in the stream (for per-frame state
    kept across passes, such as previous assignments).
    """

    rows: np.ndarray
    row0: int
    segments: list[Segment] = field(default_factory=list)


@dataclass
class _Runs:
    """The utterances a stream reads from one shard, as arrays (no Python object per
    utterance: a Libri-Light-sized store has millions of them)."""

    index: np.ndarray  # int64 [U]: position in the shard index
    offset: np.ndarray  # int64 [U]: first row in the shard file
    count: np.ndarray  # int64 [U]: frames


class _Piece(NamedTuple):
    """Frames ``[frame0, frame0 + take)`` of utterance ``utt`` (file row ``offset``), queued
    for the block being filled."""

    utt: str
    offset: int
    frame0: int
    take: int


_NO_RUNS = _Runs(*(np.empty(0, dtype=np.int64) for _ in range(3)))

#: utterances turned into Python ints at a time while reading a shard
_RUN_SLICE = 65536


class StoreStream:
    """Reads chosen utterances of chosen shards as bounded blocks, in a fixed order.

    Args:
        store: the feature store.
        ranks: which shards this process reads (default: all complete shards).
        selection: ``{rank: utterance indices}`` from :func:`select_utterances`; ``None``
            takes every utterance.
        block_frames: maximum rows per block (an utterance longer than this is split);
            default: about ``BLOCK_BYTES`` of float32 rows.
        utt_ranges: optionally restrict to utterances by global position (used by label
            sharding): ``(first, last)`` indices into the store's global utterance order.
    """

    def __init__(
        self,
        store: FeatureStore,
        ranks: Sequence[int] | None = None,
        selection: dict[int, np.ndarray] | None = None,
        block_frames: int | None = None,
        utt_ranges: tuple[int, int] | None = None,
    ) -> None:
        if block_frames is None:
            block_frames = max(256, BLOCK_BYTES // (4 * store.dim))
        if block_frames <= 0:
            raise ConfigError(f"block_frames must be positive, got {block_frames}")
        self.store = store
        self.dim = store.dim
        self.np_dtype = store.dtype
        self.block_frames = block_frames
        self.ranks = list(store.ranks if ranks is None else ranks)
        self._runs: dict[int, _Runs] = {}
        self.num_frames = 0
        self.num_utts = 0
        global_pos = 0
        all_ranks = store.ranks
        for r in all_ranks:
            sh = store.shard(r)
            n_utts = len(sh.utts)
            if r in self.ranks:
                idx = np.arange(n_utts) if selection is None else selection.get(r, np.empty(0))
                idx = np.asarray(idx, dtype=np.int64)
                if utt_ranges is not None:
                    lo, hi = utt_ranges
                    idx = idx[(idx + global_pos >= lo) & (idx + global_pos < hi)]
                runs = _Runs(idx, sh.offsets[idx], sh.counts[idx])
                self._runs[r] = runs
                self.num_frames += int(runs.count.sum())
                self.num_utts += int(idx.size)
            global_pos += n_utts

    def utterances(self) -> Iterator[tuple[str, int]]:
        """``(utt, num_frames)`` in stream order."""
        for r in self.ranks:
            utts = self.store.shard(r).utts
            for i, count, _ in self._run_slices(r):
                yield utts[i], count

    def utterance_indices(self, rank: int) -> Iterator[tuple[int, str]]:
        """``(index in the shard, utt)`` of the utterances this stream reads from ``rank``."""
        utts = self.store.shard(rank).utts
        for i, _, _ in self._run_slices(rank):
            yield i, utts[i]

    def _run_slices(self, rank: int) -> Iterator[tuple[int, int, int]]:
        """``(index, count, offset)`` of each utterance read from ``rank`` as Python ints,
        converted a slice at a time."""
        runs = self._runs.get(rank, _NO_RUNS)
        for s in range(0, runs.index.size, _RUN_SLICE):
            e = s + _RUN_SLICE
            yield from zip(
                runs.index[s:e].tolist(), runs.count[s:e].tolist(), runs.offset[s:e].tolist()
            )

    def _path(self, rank: int) -> Path:
        return self.store.root / f"{shard_stem(rank, self.store.meta.nshard)}.bin"

    def _iter_blocks(self) -> Iterator[Block]:
        row_bytes = self.dim * self.np_dtype.itemsize
        row0 = 0
        for r in self.ranks:
            if self._runs.get(r, _NO_RUNS).index.size == 0:
                continue
            utts = self.store.shard(r).utts
            with open(self._path(r), "rb", buffering=0) as fh:
                fd = fh.fileno()
                pending: list[_Piece] = []
                filled = 0
                for i, count, offset in self._run_slices(r):
                    frame0 = 0
                    while frame0 < count:
                        take = min(count - frame0, self.block_frames - filled)
                        pending.append(_Piece(utts[i], offset, frame0, take))
                        filled += take
                        frame0 += take
                        if filled == self.block_frames:
                            yield self._read(fd, pending, filled, row_bytes, row0)
                            row0 += filled
                            pending, filled = [], 0
                if pending:
                    yield self._read(fd, pending, filled, row_bytes, row0)
                    row0 += filled

    def _read(
        self,
        fd: int,
        pending: list[_Piece],
        rows: int,
        row_bytes: int,
        row0: int,
    ) -> Block:
        buf = np.empty((rows, self.dim), dtype=self.np_dtype)
        view = buf.data.cast("B")
        segments: list[Segment] = []
        pos = 0
        i = 0
        while i < len(pending):
            piece = pending[i]
            # merge reads of utterances that are adjacent in the file into one syscall
            start_row = piece.offset + piece.frame0
            end_row = start_row + piece.take
            j = i + 1
            segments.append(Segment(piece.utt, pos, piece.take, piece.frame0))
            seg_pos = pos + piece.take
            while j < len(pending) and pending[j].offset + pending[j].frame0 == end_row:
                nxt = pending[j]
                segments.append(Segment(nxt.utt, seg_pos, nxt.take, nxt.frame0))
                seg_pos += nxt.take
                end_row += nxt.take
                j += 1
            nbytes = (end_row - start_row) * row_bytes
            dest = view[pos * row_bytes : pos * row_bytes + nbytes]
            got = os.preadv(fd, [dest], start_row * row_bytes)
            while got < nbytes:  # short reads are legal; loop until done or EOF
                more = os.preadv(fd, [dest[got:]], start_row * row_bytes + got)
                if more <= 0:
                    raise OSError(f"{self.store.root}: shard file ended early (truncated?)")
                got += more
            pos = seg_pos
            i = j
        return Block(rows=buf, row0=row0, segments=segments)

    def blocks(self, prefetch: int = 2) -> Iterator[Block]:
        """Yield the blocks; with ``prefetch > 0`` a thread reads ahead that many blocks."""
        if prefetch <= 0:
            yield from self._iter_blocks()
            return
        yield from _prefetched(self._iter_blocks(), prefetch)


_DONE = object()


def _prefetched(source: Iterator[Block], depth: int) -> Iterator[Block]:
    """Run ``source`` in a thread, ``depth`` items ahead; errors re-raise in the caller."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)

    thread = threading.Thread(target=worker, name="store-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Block)
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
