"""Reading and writing Kaldi's two-column table files (``key value...``).

Kaldi keys are whitespace-free tokens; the value is the rest of the line. Files are written
``LC_ALL=C`` sorted (byte order), one entry per line, with a trailing newline, atomically.

Two readers: :func:`iter_table` / :func:`read_table` (strict: the first malformed line raises
:class:`~speechssl.errors.DataDirError` naming ``file:line``) and :func:`iter_rows` (bytes
streamed, lines that cannot be read skipped; for the validator, which reports them itself).
A UTF-8 byte order mark (:data:`BOM`) at the start of a line is an invisible character
Kaldi would take as part of the key: the strict reader refuses it, ``iter_rows`` drops it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from speechssl.errors import DataDirError
from speechssl.utils.atomic import atomic_open

#: UTF-8 byte order mark (U+FEFF as bytes); editors on Windows put one at the start of a file
BOM = b"\xef\xbb\xbf"
BOM_REASON = (
    "line starts with a UTF-8 byte order mark (an invisible character that would become "
    "part of the key; `speechssl data fix` strips it)"
)


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
            if line.startswith("\ufeff"):
                raise DataDirError(str(p), BOM_REASON, where=f"{p}:{lineno}")
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
    path: str | os.PathLike[str],
    *,
    only_lines: set[int] | None = None,
    only_values: set[bytes] | None = None,
    field: int = 0,
) -> Iterator[tuple[int, str, list[str]]]:
    """``(lineno, key, fields_after_key)`` of the lines that decode and are not blank.

    Streams bytes (memory stays flat on huge tables); a leading :data:`BOM` is dropped.
    ``only_lines`` keeps those line numbers; ``only_values`` keeps lines whose ``field``-th
    field (0: the key) is one of them. Other lines are skipped without being decoded.
    """
    for lineno, raw in _iter_lines(Path(path)):
        if only_lines is not None and lineno not in only_lines:
            continue
        if raw.startswith(BOM):
            raw = raw[len(BOM) :]
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
