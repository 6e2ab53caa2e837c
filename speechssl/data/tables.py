"""Reading and writing Kaldi's two-column table files (``key value...``).

Kaldi keys are whitespace-free tokens; the value is the rest of the line. Files are written
``LC_ALL=C`` sorted (byte order), one entry per line, with a trailing newline, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from speechssl.errors import DataDirError
from speechssl.utils.atomic import atomic_open


def c_sort_key(key: str) -> bytes:
    """Sort key equivalent to ``LC_ALL=C sort`` (byte-wise on UTF-8)."""
    return key.encode("utf-8")


def iter_table(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, key, value)`` for each line (1-based line numbers).

    Raises DataDirError for a line with no key (blank line). A key with an empty value is
    yielded with ``value == ""``; consumers decide whether that is legal.
    """
    p = Path(path)
    with open(p, encoding="utf-8", newline="\n") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            stripped = line.strip()
            if not stripped:
                raise DataDirError(str(p), "empty line", where=f"{p}:{lineno}")
            parts = stripped.split(maxsplit=1)
            key = parts[0]
            value = parts[1] if len(parts) > 1 else ""
            yield lineno, key, value


def read_table(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a table into a dict (insertion order = file order); duplicate keys are errors."""
    out: dict[str, str] = {}
    for lineno, key, value in iter_table(path):
        if key in out:
            raise DataDirError(key, "duplicate key", where=f"{path}:{lineno}")
        out[key] = value
    return out


def write_table(
    path: str | os.PathLike[str],
    entries: Mapping[str, str] | Iterable[tuple[str, str]],
    sort: bool = True,
) -> None:
    """Write ``key value`` lines atomically, ``LC_ALL=C`` sorted unless ``sort=False``."""
    items = list(entries.items()) if isinstance(entries, Mapping) else list(entries)
    if sort:
        items.sort(key=lambda kv: c_sort_key(kv[0]))
    with atomic_open(path, "w") as fh:
        for key, value in items:
            if not key or any(c.isspace() for c in key):
                raise DataDirError(repr(key), "key is empty or contains whitespace", str(path))
            fh.write(f"{key} {value}\n" if value != "" else f"{key}\n")
