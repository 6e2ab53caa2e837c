"""tools/bench/cpu_suite.sh: argument handling and the commands it runs (--dry-run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "tools/bench/cpu_suite.sh"
PARTS = ("features", "loader", "kmeans39", "kmeans768", "train_step")


def suite(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SUITE), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_dry_run_lists_every_part_with_its_command(tmp_path: Path) -> None:
    res = suite("--dry-run", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(":", 1) for line in res.stdout.splitlines())
    assert tuple(lines) == PARTS
    for part, cmd in lines.items():
        assert cmd.startswith(f" {sys.executable} tools/bench/"), cmd
        script = cmd.split()[1]
        assert (REPO / script).is_file(), script
        assert cmd.endswith(f"{tmp_path}/o/{part}.jsonl"), cmd
    assert "--peers torchaudio --profile" in lines["features"]
    assert "--dim 39 --k 100" in lines["kmeans39"] and "--peers sklearn" in lines["kmeans39"]
    # without --full the slow sklearn 768-d run is the recorded one, named in the line
    assert "--recorded-peer" in lines["kmeans768"]
    assert (REPO / "docs/results/bench/kmeans_fit768c.jsonl").is_file()
    assert not (tmp_path / "o").exists()  # a dry run writes nothing


def test_full_times_sklearn_on_768() -> None:
    res = suite("--dry-run", "--full", "--only", "kmeans768")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("kmeans768:")
    assert "--peers sklearn --peer-repeats 1" in res.stdout
    assert "--recorded-peer" not in res.stdout


def test_bad_arguments_are_one_line_errors() -> None:
    for args, words in (
        (("--only", "features,nope"), "unknown part 'nope'"),
        (("--frobnicate",), "unknown argument '--frobnicate'"),
        (("--out",), "--out needs a directory"),
    ):
        res = suite(*args)
        assert res.returncode == 2, args
        assert res.stderr.count("\n") == 1 and words in res.stderr, res.stderr
        assert res.stdout == ""


def test_help_names_the_parts() -> None:
    res = suite("--help")
    assert res.returncode == 0
    for part in PARTS:
        assert f"{part}.jsonl" in res.stdout
    assert "--dry-run" in res.stdout


def test_recommended_only_runs_just_that_part() -> None:
    # the error for an unknown part recommends --only with the listed parts: they work
    res = suite("--dry-run", "--only", "loader,train_step")
    assert res.returncode == 0, res.stderr
    assert [line.split(":")[0] for line in res.stdout.splitlines()] == ["loader", "train_step"]


def test_kmeans_bench_recorded_peer(tmp_path: Path) -> None:
    # --recorded-peer (the suite's 768-d comparison) reads the sklearn line of an earlier run
    # on the same generated data and refuses a file without one for these data
    bench = [sys.executable, str(REPO / "tools/bench/kmeans.py"), "fit", "--dim", "4"]
    small = ["--k", "3", "--data", "gmm", "--peers", "", "--ours", '{"default": {}}']
    small += ["--repeats", "1", "--threads", "1", "--tmp", str(tmp_path)]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*bench, *small, *extra], capture_output=True, text=True, cwd=REPO, timeout=120
        )

    first = run("--frames", "600")
    assert first.returncode == 0, first.stderr
    rec = json.loads(first.stdout)
    rec.update(peer="sklearn", peer_s=rec["ours_s"] * 30, peer_inertia=rec["ours_inertia"] * 1.01)
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text(json.dumps(rec) + "\n")
    res = run("--frames", "600", "--recorded-peer", str(recorded))
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout)
    assert line["peer"] == "sklearn" and line["peer_source"] == f"recorded: {recorded}"
    # ours_s is rounded to ms in the line, the ratio is not
    assert line["ratio"] == pytest.approx(rec["peer_s"] / line["ours_s"], rel=0.05)
    assert line["inertia_ratio"] == round(line["ours_inertia"] / rec["peer_inertia"], 5)
    other = run("--frames", "900", "--recorded-peer", str(recorded))
    assert other.returncode == 1
    assert "has no sklearn line for these data" in other.stderr


def test_features_bench_rejects_unknown_peer_and_profile_feature() -> None:
    bench = [sys.executable, str(REPO / "tools/bench/features.py")]
    for args, words in (
        (["--peers", "torchaudio,nope"], "unknown --peers ['nope']"),
        (["--profile-feats", "plp"], "unknown --profile-feats ['plp']"),
    ):
        res = subprocess.run([*bench, *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and words in res.stderr, res.stderr
