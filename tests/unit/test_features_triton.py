"""The fused Triton kernels: parity with the torch path under the CPU interpreter (default
suite, in a subprocess because TRITON_INTERPRET must be set before triton is imported), and
on a real GPU (cuda marker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_triton_kernels_match_torch_path_under_interpreter() -> None:
    env = dict(os.environ)
    env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(
        [sys.executable, str(HERE / "triton_features_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(lines) >= 12 and all(x["ok"] for x in lines), lines


@pytest.mark.cuda
def test_triton_kernels_on_gpu_match_torch_and_torchaudio() -> None:
    from kaldi_refs import speech_like, torchaudio_features

    from speechssl.features import (
        FbankOptions,
        FrameOptions,
        MelOptions,
        MfccOptions,
        compute_features,
        kaldi,
    )

    rates = [8000, 16000, 22050, 44100, 48000]
    for i, rate in enumerate(rates):
        for opts in (
            FbankOptions(
                frame=FrameOptions(sample_frequency=rate, snip_edges=bool(i % 2)),
                mel=MelOptions(num_mel_bins=80),
                use_energy=True,
            ),
            MfccOptions(
                frame=FrameOptions(sample_frequency=rate, snip_edges=not i % 2), use_energy=True
            ),
        ):
            waves = [torch.from_numpy(speech_like(rate, s, i)) for s in (1.3, 0.7, 0.02)]
            lengths = torch.tensor([len(w) for w in waves])
            batch = torch.zeros(3, int(lengths.max()))
            for j, w in enumerate(waves):
                batch[j, : len(w)] = w
            assert kaldi.select_backend(batch.cuda(), opts) == "triton"
            got, nf = compute_features(batch.cuda(), lengths.cuda(), opts)
            ref, nf_ref = compute_features(batch, lengths, opts, backend="torch")
            assert torch.equal(nf.cpu(), nf_ref)
            tol = 2e-4 if isinstance(opts, MfccOptions) else 2e-5
            torch.testing.assert_close(got.cpu(), ref, rtol=0, atol=tol)
            for j, w in enumerate(waves):
                if len(w) >= opts.frame.window_size:
                    ta = torchaudio_features(w.cuda(), opts).cpu()
                    bound = 1.5e-2 if isinstance(opts, MfccOptions) else 1e-3  # lifter x 1e-3
                    assert (got[j, : int(nf[j])].cpu() - ta).abs().max() < bound


@pytest.mark.cuda
def test_gpu_front_end_makes_no_host_syncs() -> None:
    from speechssl.features import FbankOptions, KaldiFbank, MelOptions

    module = KaldiFbank(FbankOptions(mel=MelOptions(num_mel_bins=80)))
    waves = torch.randn(4, 16000, device="cuda") * 1000
    lengths = torch.tensor([16000, 12000, 9000, 300], device="cuda")
    module(waves, lengths)  # warm-up: tables, kernel compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            module(waves, lengths)  # Triton path
        waves.requires_grad_(True)
        feats, _ = module(waves, lengths)  # differentiable torch path
        feats.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert waves.grad is not None and torch.isfinite(waves.grad).all()
