import subprocess
import sys
from pathlib import Path

import pytest

from speechssl.models import model_config
from speechssl.models.flops import (
    conv_extractor_flops,
    forward_flops,
    peak_bf16_tflops,
    train_step_flops,
)

ROOT = Path(__file__).resolve().parents[2]


def test_conv_flops_and_frames():
    cfg = model_config("hubert_base")
    flops, frames = conv_extractor_flops(cfg.extractor, 16000)
    assert frames == 49
    # first layer: 512 x 1 x 10 per output frame, 3199 frames
    first = 2 * 512 * 10 * 3199
    assert flops > first and flops < 1e10


def test_transformer_flops_dominate_and_scale():
    cfg = model_config("hubert_base")
    one = forward_flops(cfg, 16000 * 10)
    two = forward_flops(cfg, 16000 * 20)
    assert 1.9 < two / one < 2.3  # linear terms plus a small quadratic attention term
    s, d, f = 499, 768, 3072
    layers = 12 * (2 * s * (4 * d * d + 2 * d * f) + 4 * s * s * d)
    assert 0.5 < layers / one < 0.95
    assert train_step_flops(cfg, [160000, 160000]) == pytest.approx(6 * one)
    w2v = model_config("wav2vec2_base")
    assert forward_flops(w2v, 160000) > layers


def test_peak_table():
    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_bf16_tflops("Some GPU") is None


@pytest.mark.slow
def test_model_step_benchmark_runs():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/bench/model_step.py"),
            "--size",
            "tiny",
            "--batch",
            "1",
            "--seconds",
            "1",
            "--repeats",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 3
    assert all('"ratio"' in line for line in lines)
