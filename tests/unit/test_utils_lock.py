"""The exclusive directory lock: refusal names the holder; a SIGKILLed holder frees it, even
when a child it forked (a DataLoader worker) outlives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speechssl.utils.device import resolve_device
from speechssl.utils.files import sha256_file
from speechssl.utils.lock import LockedError, exclusive_lock

HOLD = (
    "import sys, time\n"
    "from speechssl.utils.lock import exclusive_lock\n"
    "with exclusive_lock(sys.argv[1], 'test dir'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


def _start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_pid_and_released_after_sigkill(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    try:
        refused = pytest.raises(LockedError, match=rf"test dir is in use by PID {proc.pid} on ")
        with refused, exclusive_lock(tmp_path, "test dir"):
            pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the lock file is still there, but the kernel released the lock with the process
    assert (tmp_path / ".lock").exists()
    with exclusive_lock(tmp_path, "test dir") as path:
        pass
    # read after release: closing any descriptor of the file in the holder drops a record lock
    assert f'"pid": {os.getpid()}' in path.read_text()


HOLD_AND_FORK = (
    "import os, sys, time\n"
    "from speechssl.utils.lock import exclusive_lock\n"
    "with exclusive_lock(sys.argv[1], 'test dir'):\n"
    "    child = os.fork()\n"
    "    if child == 0:\n"
    "        time.sleep(60)\n"
    "        os._exit(0)\n"
    "    print(child, flush=True)\n"
    "    time.sleep(60)\n"
)


def test_lock_is_free_at_once_when_holder_is_killed_and_its_forked_child_lives(
    tmp_path: Path,
) -> None:
    """A forked child (a DataLoader worker) inherits descriptors, never the lock: with an
    ``flock`` the orphaned child kept the exp dir locked after SIGKILL of the trainer."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    try:
        busy = pytest.raises(LockedError, match=rf"in use by PID {proc.pid} on ")
        with busy, exclusive_lock(tmp_path, "test dir"):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)  # the orphaned child is still alive and has the file open
        with exclusive_lock(tmp_path, "test dir"):  # no waiting: free the moment the holder died
            pass
    finally:
        for pid in (proc.pid, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_second_acquisition_in_one_process_is_refused_and_keeps_the_lock(tmp_path: Path) -> None:
    with exclusive_lock(tmp_path, "store"):
        ours = rf"store is in use by this process \(PID {os.getpid()}"
        with pytest.raises(LockedError, match=ours), exclusive_lock(tmp_path, "store"):
            pass
        # the refusal did not release the lock: another process is still refused
        res = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert res.returncode != 0 and f"in use by PID {os.getpid()} on " in res.stderr
    with exclusive_lock(tmp_path, "store"):
        pass


def test_lock_is_reentrant_after_release(tmp_path: Path) -> None:
    for _ in range(2):
        with exclusive_lock(tmp_path / "new", "store"):
            pass
    t0 = time.monotonic()
    with exclusive_lock(tmp_path / "new", "store"):
        assert time.monotonic() - t0 < 5


def test_sha256_file_and_device(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda"}


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir"])
def test_a_planted_lock_file_is_refused_and_its_target_untouched(tmp_path: Path, kind: str) -> None:
    """The holder truncates and rewrites ``.lock``: through a planted symbolic link that
    would have emptied the link's target (any file the user can write)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / "exp" / ".lock"
    lock.parent.mkdir()
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    refused = pytest.raises(LockedError, match=r"\.lock: the lock file is .*remove it")
    with refused, exclusive_lock(lock.parent, "training exp dir"):
        pass
    assert victim.read_text() == "precious\n"
