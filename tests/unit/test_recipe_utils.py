"""recipes/utils: options, stages with .done sentinels that record the options, job launchers.

Everything runs the real bash scripts in subprocesses; the toy recipe in
tests/fixtures/recipes/toy_recipe.sh gives each stage a visible effect.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UTILS = REPO / "recipes" / "utils"
TOY = REPO / "tests" / "fixtures" / "recipes" / "toy_recipe.sh"
FAKE_SLURM = REPO / "tests" / "fixtures" / "fake_slurm"


def _env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # the interpreter's bin dir holds torchrun and the speechssl console scripts
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    if extra_path is not None:
        path.insert(0, str(extra_path))
    env["PATH"] = os.pathsep.join(path)
    env["OMP_NUM_THREADS"] = "1"
    return env


def bash(*args: str | Path, cwd: Path | None = None, timeout: float = 60, path: Path | None = None):
    return subprocess.run(
        ["bash", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(path),
        timeout=timeout,
    )


def calls(out: Path) -> list[int]:
    return [int(x) for x in (out / "calls").read_text().split()]


# ----------------------------------------------------------------------------- options


@pytest.fixture
def opts_script(tmp_path: Path) -> Path:
    script = tmp_path / "opts.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            . {UTILS / "common.sh"}
            usage="An options test."
            opt nj 4 "parallel jobs"
            opt train_set train "training set"
            opt dry_run false "print only"
            opt percent 10 "percent of frames"
            opt kind mfcc "feature kind"
            opt train_args "" "extra overrides"
            parse_options "$@"
            require_integers nj
            print_options
            """
        )
    )
    return script


def _values(stdout: str) -> dict[str, str]:
    return dict(line[2:].split("=", 1) for line in stdout.splitlines())


def test_options_defaults_and_overrides(opts_script: Path) -> None:
    res = bash(opts_script)
    assert res.returncode == 0, res.stderr
    assert _values(res.stdout) == {
        "nj": "4",
        "train-set": "train",
        "dry-run": "false",
        "percent": "10",
        "kind": "mfcc",
        "train-args": "",
    }
    res = bash(
        opts_script,
        "--nj", "2", "--train-set=dev", "--dry_run", "true", "--percent", "2.5",
        "--kind", "fbank", "--train-args", "a=1 b=[2,3]", "--nj", "8",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    vals = _values(res.stdout)
    assert vals["nj"] == "8"  # the later flag wins
    assert vals["train-set"] == "dev"
    assert vals["dry-run"] == "true"
    assert vals["percent"] == "2.5"
    assert vals["kind"] == "fbank"
    assert vals["train-args"] == "a=1 b=[2,3]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus", "1"], "unknown option --bogus"),
        (["--nj"], "option --nj needs a value"),
        (["stray"], "unexpected argument 'stray'"),
        (["--nj", "two"], "--nj must be a non-negative integer, got 'two'"),
        (["--config=/nonexistent.conf"], "--config /nonexistent.conf: no such file"),
    ],
)
def test_options_reject_bad_flags(opts_script: Path, args: list[str], message: str) -> None:
    res = bash(opts_script, *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert res.stdout == ""


def test_options_config_file(opts_script: Path, tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text(
        "# a comment\n--nj 3\n\n--train-set=train_960   # trailing comment\n"
        "--train-args  model=x optim.lr=1e-3\n--kind=fbank\n"
    )
    res = bash(opts_script, "--nj", "1", "--config", conf, "--kind", "mfcc")
    assert res.returncode == 0, res.stderr
    vals = _values(res.stdout)
    # flags apply in order: the config overrides --nj 1, the later --kind overrides the config
    assert vals["nj"] == "3"
    assert vals["train-set"] == "train_960"
    assert vals["train-args"] == "model=x optim.lr=1e-3"
    assert vals["kind"] == "mfcc"

    bad = tmp_path / "bad.conf"
    bad.write_text("--nj 3\n--bogus 1\n")
    res = bash(opts_script, "--config", bad)
    assert res.returncode == 2
    assert f"unknown option --bogus ({bad}:2)" in res.stderr
    bad.write_text("--nj\n")
    res = bash(opts_script, "--config", bad)
    assert res.returncode == 2 and f"{bad}:1: option --nj has no value" in res.stderr
    res = bash(opts_script, "--config", tmp_path / "missing.conf")
    assert res.returncode == 2 and "no such file" in res.stderr


def test_print_options_round_trips_through_config(opts_script: Path, tmp_path: Path) -> None:
    first = bash(opts_script, "--train-args", "", "--kind", "fbank", "--nj", "5")
    conf = tmp_path / "saved.conf"
    conf.write_text(first.stdout)
    again = bash(opts_script, "--config", conf)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout


def test_help_lists_options_and_stages() -> None:
    res = bash(TOY, "--help")
    assert res.returncode == 0
    assert "Test recipe for the stage machinery." in res.stdout
    assert re.search(r"--stop-stage\s+last stage to run \[1000\]", res.stdout)
    assert re.search(r"--fail-at\s+stage that fails \(0: none\) \[0\]", res.stdout)
    assert re.search(r"3\s+optional\s+write c.txt \(only if extra == 1\)", res.stdout)


# ----------------------------------------------------------------------------- stages


def test_stages_run_in_order_with_logs_and_sentinels(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    res = bash(TOY, "--out", out)
    assert res.returncode == 0, res.stderr
    assert calls(out) == [1, 2, 4]  # stage 3's condition is false
    assert (out / "d.txt").read_text() == "a\nb\njob 0 a\njob 1 a\n"
    assert sorted(p.name for p in (out / ".stages").glob("*.done")) == [
        "stage-01.prepare.done",
        "stage-02.slow.done",
        "stage-04.jobs.done",
    ]
    log = (out / "logs" / "stage-04.jobs.log").read_text()
    assert "+ launch_local.sh --nj 2" in log and "=== stage 4 (jobs) done in" in log
    # each job has its own log with the exit status in its footer
    assert "with exit status 0" in (out / "logs" / "job.1.log").read_text()
    assert re.search(r"stage 2 \(slow\): done in \d+s", res.stderr)
    assert "stage 3 (optional): not used (extra == 1 is false)" in res.stderr
    # the options of the run are kept beside the logs, as a valid --config file
    assert f"--out={out}" in (out / "logs" / "options.txt").read_text().splitlines()

    # a rerun skips every finished stage
    res = bash(TOY, "--out", out)
    assert res.returncode == 0, res.stderr
    assert calls(out) == [1, 2, 4]
    assert res.stderr.count("done earlier, skipping") == 3


def test_failed_stage_stops_and_rerun_resumes_there(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    res = bash(TOY, "--out", out, "--fail-at", "2")
    assert res.returncode == 1
    log = out / "logs" / "stage-02.slow.log"
    assert f"stage 2 (slow) failed; see {log}" in res.stderr
    assert "command failed (exit 1" in res.stderr  # the log's tail is shown
    assert calls(out) == [1, 2]
    assert not (out / ".stages" / "stage-02.slow.done").exists()

    res = bash(TOY, "--out", out, "--fail-at", "2", "--stage", "2")
    assert res.returncode == 1  # the same options: stage 1 is not rerun
    assert calls(out) == [1, 2, 2]
    res = bash(TOY, "--out", out)
    assert res.returncode == 0, res.stderr
    # --fail-at changed, so stage 1 runs again too (its commands are idempotent)
    assert calls(out) == [1, 2, 2, 1, 2, 4]
    assert "stage 1 (prepare): options changed since it was done; running it again" in res.stderr
    assert "FAILED (exit 1)" in log.read_text()  # the failed attempt stays in the log


def test_stage_range_and_condition(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    assert bash(TOY, "--out", out, "--stop-stage", "2").returncode == 0
    assert calls(out) == [1, 2]
    # the stage range is not part of a stage's record: stage 1 and 2 stay done
    assert bash(TOY, "--out", out, "--stop-stage", "3").returncode == 0
    assert calls(out) == [1, 2]  # stage 3's condition is false
    assert (
        bash(TOY, "--out", out, "--stage", "3", "--stop-stage", "3", "--extra", "1").returncode == 0
    )
    assert calls(out) == [1, 2, 3]
    assert (out / "c.txt").exists()


def test_changed_options_rerun_done_stages_launchers_do_not(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    assert bash(TOY, "--out", out).returncode == 0
    # where jobs run is not part of a stage's record: another launcher skips every stage
    res = bash(TOY, "--out", out, "--job-cmd", "launch_local.sh --max-parallel 1")
    assert res.returncode == 0, res.stderr
    assert calls(out) == [1, 2, 4] and res.stderr.count("done earlier, skipping") == 3
    # other options: the done stages run again and their commands decide what to redo
    res = bash(TOY, "--out", out, "--letter", "b")
    assert res.returncode == 0, res.stderr
    assert calls(out) == [1, 2, 4, 1, 2, 4]
    assert res.stderr.count("options changed since it was done; running it again") == 3
    assert (out / "a.txt").read_text() == "b\n"
    assert "--letter=b" in (out / ".stages" / "stage-01.prepare.done").read_text().splitlines()
    res = bash(TOY, "--out", out, "--letter", "b")
    assert calls(out) == [1, 2, 4, 1, 2, 4]  # and the new options are the record now


def test_dry_run_prints_commands_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    res = bash(TOY, "--out", out, "--dry-run", "true", "--nj", "3")
    assert res.returncode == 0, res.stderr
    assert not out.exists()
    lines = res.stdout.splitlines()
    assert lines[0] == "# stage 1 (prepare): write a.txt"
    assert f"mkdir -p {out}" in lines
    assert "# stage 3 (optional): write c.txt [not used: extra == 1 is false]" in lines
    assert f"launch_local.sh --nj 3 {out}/logs/job.JOB.log sh -c " in res.stdout
    # after a real run, dry-run says which stages would be skipped
    assert bash(TOY, "--out", out, "--stop-stage", "2").returncode == 0
    res = bash(TOY, "--out", out, "--dry-run", "true")
    assert (
        "# stage 2 (slow): sleep, then write b.txt atomically [done: would be skipped]"
        in res.stdout
    )
    assert "# stage 4 (jobs): write one file per job, then d.txt\n" in res.stdout


def test_concurrent_run_is_refused(tmp_path: Path) -> None:
    if shutil.which("flock") is None:
        pytest.skip("flock(1) is not installed; the lock is skipped without it")
    out = tmp_path / "exp"
    first = subprocess.Popen(
        ["bash", str(TOY), "--out", str(out), "--sleep-s", "5"],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: (out / "logs" / "stage-02.slow.log").exists())
        res = bash(TOY, "--out", out)
        assert res.returncode == 1
        assert "another run is already using" in res.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def _wait_for(cond, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _pgids_running(needle: str) -> set[int]:
    res = subprocess.run(["ps", "-e", "-o", "pgid=,args="], capture_output=True, text=True)
    return {int(line.split()[0]) for line in res.stdout.splitlines() if needle in line}


def _pids_in_group(pgid: int) -> list[int]:
    res = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True)
    return [int(p) for p, g in (line.split() for line in res.stdout.splitlines()) if int(g) == pgid]


@pytest.mark.parametrize("how", ["sigterm-recipe", "sigkill-group"])
def test_kill_mid_stage_then_rerun_matches_uninterrupted(tmp_path: Path, how: str) -> None:
    ref = tmp_path / "ref"
    assert bash(TOY, "--out", ref, "--sleep-s", "0.1").returncode == 0

    out = tmp_path / "exp"
    proc = subprocess.Popen(
        ["bash", str(TOY), "--out", str(out), "--sleep-s", "30"],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for(lambda: (out / "logs" / "stage-02.slow.log").exists())
    time.sleep(0.5)  # well inside stage 2's sleep
    stage_pgids = _pgids_running("sleep 30")
    assert stage_pgids and proc.pid not in stage_pgids  # the stage has its own group
    if how == "sigterm-recipe":
        # a TERM to the recipe alone must stop the stage's processes too
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        assert "interrupted; rerun the same command to resume" in err
        for pgid in stage_pgids:
            assert _pids_in_group(pgid) == [], "stage processes outlived the recipe"
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pgid in stage_pgids:  # the stage runs in its own group: kill it as well
            os.killpg(pgid, signal.SIGKILL)
    assert not (out / "b.txt").exists()
    assert not (out / ".stages" / "stage-02.slow.done").exists()

    res = bash(TOY, "--out", out, "--sleep-s", "0.1")
    assert res.returncode == 0, res.stderr
    # stage 2, which never finished, runs again; stage 1 too, as --sleep-s changed
    assert calls(out) == [1, 2, 1, 2, 4]
    for name in ("a.txt", "b.txt", "d.txt"):
        assert (out / name).read_text() == (ref / name).read_text()


# ----------------------------------------------------------------------------- launchers

LOCAL = UTILS / "launch_local.sh"
SLURM = UTILS / "launch_slurm.sh"


def test_launch_local_jobs_logs_and_failures(tmp_path: Path) -> None:
    res = bash(
        LOCAL, "--nj", "3", tmp_path / "j.JOB.log", "sh", "-c", "echo out JOB; exit $((JOB == 1))"
    )
    assert res.returncode == 1
    assert "1 of 3 job(s) failed" in res.stderr
    assert f"job 1: exit status 1, log {tmp_path}/j.1.log" in res.stderr
    log1 = (tmp_path / "j.1.log").read_text().splitlines()
    assert log1[0] == "# sh -c 'echo out 1; exit $((1 == 1))'"
    assert log1[2] == "out 1"
    assert log1[-1].endswith("with exit status 1")
    assert (tmp_path / "j.2.log").read_text().splitlines()[-1].endswith("with exit status 0")

    res = bash(LOCAL, "JOB=2:3", tmp_path / "r.JOB.log", "echo", "JOB")
    assert res.returncode == 0, res.stderr
    assert "3\n" in (tmp_path / "r.3.log").read_text()
    assert not (tmp_path / "r.0.log").exists()


def test_launch_local_max_parallel(tmp_path: Path) -> None:
    # each job records its start and end; no more than two may overlap
    res = bash(
        LOCAL, "--nj", "5", "--max-parallel", "2", tmp_path / "p.JOB.log",
        "sh", "-c", f"echo start >> {tmp_path}/ev; sleep 0.3; echo end >> {tmp_path}/ev",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    running = peak = 0
    for ev in (tmp_path / "ev").read_text().split():
        running += 1 if ev == "start" else -1
        peak = max(peak, running)
    assert peak == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nj", "2", "x.log", "true"], "2 jobs need JOB in the log name"),
        (["--nodes", "2", "x.log", "true"], "use launch_slurm.sh for multi-node jobs"),
        (["--nproc", "2", "--nj", "2", "x.JOB.log", "true"], "cannot be combined with 2 jobs"),
        (["--bogus", "1", "x.log", "true"], "unknown option --bogus"),
        (["--nj", "0", "x.log", "true"], "--nj must be at least 1"),
        (["x.log"], "need LOG and COMMAND"),
    ],
)
def test_launch_local_usage_errors(args: list[str], message: str) -> None:
    res = bash(LOCAL, *args)
    assert res.returncode == 2
    assert message in res.stderr


def test_launch_local_dry_run(tmp_path: Path) -> None:
    res = bash(
        LOCAL,
        "--dry-run",
        "true",
        "--nj",
        "2",
        "d.JOB.log",
        "speechssl",
        "features",
        "dump",
        "--rank",
        "JOB",
    )
    assert res.returncode == 0
    assert res.stdout == (
        "speechssl features dump --rank 0 > d.0.log\nspeechssl features dump --rank 1 > d.1.log\n"
    )


def test_launch_local_sigterm_stops_jobs(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        ["bash", str(LOCAL), "--nj", "2", str(tmp_path / "s.JOB.log"), "sleep", "60"],
        env=_env(),
        start_new_session=True,
    )
    _wait_for(lambda: all((tmp_path / f"s.{j}.log").exists() for j in (0, 1)))
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    _wait_for(lambda: _pids_in_group(proc.pid) == [], timeout=10)
    assert "exit status 143" in (tmp_path / "s.0.log").read_text()


_ALLREDUCE = (
    "import torch, torch.distributed as d; d.init_process_group('gloo'); "
    "t = torch.ones(1) * (d.get_rank() + 1); d.all_reduce(t); "
    "print(f'rank {d.get_rank()} of {d.get_world_size()} sum {int(t.item())}', flush=True); "
    "d.barrier(); d.destroy_process_group()"
)


@pytest.mark.distributed
def test_launch_local_nproc_runs_torchrun(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    res = bash(LOCAL, "--nproc", "2", log, sys.executable, "-c", _ALLREDUCE, timeout=120)
    assert res.returncode == 0, res.stderr + log.read_text()
    text = log.read_text()
    assert text.startswith("# torchrun --standalone --nnodes 1 --nproc-per-node 2 --no-python")
    assert "rank 0 of 2 sum 3" in text and "rank 1 of 2 sum 3" in text


def test_launch_slurm_dry_run_lines(tmp_path: Path) -> None:
    res = bash(
        SLURM, "--dry-run", "true", "--nj", "2", "--mem", "8G", "--partition", "cpu",
        "dump.JOB.log", "speechssl", "features", "dump", "--nshard", "2", "--rank", "JOB",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"srun --kill-on-bad-exit=1 --job-name=dump.{j} --mem=8G --partition=cpu --nodes=1 "
        f"--ntasks=1 speechssl features dump --nshard 2 --rank {j} > dump.{j}.log"
        for j in (0, 1)
    ]
    res = bash(
        SLURM, "--dry-run", "true", "--nodes", "4", "--nproc", "8", "--gpus-per-node", "8",
        "--srun-args", "--exclusive --signal=USR1@90", "train.log", "speechssl-train", "model=hubert_base",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == (
        "srun --kill-on-bad-exit=1 --job-name=train --gpus-per-node=8 --exclusive "
        "--signal=USR1@90 --nodes=4 --ntasks-per-node=1 "
        f"{UTILS}/slurm_torchrun_node.sh --nproc 8 --port 29500 speechssl-train "
        "model=hubert_base > train.log\n"
    )


def test_launch_slurm_without_srun_is_a_clear_error(tmp_path: Path) -> None:
    if shutil.which("srun") is not None:
        pytest.skip("this machine has a real srun")
    res = bash(SLURM, tmp_path / "x.log", "true")
    assert res.returncode == 2
    assert "srun not found" in res.stderr


def test_launch_slurm_jobs_through_srun(tmp_path: Path) -> None:
    # tests/fixtures/fake_slurm stands in for Slurm's srun/scontrol: it runs each step's
    # tasks as local processes with the SLURM_* variables a real step would have
    res = bash(
        SLURM,
        "--nj",
        "2",
        "--time",
        "1:00:00",
        tmp_path / "s.JOB.log",
        "sh",
        "-c",
        "echo shard JOB",
        path=FAKE_SLURM,
    )
    assert res.returncode == 0, res.stderr
    for j in (0, 1):
        text = (tmp_path / f"s.{j}.log").read_text()
        assert (
            f"--job-name=s.{j} --time=1:00:00 --nodes=1 --ntasks=1 sh -c 'echo shard {j}'" in text
        )
        assert f"shard {j}\n" in text


@pytest.mark.slow
@pytest.mark.distributed
def test_launch_slurm_two_node_torchrun(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    res = bash(
        SLURM, "--nodes", "2", "--nproc", "1", "--port", "29531", log, sys.executable, "-c", _ALLREDUCE,
        path=FAKE_SLURM, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + log.read_text()
    text = log.read_text()
    assert "torchrun: 2 node(s) x 1 process(es), rendezvous localhost:29531" in text
    assert "rank 0 of 2 sum 3" in text and "rank 1 of 2 sum 3" in text
