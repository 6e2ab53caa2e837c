"""Exclusive directory locks: one writer per training exp dir or feature store.

The lock is a POSIX record lock (``fcntl.lockf``, ``F_SETLK``) on ``<dir>/.lock``. The kernel
releases it when the holder exits, however it exits (SIGKILL included), so a stale lock file
never blocks a later run. The file records the holder's PID and host, which the refusal
message names.

Why a record lock and not ``flock``: an ``flock`` belongs to the open file description, which
every forked child (a DataLoader worker, a subprocess started with ``fork``) inherits, so an
orphaned child of a killed run kept the lock alive after its holder died. A record lock
belongs to the process alone and is not inherited over ``fork``.

Record locks have one trap: closing *any* descriptor of the lock file in the holding process
drops the lock. So the holder never opens the file again while it holds it (the holder's
description is read only by a process that failed to take the lock), and a second
acquisition of the same directory in one process (which the kernel would grant silently) is
refused here explicitly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from speechssl.errors import SpeechSSLError

LOCK_FILE = ".lock"

# (st_dev, st_ino) of every lock file this process holds; record locks are per process, so
# the kernel cannot tell a second holder in this process from the first.
_held: set[tuple[int, int]] = set()
_held_guard = threading.Lock()


class LockedError(SpeechSSLError):
    """Another process (or another part of this one) holds the lock of a directory, or its
    lock file is not one speechssl wrote (a symbolic link, a directory, a FIFO)."""


def _holder(path: Path) -> str:
    # only ever called by a process that does NOT hold the lock (see the module docstring)
    try:
        info = json.loads(path.read_text())
        return f"PID {info.get('pid')} on {info.get('host')}"
    except (OSError, ValueError, AttributeError):
        return "another process"


def _busy(root: Path, what: str, holder: str) -> LockedError:
    return LockedError(
        f"{root}: {what} is in use by {holder}; wait for that run to finish "
        "or point this one at another directory"
    )


@contextlib.contextmanager
def exclusive_lock(
    directory: str | os.PathLike[str], what: str, name: str = LOCK_FILE
) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if missing) for the ``with`` body.

    ``name`` is the lock file inside ``directory`` (``.lock``; a feature store locks each
    shard with a file of its own, so the ranks of one store are written at once).

    Raises :class:`LockedError` at once (no waiting) when another process holds it, or when
    this process already holds it; the message names ``what`` (e.g. "training exp dir"), the
    directory and the holder. Do not open ``<directory>/.lock`` in this process while the lock
    is held: closing that descriptor would release the lock.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    with _held_guard:
        # stat (not open) the file: opening and closing it here would drop a held lock
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in _held:
                raise _busy(root, what, f"this process (PID {os.getpid()})")
        try:
            # never through a symbolic link: the holder truncates and rewrites the file
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
            raise LockedError(
                f"{path}: the lock file is a symbolic link or not a regular file; "
                "remove it (only speechssl writes this file)"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LockedError(
                    f"{path}: the lock file is not a regular file; remove it (only speechssl "
                    "writes this file)"
                )
            key = (st.st_dev, st.st_ino)
            if key in _held:  # created between the stat and the open: still ours
                raise _busy(root, what, f"this process (PID {os.getpid()})")
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise _busy(root, what, _holder(path)) from None
        except BaseException:
            os.close(fd)
            raise
        _held.add(key)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        os.fsync(fd)
        yield path
    finally:
        with _held_guard:
            _held.discard(key)
            os.close(fd)  # closing the descriptor releases the record lock
