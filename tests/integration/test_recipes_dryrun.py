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
    assert sorted(plan) == list(range(1, 14))  # stages 12 (probe) and 13 (export) listed, not used
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
    train1_cmd = inner(plan[6][0])
    # the corpus's tuned model preset lives in egs/synth/hubert/conf/train/model/
    assert train1_cmd[train1_cmd.index("--config-dir") + 1] == "conf/train"
    train1 = opts(train1_cmd)
    assert train1["model"] == "hubert_tiny_synth"
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
    # stage 12: probing (task data, 3 tasks x 4 upstreams, the table)
    assert plan[12][0] == [
        "../local/probe_data.sh",
        "--data-root",
        "../data",
        "--out",
        "../data/probe",
        "--tasks",
        "pr,sid,ks",
    ]
    probes = [opts(inner(c)) for c in plan[12][1:-1]]
    assert [(p["task"], p["upstream"]) for p in probes[:4]] == [
        ("pr", "mfcc"),
        ("pr", "fbank"),
        ("pr", f"{exp}/iter1/train"),
        ("pr", f"{exp}/iter2/train"),
    ]
    assert {p["task"] for p in probes} == {"pr", "sid", "ks"} and len(probes) == 12
    assert all(p["preset"] == "synth" for p in probes)
    assert plan[12][-1][:3] == ["speechssl", "probe", "report"]


def test_one_iteration_and_teacher_features(tmp_path: Path) -> None:
    script = EGS / "synth" / "hubert" / "run.sh"
    res = run(script, "--dry-run", "true", "--exp-dir", tmp_path, "--num-iterations", "1")
    assert res.returncode == 0, res.stderr
    assert "# stage 7 (dump_iter2): dump a layer of the iteration-1 model [not used: " in res.stdout
    assert sorted(stages(res.stdout)) == list(range(1, 14))
    assert all(stages(res.stdout)[n] == [] for n in (7, 8, 9, 10, 13))  # 12 probes iter1

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
    assert sorted(plan) == [1, 2, 3, 4, 5, 6] and plan[5] == plan[6] == []  # probe, export: off
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


@pytest.mark.parametrize(
    "how", [["recipes/data2vec.sh"], ["recipes/pretrain.sh", "--family", "data2vec"]]
)
def test_data2vec_defaults_to_the_existing_preset(how: list[str]) -> None:
    # regression: --family data2vec used to default to model=data2vec_base (no such preset)
    # and recipes/data2vec.sh did not exist
    res = run(REPO / how[0], *how[1:], "--dry-run", "true", "--stage", "3", "--stop-stage", "3")
    assert res.returncode == 0, res.stderr
    train = opts(inner(stages(res.stdout)[3][0]))
    assert train["model"] == "data2vec_audio_base"
    assert (REPO / "speechssl" / "configs" / "model" / "data2vec_audio_base.yaml").is_file()
    assert train["trainer.max_steps"] == "400000" and train["trainer.grad_accum"] == "16"
    # the family's defaults come first: any flag on the command line wins
    res = run(
        REPO / how[0], *how[1:], "--dry-run", "true", "--stage", "3", "--stop-stage", "3",
        "--model", "data2vec_audio_tiny", "--ref-world-size", "0",
    )  # fmt: skip
    train = opts(inner(stages(res.stdout)[3][0]))
    assert train["model"] == "data2vec_audio_tiny" and "trainer.grad_accum" not in train


def test_every_family_preset_named_by_the_recipes_exists() -> None:
    for conf in sorted((REPO / "recipes" / "conf").glob("*.conf")):
        models = [ln.split()[1] for ln in conf.read_text().splitlines() if ln.startswith("--model")]
        assert models, conf
        for model in models:
            assert (REPO / "speechssl" / "configs" / "model" / f"{model}.yaml").is_file(), conf
        assert (REPO / "recipes" / f"{conf.stem}.sh").is_file(), f"no wrapper for {conf}"


@pytest.mark.parametrize(
    ("family", "message"), [([], "got ''"), (["--family", "bert"], "got 'bert'")]
)
def test_pretrain_without_a_known_family_is_refused(family: list[str], message: str) -> None:
    res = run(REPO / "recipes" / "pretrain.sh", *family, "--dry-run", "true")
    assert res.returncode == 1
    assert (
        "--family must be one of: best_rq data2vec distilhubert speaker_dino speaker_vicreg ssast w2v_bert wav2vec2"
        in res.stderr
        and message in res.stderr
    )


def test_librispeech_hubert_published_settings(tmp_path: Path) -> None:
    res = run(EGS / "librispeech" / "hubert" / "run.sh", "--dry-run", "true", "--exp-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)
    assert opts(plan[1][0])["--corpus-dir"] == "downloads/LibriSpeech"
    fit1 = opts(inner(plan[4][0]))
    assert (fit1["--k"], fit1["--percent"]) == ("100", "10")
    assert fit1["--features"] == f"{tmp_path}/dump/mfcc/train_960"
    train1 = opts(inner(plan[6][0]))
    assert train1["model"] == "hubert_base" and train1["trainer.max_steps"] == "250000"
    # 8 GPUs of one machine reach the 32-GPU batch with 4 accumulated micro-batches
    assert opts(plan[6][0])["--nproc"] == "8" and train1["trainer.grad_accum"] == "4"
    assert opts(inner(plan[7][0]))["--layer"] == "6"
    assert opts(inner(plan[8][0]))["--k"] == "500"
    train2 = opts(inner(plan[10][0]))
    assert train2["trainer.max_steps"] == "400000"
    assert train2["data.labels"] == f"[{tmp_path}/iter2/labels/train_960]"
    # the same on 4 nodes x 8 GPUs needs no accumulation
    res = run(
        EGS / "librispeech" / "hubert" / "run.sh", "--dry-run", "true", "--stage", "6",
        "--stop-stage", "6", "--train-nodes", "4",
    )  # fmt: skip
    assert opts(inner(stages(res.stdout)[6][0]))["trainer.grad_accum"] == "1"


def test_librispeech_wav2vec2_published_settings(tmp_path: Path) -> None:
    res = run(
        EGS / "librispeech" / "wav2vec2" / "run.sh", "--dry-run", "true", "--exp-dir", tmp_path
    )
    assert res.returncode == 0, res.stderr
    train = opts(inner(stages(res.stdout)[3][0]))
    assert train["model"] == "wav2vec2_base" and train["trainer.max_steps"] == "400000"
    assert train["trainer.grad_accum"] == "8"  # 64 GPUs' batch on 8


def test_librilight_hubert_large_plan_and_slurm_lines(tmp_path: Path) -> None:
    res = run(EGS / "librilight" / "hubert" / "run.sh", "--dry-run", "true", "--exp-dir", tmp_path)
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)
    assert all(plan[n] == [] for n in (7, 8, 9, 10))  # one iteration
    dump = plan[3][0]
    assert dump[0] == "launch_slurm.sh" and opts(dump)["--nj"] == "1000"
    dump_cmd = opts(inner(dump))
    assert dump_cmd["--kind"] == "model" and dump_cmd["--layer"] == "9"
    assert dump_cmd["--dtype"] == "float16"
    assert dump_cmd["--checkpoint"] == "../../librispeech/hubert/exp/hubert/iter2/train/final"
    assert opts(plan[3][1])["--nj"] == "8"  # the validation set gets fewer shards
    fit = plan[4][0]
    assert (opts(fit)["--nodes"], opts(fit)["--nproc"]) == ("4", "8")
    assert opts(inner(fit))["--k"] == "500"
    train = plan[6][0]
    assert (opts(train)["--nodes"], opts(train)["--nproc"]) == ("16", "8")
    tr = opts(inner(train))
    assert tr["model"] == "hubert_large" and tr["trainer.max_steps"] == "400000"
    assert tr["trainer.grad_accum"] == "1" and tr["data.max_batch_seconds"] == "56.25"

    # the launcher lines themselves expand to srun steps (multi-node k-means: one torchrun
    # per node; sharded dumping: one single-task step per shard)
    res = subprocess.run(
        ["bash", str(REPO / "recipes" / "utils" / fit[0]), "--dry-run", "true", *fit[1:]],
        capture_output=True, text=True, env=_env(), timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    srun = shlex.split(res.stdout.split(" > ")[0])
    assert srun[0] == "srun" and "--nodes=4" in srun and "--ntasks-per-node=1" in srun
    assert srun[srun.index("--nproc") + 1] == "8"
    assert srun[srun.index("--nproc") - 1].endswith("slurm_torchrun_node.sh")
    res = subprocess.run(
        ["bash", str(REPO / "recipes" / "utils" / dump[0]), "--dry-run", "true", *dump[1:]],
        capture_output=True, text=True, env=_env(), timeout=30,
    )  # fmt: skip
    lines = res.stdout.splitlines()
    assert len(lines) == 1000
    assert "--gpus-per-node=1" in lines[999] and "--rank 999" in lines[999]


def test_wavlm_and_best_rq_templates_default_to_their_presets(tmp_path: Path) -> None:
    # WavLM reuses the HuBERT stages with WavLM models; a flag given still wins
    res = run(
        REPO / "recipes" / "wavlm.sh", "--dry-run", "true", "--stage", "6", "--stop-stage", "6",
        "--exp-dir", tmp_path / "w",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    train = opts(inner(stages(res.stdout)[6][0]))
    assert train["model"] == "wavlm_base" and train["trainer.max_steps"] == "250000"
    assert (REPO / "speechssl" / "configs" / "model" / "wavlm_base.yaml").is_file()
    res = run(
        REPO / "recipes" / "wavlm.sh", "--dry-run", "true", "--stage", "6", "--stop-stage", "6",
        "--exp-dir", tmp_path / "w", "--iter1-model", "wavlm_large",
    )  # fmt: skip
    assert opts(inner(stages(res.stdout)[6][0]))["model"] == "wavlm_large"
    res = run(
        REPO / "recipes" / "best_rq.sh", "--dry-run", "true", "--stage", "3", "--stop-stage", "3",
        "--exp-dir", tmp_path / "b",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    train = opts(inner(stages(res.stdout)[3][0]))
    assert train["model"] == "best_rq_base" and "data.labels" not in train
    assert (REPO / "speechssl" / "configs" / "model" / "best_rq_base.yaml").is_file()


def test_label_free_recipes_probe_stage(tmp_path: Path) -> None:
    # the shared probing stage (recipes/utils/common_stages.sh) in the label-free template:
    # stage 5 for BEST-RQ (the model named after the family) and DistilHuBERT (student AND
    # teacher), the same commands the HuBERT recipe's stage 12 runs
    exp = tmp_path / "b"
    res = run(EGS / "synth" / "best_rq" / "run.sh", "--dry-run", "true", "--stage", "5",
              "--stop-stage", "5", "--exp-dir", exp)  # fmt: skip
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)[5]
    assert plan[0] == ["../local/probe_data.sh", "--data-root", "../data", "--out", "../data/probe",
                       "--tasks", "pr,sid,ks"]  # fmt: skip
    probes = [opts(inner(c)) for c in plan[1:-1]]
    assert [(p["task"], p["upstream"]) for p in probes[:3]] == [
        ("pr", "mfcc"), ("pr", "fbank"), ("pr", f"{exp}/train")
    ]  # fmt: skip
    assert len(probes) == 9 and all(p["preset"] == "synth" for p in probes)
    assert f"best_rq={exp}/probe/ks_best_rq" in plan[-1] and plan[-1][:3] == [
        "speechssl",
        "probe",
        "report",
    ]

    exp = tmp_path / "d"
    teacher = tmp_path / "teacher" / "final"
    res = run(EGS / "synth" / "distilhubert" / "run.sh", "--dry-run", "true", "--stage", "5",
              "--stop-stage", "5", "--exp-dir", exp, "--teacher", teacher)  # fmt: skip
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)[5]
    probes = [opts(inner(c)) for c in plan[1:-1]]
    assert [(p["upstream"], p["trainer.exp_dir"]) for p in probes if p["task"] == "sid"] == [
        ("mfcc", f"{exp}/probe/sid_mfcc"), ("fbank", f"{exp}/probe/sid_fbank"),
        (str(teacher), f"{exp}/probe/sid_teacher"), (f"{exp}/train", f"{exp}/probe/sid_distilhubert"),
    ]  # fmt: skip
    report = plan[-1]
    assert (
        f"teacher={exp}/probe/pr_teacher" in report
        and f"distilhubert={exp}/probe/pr_distilhubert" in report
    )

    # every family's synth recipe documents the probing options in --help
    for method in ("best_rq", "distilhubert", "wavlm"):
        res = run(EGS / "synth" / method / "run.sh", "--help")
        assert all(f"--probe-{o}" in res.stdout for o in ("tasks", "upstreams", "data", "args"))
    # without --probe-tasks the stage is off; teacher without --teacher is a one-line error
    res = run(REPO / "recipes" / "wav2vec2.sh", "--dry-run", "true", "--exp-dir", tmp_path / "w")
    assert "# stage 5 (probe): " in res.stdout and "[not used: probing is false]" in res.stdout
    bad = run(REPO / "recipes" / "best_rq.sh", "--dry-run", "true", "--exp-dir", tmp_path / "x",
              "--probe-tasks", "pr", "--probe-data", tmp_path, "--probe-upstreams", "mfcc teacher")  # fmt: skip
    assert bad.returncode != 0 and "--probe-upstreams teacher needs --teacher DIR" in bad.stderr
    bad = run(REPO / "recipes" / "best_rq.sh", "--dry-run", "true", "--exp-dir", tmp_path / "x",
              "--probe-tasks", "pr")  # fmt: skip
    assert bad.returncode != 0 and "--probe-tasks needs --probe-data DIR" in bad.stderr
