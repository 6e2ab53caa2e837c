"""``speechssl data fix``: make a data dir consistent (what Kaldi's ``fix_data_dir.sh`` does).

Sorts every table (``LC_ALL=C``), strips a UTF-8 byte order mark from the start of a line,
drops blank, undecodable and malformed lines and repeated keys (first one kept), keeps only utterances present in every per-utterance file,
regenerates ``spk2utt`` from ``utt2spk``, keeps only the recordings the remaining
utterances use and the speakers they belong to. Extra keyed tables (``utt2*``, ``spk2*``,
``reco2*``, ``text.*``, ``ali.*`` and ``--utt-extra-files``) may cover a subset of the keys:
they are filtered to the kept keys but never cause others to be dropped (as in Kaldi's
``--utt-extra-files``). Each file's change is reported as
``filtered X: N -> M``. The original tables are copied to ``.backup/`` first (later fixes
use ``.backup.1/``, ``.backup.2/``, ... so originals are never overwritten); every write is
atomic; audio files are never touched. Fixing an already consistent dir changes nothing.

A fix that would drop more than :data:`MAX_DROP_FRACTION` of the utterances (e.g. a
``wav.scp`` that is not text at all) is refused, changing nothing, unless ``force=True``
(``--force``): that much loss means the dir needs a look, not a filter.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechssl.data.kaldi_dir import (
    RECO,
    SPK,
    TABLES,
    UTT,
    extra_table_kind,
    spk2utt_from_utt2spk,
)
from speechssl.data.tables import c_sort_key
from speechssl.errors import DataDirError
from speechssl.utils.atomic import atomic_dir, atomic_open

_SKIP_FILES = {"spk2utt"}  # regenerated, never filtered

#: a fix dropping more than this fraction of utt2spk's utterances needs ``force``
MAX_DROP_FRACTION = 0.5
_BOM_STRIPPED = "byte order mark stripped"


@dataclass
class FileChange:
    name: str
    before: int
    """Lines in the original file."""
    after: int
    dropped: dict[str, int] = field(default_factory=dict)
    """Why lines went: ``malformed``, ``duplicate key``, ``not in every per-utterance file``...
    (and what was mended in kept lines: ``byte order mark stripped``)."""
    rewritten: bool = False
    """The file's bytes change (lines dropped, sorted, or line endings normalised)."""

    def describe(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items())
        note = "" if self.rewritten else " (unchanged)"
        if self.rewritten and self.before == self.after and not why:
            note = " (rewritten: sorted / line endings normalised)"
        return f"filtered {self.name}: {self.before} -> {self.after}{note}" + (
            f" [{why}]" if why else ""
        )


@dataclass
class FixReport:
    data_dir: str
    changes: list[FileChange] = field(default_factory=list)
    backup_dir: str | None = None
    untouched: list[str] = field(default_factory=list)
    """Files in the dir that fix does not understand and left as they were."""

    @property
    def changed(self) -> bool:
        return any(c.rewritten for c in self.changes)

    def lines(self) -> list[str]:
        out = [c.describe() for c in self.changes]
        if self.backup_dir:
            out.append(f"originals kept in {self.backup_dir}")
        if self.untouched:
            out.append(
                "left as is (not tables fix knows; --utt-extra-files filters per-utterance "
                "ones): " + " ".join(self.untouched)
            )
        if not self.changed:
            out.append(f"{self.data_dir}: already consistent, nothing changed")
        return out


@dataclass
class _Table:
    name: str
    key: str
    lines: int = 0
    rows: dict[str, str] = field(default_factory=dict)
    """key -> full line (without newline), first occurrence kept."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Why lines went, and (``byte order mark stripped``) what was mended in kept lines."""

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _line_ok(name: str, fields: list[str]) -> bool:
    spec = TABLES.get(name)
    if spec is None:
        return len(fields) >= 1
    nf = len(fields)
    if nf < spec.min_fields or (spec.max_fields is not None and nf > spec.max_fields):
        return False
    if name == "segments":
        try:
            start, end = float(fields[2]), float(fields[3])
        except ValueError:
            return False
        return math.isfinite(start) and math.isfinite(end) and 0 <= start < end
    if name in ("utt2dur", "reco2dur"):
        try:
            v = float(fields[1])
        except ValueError:
            return False
        return math.isfinite(v) and v > 0
    if name in ("utt2num_samples", "utt2num_frames"):
        return fields[1].isdigit() and int(fields[1]) > 0
    if name == "spk2gender":
        return fields[1] in ("m", "f")
    return True


def _read(path: Path, name: str, key_kind: str) -> _Table:
    table = _Table(name, key_kind)
    with open(path, "rb") as fh:
        for raw in fh:
            table.lines += 1
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                table.drop("not UTF-8")
                continue
            if line.startswith("\ufeff"):  # invisible, but Kaldi would make it part of the key
                line = line[1:]
                table.drop(_BOM_STRIPPED)
            fields = line.split()
            if not fields:
                table.drop("blank")
                continue
            if not _line_ok(name, fields):
                table.drop("malformed")
                continue
            key = fields[0]
            if key in table.rows:
                table.drop("duplicate key")
                continue
            # normalise separators Kaldi-style: key, one space, the value as written
            rest = line.strip()[len(key) :].strip()
            table.rows[key] = f"{key} {rest}" if rest else key
    return table


def _keep(table: _Table, keep: set[str], reason: str) -> None:
    gone = [k for k in table.rows if k not in keep]
    for k in gone:
        del table.rows[k]
    if gone:
        table.drop(reason, len(gone))


def fix_data_dir(
    path: str | Path,
    *,
    utt_extra_files: Sequence[str] = (),
    backup: bool = True,
    force: bool = False,
) -> FixReport:
    """Fix ``path`` in place; see the module docstring. Returns what changed.

    Raises DataDirError, changing nothing, when the fix would drop more than
    :data:`MAX_DROP_FRACTION` of the utterances and ``force`` is false.
    """
    ddir = Path(path)
    if not ddir.is_dir():
        raise DataDirError(str(ddir), "data directory does not exist")
    if not (ddir / "utt2spk").is_file():
        raise DataDirError(str(ddir / "utt2spk"), "cannot fix a data dir without utt2spk")
    if not (ddir / "wav.scp").is_file():
        raise DataDirError(str(ddir / "wav.scp"), "cannot fix a data dir without wav.scp")
    kinds = {name: spec.key for name, spec in TABLES.items() if name not in _SKIP_FILES}
    # extra tables may cover a subset of their keys: filtered, but never used to drop keys
    subset_only = {p.name for p in ddir.iterdir() if p.is_file() and extra_table_kind(p.name)}
    subset_only |= set(utt_extra_files)
    for name in sorted(subset_only):
        kinds[name] = extra_table_kind(name) or UTT
    has_segments = (ddir / "segments").is_file()
    if not has_segments:
        kinds["wav.scp"] = UTT
    tables = {
        name: _read(ddir / name, name, kind)
        for name, kind in kinds.items()
        if (ddir / name).is_file()
    }

    # utterances: in every per-utterance file (and with a known recording, if segmented)
    utt_tables = [t for t in tables.values() if t.key == UTT]
    utts = set(tables["utt2spk"].rows)
    for t in utt_tables:
        if t.name not in subset_only:
            utts &= set(t.rows)
    if has_segments:
        recos_available = set(tables["wav.scp"].rows)
        seg = tables["segments"]
        utts = {u for u in utts if seg.rows[u].split()[1] in recos_available}
    for t in utt_tables:
        _keep(
            t,
            utts,
            "utterance dropped" if t.name in subset_only else "not in every per-utterance file",
        )
    if has_segments:
        used = {tables["segments"].rows[u].split()[1] for u in utts}
        for t in tables.values():
            if t.key == RECO:
                _keep(t, used, "recording not used")
    speakers = {tables["utt2spk"].rows[u].split()[1] for u in utts}
    for t in tables.values():
        if t.key == SPK:
            _keep(t, speakers, "speaker without utterances")

    total = tables["utt2spk"].lines - tables["utt2spk"].dropped.get("blank", 0)
    lost = total - len(utts)
    if not force and total > 0 and lost / total > MAX_DROP_FRACTION:
        raise DataDirError(
            str(ddir),
            f"fix would drop {lost} of {total} utterances ({100 * lost / total:.0f}%, more "
            f"than {MAX_DROP_FRACTION:.0%}); nothing was changed. See what is wrong with "
            "`speechssl data validate`; rerun with --force (force=True) to apply",
        )
    report = FixReport(str(ddir))
    rewrite: list[_Table] = []
    for name, t in tables.items():
        needs = _needs_rewrite(ddir / name, t)
        report.changes.append(FileChange(name, t.lines, len(t.rows), dict(t.dropped), needs))
        if needs:
            rewrite.append(t)
    utt2spk = {u: tables["utt2spk"].rows[u].split()[1] for u in utts}
    new_spk2utt = "".join(
        f"{s} {' '.join(us)}\n" for s, us in spk2utt_from_utt2spk(utt2spk).items()
    ).encode("utf-8")
    spk2utt_path = ddir / "spk2utt"
    old_spk2utt = spk2utt_path.read_bytes() if spk2utt_path.is_file() else None
    report.changes.append(
        FileChange(
            "spk2utt",
            0 if old_spk2utt is None else old_spk2utt.count(b"\n"),
            new_spk2utt.count(b"\n"),
            {} if old_spk2utt is not None else {"regenerated (was missing)": 0},
            old_spk2utt != new_spk2utt,
        )
    )
    known = set(tables) | {"spk2utt"}
    report.untouched = sorted(p.name for p in ddir.iterdir() if p.is_file() and p.name not in known)
    if not report.changed:
        return report
    if backup:
        report.backup_dir = str(_backup(ddir, [*tables, "spk2utt"]))
    for t in rewrite:
        with atomic_open(ddir / t.name, "w") as fh:
            for key in sorted(t.rows, key=c_sort_key):
                fh.write(t.rows[key] + "\n")
    if old_spk2utt != new_spk2utt:
        with atomic_open(spk2utt_path, "wb") as fh:
            fh.write(new_spk2utt)
    return report


def _needs_rewrite(path: Path, table: _Table) -> bool:
    expected = "".join(table.rows[k] + "\n" for k in sorted(table.rows, key=c_sort_key)).encode(
        "utf-8"
    )
    return path.read_bytes() != expected


def _backup(ddir: Path, names: Iterable[str]) -> Path:
    target = ddir / ".backup"
    n = 0
    while target.exists():
        n += 1
        target = ddir / f".backup.{n}"
    with atomic_dir(target) as tmp:
        for name in names:
            src = ddir / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
    return target
