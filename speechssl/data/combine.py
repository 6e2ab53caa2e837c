"""Combine Kaldi data dirs into one (Kaldi's ``utils/combine_data.sh``), e.g. LibriSpeech's
three training splits into ``train_960``.

Every table that all inputs have is concatenated (``spk2utt`` is derived from ``utt2spk``);
a table only some inputs have is left out and reported, since the result would cover only
part of the utterances. A key in two inputs is an error naming it and both dirs, except a
speaker-keyed line with the same value in both (one speaker in two splits). The output
directory is built under a temporary name and renamed, so it is complete or absent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speechssl.data.kaldi_dir import SPK, TABLES, extra_table_kind, spk2utt_from_utt2spk
from speechssl.data.tables import read_table, write_table
from speechssl.errors import DataDirError
from speechssl.utils.atomic import atomic_dir


@dataclass(kw_only=True)
class CombineResult:
    """What ``combine_data_dirs`` wrote."""

    out: Path
    """The combined data dir."""
    counts: dict[str, int]
    """Lines per combined table."""
    left_out: dict[str, list[str]] = field(default_factory=dict)
    """Tables not in every input: table name -> the inputs that lack it."""
    ignored: list[str] = field(default_factory=list)
    """Files of the inputs that are not keyed tables (not copied), as ``dir/name``."""

    def lines(self) -> list[str]:
        out = [
            f"combined into {self.out}: " + ", ".join(f"{n} {c}" for n, c in self.counts.items())
        ]
        for name, lacking in self.left_out.items():
            out.append(f"note: {name} left out: missing in {', '.join(lacking)}")
        if self.ignored:
            out.append(f"note: not keyed tables, not copied: {', '.join(self.ignored)}")
        return out


def _key_kind(name: str) -> str | None:
    spec = TABLES.get(name)
    return spec.key if spec is not None else extra_table_kind(name)


def _tables(path: Path) -> tuple[set[str], list[str]]:
    tables, other = set(), []
    for entry in sorted(path.iterdir()):
        if entry.name == "spk2utt":
            continue  # derived from utt2spk
        if entry.is_file() and _key_kind(entry.name) is not None:
            tables.add(entry.name)
        else:
            other.append(f"{path}/{entry.name}")
    return tables, other


def combine_data_dirs(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> CombineResult:
    """Combine the data dirs ``inputs`` into ``out`` (see the module doc)."""
    dirs = [Path(p) for p in inputs]
    target = Path(out)
    if not dirs:
        raise DataDirError(str(target), "nothing to combine (no input data dirs)")
    for d in dirs:
        if not d.is_dir():
            raise DataDirError(str(d), "no such data dir")
        if not (d / "utt2spk").is_file() or not (d / "wav.scp").is_file():
            raise DataDirError(str(d), "not a data dir (needs wav.scp and utt2spk)")
        if d.resolve() == target.resolve():
            raise DataDirError(str(d), "is also the output dir")
    if target.exists() and not overwrite:
        raise DataDirError(str(target), "exists (pass --overwrite to replace it)")
    with_segments = [d for d in dirs if (d / "segments").is_file()]
    if with_segments and len(with_segments) != len(dirs):
        without = next(d for d in dirs if d not in with_segments)
        raise DataDirError(
            str(without),
            f"has no segments file but {with_segments[0]} has; combining dirs with and "
            "without segments is not supported",
        )

    found = [_tables(d) for d in dirs]
    # the defining tables first, so a clash is reported where it matters most
    first = ["utt2spk", "wav.scp", "segments"]
    common = set.intersection(*(t for t, _ in found))
    names = [n for n in first if n in common] + sorted(common - set(first))
    left_out = {
        name: [str(d) for d, (t, _) in zip(dirs, found) if name not in t]
        for name in sorted(set.union(*(t for t, _ in found)) - set(names))
    }
    ignored = [f for _, other in found for f in other]

    counts: dict[str, int] = {}
    with atomic_dir(target, overwrite=True) as tmp:
        for name in names:
            merged: dict[str, str] = {}
            origin: dict[str, Path] = {}
            for d in dirs:
                for key, value in read_table(d / name).items():
                    if key in merged:
                        if _key_kind(name) == SPK and merged[key] == value:
                            continue
                        raise DataDirError(
                            key, f"in both {origin[key]} and {d}", where=f"{d / name}"
                        )
                    merged[key] = value
                    origin[key] = d
            write_table(tmp / name, merged)
            counts[name] = len(merged)
            if name == "utt2spk":
                spk2utt = spk2utt_from_utt2spk(merged)
                write_table(tmp / "spk2utt", {s: " ".join(u) for s, u in spk2utt.items()})
                counts["spk2utt"] = len(spk2utt)
    return CombineResult(out=target, counts=counts, left_out=left_out, ignored=ignored)
