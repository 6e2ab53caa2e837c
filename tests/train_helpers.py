"""Helpers for trainer tests: run `speechssl-train` as a real subprocess, read its log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def train_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    env.update(extra)
    return env


def train_cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "speechssl.train", *overrides]


def run_train(
    overrides: list[str], *, cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_cmd(overrides),
        cwd=cwd,
        env=train_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_train(
    overrides: list[str], *, cwd: Path, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            train_cmd(overrides), cwd=cwd, env=train_env(**env), stdout=fh, stderr=subprocess.STDOUT
        )


def wait_for(
    cond: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    poll: float = 0.02,
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training exited (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def records(exp: Path, kind: str) -> list[dict[str, Any]]:
    out = []
    for line in (exp / "log.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("kind") == kind:
                out.append(rec)
    return out


def losses(exp: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in records(exp, "train")}


def events(exp: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in records(exp, "event") if r.get("event") == name]


def base_overrides() -> list[str]:
    """Small, fast CPU settings shared by the trainer's integration tests."""
    return [
        "data=synth",
        "optim=tiny",
        "data.min_seconds=0.5",
        "data.crop_seconds=1.5",
        "data.max_batch_seconds=4.5",
        "data.num_workers=0",
        "optim.total_steps=100",
        "trainer.device=cpu",
        "trainer.log_every=1",
        "trainer.progress_bar=false",
        "trainer.tensorboard=false",
        "trainer.export_final=false",
    ]


def copy_data_dir(
    src: Path,
    dst: Path,
    *,
    gain: dict[str, float] | None = None,
    peak: dict[str, float] | None = None,
    wav_scp: dict[str, str] | None = None,
    drop_files: tuple[str, ...] = (),
) -> Path:
    """A copy of Kaldi data dir ``src`` with faults put into real files: ``gain`` rewrites
    those utterances' audio as float32 WAV scaled by the factor (finite samples far outside
    [-1, 1], which overflow fp16/fp32 activations: a real non-finite loss); ``wav_scp``
    replaces those utterances' ``wav.scp`` values (stereo files, pipes, missing paths);
    ``peak`` does the same, scaling the file's largest magnitude to the value (3e38: at
    float32's limit, finite in the file, overflowing in the first layer's sums);
    ``drop_files`` leaves tables out (e.g. ``utt2dur``, so durations come from the audio)."""
    import shutil

    import soundfile as sf

    dst.mkdir(parents=True)
    for table in src.iterdir():
        if table.is_file() and table.name not in drop_files:
            shutil.copy(table, dst / table.name)
    entries = dict(line.split(maxsplit=1) for line in (src / "wav.scp").read_text().splitlines())
    import numpy as np

    for utt in {**(gain or {}), **(peak or {})}:
        data, rate = sf.read(entries[utt].strip(), dtype="float64")
        if peak and utt in peak:
            data = data / np.abs(data).max() * peak[utt]
        else:
            data = data * (gain or {})[utt]
        out = dst / f"{utt}.gain.wav"
        sf.write(out, data.astype(np.float32), rate, subtype="FLOAT")
        entries[utt] = str(out)
    entries.update(wav_scp or {})
    (dst / "wav.scp").write_text("".join(f"{u} {v.strip()}\n" for u, v in sorted(entries.items())))
    return dst


def utt_ids(data_dir: Path) -> list[str]:
    return [line.split()[0] for line in (data_dir / "wav.scp").read_text().splitlines()]
