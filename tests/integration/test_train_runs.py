"""`speechssl-train` runs: multi-process equivalence, non-finite handling (real processes,
real Hydra configs, real models and audio)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import (
    base_overrides,
    copy_data_dir,
    events,
    losses,
    records,
    run_train,
    train_env,
    utt_ids,
)

from speechssl.train import checkpoint as ckpt


@pytest.fixture
def train_data(synth_corpus: Path) -> list[str]:
    """wav2vec 2.0 (no labels; Gumbel quantizer with a temperature schedule)."""
    return ["model=wav2vec2_tiny", f"data.dir={synth_corpus / 'train'}"]


@pytest.fixture
def hubert_data(synth_corpus: Path, synth_km_labels: dict[str, Path]) -> list[str]:
    return [
        "model=hubert_tiny",
        f"data.dir={synth_corpus / 'train'}",
        f"data.labels=[{synth_km_labels['train']}]",
    ]


def _torchrun(overrides: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "speechssl.train",
        *overrides,
    ]
    return subprocess.run(
        cmd, cwd=cwd, env=train_env(), capture_output=True, text=True, timeout=600
    )


def _compare_runs(one: Path, two: Path, steps: int) -> None:
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"step {step}"
    wa, _, _ = ckpt.load_checkpoint(one / "checkpoints" / ckpt.step_dir_name(steps))
    wb, _, _ = ckpt.load_checkpoint(two / "checkpoints" / ckpt.step_dir_name(steps))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if wa[k].numel())
    assert worst < 1e-4


@pytest.mark.distributed
def test_two_process_ddp_matches_one_process(hubert_data: list[str], tmp_path: Path) -> None:
    """2 gloo ranks x 2 accumulated micro-batches (no_sync on the first) == 1 process x 4
    accumulated micro-batches: same global batches, same losses and weights."""
    common = [*hubert_data, *base_overrides(), "trainer.max_steps=3"]
    res = run_train(
        [*common, f"trainer.exp_dir={tmp_path / 'one'}", "trainer.grad_accum=4"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun(
        [*common, f"trainer.exp_dir={tmp_path / 'two'}", "trainer.grad_accum=2"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    start = events(tmp_path / "two", "start")[0]
    assert start["world_size"] == 2
    assert records(tmp_path / "two", "train")[0]["batches"] == 4  # counted over both ranks
    _compare_runs(tmp_path / "one", tmp_path / "two", 3)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_fsdp2_matches_one_process_and_resumes(
    train_data: list[str], tmp_path: Path
) -> None:
    """FSDP2 (fully_shard) over 2 gloo CPU ranks, with a resume through full state dicts."""
    common = [*train_data, *base_overrides(), "trainer.save_every=2"]
    res = run_train(
        [
            *common,
            f"trainer.exp_dir={tmp_path / 'one'}",
            "trainer.grad_accum=2",
            "trainer.max_steps=4",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    fsdp = [*common, f"trainer.exp_dir={tmp_path / 'two'}", "trainer.strategy=fsdp"]
    res = _torchrun([*fsdp, "trainer.max_steps=2"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun([*fsdp, "trainer.max_steps=4"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert events(tmp_path / "two", "resume")[-1]["step"] == 2
    _compare_runs(tmp_path / "one", tmp_path / "two", 4)


def test_fp16_nonfinite_step_is_skipped_and_loss_scale_lowered(
    synth_corpus: Path, tmp_path: Path
) -> None:
    """One real WAV file with finite samples of magnitude ~1e5 (beyond fp16's 65504) makes
    one step's loss non-finite under fp16: skipped, scale halved, training goes on."""
    poisoned = utt_ids(synth_corpus / "train")[0]
    data = copy_data_dir(synth_corpus / "train", tmp_path / "data", gain={poisoned: 1e6})
    exp = tmp_path / "exp"
    res = run_train(
        [
            "model=wav2vec2_tiny",
            f"data.dir={data}",
            *base_overrides(),
            f"trainer.exp_dir={exp}",
            "trainer.precision=fp16",
            "trainer.max_steps=8",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    bad = events(exp, "nonfinite")
    assert bad, "the poisoned utterance never reached a step"
    assert all(poisoned in e["utts"] for e in bad)
    assert bad[0]["loss_scale"] == 64.0  # init 128, halved by the skipped step
    train = records(exp, "train")
    assert train[-1]["step"] == 8 and sum(r["skipped_steps"] for r in train) == len(bad)
    assert all(math.isfinite(r["loss"]) for r in train)
    assert train[-1]["loss_scale"] <= 64.0


@pytest.mark.slow
def test_repeated_nonfinite_stops_with_message_and_saved_state(
    synth_corpus: Path, tmp_path: Path
) -> None:
    """Every utterance is a real float WAV peaking at 3e38 (finite, at float32's limit):
    fp32 activations overflow, every step is non-finite; the run stops, saving a finite
    state, and points at the data."""
    train = synth_corpus / "train"
    data = copy_data_dir(train, tmp_path / "data", peak=dict.fromkeys(utt_ids(train), 3e38))
    exp = tmp_path / "exp"
    res = run_train(
        [
            "model=wav2vec2_tiny",
            f"data.dir={data}",
            *base_overrides(),
            f"trainer.exp_dir={exp}",
            "trainer.max_steps=50",
            "trainer.max_consecutive_nonfinite=3",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert "3 consecutive steps had a non-finite loss or gradient" in res.stderr
    assert "state (finite parameters) is saved in" in res.stderr
    assert "Check the data" in res.stderr
    stop = events(exp, "stop")
    assert len(stop) == 1 and len(events(exp, "nonfinite")) == 3
    saved = Path(stop[0]["checkpoint"])
    weights, state, meta = ckpt.load_checkpoint(saved)
    assert meta["step"] == 0 and state["consecutive_nonfinite"] == 3
    assert state["global_batches"] == 3  # the data position moved past the bad batches
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
def test_bf16_autocast_trains(train_data: list[str], tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    args = [f"trainer.exp_dir={exp}", "trainer.precision=bf16", "trainer.max_steps=4"]
    res = run_train([*train_data, *base_overrides(), *args], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    train = records(exp, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss_scale"] == 1.0 for r in train)
    assert not events(exp, "nonfinite")


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(train_data: list[str], tmp_path: Path) -> None:
    """trainer.compile=true (inductor on CPU, dynamic shapes) gives the eager losses (dropout
    off: inductor draws dropout masks from its own generator)."""
    common = [
        *train_data,
        *base_overrides(),
        "trainer.max_steps=3",
        "+model.overrides.encoder.dropout=0.0",
        "+model.overrides.dropout_input=0.0",
        "+model.overrides.dropout_features=0.0",
    ]
    for name, extra in (("eager", []), ("compiled", ["trainer.compile=true"])):
        res = run_train(
            [*common, f"trainer.exp_dir={tmp_path / name}", *extra], cwd=tmp_path, timeout=900
        )
        assert res.returncode == 0, res.stderr[-3000:]
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    for step in eager:
        assert compiled[step] == pytest.approx(eager[step], rel=1e-3), step


@pytest.mark.cuda
def test_cuda_bf16_run_reports_mfu(hubert_data: list[str], tmp_path: Path) -> None:
    """On a GPU: bf16 autocast, pinned-memory loading, and MFU against the device's peak."""
    exp = tmp_path / "exp"
    args = [f"trainer.exp_dir={exp}", "trainer.device=cuda", "trainer.precision=bf16"]
    overrides = [o for o in base_overrides() if o != "trainer.device=cpu"]
    res = run_train([*hubert_data, *overrides, *args, "trainer.max_steps=5"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    train = records(exp, "train")
    assert events(exp, "start")[0]["device"].startswith("cuda")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(r["loss"]) and 0.0 < r["mfu"] < 1.0 for r in train)
