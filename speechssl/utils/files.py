"""File helpers used by every stage: content hashes."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike[str], block_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``block_size`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(block_size), b""):
            digest.update(block)
    return digest.hexdigest()
