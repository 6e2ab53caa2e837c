"""The egs/digits recipes: every method's run.sh names its preset and the probe stage (dry
run), and one recipe runs end to end, shortened (2 updates), through pretraining and the
linear probe on the bundled digits (scikit-learn's 8x8 scans: tiny, so the accuracies only
show the pipeline works)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs" / "digits"
METHODS = ["simclr", "vicreg", "barlow_twins", "dino", "mae", "ijepa", "data2vec", "hubert"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=timeout)


@pytest.mark.parametrize("method", METHODS)
def test_digits_recipe_dry_run(method, tmp_path):
    proc = run(
        ["bash", str(EGS / method / "run.sh"), "--dry-run", "true", "--exp-dir", str(tmp_path)]
    )
    assert proc.returncode == 0, proc.stderr
    assert f"model={method}_vision_tiny" in proc.stdout and "data.dir=builtin:digits" in proc.stdout
    assert "speechssl.models.vision_probe" in proc.stdout


TRAIN_ARGS = "optim=tiny trainer=cpu_demo trainer.progress_bar=false trainer.tensorboard=false"


def test_digits_recipe_runs_shortened_on_an_image_folder(tmp_path):
    """The default suite's shortened run: the digits recipe with --data pointed at a small
    image folder (real PNGs), 2 updates, probe on half of the images."""
    from test_train_vision import write_image_folder

    folder = write_image_folder(tmp_path / "images", per_class=6)
    exp = tmp_path / "exp"
    argv = ["bash", str(EGS / "mae" / "run.sh"), "--exp-dir", str(exp), "--steps", "2",
            "--data", str(folder), "--batch-size", "6", "--probe-train-fraction", "0.5",
            "--python", sys.executable, "--train-args", TRAIN_ARGS]  # fmt: skip
    proc = run(argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((exp / "probe" / "probe.json").read_text())
    assert [r["encoder"] for r in rows] == ["pretrained", "random_init"]
    assert all(r["train_images"] == 9 and r["test_images"] == 9 for r in rows)
    assert "| mae_vision_tiny | pretrained |" in proc.stdout  # the table is the answer
    # a rerun with the same options skips both stages
    again = run(argv)
    assert again.returncode == 0 and "done earlier, skipping" in again.stdout + again.stderr


@pytest.mark.slow
def test_digits_recipe_runs_shortened(tmp_path):
    exp = tmp_path / "exp"
    argv = ["bash", str(EGS / "simclr" / "run.sh"), "--exp-dir", str(exp), "--steps", "2",
            "--batch-size", "32", "--python", sys.executable, "--train-args", TRAIN_ARGS]  # fmt: skip
    proc = run(argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((exp / "probe" / "probe.json").read_text())
    assert [r["encoder"] for r in rows] == ["pretrained", "random_init"]
    assert all(r["train_images"] == 1000 and r["test_images"] == 797 for r in rows)
    table = (exp / "probe" / "probe.md").read_text()
    assert "random_init" in table and "tiny set" in table
    assert "| simclr_vision_tiny | pretrained |" in proc.stdout  # the table is the answer
