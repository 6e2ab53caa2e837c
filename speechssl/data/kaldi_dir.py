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

The tables an utterance's audio and length come from (``wav.scp``, ``segments``,
``utt2dur``, ``utt2num_samples``, ``reco2dur``) are parsed line by line into a
:class:`KeyedTable`: a bad line spoils only its own key. The per-item questions
(:meth:`KaldiDataDir.audio_source`, :meth:`~KaldiDataDir.duration`,
:meth:`~KaldiDataDir.load`) raise that line's error for that item only, so a tolerant pass
skips exactly the bad items; the whole-table views (``wav_scp``, ``segments``, ``utt2dur``,
...) stay strict and raise the first bad line. Lines without a readable key (blank, not
UTF-8 in the key) cannot be attributed to an item and fail the table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from speechssl.data.audio import AudioPipeError, AudioSource, LoadOptions, SkipReport
from speechssl.data.tables import BOM, BOM_REASON, c_sort_key, read_table, write_table
from speechssl.errors import DataDirError, ItemError

if TYPE_CHECKING:
    import torch

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


@dataclass(frozen=True)
class WavEntry:
    """One ``wav.scp`` line: a recording's file, or its ``cmd |`` command."""

    value: str
    """The value as written (a path, or ``cmd |``)."""
    path: str
    """The path, or the command without its ``|``."""
    pipe: bool


def parse_wav_line(value: str, *, where: str, reco: str) -> WavEntry:
    """Parse the value of a ``wav.scp`` line (raises naming the line if there is none)."""
    path, pipe = parse_wav_entry(value)
    if not path:
        what = "no command before the '|'" if pipe else "no path/command after the key"
        raise DataDirError(reco, what, where)
    return WavEntry(value.strip(), path, pipe)


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


T = TypeVar("T")


@dataclass
class KeyedTable(Generic[T]):
    """A table parsed line by line: the good entries, and each bad line's error by key.

    A key's line that failed to parse (or a key that appears twice) is *bad*: asking for it
    raises that line's :class:`~speechssl.errors.DataDirError`; every other key is
    unaffected.
    """

    path: Path
    good: dict[str, T] = field(default_factory=dict)
    """Key -> parsed entry, file order."""
    bad: dict[str, DataDirError] = field(default_factory=dict)
    """Key -> the error of its (first) bad line."""
    order: list[str] = field(default_factory=list)
    """Every key once, in the order met (good and bad)."""
    lines: dict[str, int] = field(default_factory=dict)
    """Key -> line number of its first line."""

    def __contains__(self, key: object) -> bool:
        return key in self.good or key in self.bad

    def __len__(self) -> int:
        return len(self.order)

    def keys(self) -> list[str]:
        return list(self.order)

    def get(self, key: str) -> T:
        """The entry of ``key``; its line's DataDirError if bad; KeyError if absent."""
        if key in self.bad:
            raise self.bad[key]
        return self.good[key]

    def errors(self) -> list[DataDirError]:
        """The bad lines' errors, in line order."""
        return sorted(self.bad.values(), key=lambda e: self.lines[e.item])

    def strict(self) -> dict[str, T]:
        """All entries; raises the first bad line's error if there is one."""
        errors = self.errors()
        if errors:
            raise errors[0]
        return self.good


def read_keyed_table(path: Path, parse: Callable[[str, str, str], T]) -> KeyedTable[T]:
    """Parse ``path`` line by line with ``parse(key, value, where)``, which raises
    DataDirError for a bad value. Also bad: a repeated key (both lines), a leading UTF-8
    byte order mark, a line that is not UTF-8. A blank line, or one whose key is not
    UTF-8, names no key: it raises for the table."""
    table: KeyedTable[T] = KeyedTable(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            bom = raw.startswith(BOM)
            if bom:
                raw = raw[len(BOM) :]
            err: DataDirError | None = None
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                head = raw.split(None, 1)
                try:
                    key = head[0].decode("utf-8") if head else ""
                except UnicodeDecodeError:
                    key = ""
                if not key:
                    raise DataDirError(str(path), "line is not valid UTF-8", where) from None
                text, err = key, DataDirError(key, "line is not valid UTF-8", where)
            if not text:
                raise DataDirError(str(path), "empty line", where)
            parts = text.split(maxsplit=1)
            key = parts[0]
            value = parts[1] if len(parts) > 1 else ""
            if key in table:
                err = DataDirError(key, "duplicate key", where)
                table.good.pop(key, None)
                table.bad.setdefault(key, err)
                continue
            table.order.append(key)
            table.lines[key] = lineno
            if err is None and bom:
                err = DataDirError(key, BOM_REASON, where)
            if err is None:
                try:
                    table.good[key] = parse(key, value, where)
                    continue
                except DataDirError as exc:
                    err = exc
            table.bad[key] = err
    return table


class LoadedUtterance(NamedTuple):
    utt_id: str
    waveform: torch.Tensor
    """float32 ``[T]`` at ``sample_rate``."""
    sample_rate: int


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

    def _numbers(self, name: str, integer: bool) -> KeyedTable[float] | None:
        if not self.has(name):
            return None

        def parse(key: str, value: str, where: str) -> float:
            return _parse_number(value, where=where, key=key, integer=integer)

        return read_keyed_table(self.file(name), parse)

    # -- per-line tables (a bad line spoils only its key) --------------------------------

    @cached_property
    def wav_table(self) -> KeyedTable[WavEntry]:
        """``wav.scp`` parsed per line (required)."""
        return read_keyed_table(
            self._required("wav.scp"),
            lambda key, value, where: parse_wav_line(value, where=where, reco=key),
        )

    @cached_property
    def segment_table(self) -> KeyedTable[Segment] | None:
        """``segments`` parsed per line, or ``None`` when the dir has no ``segments`` file."""
        if not self.has("segments"):
            return None
        return read_keyed_table(
            self.file("segments"),
            lambda key, value, where: parse_segment(value, where=where, utt=key),
        )

    @cached_property
    def utt2dur_table(self) -> KeyedTable[float] | None:
        return self._numbers("utt2dur", integer=False)

    # -- whole tables (strict: the first bad line raises) ----------------------------------

    @cached_property
    def wav_scp(self) -> dict[str, str]:
        """``{recording: path or 'cmd |'}`` (raw values)."""
        return {k: e.value for k, e in self.wav_table.strict().items()}

    @cached_property
    def segments(self) -> dict[str, Segment] | None:
        """``{utt: Segment}``, or ``None`` when the dir has no ``segments`` file."""
        table = self.segment_table
        return None if table is None else table.strict()

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
        table = self.utt2dur_table
        return None if table is None else table.strict()

    @cached_property
    def utt2num_samples(self) -> dict[str, int] | None:
        table = self._numbers("utt2num_samples", integer=True)
        return None if table is None else {k: int(v) for k, v in table.strict().items()}

    @cached_property
    def reco2dur(self) -> dict[str, float] | None:
        table = self._numbers("reco2dur", integer=False)
        return None if table is None else table.strict()

    @cached_property
    def spk2gender(self) -> dict[str, str] | None:
        return self.table("spk2gender") if self.has("spk2gender") else None

    # -- what consumers ask (per item) ---------------------------------------------------

    @cached_property
    def _utt_ids(self) -> list[str]:
        if self.utt2spk is not None:
            keys: Iterable[str] = self.utt2spk
        elif self.segment_table is not None:
            keys = self.segment_table.keys()
        else:
            keys = self.wav_table.keys()
        return sorted(keys, key=c_sort_key)

    def utt_ids(self) -> list[str]:
        """Utterance ids, ``LC_ALL=C`` sorted (from utt2spk, else segments, else wav.scp)."""
        return list(self._utt_ids)

    def __len__(self) -> int:
        return len(self._utt_ids)

    def __contains__(self, utt: object) -> bool:
        if self.utt2spk is not None:
            return utt in self.utt2spk
        return utt in (self.segment_table if self.segment_table is not None else self.wav_table)

    def recording_ids(self) -> list[str]:
        return sorted(self.wav_table.keys(), key=c_sort_key)

    def segment(self, utt: str) -> Segment:
        """``utt``'s segment (raises its ``segments`` line's error if that line is bad)."""
        table = self.segment_table
        try:
            if table is None:
                raise KeyError(utt)
            return table.get(utt)
        except KeyError:
            raise DataDirError(
                utt, "utterance not in segments", str(self.file("segments"))
            ) from None

    def recording_of(self, utt: str) -> str:
        return utt if self.segment_table is None else self.segment(utt).recording

    def recording_source(self, reco: str) -> AudioSource:
        """The whole recording ``reco`` as an audio source."""
        try:
            entry = self.wav_table.get(reco)
        except KeyError:
            raise DataDirError(
                reco, "recording not in wav.scp", str(self.file("wav.scp"))
            ) from None
        if entry.pipe and not self.allow_pipes:
            raise AudioPipeError(
                reco,
                "wav.scp entry is a shell command ('cmd |'); it runs only with "
                "allow_pipes=True (--allow-pipes)",
                str(self.file("wav.scp")),
            )
        return AudioSource(path=entry.path, pipe=entry.pipe, recording=reco)

    def audio_source(self, utt: str) -> AudioSource:
        """Where ``utt``'s samples are: the file (or command), and its segment if any."""
        if self.segment_table is None:
            return self.recording_source(utt)
        seg = self.segment(utt)
        whole = self.recording_source(seg.recording)
        return AudioSource(
            path=whole.path, pipe=whole.pipe, start=seg.start, end=seg.end, recording=seg.recording
        )

    def duration(self, utt: str) -> float:
        """Seconds: from utt2dur, else the segment, else the audio header."""
        if self.utt2dur_table is not None:
            try:
                return self.utt2dur_table.get(utt)
            except KeyError:
                raise DataDirError(
                    utt, "utterance not in utt2dur", str(self.file("utt2dur"))
                ) from None
        if self.segment_table is not None:
            return self.segment(utt).duration
        return self.audio_source(utt).probe(utt=utt).duration

    def durations(self) -> dict[str, float]:
        """``{utt: seconds}`` for every utterance (see :meth:`duration`)."""
        return {u: self.duration(u) for u in self._utt_ids}

    def load(self, utt: str, opts: LoadOptions | None = None) -> tuple[torch.Tensor, int]:
        """Load ``utt`` (its ``segments`` slice, if any): ``(waveform [T], rate)``."""
        return self.audio_source(utt).load(opts, utt=utt)

    def iter_audio(
        self,
        opts: LoadOptions | None = None,
        *,
        utt_ids: Iterable[str] | None = None,
        tolerant: bool = False,
        report: SkipReport | None = None,
    ) -> Iterator[LoadedUtterance]:
        """Yield the utterances (sorted ids, or ``utt_ids``) as waveforms.

        Strict (default): the first bad utterance raises its error (an
        :class:`~speechssl.data.audio.AudioError`, or the DataDirError of its table line).
        Tolerant: bad utterances are skipped and recorded in ``report``; the caller can
        print ``report.summary()`` and rely on ``report.loaded + report.num_skipped ==
        report.seen``.
        """
        opts = opts or LoadOptions()
        if report is None:
            report = SkipReport()
        for utt in self.utt_ids() if utt_ids is None else utt_ids:
            try:
                wave, rate = self.load(utt, opts)
            except ItemError as err:
                if not tolerant:
                    raise
                report.add_skipped(err)
                continue
            report.add_loaded()
            yield LoadedUtterance(utt, wave, rate)

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


def load_utterance(
    data_dir: KaldiDataDir, utt_id: str, opts: LoadOptions | None = None
) -> tuple[torch.Tensor, int]:
    """Load one utterance of a data dir (:meth:`KaldiDataDir.load`)."""
    return data_dir.load(utt_id, opts)


def iter_audio(
    data_dir: KaldiDataDir,
    opts: LoadOptions | None = None,
    *,
    utt_ids: Iterable[str] | None = None,
    tolerant: bool = False,
    report: SkipReport | None = None,
) -> Iterator[LoadedUtterance]:
    """:meth:`KaldiDataDir.iter_audio`."""
    return data_dir.iter_audio(opts, utt_ids=utt_ids, tolerant=tolerant, report=report)


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
