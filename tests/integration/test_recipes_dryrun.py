"""Recipe templates and egs run.sh scripts in --dry-run mode: the exact commands each stage
would run, option handling, and the published settings of the real-corpus recipes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs"
RUN_SCRIPTS = sorted(EGS.glob("*/*/run.sh"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run(script: Path, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=60,
    )


def stages(stdout: str) -> dict[int, list[list[str]]]:
    """Dry-run output as {stage number: [argv of each command]}."""
    out: dict[int, list[list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("# stage "):
            current = int(line.split()[2])
            out[current] = []
        elif line.strip():
            assert current is not None, line
            out[current].append(shlex.split(line))
    return out


def inner(argv: list[str]) -> list[str]:
    """The command a launcher line runs (after the launcher, its options and the log)."""
    if not argv[0].startswith("launch_"):
        return argv
    i = 1
    while argv[i].startswith("--"):
        i += 2
    return argv[i + 1 :]


def opts(argv: list[str]) -> dict[str, str]:
    """--flag value pairs and key=value overrides of a command line."""
    found: dict[str, str] = {}
    for i, word in enumerate(argv):
        if word.startswith("--") and i + 1 < len(argv):
            found[word] = argv[i + 1]
        elif "=" in word and not word.startswith("-"):
            key, _, value = word.partition("=")
            found[key] = value
    return found


def test_every_run_script_has_help() -> None:
    assert RUN_SCRIPTS, "no egs/*/*/run.sh found"
    for script in RUN_SCRIPTS:
        res = run(script, "--help")
        assert res.returncode == 0, f"{script}: {res.stderr}"
        assert "--stage" in res.stdout and "Stages" in res.stdout, script


def test_unknown_option_is_rejected() -> None:
    res = run(EGS / "synth" / "hubert" / "run.sh", "--iter1-kk", "5")
    assert res.returncode == 2
    assert "unknown option --iter1-kk" in res.stderr


def test_synth_hubert_plan(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    res = run(EGS / "synth" / "hubert" / "run.sh", "--dry-run", "true", "--exp-dir", exp)
    assert res.returncode == 0, res.stderr
    assert not exp.exists()  # a dry run writes nothing
    plan = stages(res.stdout)
    assert sorted(plan) == list(range(1, 12))
    assert plan[1] == [
        ["../local/data.sh", "--data-root", "../data", "--hours", "1.0", "--nj", "2"]
    ]
    assert plan[2] == [
        ["speechssl", "data", "validate", "../data/train"],
        ["speechssl", "data", "validate", "../data/dev"],
    ]
    dump = [inner(c) for c in plan[3]]
    assert [opts(c)["--data"] for c in dump] == ["../data/train", "../data/dev"]
    assert all(opts(c)["--kind"] == "mfcc" and opts(c)["--rank"] == "JOB" for c in dump)
    assert opts(dump[0])["--out"] == f"{exp}/dump/mfcc/train"
    fit = inner(plan[4][0])
    assert fit[:3] == ["speechssl", "kmeans", "fit"]
    assert opts(fit)["--features"] == f"{exp}/dump/mfcc/train"
    report = inner(plan[5][-1])
    assert opts(report)["--alignments"] == "../data/dev/ali.phones"
    train1 = opts(inner(plan[6][0]))
    assert train1["model"] == "hubert_tiny"
    assert train1["data.labels"] == f"[{exp}/iter1/labels/train]"
    assert train1["data.dev_labels"] == f"[{exp}/iter1/labels/dev]"
    assert train1["trainer.exp_dir"] == f"{exp}/iter1/train"
    assert "trainer.grad_accum" not in train1  # --ref-world-size 0
    layer = opts(inner(plan[7][0]))
    assert layer["--kind"] == "model" and layer["--checkpoint"] == f"{exp}/iter1/train/final"
    assert opts(inner(plan[10][0]))["data.labels"] == f"[{exp}/iter2/labels/train]"
    summary = plan[11][-1]
    assert summary[:3] == ["speechssl", "recipe", "summary"]
    assert "--expect-higher" in summary and "pnmi" in summary


def test_one_iteration_and_teacher_features(tmp_path: Path) -> None:
    script = EGS / "synth" / "hubert" / "run.sh"
    res = run(script, "--dry-run", "true", "--exp-dir", tmp_path, "--num-iterations", "1")
    assert res.returncode == 0, res.stderr
    assert "# stage 7 (dump_iter2): dump a layer of the iteration-1 model [not used: " in res.stdout
    assert sorted(stages(res.stdout)) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert all(stages(res.stdout)[n] == [] for n in (7, 8, 9, 10))

    res = run(script, "--dry-run", "true", "--iter1-features", "model")
    assert res.returncode == 1
    assert "--iter1-features model needs --iter1-checkpoint" in res.stderr
    res = run(
        script, "--dry-run", "true", "--exp-dir", tmp_path, "--iter1-features", "model",
        "--iter1-checkpoint", "teacher/final", "--iter1-layer", "9",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    dump = opts(inner(stages(res.stdout)[3][0]))
    assert dump["--checkpoint"] == "teacher/final" and dump["--layer"] == "9"
    assert dump["--out"] == f"{tmp_path}/dump/teacher_layer9/train"


@pytest.mark.parametrize(("nodes", "nproc", "accum"), [(1, 8, "4"), (4, 8, "1"), (2, 2, "8")])
def test_gradient_accumulation_matches_reference_world(nodes: int, nproc: int, accum: str) -> None:
    res = run(
        REPO / "recipes" / "hubert.sh", "--dry-run", "true", "--stage", "6", "--stop-stage", "6",
        "--train-nodes", str(nodes), "--train-nproc", str(nproc),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    line = stages(res.stdout)[6][0]
    assert opts(line)["--nodes"] == str(nodes) and opts(line)["--nproc"] == str(nproc)
    assert opts(inner(line))["trainer.grad_accum"] == accum


def test_gradient_accumulation_must_divide() -> None:
    res = run(REPO / "recipes" / "hubert.sh", "--dry-run", "true", "--train-nproc", "3")
    assert res.returncode == 1
    assert "not a multiple of the 3 training processes" in res.stderr


def test_label_free_templates(tmp_path: Path) -> None:
    res = run(EGS / "synth" / "wav2vec2" / "run.sh", "--dry-run", "true", "--exp-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)
    assert sorted(plan) == [1, 2, 3, 4]
    train = opts(inner(plan[3][0]))
    assert train["model"] == "wav2vec2_tiny" and train["trainer.max_steps"] == "300"
    assert "data.labels" not in train
    # the templates' own defaults are the published base settings
    res = run(
        REPO / "recipes" / "wav2vec2.sh", "--dry-run", "true", "--stage", "3", "--stop-stage", "3"
    )
    train = opts(inner(stages(res.stdout)[3][0]))
    assert train["model"] == "wav2vec2_base" and train["trainer.max_steps"] == "400000"
    assert train["trainer.grad_accum"] == "64"
    res = run(
        REPO / "recipes" / "w2v_bert.sh", "--dry-run", "true", "--stage", "3", "--stop-stage", "3"
    )
    assert opts(inner(stages(res.stdout)[3][0]))["model"] == "w2v_bert_base"
