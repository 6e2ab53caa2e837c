"""`speechssl probe superb` (the task set for one upstream, task after task, resumable, caches
shared by tasks on the same task root, then the report) on the tiny bundled SYNTHETIC
corpus; and the fbank/MFCC baselines learning an utterance-level task (they were stuck at the
majority class while the upstream applied per-utterance CMVN)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from speechssl.cli.main import main as cli

QUICK = ["preset=synth", "trainer.max_steps=6", "trainer.save_every=3", "trainer.log_every=3",
         "trainer.tensorboard=false", "lr=[1e-2]"]  # fmt: skip


@pytest.fixture(scope="module")
def roots(synth_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("superb") / "tasks"
    assert cli(["probe", "prepare-synth", "--corpus", str(synth_corpus), "--out", str(root),
                "--tasks", "pr,ks,sid"]) == 0  # fmt: skip
    # one root labelled for both SID and PR (the SID root plus the PR labels of its
    # utterances, from the corpus's alignments): the two tasks then share one layer cache
    from speechssl.downstream.prep_synth import phones_from_alignment

    ali = {}
    for split in ("train", "dev", "test"):
        for line in (synth_corpus / split / "ali.phones").read_text().splitlines():
            utt, *frames = line.split()
            ali[utt] = " ".join(phones_from_alignment(frames))
    shutil.copytree(root / "sid", root / "pr_sid")
    shutil.copy(root / "pr" / "phones.txt", root / "pr_sid" / "phones.txt")
    for split in ("train", "dev", "test"):
        utts = [x.split()[0] for x in (root / "sid" / split / "utt2spk").read_text().splitlines()]
        (root / "pr_sid" / split / "utt2phones").write_text(
            "".join(f"{u} {ali[u]}\n" for u in utts)
        )
    return root


def test_superb_runs_skips_and_reports(roots, tmp_path, capsys):
    out = tmp_path / "superb"
    base = ["probe", "superb", "--upstream", "fbank", "--data", str(roots), "--out", str(out)]
    # PR and SID on the same task root share one layer cache
    shared = roots / "pr_sid"
    args = [*base, "--tasks", "pr,sid,ks", "--task-data", f"pr={shared}", "--task-data",
            f"sid={shared}", *QUICK]  # fmt: skip
    assert cli(args) == 0
    state = json.loads((out / "superb.json").read_text())
    assert state["order"] == ["pr", "sid", "ks"]
    assert {t: s["state"] for t, s in state["tasks"].items()} == dict.fromkeys(
        ("pr", "sid", "ks"), "done"
    )
    for task in ("pr", "sid", "ks"):
        res = json.loads((out / task / "results.json").read_text())
        assert res["task"] == task and np.isfinite(res["test"])
        assert state["tasks"][task]["test"] == res["test"]
    caches = sorted(p.name for p in (out / "cache").iterdir())
    assert len(caches) == 2, caches  # pr+sid share one, ks has its own
    assert str(out / "cache") in (out / "pr" / "lr-0.01" / "config.yaml").read_text()
    report = out / "report"
    rows = json.loads((report / "probe.json").read_text())
    assert [(r["upstream"], r["task"]) for r in rows] == [("fbank", t) for t in ("pr", "sid", "ks")]
    assert (report / "probe_layers.png").stat().st_size > 0
    table = (report / "probe.md").read_text()
    assert "| upstream | PR PER % ↓ | KS ACC % ↑ | SID ACC % ↑ |" in table
    capsys.readouterr()

    # a rerun skips every finished task and trains nothing
    stamps = {t: (out / t / "results.json").stat().st_mtime_ns for t in ("pr", "sid", "ks")}
    assert cli(args) == 0
    printed = capsys.readouterr().out
    for task in ("pr", "sid", "ks"):
        assert f"superb: {task}: finished, skipped" in printed
        assert (out / task / "results.json").stat().st_mtime_ns == stamps[task]
    assert "running" not in printed

    # the report verb takes the superb dir itself (labelled) for all its finished tasks
    assert cli(["probe", "report", f"FBANK={out}", "--out", str(tmp_path / "rep")]) == 0
    rows = json.loads((tmp_path / "rep" / "probe.json").read_text())
    assert [(r["upstream"], r["task"]) for r in rows] == [("FBANK", t) for t in ("pr", "sid", "ks")]

    # other overrides for a finished task, or another upstream, into the same dir are refused
    assert cli([*args, "ks:task.proj_dim=16"]) == 1
    assert f"{out / 'ks'}: task ks was run with other overrides" in capsys.readouterr().err
    assert cli([*args[:3], "mfcc", *args[4:]]) == 1
    assert "a superb run of another upstream (fbank)" in capsys.readouterr().err


def test_superb_interrupted_task_resumes(roots, tmp_path, capsys):
    """A task cut short after its lr run's checkpoints were written (here: its results and
    the run's done record removed) is taken up again from those checkpoints, not retrained;
    the finished task is skipped."""
    out = tmp_path / "superb"
    args = ["probe", "superb", "--upstream", "mfcc", "--data", str(roots), "--out", str(out),
            "--tasks", "ks,pr", *QUICK]  # fmt: skip
    assert cli(args) == 0
    before = json.loads((out / "pr" / "results.json").read_text())
    log_path = out / "pr" / "lr-0.01" / "log.jsonl"
    trained = [x for x in log_path.read_text().splitlines() if '"kind": "train"' in x]
    (out / "pr" / "results.json").unlink()
    (out / "pr" / "lr-0.01.done.json").unlink()
    capsys.readouterr()
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "superb: ks: finished, skipped" in printed
    assert "superb: pr: running" in printed
    again = [x for x in log_path.read_text().splitlines() if '"kind": "train"' in x]
    assert again == trained  # no step trained again
    after = json.loads((out / "pr" / "results.json").read_text())
    assert (after["dev"], after["test"]) == (before["dev"], before["test"])


def test_superb_errors(roots, tmp_path, capsys):
    base = ["probe", "superb", "--upstream", "fbank", "--data", str(roots), "--out",
            str(tmp_path / "o")]  # fmt: skip
    # the default (bundled) set needs qbe/sid/ic/sd roots the fixture does not have
    assert cli([*base, *QUICK]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"task qbe: no task root {roots / 'qbe'}" in err and "--tasks" in err
    # the recommended narrowing works
    assert cli([*base, "--tasks", "pr", *QUICK]) == 0
    capsys.readouterr()
    assert cli([*base, "--tasks", "pr,nope"]) == 1
    assert "no such probing task nope" in capsys.readouterr().err
    assert cli([*base, "--tasks", "pr,pr"]) == 1
    assert "repeated task(s) pr" in capsys.readouterr().err
    assert cli([*base, "--tasks", "pr", *QUICK, "trainer.exp_dir=x"]) == 1
    assert "superb sets trainer.exp_dir" in capsys.readouterr().err
    assert cli([*base, "--tasks", "pr", "--task-data", "ks=/nowhere", *QUICK]) == 1
    assert "ks is not in --tasks" in capsys.readouterr().err
    assert cli([*base, "--tasks", "pr", "sd:trainer.max_steps=4"]) == 1
    assert "task sd is not in --tasks" in capsys.readouterr().err


def _voices_sid_root(root: Path) -> Path:
    """A SID task root of three "speakers", each a tone of its own pitch under noise
    (:func:`probing_fixtures.write_voice`): 8 train, 3 dev, 3 test utterances each."""
    from probing_fixtures import write_voice

    from speechssl.data.kaldi_dir import write_data_dir

    for split, count, offset in (("train", 8, 0), ("dev", 3, 100), ("test", 3, 200)):
        wav, spk, dur = {}, {}, {}
        for s in range(3):
            for k in range(count):
                utt = f"spk{s}-{split}-{k:02d}"
                seconds = 0.3 + 0.02 * k
                path = write_voice(
                    root / "wav" / f"{utt}.wav", seconds, s, seed=offset + 10 * s + k
                )
                wav[utt], spk[utt], dur[utt] = str(path), f"spk{s}", seconds
        write_data_dir(root / split, wav_scp=wav, utt2spk=spk, utt2dur=dur)
    return root


@pytest.mark.parametrize("upstream", ["fbank", "mfcc"])
def test_baselines_learn_utterance_level_task(tmp_path, upstream):
    """With per-utterance CMVN every utterance's features averaged to zero, so the
    mean-pooling head saw one constant input and scored the majority class (1/3 here); the
    baselines are now standardised with training-set statistics and tell the voices apart."""
    from speechssl.downstream.cli import main as probe_main

    root = _voices_sid_root(tmp_path / "sid")
    exp = tmp_path / "exp"
    with pytest.raises(SystemExit) as exc:
        probe_main(["task=sid", f"upstream={upstream}", f"data.dir={root}",
                    f"trainer.exp_dir={exp}", "preset=synth", "trainer.max_steps=40",
                    "trainer.save_every=20", "trainer.log_every=20", "trainer.tensorboard=false",
                    "lr=[1e-2]"])  # fmt: skip
    assert exc.value.code == 0
    res = json.loads((exp / "results.json").read_text())
    assert res["dev"] >= 0.9 and res["test"] >= 0.9, res["sweep"]  # chance: 1/3
    # the statistics are part of the saved probe (buffers), from the training split only
    from safetensors.torch import load_file

    state = load_file(str(exp / "lr-0.01" / "final" / "model.safetensors"))
    assert state["featurizer.mean"].shape == state["featurizer.inv_std"].shape
    assert float(state["featurizer.mean"].abs().max()) > 0


def test_report_units_directions_and_picks():
    """Rates in %, QbE's MTWV as it is; each metric's direction; lr or layer picked on dev."""
    from speechssl.downstream.report import markdown

    rows = [
        {"upstream": "u", "task": "ks", "metric": "acc", "value": 0.5, "mode": "max", "lr": 0.01},
        {"upstream": "u", "task": "qbe", "metric": "mtwv", "value": 0.0123, "mode": "max",
         "lr": None, "layer": 3},
        {"upstream": "u", "task": "sd", "metric": "der", "value": 0.25, "mode": "min",
         "lr": 0.001},
    ]  # fmt: skip
    table = markdown(rows)
    assert "| upstream | KS ACC % ↑ | QBE MTWV ↑ | SD DER % ↓ |" in table
    assert "| u | 50.00 | 0.0123 | 25.00 |" in table
    assert "| u | lr 0.01 | layer 3 | lr 0.001 |" in table


def test_recipe_probe_tasks_superb_is_the_bundled_set(tmp_path):
    """The main job's stage 12 with `--probe-tasks superb` prepares and probes the bundled set."""
    from test_recipes_dryrun import EGS, inner, opts, run, stages

    res = run(EGS / "synth" / "hubert" / "run.sh", "--dry-run", "true", "--exp-dir",
              tmp_path / "exp", "--probe-tasks", "superb")  # fmt: skip
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)[12]
    assert plan[0][-2:] == ["--tasks", "pr,ks,qbe,sid,ic,sd"]
    tasks = list(dict.fromkeys(opts(inner(c))["task"] for c in plan[1:-1]))
    assert tasks == ["pr", "ks", "qbe", "sid", "ic", "sd"]
