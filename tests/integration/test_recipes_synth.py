"""The synth recipes end to end with every real command, shortened (tiny corpus, a few
training steps, small K): each method's recipe, and a HuBERT run killed mid-stage and
rerun, which must give the same final outputs as an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs" / "synth"

# tiny-corpus training: a few steps of one small batch, checkpoints every 2 steps
TRAIN_ARGS = (
    "data=synth optim=tiny trainer=cpu_demo trainer.save_every=2 trainer.log_every=1 "
    "trainer.progress_bar=false trainer.tensorboard=false data.num_workers=0"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # one thread: the kill/rerun comparison is bitwise
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def hubert_args(corpus: Path, exp: Path, *extra: str) -> list[str]:
    return [
        "bash", str(EGS / "hubert" / "run.sh"), "--data-root", str(corpus), "--stage", "2",
        "--exp-dir", str(exp), "--nj", "2", "--valid-nj", "1", "--iter1-k", "8",
        "--iter2-k", "8", "--iter1-steps", "4", "--iter2-steps", "4",
        "--summary-expect-higher", "", "--train-args", TRAIN_ARGS, *extra,
    ]  # fmt: skip


def run(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=timeout)


def check_summary(exp: Path, iterations: int) -> dict:
    results = json.loads((exp / "summary" / "results.json").read_text())
    assert [u["name"] for u in results["units"]] == [f"iter{i}" for i in range(1, iterations + 1)]
    assert results["units"][0]["features"] == "mfcc"
    assert all(u["pnmi"] is not None and 0 <= u["pnmi"] <= 1 for u in results["units"])
    assert [t["step"] for t in results["train"]] == [4] * iterations
    for i in range(1, iterations + 1):
        assert (exp / "summary" / f"curves_iter{i}.png").stat().st_size > 1000
        assert (exp / f"iter{i}" / "train" / "final" / "model.safetensors").is_file()
    return results


def test_synth_hubert_one_iteration(synth_corpus: Path, tmp_path: Path) -> None:
    """The main recipe, cut to its first iteration on the train set only (default suite)."""
    exp = tmp_path / "exp"
    res = run(hubert_args(synth_corpus, exp, "--num-iterations", "1", "--valid-set", ""))
    assert res.returncode == 0, res.stderr[-3000:]
    check_summary(exp, 1)
    # the results table is the last thing the recipe prints
    assert "| iter1 | mfcc | 8 |" in res.stdout
    assert "stage 7 (dump_iter2): not used" in res.stderr


def test_synth_wavlm_one_iteration(synth_corpus: Path, tmp_path: Path) -> None:
    """WavLM through the HuBERT stages (recipes/wavlm.sh), cut like the HuBERT test above."""
    exp = tmp_path / "exp"
    # up to the summary: conf/wavlm.conf's probing stage is shown by the BEST-RQ test below
    argv = hubert_args(synth_corpus, exp, "--valid-set", "", "--stop-stage", "11")
    argv[1] = str(EGS / "wavlm" / "run.sh")
    res = run(argv)
    assert res.returncode == 0, res.stderr[-3000:]
    check_summary(exp, 1)
    assert "| iter1 | mfcc | 8 |" in res.stdout
    desc = json.loads((exp / "iter1" / "train" / "final" / "model.json").read_text())
    assert desc["name"] == "wavlm_tiny" and desc["config"]["mixing"]["mix_prob"] == 0.2
    logged = [json.loads(line) for line in (exp / "iter1" / "train" / "log.jsonl").open()]
    assert any("mixed_fraction" in r for r in logged if r.get("kind") == "train")


@pytest.mark.slow
def test_synth_hubert_two_iterations(synth_corpus: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    res = run(hubert_args(synth_corpus, exp))
    assert res.returncode == 0, res.stderr[-3000:]
    results = check_summary(exp, 2)
    assert results["units"][1]["features"] == "model layer 1"
    meta = json.loads((exp / "dump" / "iter1_layer1" / "train" / "meta.json").read_text())
    assert meta["kind"] == "model" and meta["extractor"]["layer"] == 1


# the probing stage shortened: PR only, a few probe updates, one lr (BEST-RQ's conf probes)
PROBE_ARGS = "preset=synth trainer.max_steps=3 trainer.save_every=3 lr=[1e-2]"


# default suite: CI runs a shortened recipe of every method (HuBERT's one-iteration test above)
@pytest.mark.parametrize("method", ["wav2vec2", "w2v_bert", "best_rq"])
def test_synth_label_free_recipes(method: str, synth_corpus: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    probe: list[str] = []
    if (
        method == "best_rq"
    ):  # conf/best_rq.conf ends with the probing stage (task data written here)
        probe = ["--probe-tasks", "pr", "--probe-upstreams", "mfcc model",
                 "--probe-data", str(tmp_path / "probe"), "--probe-args", PROBE_ARGS]  # fmt: skip
    res = run(
        [
            "bash", str(EGS / method / "run.sh"), "--data-root", str(synth_corpus),
            "--stage", "2", "--exp-dir", str(exp), "--steps", "4", "--train-args", TRAIN_ARGS,
            *probe,
        ]
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((exp / "summary" / "results.json").read_text())
    assert results["train"][0]["step"] == 4 and results["train"][0]["model"] == f"{method}_tiny"
    assert (exp / "summary" / "curves.png").stat().st_size > 1000
    assert f"| {method} | {method}_tiny | 4 |" in res.stdout
    if probe:
        rows = json.loads((exp / "summary" / "probe.json").read_text())
        assert [(r["upstream"], r["task"], r["metric"]) for r in rows] == [
            ("mfcc", "pr", "per"), ("best_rq", "pr", "per")
        ]  # fmt: skip
        assert all(math.isfinite(r["value"]) and r["value"] >= 0 for r in rows)
        assert (tmp_path / "probe" / "pr" / "test").is_dir()  # the task data stage 5 wrote
        # the probed model is this run's final model, and the table is printed last
        assert "| best_rq |" in res.stdout.rsplit("| upstream |", 1)[1]
    else:
        assert not (exp / "probe").exists()  # no --probe-tasks in these confs: no stage 5


def _session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(exp: Path) -> dict[str, str]:
    """Hashes of every final output that must not depend on an interruption."""
    files = [
        exp / "iter1" / "kmeans" / "kmeans.safetensors",
        exp / "iter2" / "kmeans" / "kmeans.safetensors",
        *sorted((exp / "iter1" / "labels").glob("*/shard-*.bin")),
        *sorted((exp / "iter2" / "labels").glob("*/shard-*.bin")),
        *sorted((exp / "dump").glob("*/*/shard-*.bin")),
        exp / "iter1" / "train" / "final" / "model.safetensors",
        exp / "iter2" / "train" / "final" / "model.safetensors",
    ]
    out = {str(f.relative_to(exp)): _digest(f) for f in files}
    for it in ("iter1", "iter2"):  # kmeans.json also holds paths and timings
        km = json.loads((exp / it / "kmeans" / "kmeans.json").read_text())
        out[f"{it}/kmeans"] = f"{km['iterations']} {km['inertia_per_frame']!r}"
    results = json.loads((exp / "summary" / "results.json").read_text())
    for u in results["units"]:
        out[f"units:{u['name']}"] = json.dumps({k: v for k, v in u.items() if k != "report"})
    for t in results["train"]:
        out[f"train:{t['name']}"] = f"{t['step']} {t['loss']!r} {t['dev_loss']!r}"
    return out


@pytest.mark.slow
def test_killed_mid_stage_then_rerun_matches_uninterrupted(
    synth_corpus: Path, tmp_path: Path
) -> None:
    ref = tmp_path / "ref"
    res = run(hubert_args(synth_corpus, ref))
    assert res.returncode == 0, res.stderr[-3000:]

    exp = tmp_path / "exp"
    proc = subprocess.Popen(
        hubert_args(synth_corpus, exp),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # kill everything (recipe, stage, trainer, workers) like a power cut, in the middle of
    # iteration 1's training: after its first checkpoint, before its end
    ckpt = exp / "iter1" / "train" / "checkpoints" / "step-00000002" / "meta.json"
    t0 = time.monotonic()
    while not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - t0 < 600, "no checkpoint in 10 minutes"
        time.sleep(0.05)
    killed = _session_pids(proc.pid)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    # SIGKILL is asynchronous: the recipe's lock is free once the last killed process is gone
    t0 = time.monotonic()
    while set(killed) & set(_session_pids(proc.pid)):
        assert time.monotonic() - t0 < 60, "killed processes did not exit"
        time.sleep(0.05)
    assert not (exp / ".stages" / "stage-06.train_iter1.done").exists()
    assert (exp / ".stages" / "stage-05.labels_iter1.done").exists()

    res = run(hubert_args(synth_corpus, exp))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "stage 5 (labels_iter1): done earlier, skipping" in res.stderr
    log = (exp / "iter1" / "train" / "log.jsonl").read_text()
    assert '"event": "resume"' in log  # training resumed from its checkpoint
    assert _outputs(exp) == _outputs(ref)
