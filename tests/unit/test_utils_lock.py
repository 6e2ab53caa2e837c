"""The exclusive directory lock: refusal names the holder; a SIGKILLed holder frees it."""

from __future__ import annotations

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
    # the lock file is still there, but the kernel released the flock with the process
    assert (tmp_path / ".lock").exists()
    with exclusive_lock(tmp_path, "test dir") as path:
        assert f'"pid": {os.getpid()}' in path.read_text()


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
