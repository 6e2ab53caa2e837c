"""The table scanner every rule runs through, and the state rules share (:class:`DirCheck`).

:meth:`DirCheck.scan` makes one streaming pass over a table and checks what every Kaldi
table must be: UTF-8 without a byte order mark, ``\\n`` line ends (no CR, no blank lines,
newline at the end), the right number of fields, keys ``LC_ALL=C`` sorted and unique. A
rule adds its own per-line check as a *row hook*; a *block hook* may accept a whole clean
block at once (the fast path on big tables) or hand it back to the row hook.
:meth:`DirCheck.compare_keys` compares the key sets of two scanned tables through digests
of their sorted keys, merging the files only when they differ.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechssl.data.kaldi_dir import TABLES
from speechssl.data.tables import BOM, BOM_REASON, iter_rows
from speechssl.data.validate.report import ValidateOptions, ValidationReport

#: whitespace other than space and tab (Kaldi splits on ASCII blanks only)
_ODD_SPACE = re.compile(r"[^\S \t]")
#: the same check over a block of lines (newlines allowed)
_PLAIN_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n"
_ODD_SPACE_BLOCK = re.compile(r"[^\S \t\n]")

#: bytes per block of lines: big enough to amortise the per-block work, small enough that
#: the decoded rows stay a few MB (peak memory does not grow with the table)
_BLOCK_BYTES = 1 << 19


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
    min_fields: int = 1
    max_fields: int | None = None
    """Fields a line of this table may have (key included; None: unbounded)."""
    hasher: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16), repr=False)
    """Running digest of the keys (``digest`` is its hex value once the scan is done)."""

    @property
    def orderly(self) -> bool:
        return self.sorted_ok and self.unique_ok


RowHook = Callable[[int, str, list[str], str], None]
"""Called for each well-formed line: ``(lineno, key, fields_after_key, line_text)``."""
BlockHook = Callable[[int, list[list[str]], list[str], str, bool], bool]
"""Called for a clean block: ``(lines_before, rows, lines, block_text, plain_ascii)``;
returns False (having changed nothing) to have the row hook check each row and report."""


def _iter_blocks(path: Path) -> Iterator[list[bytes]]:
    with open(path, "rb") as fh:
        while True:
            block = fh.readlines(_BLOCK_BYTES)
            if not block:
                return
            yield block


@dataclass
class DirCheck:
    """One validation run: the dir, the options, the report, and facts rules hand on."""

    dir: Path
    opts: ValidateOptions
    report: ValidationReport
    scans: dict[str, TableScan] = field(default_factory=dict)
    has_segments: bool = False
    reco2dur: dict[str, float] | None = None
    """``reco2dur`` in memory (only when there are segments to check against it)."""
    seg_recos: set[str] | None = None
    """Recordings the segments use."""

    def has(self, name: str) -> bool:
        return (self.dir / name).is_file()

    def err(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.report.error(code, file, line, key, reason)

    def warn(self, code: str, file: str, line: int | None, key: str | None, reason: str) -> None:
        self.report.warning(code, file, line, key, reason)

    def keys_of(self, name: str) -> Iterator[tuple[int, str]]:
        for lineno, key, _ in iter_rows(self.dir / name):
            yield lineno, key

    # -- the scanner ---------------------------------------------------------------------

    def scan(
        self, name: str, hook: RowHook | None = None, block_hook: BlockHook | None = None
    ) -> TableScan | None:
        """One streaming pass over a table: format, order, uniqueness, key digest, hooks.

        Lines come in blocks. A block that is clean (UTF-8 without BOM, no CR, no odd
        whitespace, right field counts, keys strictly increasing) is checked with
        whole-block operations and handed to ``block_hook``, which returns False to have
        ``hook`` run per row instead; any other block goes line by line so each problem is
        reported with its line.
        """
        path = self.dir / name
        if not path.is_file():
            return None
        spec = TABLES.get(name)
        scan = TableScan(name)
        if spec is not None:
            scan.min_fields, scan.max_fields = spec.min_fields, spec.max_fields
        last_raw = b""
        base = 0
        for block in _iter_blocks(path):
            last_raw = block[-1]
            if not self._scan_block_fast(scan, block, base, hook, block_hook):
                self._scan_block_lines(scan, block, base, hook)
            base += len(block)
        scan.lines = base
        if scan.lines == 0:
            self.err("empty-file", name, None, None, "file is empty")
        elif not last_raw.endswith(b"\n"):
            self.err("missing-newline", name, scan.lines, None, "last line has no newline")
        if not scan.sorted_ok:
            self._report_unsorted_duplicates(name, scan)
        scan.digest = scan.hasher.hexdigest()
        self.scans[name] = scan
        return scan

    def _scan_block_fast(
        self,
        scan: TableScan,
        block: list[bytes],
        base: int,
        hook: RowHook | None,
        block_hook: BlockHook | None,
    ) -> bool:
        min_f, max_f = scan.min_fields, scan.max_fields
        data = b"".join(block)
        if b"\r" in data or BOM in data:
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
        scan.hasher.update(("\n".join(keys) + "\n").encode("utf-8"))
        scan.prev = keys[-1]
        return True

    def _scan_block_lines(
        self, scan: TableScan, block: list[bytes], base: int, hook: RowHook | None
    ) -> None:
        name, min_f, max_f = scan.name, scan.min_fields, scan.max_fields
        odd_space = _ODD_SPACE.search
        for offset, raw in enumerate(block):
            lineno = base + offset + 1
            if raw.endswith(b"\r\n"):
                self.err("crlf", name, lineno, None, "line ends with CR LF (Windows line ending)")
                raw = raw[:-2] + b"\n"
            bom = raw.startswith(BOM)
            if bom:  # named once here; the rest of the line is checked without it
                raw = raw[len(BOM) :]
            try:
                line = raw.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError as exc:
                self.err("invalid-utf8", name, lineno, None, f"not valid UTF-8 ({exc.reason})")
                continue
            fields = line.split()
            if bom:
                self.err("bom", name, lineno, fields[0] if fields else None, BOM_REASON)
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
            scan.hasher.update((key + "\n").encode("utf-8"))
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

    # -- key sets ------------------------------------------------------------------------

    def compare_keys(self, ref: str, other: str, what: str, subset: bool = False) -> None:
        """Report keys of ``other`` that are not in ``ref`` and (unless ``subset``) vice versa."""
        a, b = self.scans.get(ref), self.scans.get(other)
        if a is None or b is None:
            return
        if a.orderly and b.orderly and a.digest == b.digest:
            return
        missing = extra = 0
        if a.orderly and b.orderly:
            for key, x, y in merge_join(self.dir / ref, self.dir / other):
                if y is None:
                    if not subset:
                        missing += 1
                        self.err(
                            "key-mismatch", other, None, key, f"{what} in {ref} is missing here"
                        )
                elif x is None:
                    extra += 1
                    self.err("key-mismatch", other, y[0], key, f"{what} not in {ref}")
        else:
            ref_set = {k for _, k in self.keys_of(ref)}
            other_set: set[str] = set()
            for lineno, key in self.keys_of(other):
                other_set.add(key)
                if key not in ref_set:
                    extra += 1
                    self.err("key-mismatch", other, lineno, key, f"{what} not in {ref}")
            for key in sorted(ref_set - other_set) if not subset else []:
                missing += 1
                self.err("key-mismatch", other, None, key, f"{what} in {ref} is missing here")
        if missing or extra:
            self.report.notes.append(
                f"{other}: {missing} {what}s of {ref} missing, {extra} not in {ref}"
            )


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
