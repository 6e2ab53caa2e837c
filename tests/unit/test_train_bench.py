"""tools/bench/train_step.py runs (smallest size) and reports a sane JSON record."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench" / "train_step.py"


def test_train_step_bench_smallest_case() -> None:
    spec = importlib.util.spec_from_file_location("train_step_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(
        model="hubert_tiny", batch=2, seconds=0.5, steps=1, warmup=0, device="cpu",
        precision="fp32", compile=False, clock="cpu",
    )  # fmt: skip
    rec = bench.run_case(args)
    assert rec["params_ours"] == rec["params_peer"] > 0
    assert rec["ours_ms"] > 0 and rec["peer_ms"] > 0 and rec["ratio"] > 0
    assert rec["batch"] == 2 and rec["clock"] == "cpu"
