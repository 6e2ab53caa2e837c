"""tools/bench/gpu.sh refuses to run without CUDA, with the reason and exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the suite would run")
def test_gpu_suite_without_cuda_exits_2_with_reason(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(
        ["bash", str(REPO / "tools/bench/gpu.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "no CUDA device" in res.stderr
    assert not (tmp_path / "out" / "gpu.jsonl").exists()
