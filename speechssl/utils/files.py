"""File helpers used by every stage: content hashes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path

from speechssl.errors import ConfigError


def sha256_file(path: str | os.PathLike[str], block_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``block_size`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(
    path: str | os.PathLike[str], marker: str, what: str, own: Collection[str] = ()
) -> None:
    """Refuse to write a ``what`` into ``path`` when it exists and is something else: a file,
    or a non-empty directory without ``marker`` (the file every ``what`` has), such as a Kaldi
    data dir passed as ``--out`` by mistake, whose files would be mixed with (or, where the
    output replaces the directory, lost to) the output. Hidden entries (temporaries, locks)
    do not count, nor files named in ``own`` that a ``what`` writes before its ``marker``
    (so ranks preparing one output at once do not refuse each other)."""
    root = Path(path)
    if not root.exists():
        return
    if not root.is_dir():
        raise ConfigError(f"{root}: exists and is not a directory; name a new output directory")
    if (root / marker).exists():
        return
    visible = sorted(
        p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in own
    )
    if visible:
        more = f" and {len(visible) - 4} more" if len(visible) > 4 else ""
        raise ConfigError(
            f"{root}: exists and is not a {what} (it holds {', '.join(visible[:4])}{more}); "
            "name a new or empty output directory"
        )
