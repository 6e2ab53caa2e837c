"""Kaldi data directories: lazy reading, writing, and what a consumer asks of one.

A data dir is a folder of ``key value`` tables (see :mod:`speechssl.data.tables`)::

    wav.scp        <recording> <path>            (or Kaldi's ``<cmd> |``, opt-in only)
    segments       <utt> <recording> <start> <end>   (optional; seconds)
    text           <utt> <transcript>            (optional here: SSL data is unlabeled)
    utt2spk        <utt> <speaker>
    spk2utt        <speaker> <utt> <utt> ...
    utt2dur        <utt> <seconds>
    utt2num_samples <utt> <samples>
    reco2dur       <recording> <seconds>
    spk2gender     <speaker> m|f

Without ``segments`` each ``wav.scp`` entry is one utterance (recording id == utterance
id). Relative paths in ``wav.scp`` are relative to the current directory, as in Kaldi
(recipes run from their ``egs/<corpus>/<method>`` folder); data prep here writes absolute
paths. ``cmd |`` entries run a shell command, so they are refused unless the reader is
created with ``allow_pipes=True``.

Reading is lazy: a table is parsed the first time it is asked for. Consumers trust a dir
that ``speechssl data validate`` accepted; malformed lines met here still raise
:class:`~speechssl.errors.DataDirError` naming ``file:line``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from speechssl.data.audio import AudioPipeError, AudioSource, probe
from speechssl.data.tables import c_sort_key, iter_table, read_table, write_table
from speechssl.errors import DataDirError

UTT, RECO, SPK = "utterance", "recording", "speaker"


@dataclass(frozen=True)
class TableSpec:
    """A Kaldi table file: what its keys are and how many fields a line has."""

    name: str
    key: str
    """What the key is: ``utterance``, ``recording`` or ``speaker``."""
    min_fields: int
    """Fields per line including the key."""
    max_fields: int | None
    """``None``: unbounded (free text, lists, commands)."""


#: every table file speechssl reads, validates or fixes (per-utterance / per-recording /
#: per-speaker); ``wav.scp`` is keyed by utterance when there is no ``segments`` file
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in [
        TableSpec("utt2spk", UTT, 2, 2),
        TableSpec("spk2utt", SPK, 2, None),
        TableSpec("text", UTT, 1, None),
        TableSpec("wav.scp", RECO, 2, None),
        TableSpec("segments", UTT, 4, 4),
        TableSpec("utt2dur", UTT, 2, 2),
        TableSpec("utt2num_samples", UTT, 2, 2),
        TableSpec("utt2num_frames", UTT, 2, 2),
        TableSpec("reco2dur", RECO, 2, 2),
        TableSpec("reco2file_and_channel", RECO, 3, 3),
        TableSpec("spk2gender", SPK, 2, 2),
        TableSpec("feats.scp", UTT, 2, None),
        TableSpec("cmvn.scp", SPK, 2, None),
        TableSpec("vad.scp", UTT, 2, None),
        TableSpec("utt2lang", UTT, 2, 2),
        TableSpec("utt2uniq", UTT, 2, 2),
        TableSpec("utt2warp", UTT, 2, 2),
        TableSpec("spk2warp", SPK, 2, 2),
    ]
}


#: name patterns of extra keyed tables (e.g. the bundled corpus's ``ali.phones``,
#: ``utt2keyword``, ``spk2voice``): they may cover a subset of the keys (validate checks
#: they name no unknown key, fix filters them to the kept ones, never the reverse)
EXTRA_TABLE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("utt2", UTT),
    ("text.", UTT),
    ("ali.", UTT),
    ("spk2", SPK),
    ("reco2", RECO),
)


def extra_table_kind(name: str) -> str | None:
    """``utterance`` / ``speaker`` / ``recording`` for an extra keyed table, else None."""
    if name in TABLES:
        return None
    for prefix, kind in EXTRA_TABLE_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return kind
    return None


@dataclass(frozen=True)
class Segment:
    """One ``segments`` line: a slice of a recording, in seconds."""

    recording: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def parse_wav_entry(value: str) -> tuple[str, bool]:
    """``wav.scp`` value -> ``(path_or_command, is_pipe)``; Kaldi pipes end with ``|``."""
    value = value.strip()
    if value.endswith("|"):
        return value[:-1].strip(), True
    return value, False


def parse_segment(value: str, *, where: str, utt: str) -> Segment:
    """Parse ``<recording> <start> <end>`` (the value of a ``segments`` line)."""
    parts = value.split()
    if len(parts) != 3:
        raise DataDirError(utt, f"segments line needs 4 fields, got {len(parts) + 1}", where)
    try:
        start, end = float(parts[1]), float(parts[2])
    except ValueError:
        raise DataDirError(utt, f"segment times are not numbers: {value!r}", where) from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise DataDirError(utt, f"segment needs 0 <= start < end, got {start} .. {end}", where)
    return Segment(parts[0], start, end)


def _parse_number(value: str, *, where: str, key: str, integer: bool) -> float:
    try:
        num = int(value) if integer else float(value)
    except ValueError:
        what = "an integer" if integer else "a number"
        raise DataDirError(key, f"value {value!r} is not {what}", where) from None
    if not math.isfinite(num) or num <= 0:
        raise DataDirError(key, f"value {value!r} must be positive", where)
    return num


class KaldiDataDir:
    """A Kaldi data directory, read lazily.

    Args:
        path: the directory.
        allow_pipes: allow ``wav.scp`` entries of the form ``cmd |`` (they run ``cmd``
            through the shell when audio is loaded).
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_pipes: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataDirError(str(self.path), "data directory does not exist")
        self.allow_pipes = allow_pipes

    def __repr__(self) -> str:
        return f"KaldiDataDir({str(self.path)!r})"

    # -- files ---------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).is_file()

    def _required(self, name: str) -> Path:
        p = self.file(name)
        if not p.is_file():
            raise DataDirError(str(p), f"data directory has no {name}")
        return p

    def table(self, name: str) -> dict[str, str]:
        """Any table file as ``{key: value}`` (duplicate keys and blank lines are errors)."""
        return read_table(self._required(name))

    def _optional_numbers(self, name: str, integer: bool) -> dict[str, float] | None:
        if not self.has(name):
            return None
        p = self.file(name)
        out: dict[str, float] = {}
        for lineno, key, value in iter_table(p):
            where = f"{p}:{lineno}"
            if key in out:
                raise DataDirError(key, "duplicate key", where)
            out[key] = _parse_number(value, where=where, key=key, integer=integer)
        return out

    @cached_property
    def wav_scp(self) -> dict[str, str]:
        """``{recording: path or 'cmd |'}`` (raw values)."""
        return self.table("wav.scp")

    @cached_property
    def segments(self) -> dict[str, Segment] | None:
        """``{utt: Segment}``, or ``None`` when the dir has no ``segments`` file."""
        if not self.has("segments"):
            return None
        p = self.file("segments")
        out: dict[str, Segment] = {}
        for lineno, key, value in iter_table(p):
            where = f"{p}:{lineno}"
            if key in out:
                raise DataDirError(key, "duplicate key", where)
            out[key] = parse_segment(value, where=where, utt=key)
        return out

    @cached_property
    def text(self) -> dict[str, str] | None:
        return self.table("text") if self.has("text") else None

    @cached_property
    def utt2spk(self) -> dict[str, str] | None:
        return self.table("utt2spk") if self.has("utt2spk") else None

    @cached_property
    def spk2utt(self) -> dict[str, list[str]]:
        """From the ``spk2utt`` file if present, else derived from ``utt2spk``."""
        if self.has("spk2utt"):
            return {k: v.split() for k, v in self.table("spk2utt").items()}
        return spk2utt_from_utt2spk(self.utt2spk or {u: u for u in self.utt_ids()})

    @cached_property
    def utt2dur(self) -> dict[str, float] | None:
        return self._optional_numbers("utt2dur", integer=False)

    @cached_property
    def utt2num_samples(self) -> dict[str, int] | None:
        nums = self._optional_numbers("utt2num_samples", integer=True)
        return None if nums is None else {k: int(v) for k, v in nums.items()}

    @cached_property
    def reco2dur(self) -> dict[str, float] | None:
        return self._optional_numbers("reco2dur", integer=False)

    @cached_property
    def spk2gender(self) -> dict[str, str] | None:
        return self.table("spk2gender") if self.has("spk2gender") else None

    # -- what consumers ask --------------------------------------------------------

    @cached_property
    def _utt_ids(self) -> list[str]:
        if self.utt2spk is not None:
            keys: Iterable[str] = self.utt2spk
        elif self.segments is not None:
            keys = self.segments
        else:
            keys = self.wav_scp
        return sorted(keys, key=c_sort_key)

    def utt_ids(self) -> list[str]:
        """Utterance ids, ``LC_ALL=C`` sorted (from utt2spk, else segments, else wav.scp)."""
        return list(self._utt_ids)

    def __len__(self) -> int:
        return len(self._utt_ids)

    def __contains__(self, utt: object) -> bool:
        if self.utt2spk is not None:
            return utt in self.utt2spk
        return utt in (self.segments if self.segments is not None else self.wav_scp)

    def recording_ids(self) -> list[str]:
        return sorted(self.wav_scp, key=c_sort_key)

    def recording_of(self, utt: str) -> str:
        if self.segments is None:
            return utt
        try:
            return self.segments[utt].recording
        except KeyError:
            raise DataDirError(
                utt, "utterance not in segments", str(self.file("segments"))
            ) from None

    def recording_source(self, reco: str) -> AudioSource:
        """The whole recording ``reco`` as an audio source."""
        try:
            value = self.wav_scp[reco]
        except KeyError:
            raise DataDirError(
                reco, "recording not in wav.scp", str(self.file("wav.scp"))
            ) from None
        path, pipe = parse_wav_entry(value)
        if pipe and not self.allow_pipes:
            raise AudioPipeError(
                reco,
                "wav.scp entry is a shell command ('cmd |'); it runs only with "
                "allow_pipes=True (--allow-pipes)",
                str(self.file("wav.scp")),
            )
        return AudioSource(path=path, pipe=pipe, recording=reco)

    def audio_source(self, utt: str) -> AudioSource:
        """Where ``utt``'s samples are: the file (or command), and its segment if any."""
        if self.segments is None:
            return self.recording_source(utt)
        try:
            seg = self.segments[utt]
        except KeyError:
            raise DataDirError(
                utt, "utterance not in segments", str(self.file("segments"))
            ) from None
        whole = self.recording_source(seg.recording)
        return AudioSource(
            path=whole.path, pipe=whole.pipe, start=seg.start, end=seg.end, recording=seg.recording
        )

    def duration(self, utt: str) -> float:
        """Seconds: from utt2dur, else the segment, else the audio header."""
        if self.utt2dur is not None:
            try:
                return self.utt2dur[utt]
            except KeyError:
                raise DataDirError(
                    utt, "utterance not in utt2dur", str(self.file("utt2dur"))
                ) from None
        if self.segments is not None:
            try:
                return self.segments[utt].duration
            except KeyError:
                raise DataDirError(
                    utt, "utterance not in segments", str(self.file("segments"))
                ) from None
        return probe(self.audio_source(utt), utt=utt).duration

    def durations(self) -> dict[str, float]:
        """``{utt: seconds}`` for every utterance (see :meth:`duration`)."""
        return {u: self.duration(u) for u in self._utt_ids}

    def speaker(self, utt: str) -> str:
        """The utterance's speaker (the utterance itself when there is no utt2spk)."""
        if self.utt2spk is None:
            return utt
        try:
            return self.utt2spk[utt]
        except KeyError:
            raise DataDirError(utt, "utterance not in utt2spk", str(self.file("utt2spk"))) from None

    def speakers(self) -> list[str]:
        """Speaker ids, ``LC_ALL=C`` sorted."""
        return sorted(self.spk2utt, key=c_sort_key)


def spk2utt_from_utt2spk(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert utt2spk; speakers and their utterance lists ``LC_ALL=C`` sorted."""
    out: dict[str, list[str]] = {}
    for utt, spk in utt2spk.items():
        out.setdefault(spk, []).append(utt)
    return {spk: sorted(out[spk], key=c_sort_key) for spk in sorted(out, key=c_sort_key)}


def format_seconds(seconds: float) -> str:
    """Compact seconds for utt2dur/segments/reco2dur (0.1 ms resolution, no trailing zeros)."""
    text = f"{seconds:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def write_data_dir(
    path: str | os.PathLike[str],
    *,
    wav_scp: Mapping[str, str],
    utt2spk: Mapping[str, str],
    text: Mapping[str, str] | None = None,
    segments: Mapping[str, Segment] | None = None,
    utt2dur: Mapping[str, float] | None = None,
    utt2num_samples: Mapping[str, int] | None = None,
    reco2dur: Mapping[str, float] | None = None,
    spk2gender: Mapping[str, str] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> KaldiDataDir:
    """Write a data dir (``spk2utt`` derived from ``utt2spk``), each file atomically.

    ``wav_scp`` values are written as given (a path, or ``cmd |``). ``extra`` writes more
    tables by file name. Files of this set that a previous write left and this one does not
    produce are removed, so the dir never mixes two generations.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "wav.scp", wav_scp)
    write_table(out / "utt2spk", utt2spk)
    write_table(
        out / "spk2utt", {spk: " ".join(u) for spk, u in spk2utt_from_utt2spk(utt2spk).items()}
    )
    optional: dict[str, Mapping[str, str] | None] = {
        "text": text,
        "segments": None
        if segments is None
        else {
            u: f"{s.recording} {format_seconds(s.start)} {format_seconds(s.end)}"
            for u, s in segments.items()
        },
        "utt2dur": None if utt2dur is None else {u: format_seconds(d) for u, d in utt2dur.items()},
        "utt2num_samples": None
        if utt2num_samples is None
        else {u: str(int(n)) for u, n in utt2num_samples.items()},
        "reco2dur": None
        if reco2dur is None
        else {r: format_seconds(d) for r, d in reco2dur.items()},
        "spk2gender": spk2gender,
    }
    for name, table in optional.items():
        if table is not None:
            write_table(out / name, table)
        elif (out / name).exists():
            (out / name).unlink()
    for name, table in (extra or {}).items():
        write_table(out / name, table)
    return KaldiDataDir(out)
