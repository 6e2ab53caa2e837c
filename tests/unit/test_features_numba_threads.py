"""The fused numba CPU kernels leave torch's thread count alone (a data-loader worker runs on
one torch thread; numba's OpenMP layer, started by the first call, used to raise it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechssl.features import numba_kernels

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import torch
torch.set_num_threads(1)
from speechssl.features import FbankOptions, compute_features, kaldi
waves = torch.randn(2, 16000) * 3000
assert kaldi.select_backend(waves, FbankOptions()) == "numba"
compute_features(waves, None, FbankOptions())
print(torch.get_num_threads())
"""


@pytest.mark.skipif(not numba_kernels.available(), reason="numba is not installed")
def test_first_numba_call_keeps_one_torch_thread() -> None:
    # a fresh process: the threading layer starts only once per process
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"
