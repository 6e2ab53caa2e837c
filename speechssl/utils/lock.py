"""Exclusive directory locks: one writer per training exp dir or feature store.

The lock is an ``flock`` on ``<dir>/.lock``; the kernel releases it when the holder exits,
however it exits (SIGKILL included), so a stale lock file never blocks a later run. The file
records the holder's PID and host, which the refusal message names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from speechssl.errors import SpeechSSLError

LOCK_FILE = ".lock"


class LockedError(SpeechSSLError):
    """Another process holds the lock of a directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"PID {info.get('pid')} on {info.get('host')}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def exclusive_lock(directory: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if missing) for the ``with`` body.

    Raises :class:`LockedError` at once (no waiting) when another process holds it; the
    message names ``what`` (e.g. "training exp dir"), the directory and the holder.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{root}: {what} is in use by {_holder(path)}; wait for that run to finish "
                "or point this one at another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        os.fsync(fd)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
