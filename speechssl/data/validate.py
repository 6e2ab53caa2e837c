"""``speechssl data validate``: every check of Kaldi's ``validate_data_dir.sh``, and audio.

Text checks (every level), as in Kaldi: each table ends lines with ``\\n`` (no blank lines,
no CR), keys are ``LC_ALL=C`` sorted and unique, lines have the right number of fields;
``utt2spk`` and ``spk2utt`` exist, agree, and ``utt2spk`` is sorted by speaker too; every
per-utterance file holds the same utterances as ``utt2spk``; ``segments`` lines are
``utt reco start end`` with ``0 <= start < end``, their recordings are exactly those of
``wav.scp`` (and of ``reco2dur`` / ``reco2file_and_channel``); ``text`` is UTF-8 without CR,
unusual whitespace, control characters or the reserved symbols ``<s> </s> <eps> #0 #1 ...``;
``wav.scp`` has no ``~`` paths; ``utt2dur`` / ``reco2dur`` are positive,
``utt2num_samples`` / ``utt2num_frames`` positive integers, ``spk2gender`` is ``m``/``f``,
``utt2warp`` / ``spk2warp`` in (0.5, 1.5), ``reco2file_and_channel`` channels ``A``/``B``;
speaker files cover exactly the speakers of ``spk2utt``. Beyond Kaldi: ``utt2dur`` agrees
with ``segments`` and ``reco2dur``, segments end inside ``reco2dur``, shell-command
entries need ``--allow-pipes``.

Audio checks (default level, headers only; sampled on big dirs, parallel with ``nj``): each
recording exists, decodes, is not empty or truncated, its sample rate (against the expected
one, or mixed rates), channel count, and duration against ``reco2dur`` / ``utt2dur`` /
``utt2num_samples`` and the segments cut from it. ``strict`` decodes every recording
fully and also finds NaN/inf samples and all-zero recordings or segments.

Memory stays bounded on million-utterance dirs: tables are streamed, key lists are compared
through digests of the sorted keys (a merge of the two files runs only when they differ),
``utt2spk``/``spk2utt`` agreement through an order-free hash of the pairs.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import multiprocessing
import operator
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.kaldi_dir import RECO, SPK, TABLES, UTT, extra_table_kind, parse_wav_entry
from speechssl.errors import ConfigError, DataDirError

ERROR, WARNING = "error", "warning"
LEVELS = ("fast", "default", "strict")

#: words Kaldi reserves in a lexicon/LM: sentence boundaries, epsilon, disambiguation symbols
_ILLEGAL_WORD = re.compile(r"^(?:<s>|</s>|<eps>|#\d+)$")
#: whitespace other than space and tab (Kaldi splits on ASCII blanks only)
_ODD_SPACE = re.compile(r"[^\S \t]")
#: control characters (tab allowed); Kaldi's "non-printable" check
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
#: the same two checks over a block of lines (newlines allowed)
_PLAIN_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n"
_ODD_SPACE_BLOCK = re.compile(r"[^\S \t\n]")
_CONTROL_BLOCK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: a reserved word anywhere in a block (a hit sends the block through the per-row check)
_ILLEGAL_BLOCK = re.compile(r"(?:^|[ \t])(?:<s>|</s>|<eps>|#\d+)(?=[ \t]|$)", re.M)


@dataclass(kw_only=True)
class ValidateOptions:
    """What ``validate`` checks and how hard."""

    level: str = "default"
    """``fast`` (text files only), ``default`` (plus audio headers), ``strict`` (decode all)."""
    nj: int = 1
    """Processes for the audio checks."""
    audio_sample: int | None = None
    """Recordings whose audio is checked; ``None``: 10000 at ``default``, all at ``strict``;
    0: all."""
    seed: int = 0
    """Seed of the audio sample."""
    sample_rate: int | None = None
    """Expected sample rate; other rates are errors (``None``: mixed rates are a warning)."""
    allow_pipes: bool = False
    """Accept ``cmd |`` entries in wav.scp (the audio checks then run them)."""
    require_text: bool = False
    """A missing ``text`` file is an error (SSL data dirs need none)."""
    spk_sort: bool = True
    """utt2spk not sorted by speaker is an error (Kaldi's rule); false makes it a warning."""
    non_print: bool = False
    """Allow control characters in text (Kaldi's ``--non-print``)."""
    duration_tolerance: float = 0.02
    """Seconds two duration sources (utt2dur, segments, reco2dur, header) may disagree."""
    segment_overshoot: float = 0.05
    """Seconds a segment may end past its recording before it is an error."""
    keep_per_code: int = 100
    """Problems kept (for printing) per kind and file; the rest are only counted."""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.nj < 1:
            raise ConfigError(f"nj must be >= 1, got {self.nj}")
        if self.audio_sample is not None and self.audio_sample < 0:
            raise ConfigError(f"audio_sample must be >= 0, got {self.audio_sample}")


@dataclass(frozen=True)
class Problem:
    """One finding: ``file:line: key: reason``."""

    severity: str
    code: str
    file: str
    line: int | None
    key: str | None
    reason: str

    def format(self) -> str:
        loc = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.key}:" if self.key is not None else ""
        return f"{self.severity}: {loc}:{key} {self.reason} [{self.code}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "code": self.code,
            "file": self.file,
            "line": self.line,
            "key": self.key,
            "reason": self.reason,
        }


@dataclass
class ValidationReport:
    """All problems found (the first ``keep_per_code`` of each kind kept, all counted)."""

    data_dir: str
    keep_per_code: int = 100
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        severity: str,
        code: str,
        file: str,
        line: int | None,
        key: str | None,
        reason: str,
    ) -> None:
        group = (severity, code, file)
        self.counts[group] += 1
        if self.keep_per_code <= 0 or self.counts[group] <= self.keep_per_code:
            self.problems.append(Problem(severity, code, file, line, key, reason))

    def error(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.add(ERROR, code, file, line, key, reason)

    def warning(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.add(WARNING, code, file, line, key, reason)

    @property
    def num_errors(self) -> int:
        return sum(n for (sev, _, _), n in self.counts.items() if sev == ERROR)

    @property
    def num_warnings(self) -> int:
        return sum(n for (sev, _, _), n in self.counts.items() if sev == WARNING)

    @property
    def ok(self) -> bool:
        return self.num_errors == 0

    def codes(self, severity: str | None = None) -> set[str]:
        """Kinds of problem found (optionally of one severity)."""
        return {c for (sev, c, _) in self.counts if severity in (None, sev)}

    def lines(self, max_per_code: int = 20) -> list[str]:
        """Printable lines: problems (``max_per_code`` per kind and file), then omissions."""
        shown: Counter[tuple[str, str, str]] = Counter()
        out: list[str] = []
        for p in self.problems:
            group = (p.severity, p.code, p.file)
            shown[group] += 1
            if max_per_code <= 0 or shown[group] <= max_per_code:
                out.append(p.format())
        for group, total in self.counts.items():
            printed = min(total, max_per_code) if max_per_code > 0 else total
            if total > printed:
                sev, code, file = group
                out.append(f"{sev}: {file}: ... and {total - printed} more [{code}]")
        return out

    def summary(self) -> str:
        s = self.stats
        what = (
            f"{s.get('utterances', 0)} utterances, {s.get('recordings', 0)} recordings, "
            f"{s.get('speakers', 0)} speakers"
        )
        verdict = "OK" if self.ok else f"{self.num_errors} errors"
        return f"validate {self.data_dir}: {verdict}, {self.num_warnings} warnings ({what})"

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "ok": self.ok,
            "errors": self.num_errors,
            "warnings": self.num_warnings,
            "counts": [
                {"severity": s, "code": c, "file": f, "count": n}
                for (s, c, f), n in sorted(self.counts.items())
            ],
            "problems": [p.to_json() for p in self.problems],
            "stats": self.stats,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------
# streaming table scan


@dataclass
class TableScan:
    """What one pass over a table found."""

    name: str
    lines: int = 0
    sorted_ok: bool = True
    unique_ok: bool = True
    digest: str = ""
    """blake2b of the keys in file order (equal digests of two sorted, unique tables mean
    equal key sets)."""
    prev: str | None = None
    """Last key seen (while scanning)."""

    @property
    def orderly(self) -> bool:
        return self.sorted_ok and self.unique_ok


RowHook = Callable[[int, str, list[str], str], None]
"""Called for each well-formed line: ``(lineno, key, fields_after_key, line_text)``."""
BlockHook = Callable[[int, list[list[str]], list[str], str, bool], bool]
"""Called for a clean block: ``(lines_before, rows, lines, block_text, plain_ascii)``;
returns False (having changed nothing) to have the row hook check each row and report."""

#: bytes per block of lines: big enough to amortise the per-block work, small enough that
#: the decoded rows stay a few MB (peak memory does not grow with the table)
_BLOCK_BYTES = 1 << 19


def _iter_blocks(path: Path) -> Iterator[list[bytes]]:
    with open(path, "rb") as fh:
        while True:
            block = fh.readlines(_BLOCK_BYTES)
            if not block:
                return
            yield block


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        lineno = 0
        while True:
            chunk = fh.readlines(1 << 20)
            if not chunk:
                return
            for raw in chunk:
                lineno += 1
                yield lineno, raw


def iter_rows(
    path: Path,
    *,
    only_lines: set[int] | None = None,
    only_values: set[bytes] | None = None,
    field: int = 0,
) -> Iterator[tuple[int, str, list[str]]]:
    """``(lineno, key, fields_after_key)`` of the lines that decode and are not blank.

    ``only_lines`` keeps those line numbers; ``only_values`` keeps lines whose ``field``-th
    field (0: the key) is one of them. Other lines are skipped without being decoded.
    """
    for lineno, raw in _iter_lines(path):
        if only_lines is not None and lineno not in only_lines:
            continue
        if only_values is not None:
            parts = raw.split(None, field + 1)
            if len(parts) <= field or parts[field] not in only_values:
                continue
        try:
            fields = raw.decode("utf-8").split()
        except UnicodeDecodeError:
            continue
        if fields:
            yield lineno, fields[0], fields[1:]


class _Validator:
    def __init__(self, path: Path, opts: ValidateOptions) -> None:
        self.dir = path
        self.opts = opts
        self.report = ValidationReport(str(path), keep_per_code=opts.keep_per_code)
        self.scans: dict[str, TableScan] = {}

    # -- helpers -------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return (self.dir / name).is_file()

    def err(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.report.error(code, file, line, key, reason)

    def warn(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.report.warning(code, file, line, key, reason)

    def scan(
        self, name: str, hook: RowHook | None = None, block_hook: BlockHook | None = None
    ) -> TableScan | None:
        """One streaming pass over a table: format, order, uniqueness, key digest, hooks.

        Lines come in blocks. A block that is clean (UTF-8, no CR, no odd whitespace, right
        field counts, keys strictly increasing) is checked with whole-block operations and
        handed to ``block_hook``, which returns False to have ``hook`` run per row instead;
        any other block goes line by line so each problem is reported with its line.
        """
        path = self.dir / name
        if not path.is_file():
            return None
        spec = TABLES.get(name)
        min_f = spec.min_fields if spec else 1
        max_f = spec.max_fields if spec else None
        scan = TableScan(name)
        digest = hashlib.blake2b(digest_size=16)
        last_raw = b""
        base = 0
        for block in _iter_blocks(path):
            last_raw = block[-1]
            if not self._scan_block_fast(scan, digest, block, base, min_f, max_f, hook, block_hook):
                self._scan_block_lines(scan, digest, block, base, min_f, max_f, hook)
            base += len(block)
        scan.lines = base
        if scan.lines == 0:
            self.err("empty-file", name, None, None, "file is empty")
        elif not last_raw.endswith(b"\n"):
            self.err("missing-newline", name, scan.lines, None, "last line has no newline")
        if not scan.sorted_ok:
            self._report_unsorted_duplicates(name, scan)
        scan.digest = digest.hexdigest()
        self.scans[name] = scan
        return scan

    def _scan_block_fast(
        self,
        scan: TableScan,
        digest: Any,
        block: list[bytes],
        base: int,
        min_f: int,
        max_f: int | None,
        hook: RowHook | None,
        block_hook: BlockHook | None,
    ) -> bool:
        data = b"".join(block)
        if b"\r" in data:
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        # printable ASCII, tab and newline only: no odd whitespace, no control characters
        plain = data.isascii() and not data.translate(None, _PLAIN_ASCII)
        if not plain and _ODD_SPACE_BLOCK.search(text):
            return False
        lines = text.split("\n")
        if len(lines) > len(block):  # the block ended with a newline
            lines.pop()
        rows = list(map(str.split, lines))
        lengths = list(map(len, rows))
        if min(lengths) < min_f or (max_f is not None and max(lengths) > max_f):
            return False
        # str order is code point order, which is UTF-8 byte order, i.e. LC_ALL=C order
        keys = [r[0] for r in rows]
        if scan.prev is not None and keys[0] <= scan.prev:
            return False
        if not all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
            return False
        handled = block_hook is not None and block_hook(base, rows, lines, text, plain)
        if not handled and hook is not None:
            for i, (row, line) in enumerate(zip(rows, lines)):
                hook(base + i + 1, row[0], row[1:], line)
        digest.update(("\n".join(keys) + "\n").encode("utf-8"))
        scan.prev = keys[-1]
        return True

    def _scan_block_lines(
        self,
        scan: TableScan,
        digest: Any,
        block: list[bytes],
        base: int,
        min_f: int,
        max_f: int | None,
        hook: RowHook | None,
    ) -> None:
        name = scan.name
        odd_space = _ODD_SPACE.search
        for offset, raw in enumerate(block):
            lineno = base + offset + 1
            if raw.endswith(b"\r\n"):
                self.err("crlf", name, lineno, None, "line ends with CR LF (Windows line ending)")
                raw = raw[:-2] + b"\n"
            try:
                line = raw.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError as exc:
                self.err("invalid-utf8", name, lineno, None, f"not valid UTF-8 ({exc.reason})")
                continue
            fields = line.split()
            if not fields:
                self.err("blank-line", name, lineno, None, "empty line")
                continue
            key = fields[0]
            if odd_space(line):
                self.err(
                    "odd-whitespace",
                    name,
                    lineno,
                    key,
                    "contains whitespace other than space and tab (Kaldi splits on those only)",
                )
            nf = len(fields)
            if nf < min_f or (max_f is not None and nf > max_f):
                if max_f is None:
                    want = f"at least {min_f}"
                else:
                    want = str(min_f) if min_f == max_f else f"{min_f} to {max_f}"
                self.err("bad-fields", name, lineno, key, f"needs {want} fields, got {nf}")
                continue
            prev = scan.prev
            if prev is not None and key <= prev:
                if key == prev:
                    scan.unique_ok = False
                    self.err("duplicate-key", name, lineno, key, "duplicate key")
                else:
                    if scan.sorted_ok:
                        self.err(
                            "not-sorted",
                            name,
                            lineno,
                            key,
                            "not in LC_ALL=C sorted order (first out-of-order line; "
                            "`speechssl data fix` sorts)",
                        )
                    scan.sorted_ok = False
            scan.prev = key
            digest.update((key + "\n").encode("utf-8"))
            if hook is not None:
                hook(lineno, key, fields[1:], line)

    def _report_unsorted_duplicates(self, name: str, scan: TableScan) -> None:
        # in an unsorted file duplicates need not be adjacent: one more pass with a set
        seen: set[str] = set()
        dups = 0
        prev_key: str | None = None
        for lineno, key, _ in iter_rows(self.dir / name):
            if key in seen and key != prev_key:  # adjacent ones were reported already
                dups += 1
                self.err("duplicate-key", name, lineno, key, "duplicate key")
            seen.add(key)
            prev_key = key
        if dups:
            scan.unique_ok = False

    def keys_of(self, name: str) -> Iterator[tuple[int, str]]:
        for lineno, key, _ in iter_rows(self.dir / name):
            yield lineno, key

    def compare_keys(self, ref: str, other: str, what: str, subset: bool = False) -> None:
        """Report keys of ``other`` that are not in ``ref`` and (unless ``subset``) vice versa."""
        a, b = self.scans.get(ref), self.scans.get(other)
        if a is None or b is None:
            return
        if a.orderly and b.orderly and a.digest == b.digest:
            return
        ref_name = ref
        report_missing = not subset
        missing = extra = 0
        if a.orderly and b.orderly:
            it_a, it_b = self.keys_of(ref), self.keys_of(other)
            x, y = next(it_a, None), next(it_b, None)
            while x is not None or y is not None:
                ka = x[1] if x is not None else None
                kb = y[1] if y is not None else None
                if kb is None or (ka is not None and ka < kb):
                    assert x is not None
                    if report_missing:
                        missing += 1
                        self.err(
                            "key-mismatch",
                            other,
                            None,
                            x[1],
                            f"{what} in {ref_name} is missing here",
                        )
                    x = next(it_a, None)
                elif ka is None or kb < ka:
                    assert y is not None
                    extra += 1
                    self.err("key-mismatch", other, y[0], y[1], f"{what} not in {ref_name}")
                    y = next(it_b, None)
                else:
                    x, y = next(it_a, None), next(it_b, None)
        else:
            ref_set = {k for _, k in self.keys_of(ref)}
            other_set: set[str] = set()
            for lineno, key in self.keys_of(other):
                other_set.add(key)
                if key not in ref_set:
                    extra += 1
                    self.err("key-mismatch", other, lineno, key, f"{what} not in {ref_name}")
            for key in sorted(ref_set - other_set) if report_missing else []:
                missing += 1
                self.err("key-mismatch", other, None, key, f"{what} in {ref_name} is missing here")
        if missing or extra:
            self.report.notes.append(
                f"{other}: {missing} {what}s of {ref_name} missing, {extra} not in {ref_name}"
            )

    # -- the checks ----------------------------------------------------------------

    def run(self) -> ValidationReport:
        if not self.dir.is_dir():
            raise DataDirError(str(self.dir), "data directory does not exist")
        for name in ("utt2spk", "spk2utt", "wav.scp"):
            if not self.has(name):
                self.err("missing-file", name, None, None, f"required file {name} is missing")
        if self.opts.require_text and not self.has("text"):
            self.err("missing-file", "text", None, None, "text is missing (--require-text)")
        has_segments = self.has("segments")
        self.check_wav_scp(has_segments)
        reco2dur = self.check_reco2dur(has_segments)
        seg_recos = self.check_segments(reco2dur)
        self.check_utt2spk_spk2utt()
        self.check_text()
        self.check_per_utt_files(has_segments)
        self.check_speaker_files()
        self.check_recording_files(has_segments, seg_recos)
        self.check_duration_agreement(has_segments)
        self.check_extra_tables(has_segments)
        self.report.stats.update(
            utterances=self.scans["utt2spk"].lines if "utt2spk" in self.scans else 0,
            recordings=self.scans["wav.scp"].lines if "wav.scp" in self.scans else 0,
            speakers=self.scans["spk2utt"].lines if "spk2utt" in self.scans else 0,
            level=self.opts.level,
        )
        if self.report.stats["speakers"] == 1:
            self.warn(
                "one-speaker",
                "spk2utt",
                None,
                None,
                "only one speaker (per-speaker normalisation and speaker splits degenerate)",
            )
        if self.opts.level != "fast" and "wav.scp" in self.scans:
            self.check_audio(has_segments, reco2dur)
        return self.report

    def check_wav_scp(self, has_segments: bool) -> None:
        pipes = 0

        def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            nonlocal pipes
            value = line.split(maxsplit=1)[1]
            path, pipe = parse_wav_entry(value)
            if pipe:
                pipes += 1
                if not self.opts.allow_pipes:
                    self.err(
                        "pipe-entry",
                        "wav.scp",
                        lineno,
                        key,
                        "entry is a shell command ('cmd |'); it runs only with --allow-pipes",
                    )
            elif path.startswith("~"):
                self.err("tilde", "wav.scp", lineno, key, "path starts with ~ (not expanded)")

        def block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            return "|" not in text and "~" not in text

        self.scan("wav.scp", hook, block)
        if has_segments and not self.has("wav.scp"):
            self.err("missing-file", "wav.scp", None, None, "segments exists but wav.scp does not")
        self.report.stats["pipe_entries"] = pipes

    def check_reco2dur(self, has_segments: bool) -> dict[str, float] | None:
        # kept in memory only when segments need it (recordings are then usually few)
        table: dict[str, float] | None = {} if has_segments else None

        def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            dur = _positive(rest[0], integer=False)
            if dur is None:
                self.err("bad-value", "reco2dur", lineno, key, f"duration {rest[0]!r} is not > 0")
            elif table is not None:
                table[key] = dur

        def block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            vals = _positive_block([r[1] for r in rows], integer=False)
            if vals is None:
                return False
            if table is not None:
                table.update(zip((r[0] for r in rows), vals))
            return True

        if self.scan("reco2dur", hook, block) is None:
            return None
        return table

    def check_segments(self, reco2dur: dict[str, float] | None) -> set[str] | None:
        if not self.has("segments"):
            return None
        wav_keys = {k for _, k in self.keys_of("wav.scp")} if self.has("wav.scp") else set()
        recos: set[str] = set()
        overshoot = self.opts.segment_overshoot

        def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            reco, s_start, s_end = rest
            recos.add(reco)
            try:
                start, end = float(s_start), float(s_end)
            except ValueError:
                self.err("bad-segment", "segments", lineno, key, "start/end are not numbers")
                return
            if not (math.isfinite(start) and math.isfinite(end)):
                self.err("bad-segment", "segments", lineno, key, "start/end are not finite")
            elif start < 0:
                self.err("bad-segment", "segments", lineno, key, f"start {start} < 0")
            elif end <= start:
                self.err("bad-segment", "segments", lineno, key, f"end {end} <= start {start}")
            if reco not in wav_keys:
                self.err(
                    "unknown-recording", "segments", lineno, key, f"recording {reco} not in wav.scp"
                )
            elif reco2dur is not None and reco in reco2dur and end > reco2dur[reco] + overshoot:
                self.err(
                    "segment-outside",
                    "segments",
                    lineno,
                    key,
                    f"ends at {end} s, after the end of {reco} ({reco2dur[reco]} s in reco2dur)",
                )

        def block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            try:
                starts = [float(r[2]) for r in rows]
                ends = [float(r[3]) for r in rows]
            except ValueError:
                return False
            if not all(0 <= a < b < math.inf for a, b in zip(starts, ends)):
                return False
            if not all(r[1] in wav_keys for r in rows):
                return False
            if reco2dur is not None:
                limit = math.inf
                for r, end in zip(rows, ends):
                    if end > reco2dur.get(r[1], limit) + overshoot:
                        return False
            recos.update(r[1] for r in rows)
            return True

        self.scan("segments", hook, block)
        for reco in sorted(wav_keys - recos):
            self.err(
                "unused-recording",
                "wav.scp",
                None,
                reco,
                "recording used by no segment (Kaldi requires none)",
            )
        return recos

    def check_utt2spk_spk2utt(self) -> None:
        mask = (1 << 64) - 1
        acc_u2s = acc_s2u = 0
        n_u2s = n_s2u = 0
        prev_spk: str | None = None
        spk_sorted = True

        def u2s_hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            nonlocal acc_u2s, n_u2s, prev_spk, spk_sorted
            spk = rest[0]
            acc_u2s = (acc_u2s + hash((key, spk))) & mask
            n_u2s += 1
            if prev_spk is not None and spk < prev_spk and spk_sorted:
                spk_sorted = False
                reason = (
                    "utt2spk is not sorted by speaker as well as by utterance (make speaker "
                    "ids prefixes of utterance ids)"
                )
                if self.opts.spk_sort:
                    self.err("not-sorted-by-speaker", "utt2spk", lineno, key, reason)
                else:
                    self.warn("not-sorted-by-speaker", "utt2spk", lineno, key, reason)
            prev_spk = spk

        def s2u_hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            nonlocal acc_s2u, n_s2u
            prev: str | None = None
            for utt in rest:
                acc_s2u = (acc_s2u + hash((utt, key))) & mask
                n_s2u += 1
                if prev is not None and utt <= prev:
                    self.err(
                        "not-sorted", "spk2utt", lineno, key, f"utterance list not sorted at {utt}"
                    )
                    break
                prev = utt

        def u2s_block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            nonlocal acc_u2s, n_u2s, prev_spk
            spks = [r[1] for r in rows]
            if prev_spk is not None and spks[0] < prev_spk:
                return False
            if not all(map(operator.le, spks, itertools.islice(spks, 1, None))):
                return False
            acc_u2s = (acc_u2s + sum(map(hash, map(tuple, rows)))) & mask
            n_u2s += len(rows)
            prev_spk = spks[-1]
            return True

        def s2u_block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            nonlocal acc_s2u, n_s2u
            for r in rows:
                if not all(
                    map(operator.lt, itertools.islice(r, 1, None), itertools.islice(r, 2, None))
                ):
                    return False
            for r in rows:
                spk = r[0]
                acc_s2u = (acc_s2u + sum(hash((u, spk)) for u in r[1:])) & mask
                n_s2u += len(r) - 1
            return True

        u2s = self.scan("utt2spk", u2s_hook, u2s_block)
        s2u = self.scan("spk2utt", s2u_hook, s2u_block)
        if u2s is None or s2u is None or (acc_u2s == acc_s2u and n_u2s == n_s2u):
            return
        # they disagree: find out where (this needs both in memory, only on failure)
        utt2spk: dict[str, tuple[int, str]] = {}
        for lineno, key, rest in iter_rows(self.dir / "utt2spk"):
            if len(rest) == 1:
                utt2spk.setdefault(key, (lineno, rest[0]))
        listed: dict[str, str] = {}
        for lineno, spk, utts in iter_rows(self.dir / "spk2utt"):
            for utt in utts:
                if utt in listed:
                    self.err("spk2utt-mismatch", "spk2utt", lineno, spk, f"{utt} is listed twice")
                    continue
                listed[utt] = spk
                if utt not in utt2spk:
                    self.err("spk2utt-mismatch", "spk2utt", lineno, spk, f"{utt} is not in utt2spk")
                elif utt2spk[utt][1] != spk:
                    self.err(
                        "spk2utt-mismatch",
                        "spk2utt",
                        lineno,
                        spk,
                        f"{utt} belongs to {utt2spk[utt][1]} in utt2spk",
                    )
        for utt, (lineno, spk) in utt2spk.items():
            if utt not in listed:
                self.err(
                    "spk2utt-mismatch", "utt2spk", lineno, utt, f"not listed under {spk} in spk2utt"
                )

    def check_text(self) -> None:
        non_print = self.opts.non_print
        control = _CONTROL.search

        def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            if not rest:
                self.warn("empty-text", "text", lineno, key, "empty transcript")
                return
            if not non_print and control(line):
                self.err("non-printable", "text", lineno, key, "contains control characters")
            for word in rest:
                if _ILLEGAL_WORD.match(word):
                    self.err(
                        "illegal-symbol",
                        "text",
                        lineno,
                        key,
                        f"reserved symbol {word} (sentence boundary, epsilon or "
                        "disambiguation symbol)",
                    )

        def block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            if min(map(len, rows)) < 2:
                return False
            if not plain and not non_print and _CONTROL_BLOCK.search(text):
                return False
            if "<" not in text and "#" not in text:
                return True
            return _ILLEGAL_BLOCK.search(text) is None

        self.scan("text", hook, block)
        self.compare_keys("utt2spk", "text", "utterance")

    def _positive_hook(self, name: str, integer: bool) -> RowHook:
        want = "a positive integer" if integer else "a positive number"

        def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            if _positive(rest[0], integer=integer) is None:
                self.err("bad-value", name, lineno, key, f"{rest[0]!r} is not {want}")

        return hook

    @staticmethod
    def _positive_block(integer: bool) -> BlockHook:
        def block(
            base: int, rows: list[list[str]], lines: list[str], text: str, plain: bool
        ) -> bool:
            return _positive_block([r[1] for r in rows], integer=integer) is not None

        return block

    def _warp_hook(self, name: str) -> RowHook:
        def hook(lineno: int, key: str, rest: list[str], line: str) -> None:
            try:
                ok = 0.5 < float(rest[0]) < 1.5
            except ValueError:
                ok = False
            if not ok:
                self.err(
                    "bad-value", name, lineno, key, f"warp factor {rest[0]!r} not in (0.5, 1.5)"
                )

        return hook

    def check_per_utt_files(self, has_segments: bool) -> None:
        hooks: dict[str, tuple[RowHook | None, BlockHook | None]] = {
            "utt2dur": (self._positive_hook("utt2dur", False), self._positive_block(False)),
            "utt2num_samples": (
                self._positive_hook("utt2num_samples", True),
                self._positive_block(True),
            ),
            "utt2num_frames": (
                self._positive_hook("utt2num_frames", True),
                self._positive_block(True),
            ),
            "utt2warp": (self._warp_hook("utt2warp"), None),
            "feats.scp": (None, None),
            "vad.scp": (None, None),
            "utt2lang": (None, None),
            "utt2uniq": (None, None),
        }
        for name, (hook, block) in hooks.items():
            self.scan(name, hook, block)
        for name in [*hooks, "segments" if has_segments else "wav.scp"]:
            self.compare_keys("utt2spk", name, "utterance")

    def check_speaker_files(self) -> None:
        def gender(lineno: int, key: str, rest: list[str], line: str) -> None:
            if rest[0] not in ("m", "f"):
                self.err(
                    "bad-value", "spk2gender", lineno, key, f"gender {rest[0]!r} is not m or f"
                )

        self.scan("spk2gender", gender)
        self.scan("cmvn.scp")
        self.scan("spk2warp", self._warp_hook("spk2warp"))
        for name in ("spk2gender", "cmvn.scp", "spk2warp"):
            self.compare_keys("spk2utt", name, "speaker")

    def check_recording_files(self, has_segments: bool, seg_recos: set[str] | None) -> None:
        channel_one = 0

        def r2fc(lineno: int, key: str, rest: list[str], line: str) -> None:
            nonlocal channel_one
            if rest[1] == "1":
                channel_one += 1
            elif rest[1] not in ("A", "B"):
                self.err(
                    "bad-value",
                    "reco2file_and_channel",
                    lineno,
                    key,
                    f"channel {rest[1]!r} is not A or B",
                )

        self.scan("reco2file_and_channel", r2fc)
        if channel_one:
            self.warn(
                "bad-value",
                "reco2file_and_channel",
                None,
                None,
                f"{channel_one} lines mark the channel as 1; Kaldi expects A or B",
            )
        ref = "wav.scp" if has_segments else "utt2spk"
        for name in ("reco2dur", "reco2file_and_channel"):
            self.compare_keys(ref, name, "recording")

    def check_extra_tables(self, has_segments: bool) -> None:
        """Extra keyed tables (``utt2*``, ``spk2*``, ``reco2*``, ``text.*``, ``ali.*``): well
        formed, sorted, and naming only known keys (they may cover a subset)."""
        refs = {UTT: "utt2spk", SPK: "spk2utt", RECO: "wav.scp" if has_segments else "utt2spk"}
        for path in sorted(self.dir.iterdir()):
            kind = extra_table_kind(path.name) if path.is_file() else None
            if kind is None:
                continue
            self.scan(path.name)
            self.compare_keys(refs[kind], path.name, kind, subset=True)

    def check_duration_agreement(self, has_segments: bool) -> None:
        tol = self.opts.duration_tolerance
        if not self.has("utt2dur"):
            return
        u2d = self.scans.get("utt2dur")
        other = "segments" if has_segments else "reco2dur"
        o = self.scans.get(other)
        if u2d is None or o is None or not (u2d.orderly and o.orderly):
            return
        for key, a, b in merge_join(self.dir / "utt2dur", self.dir / other):
            if a is None or b is None:
                continue  # key mismatches are reported elsewhere
            dur = _positive(a[1][0], integer=False)
            if has_segments:
                try:
                    ref = float(b[1][2]) - float(b[1][1])
                except (ValueError, IndexError):
                    continue
            else:
                ref_opt = _positive(b[1][0], integer=False)
                if ref_opt is None:
                    continue
                ref = ref_opt
            if dur is not None and abs(dur - ref) > tol:
                self.err(
                    "duration-mismatch",
                    "utt2dur",
                    a[0],
                    key,
                    f"{dur} s but {other} says {ref:.4f} s",
                )

    # -- audio -----------------------------------------------------------------------

    def check_audio(self, has_segments: bool, reco2dur: dict[str, float] | None) -> None:
        opts = self.opts
        n = self.scans["wav.scp"].lines
        sample = opts.audio_sample
        if sample is None:
            sample = 0 if opts.level == "strict" else 10000
        chosen: set[int] | None = None
        if 0 < sample < n:
            chosen = set(random.Random(opts.seed).sample(range(1, n + 1), sample))
        strict = opts.level == "strict"
        allow_pipes = opts.allow_pipes
        wav_path = self.dir / "wav.scp"

        def selected() -> Iterator[tuple[str, int, str, bool]]:
            for lineno, key, rest in iter_rows(wav_path, only_lines=chosen):
                if not rest:
                    continue
                path, pipe = parse_wav_entry(" ".join(rest))
                if pipe and not allow_pipes:
                    continue  # already an error; never run it
                yield key, lineno, path, pipe

        segs_of: dict[str, list[tuple[str, float, float]]] = {}
        if strict and has_segments:
            # strict checks each segment for digital silence, so workers need the segments
            wanted = {key.encode() for key, _, _, _ in selected()}
            for _, utt, rest in iter_rows(self.dir / "segments", only_values=wanted, field=1):
                if len(rest) == 3:
                    try:
                        seg = (utt, float(rest[1]), float(rest[2]))
                    except ValueError:
                        continue
                    segs_of.setdefault(rest[0], []).append(seg)
        jobs = (
            (key, lineno, path, pipe, strict, segs_of.get(key, []))
            for key, lineno, path, pipe in selected()
        )
        infos: dict[str, tuple[int, int, int]] = {}
        rates: Counter[int] = Counter()
        channels: Counter[int] = Counter()
        checked = 0
        for result in _run_jobs(jobs, opts.nj):
            checked += 1
            key, lineno = result["key"], result["line"]
            if "error" in result:
                kind, reason = result["error"]
                self.err(f"audio-{kind}", "wav.scp", lineno, key, reason)
                continue
            rate, nchan, frames = result["rate"], result["channels"], result["frames"]
            infos[key] = (rate, nchan, frames)
            rates[rate] += 1
            channels[nchan] += 1
            if opts.sample_rate is not None and rate != opts.sample_rate:
                self.err(
                    "audio-sample-rate",
                    "wav.scp",
                    lineno,
                    key,
                    f"{result['path']}: sample rate {rate} Hz, expected {opts.sample_rate} Hz",
                )
            if nchan > 1:
                self.warn(
                    "audio-channels",
                    "wav.scp",
                    lineno,
                    key,
                    f"{result['path']}: {nchan} channels (loading needs channels=select:N or mean)",
                )
            for code, reason in result.get("content", []):
                self.err(f"audio-{code}", "wav.scp", lineno, key, f"{result['path']}: {reason}")
        self.report.stats["audio_checked"] = checked
        how = "decoded fully" if strict else "headers read"
        scope = "all" if chosen is None else f"a random sample of {checked}"
        self.report.notes.append(
            f"audio: {how} for {scope} of {n} recordings"
            + ("" if chosen is None else " (--audio-sample 0 checks all)")
        )
        self.report.stats["sample_rates"] = {str(r): c for r, c in sorted(rates.items())}
        self.report.stats["channels"] = {str(c): k for c, k in sorted(channels.items())}
        if opts.sample_rate is None and len(rates) > 1:
            self.warn(
                "mixed-sample-rates",
                "wav.scp",
                None,
                None,
                "recordings have different sample rates: "
                + ", ".join(f"{r} Hz x{c}" for r, c in sorted(rates.items())),
            )
        self._check_durations_against_audio(has_segments, infos)

    def _check_durations_against_audio(
        self, has_segments: bool, infos: dict[str, tuple[int, int, int]]
    ) -> None:
        if not infos:
            return
        tol = self.opts.duration_tolerance
        over = self.opts.segment_overshoot
        wanted = {key.encode("utf-8") for key in infos}

        def seconds(key: str) -> float:
            rate, _, frames = infos[key]
            return frames / rate

        def check_duration_table(table: str) -> None:
            # reco2dur / utt2dur: a duration per key whose audio we read
            for lineno, key, rest in iter_rows(self.dir / table, only_values=wanted):
                if key in infos and len(rest) == 1:
                    d = _positive(rest[0], integer=False)
                    if d is not None and abs(d - seconds(key)) > tol:
                        self.err(
                            "duration-mismatch",
                            table,
                            lineno,
                            key,
                            f"{d} s but the audio is {seconds(key):.4f} s",
                        )

        if self.has("reco2dur"):
            check_duration_table("reco2dur")
        if has_segments:
            for lineno, utt, rest in iter_rows(self.dir / "segments", only_values=wanted, field=1):
                if len(rest) != 3 or rest[0] not in infos:
                    continue
                try:
                    end = float(rest[2])
                except ValueError:
                    continue
                if end > seconds(rest[0]) + over:
                    self.err(
                        "segment-outside",
                        "segments",
                        lineno,
                        utt,
                        f"ends at {end} s, after the end of {rest[0]} ({seconds(rest[0]):.4f} s)",
                    )
            return
        if self.has("utt2dur"):
            check_duration_table("utt2dur")
        if self.has("utt2num_samples"):
            for lineno, key, rest in iter_rows(self.dir / "utt2num_samples", only_values=wanted):
                if key in infos and len(rest) == 1:
                    ns = _positive(rest[0], integer=True)
                    if ns is not None and int(ns) != infos[key][2]:
                        self.err(
                            "duration-mismatch",
                            "utt2num_samples",
                            lineno,
                            key,
                            f"{int(ns)} samples but the audio has {infos[key][2]}",
                        )


def _positive_block(texts: list[str], *, integer: bool) -> list[float] | None:
    """All values as numbers if every one is a positive (integer) number, else None."""
    try:
        vals = list(map(float, map(int, texts) if integer else texts))
    except ValueError:
        return None
    if vals and min(vals) > 0 and max(vals) < math.inf and not any(map(math.isnan, vals)):
        return vals
    return None


def _positive(text: str, *, integer: bool) -> float | None:
    try:
        num = int(text) if integer else float(text)
    except ValueError:
        return None
    return float(num) if math.isfinite(num) and num > 0 else None


def merge_join(
    a: Path, b: Path
) -> Iterator[tuple[str, tuple[int, list[str]] | None, tuple[int, list[str]] | None]]:
    """Walk two key-sorted tables together: ``(key, (line, fields) | None, ...)``."""
    it_a, it_b = iter_rows(a), iter_rows(b)
    x, y = next(it_a, None), next(it_b, None)
    while x is not None or y is not None:
        ka = x[1] if x is not None else None
        kb = y[1] if y is not None else None
        if kb is None or (ka is not None and ka < kb):
            assert x is not None
            yield x[1], (x[0], x[2]), None
            x = next(it_a, None)
        elif ka is None or kb < ka:
            assert y is not None
            yield y[1], None, (y[0], y[2])
            y = next(it_b, None)
        else:
            assert x is not None and y is not None
            yield x[1], (x[0], x[2]), (y[0], y[2])
            x, y = next(it_a, None), next(it_b, None)


# --------------------------------------------------------------------------------------
# audio jobs (run in worker processes when nj > 1)

_Job = tuple[str, int, str, bool, bool, list[tuple[str, float, float]]]


def _check_recording(job: _Job) -> dict[str, Any]:
    key, lineno, path, pipe, strict, segments = job
    out: dict[str, Any] = {"key": key, "line": lineno, "path": path}
    try:
        info = probe(AudioSource(path=path, pipe=pipe, recording=key), utt=key)
    except AudioError as err:
        out["error"] = (type(err).kind, f"{path}: {err.reason}")
        return out
    out.update(rate=info.sample_rate, channels=info.channels, frames=info.frames)
    if strict:
        out["content"] = _decode_stats(path, pipe, key, info.sample_rate, info.frames, segments)
    return out


def _decode_stats(
    path: str,
    pipe: bool,
    key: str,
    rate: int,
    frames: int,
    segments: list[tuple[str, float, float]],
) -> list[tuple[str, str]]:
    """Decode block by block (bounded memory): NaN/inf, all-zero, decodable length."""
    import io

    from speechssl.data.audio import read_pipe

    problems: list[tuple[str, str]] = []
    source: Any = io.BytesIO(read_pipe(AudioSource(path=path, pipe=True), key)) if pipe else path
    block = rate * 30
    nan = inf = 0
    decoded = 0
    # per-segment nonzero flags, found by mapping each block onto the segments it covers
    spans = sorted((round(s * rate), round(e * rate), utt) for utt, s, e in segments)
    seg_nonzero = {utt: False for _, _, utt in spans}
    any_nonzero = False
    try:
        with sf.SoundFile(source) as fh:
            while True:
                data = fh.read(block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                start = decoded
                decoded += data.shape[0]
                finite = np.isfinite(data)
                if not finite.all():
                    n_nan = int(np.isnan(data).sum())
                    nan += n_nan
                    inf += int(data.size - finite.sum()) - n_nan
                nz_rows = np.flatnonzero(np.any(np.nan_to_num(data) != 0, axis=1))
                if nz_rows.size:
                    any_nonzero = True
                    for s, e, utt in spans:
                        if seg_nonzero[utt] or e <= start or s >= decoded:
                            continue
                        lo, hi = max(s - start, 0), min(e - start, data.shape[0])
                        idx = np.searchsorted(nz_rows, lo)
                        if idx < nz_rows.size and nz_rows[idx] < hi:
                            seg_nonzero[utt] = True
    except (sf.LibsndfileError, RuntimeError) as exc:
        problems.append(("corrupt", f"decoding failed after {decoded} samples: {exc}"))
        return problems
    if decoded < frames:
        problems.append(
            ("truncated", f"decoded {decoded} of the {frames} samples the header declares")
        )
    if nan or inf:
        problems.append(("non-finite", f"{nan} NaN and {inf} infinite samples"))
    if not any_nonzero:
        problems.append(("all-zero", "every sample is zero"))
    else:
        for utt, nonzero in seg_nonzero.items():
            if not nonzero:
                problems.append(("all-zero", f"segment {utt}: every sample is zero"))
    return problems


def _run_jobs(jobs: Iterable[_Job], nj: int) -> Iterator[dict[str, Any]]:
    if nj <= 1:
        yield from map(_check_recording, jobs)
        return
    # spawn: workers import only soundfile/numpy; safe whatever threads the parent runs
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(nj) as pool:
        yield from pool.imap(_check_recording, jobs, chunksize=64)


def validate_data_dir(path: str | Path, opts: ValidateOptions | None = None) -> ValidationReport:
    """Validate a data dir; returns the report (``report.ok`` is false on any error)."""
    return _Validator(Path(path), opts or ValidateOptions()).run()
