"""Emotion recognition (SUPERB ER): IEMOCAP prep on a tiny fixture in the corpus's real
layout (5 session folds, excluded labels counted), the ER loss/accuracy against
scikit-learn and torch, `speechssl-probe task=er` on two folds and `speechssl probe folds`.
ER has no synthetic stand-in: it runs on this fixture only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from probing_fixtures import IEMOCAP_TURNS, make_iemocap
from sklearn.metrics import accuracy_score

from speechssl.cli.main import main as cli
from speechssl.data.tables import read_table
from speechssl.downstream.cli import main as probe_main
from speechssl.downstream.tasks import TASKS, load_task_data
from speechssl.downstream.tasks_superb3 import EmotionRecognition


def probe(args: list[str]) -> int:
    try:
        probe_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("speechssl-probe main() did not exit")


def prepare(corpus, out, *extra: str) -> int:
    return cli(["data", "prepare-iemocap", "--corpus-dir", str(corpus), "--out", str(out),
                *extra])  # fmt: skip


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    root = tmp_path_factory.mktemp("iemocap")
    corpus = make_iemocap(root)
    out = root / "er"
    assert prepare(corpus, out) == 0
    return corpus, out


def test_prepare_iemocap_folds(iemocap, capsys):
    corpus, out = iemocap
    kept_per_session = sum(1 for *_, lab in IEMOCAP_TURNS if lab not in ("fru", "xxx"))
    for k in range(1, 6):
        splits = {
            s: read_table(out / f"fold{k}" / s / "utt2emotion") for s in ("train", "dev", "test")
        }
        # test = Session k, train/dev = the other four sessions, disjoint, nothing lost
        assert {u[:5] for u in splits["test"]} == {f"Ses0{k}"}
        assert f"Ses0{k}" not in {u[:5] for s in ("train", "dev") for u in splits[s]}
        assert not set(splits["train"]) & set(splits["dev"])
        assert len(splits["test"]) == kept_per_session
        assert len(splits["train"]) + len(splits["dev"]) == 4 * kept_per_session
        assert len(splits["dev"]) == round(0.2 * 4 * kept_per_session)
        labels = {v for s in splits.values() for v in s.values()}
        assert labels == {"ang", "hap", "neu", "sad"}  # exc merged into hap
    test1 = read_table(out / "fold1" / "test" / "utt2emotion")
    assert test1["Ses01F_script01_1_M000"] == "hap"  # was exc
    assert "Ses01F_impro01_F001" not in test1  # fru: left out by the task
    # the excluded labels are reported per label, never dropped silently
    assert prepare(corpus, out.parent / "again") == 0
    assert "fru 5, xxx 5" in capsys.readouterr().out


def test_prepare_iemocap_errors(iemocap, tmp_path, capsys):
    corpus, _ = iemocap
    bad = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(corpus, bad)
    emo = bad / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    emo.unlink()
    assert prepare(bad, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "Ses02F_impro01.txt" in err and "no EmoEvaluation file" in err
    # the recommended --tolerant skips the dialog and counts it
    assert prepare(bad, tmp_path / "out", "--tolerant") == 0
    assert "1 skipped" in capsys.readouterr().out
    assert len(read_table(tmp_path / "out" / "fold2" / "test" / "wav.scp")) == 5
    shutil.rmtree(bad)
    shutil.copytree(corpus, bad)
    # a wrong sample rate names the utterance
    wav = bad / "Session3" / "sentences" / "wav" / "Ses03F_impro01" / "Ses03F_impro01_M000.wav"
    data, _ = sf.read(str(wav))
    sf.write(str(wav), data, 8000)
    # a label IEMOCAP does not define names the line
    emo = bad / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_script01_1.txt"
    emo.write_text(emo.read_text().replace("\tneu\t", "\thappy\t"))
    assert prepare(bad, tmp_path / "out2") == 1
    err = capsys.readouterr().err
    assert "Ses03F_impro01_M000" in err and "sample rate 8000 Hz" in err
    assert "Ses04F_script01_1_M001" in err and "'happy'" in err
    # a wav without a label line
    (bad / "Session5" / "sentences" / "wav" / "Ses05F_impro01" / "Ses05F_impro01_F009.wav"
     ).write_bytes(wav.read_bytes())  # fmt: skip
    assert prepare(bad, tmp_path / "out3") == 1
    assert "Ses05F_impro01_F009" in capsys.readouterr().err
    # a labelled utterance of a kept class without its audio
    (bad / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M001.wav").unlink()
    assert prepare(bad, tmp_path / "out4") == 1
    err = capsys.readouterr().err
    assert "Ses01F_impro01_M001" in err and "labelled but no" in err


def test_er_loss_and_accuracy_match_independent_computation(iemocap):
    _, out = iemocap
    spec = TASKS.get("er")
    assert isinstance(spec, EmotionRecognition)
    vocab, targets = load_task_data(spec, out / "fold3")
    assert vocab == ["ang", "hap", "neu", "sad"]
    utts = sorted(targets["test"])
    y = [targets["test"][u] for u in utts]
    labels = read_table(out / "fold3" / "test" / "utt2emotion")
    assert [vocab[t] for t in y] == [labels[u] for u in utts]
    torch.manual_seed(0)
    logits = torch.randn(len(utts), 4, dtype=torch.float64).float()
    loss, _ = spec.loss(logits, y, torch.ones(len(utts)))
    sums, weight = spec.score(logits, y, torch.ones(len(utts)))
    expected = accuracy_score(np.array(y), logits.argmax(-1).numpy())
    assert sums["acc"] / weight == pytest.approx(expected, abs=1e-12)
    manual = -np.mean([np.log(np.exp(r) / np.exp(r).sum())[t]
                       for r, t in zip(logits.double().numpy(), y)])  # fmt: skip
    assert float(loss) == pytest.approx(manual, rel=1e-5)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, torch.tensor(y))))


def test_er_label_error(iemocap, tmp_path, capsys):
    _, out = iemocap
    bad = tmp_path / "fold1"
    shutil.copytree(out / "fold1", bad)
    path = bad / "dev" / "utt2emotion"
    lines = path.read_text().splitlines()
    utt = lines[0].split()[0]
    path.write_text("\n".join([f"{utt} exc", *lines[1:]]) + "\n")
    code = probe(["task=er", "upstream=fbank", f"data.dir={bad}",
                  f"trainer.exp_dir={tmp_path / 'exp'}", "preset=synth"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert utt in err and "ang, hap, neu, sad" in err


def test_probe_er_two_folds_and_fold_summary(iemocap, tmp_path, capsys):
    _, out = iemocap
    exps = []
    for k in (1, 2):
        exp = tmp_path / f"er_fold{k}"
        assert probe(["task=er", "preset=synth", "upstream=fbank", f"data.dir={out}/fold{k}",
                      f"trainer.exp_dir={exp}", "trainer.max_steps=6", "trainer.save_every=6",
                      "trainer.log_every=3", "trainer.tensorboard=false", "lr=[1e-2]",
                      "trainer.grad_accum=1"]) == 0  # fmt: skip
        res = json.loads((exp / "results.json").read_text())
        assert res["task"] == "er" and res["metric"] == "acc" and 0.0 <= res["test"] <= 1.0
        exps.append((exp, res["test"]))
    capsys.readouterr()
    summary_path = tmp_path / "er_folds.json"
    assert cli(["probe", "folds", *(str(e) for e, _ in exps), "--out", str(summary_path)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(summary_path.read_text())
    mean = (exps[0][1] + exps[1][1]) / 2
    assert summary["mean"] == pytest.approx(mean)
    assert summary["folds"]["1"]["test"] == exps[0][1] and not summary["complete"]
    assert f"{100 * mean:.2f}" in printed and "not SUPERB's 5-fold mean" in printed
    # the same fold twice is refused
    assert cli(["probe", "folds", str(exps[0][0]), str(exps[0][0])]) == 1
    assert "fold1 is also in" in capsys.readouterr().err
