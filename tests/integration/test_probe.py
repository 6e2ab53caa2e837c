"""Probing end to end on the tiny bundled SYNTHETIC corpus: task data prep, layer caches,
`speechssl-probe` on PR, ASR, KS, SID and ASV (lr sweep, best on dev, test scored) over a
speechssl model dir, a transformers dir and the baselines, resume, the report, the errors
for bad input; and the five tasks on the real-layout fixtures through the prep verbs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from speechssl.cli.main import main as cli
from speechssl.downstream.cli import main as probe_main
from speechssl.downstream.tasks import SPLITS


def probe(args: list[str]) -> int:
    try:
        probe_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("speechssl-probe main() did not exit")


QUICK = ["preset=synth", "trainer.max_steps=6", "trainer.save_every=3", "trainer.log_every=3",
         "trainer.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def tasks(synth_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    assert (
        cli(["probe", "prepare-synth", "--corpus", str(synth_corpus), "--out", str(root / "tasks"),
             "--tasks", "pr,asr,ks,sid,asv"])
        == 0
    )  # fmt: skip
    from speechssl.models import create_model
    from speechssl.models.io import save_model_dir

    torch.manual_seed(0)
    model = create_model("hubert_tiny", **{"encoder.num_layers": 2}).eval()
    save_model_dir(model, root / "model")
    # a transformers HubertModel dir (random weights, 320-sample stride = 50 Hz frames)
    from transformers import HubertConfig, HubertModel

    hf = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        conv_dim=(16,) * 5, conv_kernel=(10, 4, 4, 2, 2), conv_stride=(5, 4, 4, 2, 2),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    HubertModel(hf).eval().save_pretrained(root / "hf")
    return root


def test_prepare_synth_layout(tasks):
    t = tasks / "tasks"
    from speechssl.data.tables import read_table

    for task, label in (("pr", "utt2phones"), ("sid", "utt2spk"), ("ks", "utt2keyword")):
        for split in ("train", "dev", "test"):
            d = t / task / split
            assert set(read_table(d / label)) == set(read_table(d / "wav.scp")), (task, split)
    # SID: split by utterance within speakers, so every test speaker is a training speaker
    train_spk = set(read_table(t / "sid" / "train" / "utt2spk").values())
    assert set(read_table(t / "sid" / "test" / "utt2spk").values()) <= train_spk
    ks = set(read_table(t / "ks" / "train" / "utt2keyword").values())
    assert "_silence_" in ks
    phones = read_table(t / "pr" / "train" / "utt2phones")
    assert all(p.split() and "SIL" not in p.split() for p in phones.values())


def test_probe_pr_sweep_resume_report(tasks, tmp_path):
    """The shortened probing run of the default suite: PR on a speechssl model dir, two lrs."""
    _probe_runs(tasks, tmp_path, [("pr", str(tasks / "model"), ["lr=[1e-2,1e-3]"])])
    before = (tmp_path / "pr_model" / "results.json").read_text()
    # a rerun finds both runs finished and writes the same results
    assert probe(["task=pr", f"upstream={tasks / 'model'}", f"data.dir={tasks / 'tasks' / 'pr'}",
                  f"trainer.exp_dir={tmp_path / 'pr_model'}", *QUICK, "lr=[1e-2,1e-3]"]) == 0  # fmt: skip
    assert (tmp_path / "pr_model" / "results.json").read_text() == before
    # other settings in the same exp dir are refused, not mixed in
    assert probe(["task=pr", f"upstream={tasks / 'model'}", f"data.dir={tasks / 'tasks' / 'pr'}",
                  f"trainer.exp_dir={tmp_path / 'pr_model'}", *QUICK, "lr=[1e-2]",
                  "task.proj_dim=16"]) == 1  # fmt: skip


def test_probe_tasks_cache_report(tasks, tmp_path):
    """PR, KS and SID over a model dir and both baselines, then the report."""
    model = str(tasks / "model")
    runs = _probe_runs(tasks, tmp_path, [
        ("pr", model, ["lr=[1e-2,1e-3]"]),
        ("pr", "fbank", ["lr=[1e-2]"]),
        ("ks", model, ["lr=[1e-3]"]),
        ("sid", "mfcc", ["lr=[1e-3]", "trainer.grad_accum=2"]),
    ])  # fmt: skip
    assert cli(["probe", "report", *runs, "--out", str(tmp_path / "summary")]) == 0
    rows = json.loads((tmp_path / "summary" / "probe.json").read_text())
    assert {(r["upstream"], r["task"]) for r in rows} == {
        ("model", "pr"),
        ("fbank", "pr"),
        ("model", "ks"),
        ("mfcc", "sid"),
    }
    table = (tmp_path / "summary" / "probe.md").read_text()
    assert "| upstream | PR PER % ↓ | KS ACC % ↑ | SID ACC % ↑ |" in table


def _probe_runs(tasks, tmp_path, cases) -> list[str]:
    t = tasks / "tasks"
    runs = []
    for task, upstream, extra in cases:
        exp = tmp_path / f"{task}_{Path(upstream).name}"
        code = probe([f"task={task}", f"upstream={upstream}", f"data.dir={t / task}",
                      f"trainer.exp_dir={exp}", *QUICK, *extra])  # fmt: skip
        assert code == 0, (task, upstream)
        res = json.loads((exp / "results.json").read_text())
        assert res["task"] == task and res["metric"] == task_metric(task)
        assert np.isfinite(res["test"]) and res["test"] >= 0
        assert res["lr"] in [r["lr"] for r in res["sweep"]]
        best = (min if res["mode"] == "min" else max)(r["dev"] for r in res["sweep"])
        assert res["dev"] == best
        weights = json.loads((exp / "layer_weights.json").read_text())
        assert len(weights["layers"]) == (1 if upstream in ("fbank", "mfcc") else 3)
        assert abs(sum(weights["weights"]) - 1) < 1e-5
        log = [
            json.loads(x)
            for x in (exp / f"lr-{res['lr']:g}" / "log.jsonl").read_text().splitlines()
        ]
        assert any(r["kind"] == "dev" and task_metric(task) in r for r in log)
        meta = json.loads((exp / "cache" / "train" / "meta.json").read_text())
        assert meta["dtype"] == "float16" and meta["extractor"]["upstream"]["name"]
        runs.append(f"{Path(upstream).name}={exp}")
    return runs


def task_metric(task: str) -> str:
    return {"pr": "per", "asr": "wer", "ks": "acc", "sid": "acc", "asv": "eer"}[task]


def test_probe_asr_asv_fbank(tasks, tmp_path):
    """The default suite's ASR and ASV runs: fbank, narrow heads, two steps."""
    quick = ["lr=[1e-3]", "task.proj_dim=16", "trainer.max_steps=2", "trainer.save_every=2"]
    _probe_runs(tasks, tmp_path, [("asr", "fbank", quick), ("asv", "fbank", quick)])
    asv = json.loads((tmp_path / "asv_fbank" / "results.json").read_text())
    assert set(asv["test_metrics"]) == {"eer", "min_dcf"}


@pytest.mark.slow
def test_probe_asr_asv_upstreams_report(tasks, tmp_path):
    """ASR and ASV on the bundled corpus over a speechssl dir, a transformers dir and fbank
    (narrow heads: the SUPERB widths are the task files' defaults)."""
    model, hf = str(tasks / "model"), str(tasks / "hf")
    small = ["lr=[1e-3]", "task.proj_dim=32"]
    runs = _probe_runs(tasks, tmp_path, [
        ("asr", "fbank", ["lr=[1e-2,1e-3]", "task.proj_dim=32"]),
        ("asr", hf, small),
        ("asv", model, small),
        ("asv", "fbank", small),
        ("pr", hf, ["lr=[1e-2]"]),
    ])  # fmt: skip
    asr = json.loads((tmp_path / "asr_fbank" / "results.json").read_text())
    assert set(asr["test_metrics"]) == {"wer", "cer", "loss"}
    assert asr["test_metrics"]["wer"] == asr["test"] <= 2.0
    asv = json.loads((tmp_path / "asv_fbank" / "results.json").read_text())
    assert set(asv["test_metrics"]) == {"eer", "min_dcf"}
    assert 0.0 <= asv["test"] <= 1.0 and 0.0 <= asv["test_metrics"]["min_dcf"] <= 1.0 + 1e-9
    assert cli(["probe", "report", *runs, "--out", str(tmp_path / "summary")]) == 0
    table = (tmp_path / "summary" / "probe.md").read_text()
    assert "ASR WER % ↓" in table and "ASV EER % ↓" in table


def test_prepare_synth_asr_asv(tasks):
    from speechssl.data.tables import read_table
    from speechssl.downstream.asv import read_trials

    t = tasks / "tasks"
    spk = {s: set(read_table(t / "asv" / s / "utt2spk").values()) for s in SPLITS}
    assert not spk["train"] & spk["dev"] and not spk["train"] & spk["test"]
    for split in ("dev", "test"):
        utts = set(read_table(t / "asv" / split / "utt2spk"))
        trials = read_trials(t / "asv" / split / "trials", known_utts=utts)
        n = len(utts)
        assert len(trials) == n * (n - 1) // 2
        assert any(tr.target for tr in trials) and not all(tr.target for tr in trials)
    text = read_table(t / "asr" / "train" / "text")
    assert all(v.strip() for v in text.values())
    chars = (t / "asr" / "chars.txt").read_text().split()
    for split in SPLITS:
        for v in read_table(t / "asr" / split / "text").values():
            assert set(v.replace(" ", "")) <= set(chars)


def test_cached_layers_equal_upstream_output(tasks, tmp_path):
    """The float16 cache holds what the upstream computes for each utterance."""
    from speechssl.data.audio import LoadOptions
    from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance
    from speechssl.downstream.cache import open_layer_cache
    from speechssl.downstream.upstreams import load_upstream

    data = tasks / "tasks" / "ks" / "dev"
    out = tmp_path / "cache"
    model = str(tasks / "model")
    assert cli(["probe", "cache", "--upstream", model, "--data", str(data), "--out", str(out),
                "--device", "cpu", "--layers", "0,2"]) == 0  # fmt: skip
    up = load_upstream(model)
    cache = open_layer_cache(out, up, [0, 2])
    ddir = KaldiDataDir(data)
    for utt in ddir.utt_ids():
        wave, _ = load_utterance(ddir, utt, LoadOptions(sample_rate=16000))
        ref = up(wave[None], torch.tensor([len(wave)]), [0, 2])
        got = torch.from_numpy(np.asarray(cache.get(utt), dtype=np.float32))
        assert got.shape[0] == int(ref.frames[0])
        want = torch.stack(ref.hidden_states, dim=2)[0]
        assert torch.allclose(got, want, atol=2e-2, rtol=1e-2), utt


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def test_probe_errors(tasks, tmp_path, capsys):
    t = tasks / "tasks"
    base = ["preset=synth", "trainer.max_steps=2", "lr=[1e-2]"]

    def run(task: str, root: Path, upstream: str = "fbank", *extra: str) -> str:
        capsys.readouterr()
        code = probe([f"task={task}", f"upstream={upstream}", f"data.dir={root}",
                      f"trainer.exp_dir={tmp_path / 'exp' / root.name}", *base, *extra])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code == 1 and err.count("\n") == 0, err
        return err

    # a label missing for an utterance
    root = _copy(t / "ks", tmp_path / "missing")
    first = (root / "dev" / "utt2keyword").read_text().split()[0]
    _edit(root / "dev" / "utt2keyword", lambda ls: ls[1:])
    err = run("ks", root)
    assert first in err and "no label" in err
    # a class in test that training never saw
    root = _copy(t / "ks", tmp_path / "unknown")
    _edit(root / "test" / "utt2keyword", lambda ls: [ls[0].split()[0] + " banana", *ls[1:]])
    assert "'banana' does not occur in the training set" in run("ks", root)
    # an empty phone sequence
    root = _copy(t / "pr", tmp_path / "empty")
    _edit(root / "train" / "utt2phones", lambda ls: [ls[0].split()[0], *ls[1:]])
    assert "empty phone sequence" in run("pr", root)
    # more phones than upstream frames
    root = _copy(t / "pr", tmp_path / "long")
    phone = (root / "phones.txt").read_text().split()[0]
    _edit(
        root / "train" / "utt2phones", lambda ls: [ls[0].split()[0] + (" " + phone) * 5000, *ls[1:]]
    )
    assert "CTC needs at least one frame per phone" in run("pr", root)
    # an empty transcript
    root = _copy(t / "asr", tmp_path / "notext")
    utt = (root / "train" / "text").read_text().split()[0]
    _edit(root / "train" / "text", lambda ls: [utt, *ls[1:]])
    err = run("asr", root)
    assert utt in err and "empty transcript" in err
    # a character in test that the vocabulary (the task root's chars.txt) lacks
    root = _copy(t / "asr", tmp_path / "newchar")
    utt = (root / "test" / "text").read_text().split()[0]
    _edit(root / "test" / "text", lambda ls: [utt + " CAF\u00c9", *ls[1:]])
    err = run("asr", root)
    assert utt in err and "character(s) \u00c9 are not in the character vocabulary" in err
    # without chars.txt the vocabulary is the training transcripts' characters
    (root / "chars.txt").unlink()
    assert "not in the character vocabulary" in run("asr", root)
    # a trial naming an utterance that is not in its split
    root = _copy(t / "asv", tmp_path / "badtrial")
    _edit(
        root / "test" / "trials", lambda ls: [*ls, "spk99-000001 " + ls[0].split()[1] + " target"]
    )
    err = run("asv", root)
    assert "spk99-000001" in err and "not in the data dir" in err
    # beam settings belong to asr
    err = run("pr", t / "pr", "fbank", "task.lexicon=lex.txt")
    assert "task.lexicon/task.lm are beam-search settings of task asr" in err
    # a cache made from another upstream
    cache = tmp_path / "shared_cache"
    assert cli(["probe", "cache", "--upstream", "fbank", "--data", str(t / "sid" / "train"),
                "--out", str(cache / "train"), "--device", "cpu"]) == 0  # fmt: skip
    err = run("sid", t / "sid", "mfcc", f"data.cache_dir={cache}")
    assert "layer cache made from another upstream" in err and "fbank" in err
    # an unknown key, with the suggestion that exists
    err = run("sid", t / "sid", "fbank", "+task.layer_nrom=true")
    assert "did you mean task.layer_norm" in err
    assert probe(["--cfg", "job", "task=sid", "upstream=fbank", "data.dir=x", "trainer.exp_dir=y",
                  "task.layer_norm=true"]) == 0  # fmt: skip


@pytest.mark.slow
def test_recipe_probe_stage(tasks, synth_corpus, tmp_path):
    """Stage 12 of recipes/hubert.sh: prepare the bundled corpus's task data, probe two
    upstreams (a baseline and a model dir), print the table, write summary/probe.json."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    bin_dir = tmp_path / "bin"  # what `pip install` makes of the speechssl-probe entry point
    bin_dir.mkdir()
    shim = bin_dir / "speechssl-probe"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m speechssl.downstream "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])}  # fmt: skip
    exp = tmp_path / "exp"
    res = subprocess.run(
        ["bash", str(repo / "egs" / "synth" / "hubert" / "run.sh"), "--data-root", str(synth_corpus),
         "--exp-dir", str(exp), "--stage", "12", "--stop-stage", "12", "--probe-tasks", "pr",
         "--probe-upstreams", f"fbank {tasks / 'model'}", "--probe-data", str(tmp_path / "probe"),
         "--probe-args", "preset=synth trainer.max_steps=3 trainer.save_every=3 lr=[1e-2]"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = json.loads((exp / "summary" / "probe.json").read_text())
    assert [(r["upstream"], r["task"], r["metric"]) for r in rows] == [
        ("fbank", "pr", "per"),
        ("model", "pr", "per"),
    ]
    assert all(np.isfinite(r["value"]) for r in rows)
    assert "| upstream | PR PER % ↓ |" in res.stdout  # the table is printed at the end


def test_uncached_batches_equal_cached(tasks, tmp_path):
    """data.cache=false (the upstream on every batch) feeds the head the same hidden states
    as the float16 cache, with the same frame counts."""
    from speechssl.distributed import DistEnv
    from speechssl.downstream.config import ProbeConfig, ProbeDataConfig
    from speechssl.downstream.run import build_splits
    from speechssl.downstream.tasks import ProbeTask, get_task, load_task_data
    from speechssl.downstream.upstreams import load_upstream
    from speechssl.train.config import TrainerConfig

    root = tasks / "tasks" / "sid"
    up = load_upstream(str(tasks / "model"))
    spec = get_task("sid")
    vocab, targets = load_task_data(spec, root)
    env = DistEnv(device=torch.device("cpu"))
    made = {}
    for cache in (True, False):
        cfg = ProbeConfig(upstream=str(tasks / "model"),
                          data=ProbeDataConfig(dir=str(root), cache=cache),
                          trainer=TrainerConfig(exp_dir=str(tmp_path / f"e{cache}")))  # fmt: skip
        splits = build_splits(cfg, up, [0, 1, 2], targets, env)
        made[cache] = ProbeTask(spec, up, [0, 1, 2], vocab, splits, env, seed=1, layer=None,
                                layer_norm=False, proj_dim=8, max_batch_frames=4000,
                                max_batch_utts=4)  # fmt: skip
    utts = made[True].splits["dev"].utts[:4]
    a = made[True].make_batch(made[True].splits["dev"], utts, 0, 0)
    b = made[False].make_batch(made[False].splits["dev"], utts, 0, 0)
    assert torch.equal(a.frames, b.frames) and a.targets == b.targets
    assert torch.allclose(a.feats.float(), b.feats, atol=2e-2, rtol=1e-2)


@pytest.mark.slow
@pytest.mark.distributed
def test_probe_ddp_two_processes(tasks, tmp_path):
    """torchrun -m speechssl.downstream: DDP over two CPU processes (gloo), the cache
    written once by rank 0, metrics reduced over both ranks."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    exp = tmp_path / "ddp"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "speechssl.downstream", "task=sid", "upstream=fbank",
         f"data.dir={tasks / 'tasks' / 'sid'}", f"trainer.exp_dir={exp}", *QUICK, "lr=[1e-3]",
         "trainer.grad_accum=2"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    log = [json.loads(x) for x in (exp / "lr-0.001" / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["world_size"] == 2
    assert [r["step"] for r in log if r["kind"] == "dev"] == [3, 6]
    res_json = json.loads((exp / "results.json").read_text())
    assert 0 <= res_json["test"] <= 1


def _speech_commands(root: Path) -> Path:
    """Speech Commands v0.01's layout: <word>/<hash>_nohash_<n>.wav, the two lists and
    _background_noise_/ (yes/no are keywords, bed/marvin become _unknown_)."""
    from audio_fixtures import write_audio

    clips = [("yes", "0a7c2a8d", 0), ("yes", "1b4c9b89", 0), ("yes", "2c6d9e1f", 1),
             ("no", "0a7c2a8d", 0), ("no", "2c6d9e1f", 2), ("no", "3d7e0f2a", 0),
             ("bed", "0a7c2a8d", 0), ("marvin", "2c6d9e1f", 0), ("marvin", "3d7e0f2a", 1)]  # fmt: skip
    for i, (word, h, n) in enumerate(clips):
        write_audio(root / word / f"{h}_nohash_{n}.wav", 1.0, seed=i, subtype="PCM_16")
    (root / "validation_list.txt").write_text(
        "yes/1b4c9b89_nohash_0.wav\nno/3d7e0f2a_nohash_0.wav\nmarvin/2c6d9e1f_nohash_0.wav\n"
    )
    (root / "testing_list.txt").write_text(
        "yes/2c6d9e1f_nohash_1.wav\nno/2c6d9e1f_nohash_2.wav\nmarvin/3d7e0f2a_nohash_1.wav\n"
    )
    write_audio(root / "_background_noise_" / "white_noise.wav", 10.5, seed=50, subtype="PCM_16")
    return root


def test_probe_real_layout_fixtures(tmp_path):
    """The five tasks on tiny corpora in their real layouts, through the prep verbs:
    LibriSpeech -> asr, pr; Speech Commands -> ks; VoxCeleb1 -> sid, asv (fbank upstream).
    The LibriSpeech fixture has one split (dev-clean), prepared into train, dev and test."""
    from probing_fixtures import make_librispeech_pr, make_voxceleb1

    libri = make_librispeech_pr(tmp_path / "librispeech")
    vox = make_voxceleb1(tmp_path / "voxceleb1")
    sc = _speech_commands(tmp_path / "speech_commands_v0.01")
    roots = tmp_path / "tasks"
    for split in SPLITS:
        base = ["data", "prepare-librispeech", "--corpus-dir", str(libri), "--split", "dev-clean"]
        assert cli([*base, "--out", str(roots / "asr" / split)]) == 0
        assert cli([*base, "--out", str(roots / "pr" / split), "--lexicon",
                    str(libri / "lexicon.txt"), "--skip-oov",
                    "--phones-txt", str(roots / "pr" / "phones.txt")]) == 0  # fmt: skip
    assert cli(["data", "prepare-speech-commands", "--corpus-dir", str(sc),
                "--out", str(roots / "ks")]) == 0  # fmt: skip
    assert cli(["data", "prepare-voxceleb1", "--task", "sid", "--corpus-dir", str(vox),
                "--out", str(roots / "sid")]) == 0  # fmt: skip
    assert cli(["data", "prepare-voxceleb1", "--task", "asv", "--corpus-dir", str(vox),
                "--out", str(roots / "asv"), "--dev-speakers", "2"]) == 0  # fmt: skip
    for task in ("pr", "asr", "ks", "sid", "asv"):
        exp = tmp_path / f"exp_{task}"
        code = probe([f"task={task}", "upstream=fbank", f"data.dir={roots / task}",
                      f"trainer.exp_dir={exp}", *QUICK, "lr=[1e-3]", "task.proj_dim=16",
                      "trainer.max_steps=2", "trainer.save_every=2"])  # fmt: skip
        assert code == 0, task
        res = json.loads((exp / "results.json").read_text())
        assert res["metric"] == task_metric(task) and np.isfinite(res["test"]), res
