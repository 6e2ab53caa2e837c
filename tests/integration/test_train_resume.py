"""Exact resume after SIGKILL, kills during a save, corrupt checkpoints (real subprocesses)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from train_helpers import base_overrides, events, losses, run_train, start_train, wait_for

from speechssl.train import checkpoint as ckpt


def test_killed_run_resumes_bitwise_mid_epoch(train_data: list[str], tmp_path: Path) -> None:
    """N+M steps straight == N steps, SIGKILL, resume for M (losses bitwise equal, fp32)."""
    n, m = 6, 5
    common = [*train_data, *base_overrides(), "data.num_workers=1"]
    straight = tmp_path / "straight"
    res = run_train(
        [*common, f"trainer.exp_dir={straight}", f"trainer.max_steps={n + m}"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    per_epoch = events(straight, "plan")[0]["batches_per_rank"]
    assert n % per_epoch != 0 and n + m > per_epoch * (n // per_epoch + 1), (
        f"{per_epoch} batches per epoch: step {n} must be mid-epoch and M must cross an epoch"
    )

    killed = tmp_path / "killed"
    proc = start_train(
        [*common, f"trainer.exp_dir={killed}", "trainer.max_steps=1000", f"trainer.save_every={n}"],
        cwd=tmp_path,
        log=tmp_path / "killed.out",
    )
    first = killed / "checkpoints" / ckpt.step_dir_name(n)
    wait_for(lambda: (first / ckpt.META_FILE).exists(), proc, 240, f"checkpoint {first.name}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    res = run_train(
        [*common, f"trainer.exp_dir={killed}", f"trainer.max_steps={n + m}", f"resume={first}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = events(killed, "resume")
    assert resumed and resumed[-1]["step"] == n and resumed[-1]["epoch"] == n // per_epoch
    # the changed command line is recorded; the earlier config is kept beside the new one
    assert {"resume", "trainer.max_steps", "trainer.save_every"} <= set(
        resumed[-1]["config_changed"]
    )
    assert "max_steps: 1000" in (killed / f"config.step-{n:08d}.yaml").read_text()
    want, got = losses(straight), losses(killed)
    assert sorted(got) == list(range(1, n + m + 1))  # the log reads as one history
    for step in range(1, n + m + 1):
        assert got[step] == want[step], f"step {step}: {got[step]!r} != {want[step]!r}"


@pytest.mark.slow
def test_kill_during_save_keeps_previous_and_corrupt_is_refused(
    train_data: list[str], tmp_path: Path
) -> None:
    common = [*train_data, *base_overrides(), "trainer.save_every=3"]
    exp = tmp_path / "exp"
    proc = start_train(
        [*common, f"trainer.exp_dir={exp}", "trainer.max_steps=9"],
        cwd=tmp_path,
        log=tmp_path / "run.out",
    )
    root = exp / "checkpoints"
    # SIGKILL as soon as the save of step 6 has begun (its temporary dir exists). The save
    # may still win the race; either way no half-written step dir may be visible.
    wait_for(lambda: any(root.glob(".step-00000006.tmp-*")) or (root / "step-00000006").exists(),
             proc, 240, "the save of step 6", poll=0.001)  # fmt: skip
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)

    complete, partial = ckpt.list_checkpoints(root)
    assert [c.step for c in complete] in ([3], [3, 6])
    for c in complete:
        ckpt.load_checkpoint(c.path)  # every visible checkpoint is complete and verifies
    assert all(p.name.startswith(".") for p in partial)  # only hidden debris
    if [c.step for c in complete] == [3]:
        assert not (root / ckpt.step_dir_name(6)).exists()

    res = run_train([*common, f"trainer.exp_dir={exp}", "trainer.max_steps=9"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert events(exp, "resume")[-1]["step"] in (3, 6)  # resume=auto: the newest complete one
    complete, partial = ckpt.list_checkpoints(root)
    assert [c.step for c in complete] == [3, 6, 9] and partial == []

    # a corrupt newest checkpoint is refused before any training happens
    weights = root / ckpt.step_dir_name(9) / ckpt.MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x5A
    weights.write_bytes(bytes(data))
    before = (exp / "log.jsonl").read_text()
    res = run_train([*common, f"trainer.exp_dir={exp}", "trainer.max_steps=12"], cwd=tmp_path)
    assert res.returncode == 1
    assert f"{weights}: SHA-256 does not match" in res.stderr
    assert "refusing to train" in res.stderr
    assert (exp / "log.jsonl").read_text() == before
    assert [c.step for c in ckpt.list_checkpoints(root)[0]] == [3, 6, 9]

    # resume=never refuses an experiment that already has checkpoints
    res = run_train([*common, f"trainer.exp_dir={exp}", "resume=never"], cwd=tmp_path)
    assert res.returncode == 1 and "already has checkpoints" in res.stderr


@pytest.fixture
def train_data(synth_corpus: Path, synth_km_labels: dict[str, Path]) -> list[str]:
    """HuBERT on the bundled corpus' train split with k-means units."""
    return [
        "model=hubert_tiny",
        f"data.dir={synth_corpus / 'train'}",
        f"data.labels=[{synth_km_labels['train']}]",
    ]


@pytest.mark.slow
def test_sigterm_saves_and_stops_then_resume_continues(
    train_data: list[str], tmp_path: Path
) -> None:
    """A preemption notice (SIGTERM) stops after the current step with a checkpoint there."""
    common = [*train_data, *base_overrides(), "trainer.save_every=1000"]
    exp = tmp_path / "exp"
    proc = start_train(
        [*common, f"trainer.exp_dir={exp}", "trainer.max_steps=1000"],
        cwd=tmp_path,
        log=tmp_path / "run.out",
    )
    log = exp / "log.jsonl"
    wait_for(lambda: log.exists() and '"step": 2,' in log.read_text(), proc, 240, "step 2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143
    stop = events(exp, "stop")
    assert len(stop) == 1 and "signal 15" in stop[0]["reason"]
    saved = Path(stop[0]["checkpoint"])
    step = ckpt.verify_checkpoint(saved)["step"]
    assert step >= 2 and saved.name == ckpt.step_dir_name(step)
    assert not (exp / "final").exists()  # not finished, nothing exported
    assert max(losses(exp)) == step  # every step up to the checkpoint is in the log

    res = run_train(
        [*common, f"trainer.exp_dir={exp}", f"trainer.max_steps={step + 2}"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert events(exp, "resume")[-1]["step"] == step
    assert sorted(losses(exp)) == list(range(1, step + 3))
