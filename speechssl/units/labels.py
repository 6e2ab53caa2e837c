"""Unit labels: the label directory format, writing labels keyed by utterance, loading them
with alignment checks (:mod:`speechssl.units.apply` makes them from a k-means model).

Layout of a label directory::

    meta.json                        format, label_rate, frame_window_s, k, nshard, dtype,
                                     source (feature store, kind, layer, data hash),
                                     kmeans (model path, sha256), source_skipped
    shard-00000-of-00002.bin         labels of all utterances of the shard, concatenated
                                     (uint16, or uint32 when k > 65536), little endian
    shard-00000-of-00002.index       "utt offset count" per utterance
    shard-00000-of-00002.txt         "utt 3 3 17 ..." per utterance (for inspection/tools)
    shard-00000-of-00002.done.json   written last: utterances, frames, bytes

Label shard ``r`` of ``N`` of a feature store holds the utterances at positions
``shard_range(U, N, r) = [round(U*r/N), round(U*(r+1)/N))`` of the store's global order (its
shards in order, each in index order), so any ``N`` works with any store sharding and ranks
can run on different machines. Labels made straight from audio use the dump's shards of the
data dir's sorted utterance list.

**Length convention.** A label stream with rate ``R`` (frames/s) whose frames are computed
from windows of ``W`` seconds shifted by ``1/R`` (``W = frame_window_s`` in ``meta.json``;
Kaldi's 25 ms MFCC/fbank with ``snip_edges``, and the 400-sample receptive field of the
HuBERT/wav2vec 2.0 CNN at 16 kHz, both have ``W = 0.025``) is expected to hold
``floor((duration - W) * R) + 1`` labels for an utterance of ``duration`` seconds (0 if the
utterance is shorter than ``W``); with ``W = 0`` the expectation is ``round(duration * R)``.
An utterance passes if its label count is within ``tolerance`` frames of that. Frame ``i``
is centred at ``i / R + W / 2`` seconds; reports use that to align labels to other streams.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.errors import LabelError
from speechssl.features.store import FeatureStore, shard_stem
from speechssl.units.stream import extractor_option
from speechssl.utils.atomic import atomic_write_json

log = logging.getLogger(__name__)

LABELS_FORMAT = "speechssl-labels/1"
_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
#: frame window of Kaldi's default 25 ms analysis window (and the HuBERT/wav2vec 2.0 CNN)
DEFAULT_FRAME_WINDOW_S = 0.025


def label_dtype(k: int) -> str:
    """The on-disk dtype of labels of a k-means model with ``k`` clusters."""
    return "uint16" if k <= 65536 else "uint32"


def label_itemsize(dtype: str) -> int:
    return int(_DTYPES[dtype].itemsize)


def expected_num_frames(duration: float, label_rate: float, frame_window_s: float) -> float:
    """Number of labels an utterance of ``duration`` seconds should have (module doc)."""
    if frame_window_s <= 0:
        return float(round(duration * label_rate))
    if duration < frame_window_s:
        return 0.0
    # epsilon: (0.045 - 0.025) * 100 is 1.9999999999999998 in floating point, not 2
    return float(math.floor((duration - frame_window_s) * label_rate + 1e-6) + 1)


def frame_window_from_store(store: FeatureStore) -> float:
    """The analysis window of a store's frames (see :func:`frame_window_from_extractor`)."""
    return frame_window_from_extractor(store.meta.extractor)


def frame_window_from_extractor(described: Mapping[str, Any]) -> float:
    """The analysis window of an extractor's frames, from its description.

    Looks (at any depth, e.g. ``options.frame``) for an explicit ``frame_window_s``, else
    Kaldi's ``snip_edges`` (false: Kaldi pads, so frames count as if the window were 0)
    and ``frame_length`` in ms; falls back to 25 ms (Kaldi's default window, and the
    receptive field of the 20 ms CNN front ends at 16 kHz).
    """
    explicit = extractor_option(described, "frame_window_s")
    if explicit is not None:
        return float(explicit)
    if extractor_option(described, "snip_edges") is False:
        return 0.0
    length_ms = extractor_option(described, "frame_length")
    if length_ms is not None:
        return float(length_ms) / 1000.0
    return DEFAULT_FRAME_WINDOW_S


@dataclass
class LabelsMeta:
    """Contents of a label directory's ``meta.json``."""

    label_rate: float
    k: int
    nshard: int
    dtype: str
    frame_window_s: float = DEFAULT_FRAME_WINDOW_S
    source: dict[str, Any] = field(default_factory=dict)
    kmeans: dict[str, Any] = field(default_factory=dict)
    source_skipped: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": LABELS_FORMAT,
            "label_rate": self.label_rate,
            "frame_window_s": self.frame_window_s,
            "k": self.k,
            "nshard": self.nshard,
            "dtype": self.dtype,
            "source": self.source,
            "kmeans": self.kmeans,
            "source_skipped": self.source_skipped,
        }

    @staticmethod
    def read(label_dir: str | os.PathLike[str]) -> LabelsMeta:
        path = Path(label_dir) / "meta.json"
        if not path.exists():
            raise LabelError(str(label_dir), "no meta.json (not a label directory, or unfinished)")
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise LabelError(str(path), f"corrupt meta.json: {exc}") from None
        if obj.get("format") != LABELS_FORMAT:
            raise LabelError(str(path), f"format {obj.get('format')!r}, expected {LABELS_FORMAT}")
        if obj.get("dtype") not in _DTYPES:
            raise LabelError(str(path), f"unsupported dtype {obj.get('dtype')!r}")
        return LabelsMeta(
            label_rate=float(obj["label_rate"]),
            k=int(obj["k"]),
            nshard=int(obj["nshard"]),
            dtype=str(obj["dtype"]),
            frame_window_s=float(obj.get("frame_window_s", DEFAULT_FRAME_WINDOW_S)),
            source=dict(obj.get("source", {})),
            kmeans=dict(obj.get("kmeans", {})),
            source_skipped=list(obj.get("source_skipped", [])),
        )


def _shard_paths(root: Path, rank: int, nshard: int) -> dict[str, Path]:
    stem = shard_stem(rank, nshard)
    return {ext: root / f"{stem}.{ext}" for ext in ("bin", "index", "txt", "done.json")}


def label_shard_is_complete(
    label_dir: str | os.PathLike[str], rank: int, nshard: int, itemsize: int
) -> bool:
    """True iff the shard's ``done.json`` exists and the files have the recorded sizes."""
    paths = _shard_paths(Path(label_dir), rank, nshard)
    if not all(p.exists() for p in paths.values()):
        return False
    try:
        info = json.loads(paths["done.json"].read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(paths["bin"].stat().st_size == int(info.get("frames", -1)) * itemsize)


def write_labels_meta(
    label_dir: str | os.PathLike[str], meta: LabelsMeta, overwrite: bool = False
) -> None:
    """Write ``meta.json``; an existing one must agree unless ``overwrite``."""
    path = Path(label_dir) / "meta.json"
    if path.exists() and not overwrite:
        old = json.loads(path.read_text())
        if old != meta.to_json():
            diff = sorted(
                k for k in set(old) | set(meta.to_json()) if old.get(k) != meta.to_json().get(k)
            )
            raise LabelError(
                str(path),
                f"exists with different settings ({', '.join(diff)}); use a new output "
                "directory or --overwrite",
            )
        return
    atomic_write_json(path, meta.to_json())


class LabelShardWriter:
    """Writes one label shard: ``.bin``/``.index``/``.txt`` under temporary names, renamed
    on :meth:`close`, then ``done.json``; a crash leaves the shard incomplete."""

    def __init__(
        self, label_dir: str | os.PathLike[str], rank: int, nshard: int, dtype: str
    ) -> None:
        self.root = Path(label_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.np_dtype = _DTYPES[dtype]
        self.final = _shard_paths(self.root, rank, nshard)
        self.final["done.json"].unlink(missing_ok=True)
        suffix = f".tmp-{os.getpid()}"
        self.tmp = {
            e: p.with_name(f".{p.name}{suffix}") for e, p in self.final.items() if e != "done.json"
        }
        self._bin = open(self.tmp["bin"], "wb")  # noqa: SIM115 - closed in close()/abort()
        self._idx = open(self.tmp["index"], "w", encoding="utf-8")  # noqa: SIM115
        self._txt = open(self.tmp["txt"], "w", encoding="utf-8")  # noqa: SIM115
        self.frames = 0
        self.utts = 0
        self._seen: set[str] = set()
        self._closed = False

    def has(self, utt: str) -> bool:
        return utt in self._seen

    def add(self, utt: str, labels: np.ndarray) -> None:
        if utt in self._seen:
            raise LabelError(utt, "labelled twice in one shard")
        self._seen.add(utt)
        arr = np.ascontiguousarray(labels, dtype=self.np_dtype)
        self._bin.write(arr.tobytes())
        self._idx.write(f"{utt} {self.frames} {arr.shape[0]}\n")
        self._txt.write(
            utt + ("" if arr.size == 0 else " " + " ".join(map(str, arr.tolist()))) + "\n"
        )
        self.frames += int(arr.shape[0])
        self.utts += 1

    def close(self, extra: dict[str, Any] | None = None) -> None:
        if self._closed:
            return
        for fh in (self._bin, self._idx, self._txt):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for ext, tmp in self.tmp.items():
            os.replace(tmp, self.final[ext])
        info = {"utterances": self.utts, "frames": self.frames, **(extra or {})}
        atomic_write_json(self.final["done.json"], info)
        self._closed = True

    def abort(self) -> None:
        if self._closed:
            return
        for fh in (self._bin, self._idx, self._txt):
            fh.close()
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)
        self._closed = True


class UnitLabels(Mapping[str, np.ndarray]):
    """Labels of a label directory, by utterance (read-only memory-mapped arrays).

    Build with :meth:`load`, which checks completeness, value range and (given a data dir)
    every utterance's label count against its duration.

    Attributes:
        meta: the directory's :class:`LabelsMeta`.
        dump_skipped: ``{utt, reason}`` of utterances whose features were never computed
            (skipped by the feature dump), so they have no labels.
        extra: utterances that have labels but are not in the data dir (reported, ignored).
        skipped: ``(utt, reason)`` of utterances dropped in tolerant mode.
    """

    def __init__(self, root: Path, meta: LabelsMeta, arrays: dict[str, np.ndarray]) -> None:
        self.root = root
        self.meta = meta
        self._arrays = arrays
        self.extra: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.dump_skipped: list[dict[str, str]] = list(meta.source_skipped)

    @property
    def label_rate(self) -> float:
        return self.meta.label_rate

    @property
    def k(self) -> int:
        return self.meta.k

    def __getitem__(self, utt: str) -> np.ndarray:
        try:
            return self._arrays[utt]
        except KeyError:
            raise LabelError(utt, f"no labels in {self.root}") from None

    def __contains__(self, utt: object) -> bool:
        return utt in self._arrays

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    @property
    def num_frames(self) -> int:
        return int(sum(a.shape[0] for a in self._arrays.values()))

    @classmethod
    def load(
        cls,
        label_dir: str | os.PathLike[str],
        data_dir: str | os.PathLike[str] | None = None,
        tolerance: float = 2.0,
        label_rate: float | None = None,
        k: int | None = None,
        tolerant: bool = False,
    ) -> UnitLabels:
        """Load and check labels.

        Args:
            label_dir: directory written by ``speechssl kmeans apply``.
            data_dir: Kaldi data dir the labels must cover; durations come from ``utt2dur``,
                else ``segments``, else the audio headers.
                Every utterance of it must have labels whose count is within ``tolerance``
                frames of the expected count (module doc); utterances with labels but not in
                the data dir are listed in ``extra`` and left out.
            tolerance: allowed difference in frames.
            label_rate, k: if given, must equal the directory's (the consumer's expectation).
            tolerant: drop bad utterances (recorded in ``skipped``) instead of raising.

        Raises:
            LabelError naming the utterance (or file) and the reason.
        """
        root = Path(label_dir)
        meta = LabelsMeta.read(root)
        if label_rate is not None and not math.isclose(label_rate, meta.label_rate):
            raise LabelError(
                str(root), f"label rate {meta.label_rate} Hz, but {label_rate} Hz expected"
            )
        if k is not None and k != meta.k:
            raise LabelError(str(root), f"labels have k={meta.k}, but k={k} expected")
        np_dtype = _DTYPES[meta.dtype]
        arrays: dict[str, np.ndarray] = {}
        dump_skipped: list[dict[str, str]] = list(meta.source_skipped)
        for r in range(meta.nshard):
            stem = shard_stem(r, meta.nshard)
            if not label_shard_is_complete(root, r, meta.nshard, np_dtype.itemsize):
                raise LabelError(
                    f"{root}/{stem}",
                    f"label shard missing or incomplete; run `speechssl kmeans apply ... --nshard {meta.nshard} --rank {r}`",
                )
            paths = _shard_paths(root, r, meta.nshard)
            info = json.loads(paths["done.json"].read_text())
            # utterances the feature computation skipped (labels applied straight to audio)
            dump_skipped.extend(info.get("skipped", []))
            frames = int(info["frames"])
            data = (
                np.memmap(paths["bin"], dtype=np_dtype, mode="r", shape=(frames,))
                if frames
                else np.empty(0, dtype=np_dtype)
            )
            if frames and int(data.max()) >= meta.k:
                raise LabelError(str(paths["bin"]), f"label value {int(data.max())} >= k={meta.k}")
            with open(paths["index"], encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, start=1):
                    parts = line.split()
                    if len(parts) != 3:
                        raise LabelError(
                            str(paths["index"]),
                            "malformed index line",
                            where=f"{paths['index']}:{lineno}",
                        )
                    utt, off, cnt = parts[0], int(parts[1]), int(parts[2])
                    if utt in arrays:
                        raise LabelError(
                            utt, "labelled in two shards", where=f"{paths['index']}:{lineno}"
                        )
                    if off + cnt > frames:
                        raise LabelError(
                            utt,
                            "index points past the end of the label file",
                            where=f"{paths['index']}:{lineno}",
                        )
                    arrays[utt] = data[off : off + cnt]
        labels = cls(root, meta, arrays)
        labels.dump_skipped = dump_skipped
        if data_dir is not None:
            labels._check_against(Path(data_dir), tolerance, tolerant)
        return labels

    def _check_against(self, data_dir: Path, tolerance: float, tolerant: bool) -> None:
        # utt2dur when present, else segments, else audio headers (KaldiDataDir's rule)
        durations = KaldiDataDir(data_dir).durations()
        skipped_at_dump = {s["utt"]: s.get("reason", "") for s in self.dump_skipped}
        problems: list[tuple[str, str]] = []
        kept: dict[str, np.ndarray] = {}
        for utt, dur in durations.items():
            arr = self._arrays.get(utt)
            if arr is None:
                why = (
                    f" (the feature dump skipped it: {skipped_at_dump[utt]})"
                    if utt in skipped_at_dump
                    else ""
                )
                problems.append((utt, f"in {data_dir} but has no labels in {self.root}{why}"))
                continue
            expected = expected_num_frames(dur, self.meta.label_rate, self.meta.frame_window_s)
            if abs(arr.shape[0] - expected) > tolerance:
                problems.append(
                    (
                        utt,
                        f"{arr.shape[0]} labels, but {dur:g} s at {self.meta.label_rate:g} Hz "
                        f"(window {self.meta.frame_window_s:g} s) gives {expected:g} "
                        f"(off by {arr.shape[0] - expected:+g}, tolerance {tolerance:g})",
                    )
                )
                continue
            kept[utt] = arr
        self.extra = sorted(u for u in self._arrays if u not in durations)
        if self.extra:
            log.warning(
                "%d utterance(s) have labels in %s but are not in %s (ignored): %s%s",
                len(self.extra), self.root, data_dir, ", ".join(self.extra[:5]),
                " ..." if len(self.extra) > 5 else "",
            )  # fmt: skip
        if problems:
            if not tolerant:
                utt, reason = problems[0]
                more = ""
                if len(problems) > 1:
                    names = ", ".join(u for u, _ in problems[1:6])
                    more = f" [and {len(problems) - 1} more bad utterance(s): {names}{' ...' if len(problems) > 6 else ''}]"
                raise LabelError(utt, reason + more)
            self.skipped = problems
            log.warning("skipped %d utterance(s) with missing or misaligned labels", len(problems))
        self._arrays = kept
