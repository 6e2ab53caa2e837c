"""Intent classification (SUPERB IC): Fluent Speech Commands prep on a tiny fixture in the
corpus's real layout, the IC loss/metric against a direct computation, and
`speechssl-probe task=ic` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from probing_fixtures import FSC_INTENTS, make_fluent_speech_commands

from speechssl.cli.main import main as cli
from speechssl.data.tables import read_table
from speechssl.downstream.cli import main as probe_main
from speechssl.downstream.tasks import TASKS, load_task_data
from speechssl.downstream.tasks_superb2 import IntentClassification


def probe(args: list[str]) -> int:
    try:
        probe_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("speechssl-probe main() did not exit")


@pytest.fixture(scope="module")
def fsc(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsc")
    corpus = make_fluent_speech_commands(root / "fluent_speech_commands")
    out = root / "ic"
    assert cli(["data", "prepare-fluent-speech-commands", "--corpus-dir", str(corpus),
                "--out", str(out)]) == 0  # fmt: skip
    return corpus, out


def test_prepare_fsc_layout(fsc):
    _, out = fsc
    counts = {s: len(read_table(out / s / "wav.scp")) for s in ("train", "dev", "test")}
    assert counts == {"train": 12, "dev": 3, "test": 3}
    intents = read_table(out / "train" / "utt2intent")
    assert set(intents.values()) == {f"{a}|{o}|{loc}" for _, a, o, loc in FSC_INTENTS}
    text = read_table(out / "dev" / "text")
    assert "Turn on the lights in the kitchen" in text.values()
    assert set(read_table(out / "test" / "utt2spk").values()) == {"Xygv5loxdZtrywr9"}


def test_prepare_fsc_errors(fsc, tmp_path, capsys):
    import shutil

    corpus, _ = fsc
    bad = tmp_path / "fsc"
    shutil.copytree(corpus, bad)
    victim = sorted((bad / "wavs" / "speakers" / "R3mexpM2YAtdPbL7").glob("*.wav"))[0]
    victim.unlink()
    assert cli(["data", "prepare-fluent-speech-commands", "--corpus-dir", str(bad),
                "--out", str(tmp_path / "out")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert victim.name in err and "no audio file" in err
    # the recommended --tolerant skips and counts it
    assert cli(["data", "prepare-fluent-speech-commands", "--corpus-dir", str(bad),
                "--out", str(tmp_path / "out"), "--tolerant"]) == 0  # fmt: skip
    assert "skipped" in capsys.readouterr().out
    assert len(read_table(tmp_path / "out" / "dev" / "wav.scp")) == 2
    csv = bad / "data" / "test_data.csv"
    csv.write_text(csv.read_text().replace(",path,", ",file,"))
    assert cli(["data", "prepare-fluent-speech-commands", "--corpus-dir", str(bad),
                "--out", str(tmp_path / "out2")]) == 1  # fmt: skip
    assert "no column(s) path" in capsys.readouterr().err


def test_ic_loss_and_accuracy_match_direct_computation(fsc):
    _, out = fsc
    spec = TASKS.get("ic")
    assert isinstance(spec, IntentClassification)
    vocab, targets = load_task_data(spec, out)
    # 3 slots' classes, each a contiguous block
    assert vocab[0].startswith("action=") and vocab[-1].startswith("object=")
    utts = sorted(targets["train"])
    tgt = [targets["train"][u] for u in utts]
    torch.manual_seed(0)
    logits = torch.randn(len(utts), len(vocab))
    loss, _ = spec.loss(logits, tgt, torch.ones(len(utts)))
    sums, weight = spec.score(logits, tgt, torch.ones(len(utts)))
    labels = read_table(out / "train" / "utt2intent")
    expected_loss = 0.0
    right = np.ones(len(utts), dtype=bool)
    for s, slot in enumerate(("action", "object", "location")):
        cols = [i for i, v in enumerate(vocab) if v.startswith(slot + "=")]
        names = [vocab[i].split("=", 1)[1] for i in cols]
        y = torch.tensor([names.index(labels[u].split("|")[s]) for u in utts])
        expected_loss += float(F.cross_entropy(logits[:, cols], y))
        right &= (logits[:, cols].argmax(-1) == y).numpy()
    assert float(loss) == pytest.approx(expected_loss, rel=1e-6)
    assert sums["acc"] / weight == pytest.approx(right.mean())
    # a head that predicts every slot right scores 1
    perfect = torch.full_like(logits, -10.0)
    for i, t in enumerate(tgt):
        for first, _, k in t:
            perfect[i, first + k] = 10.0
    sums, weight = spec.score(perfect, tgt, torch.ones(len(utts)))
    assert sums["acc"] == weight == len(utts)


def test_probe_ic_fixture(fsc, tmp_path):
    _, out = fsc
    exp = tmp_path / "ic_fbank"
    assert probe(["task=ic", "preset=synth", "upstream=fbank", f"data.dir={out}",
                  f"trainer.exp_dir={exp}", "trainer.max_steps=8", "trainer.save_every=8",
                  "trainer.log_every=4", "trainer.tensorboard=false", "lr=[1e-2]"]) == 0  # fmt: skip
    res = json.loads((exp / "results.json").read_text())
    assert res["task"] == "ic" and res["metric"] == "acc"
    assert 0.0 <= res["test"] <= 1.0 and 0.0 <= res["dev"] <= 1.0
    # the report: metric direction, the lr picked on dev, the layer-weight plot
    assert cli(["probe", "report", f"fbank={exp}", "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "probe.md").read_text()
    assert "| upstream | IC ACC % ↑ |" in table and "| fbank | lr 0.01 |" in table
    rows = json.loads((tmp_path / "rep" / "probe.json").read_text())
    assert rows[0]["layer_weights"] == res["layer_weights"]
    assert (tmp_path / "rep" / "probe_layers.png").stat().st_size > 0


def test_ic_label_errors(fsc, tmp_path, capsys):
    import shutil

    _, out = fsc
    bad = tmp_path / "ic"
    shutil.copytree(out, bad)
    path = bad / "dev" / "utt2intent"
    lines = path.read_text().splitlines()
    utt = lines[0].split()[0]
    path.write_text("\n".join([f"{utt} activate|lights", *lines[1:]]) + "\n")
    code = probe(["task=ic", "upstream=fbank", f"data.dir={bad}",
                  f"trainer.exp_dir={tmp_path / 'exp'}", "preset=synth"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert utt in err and "<action>|<object>|<location>" in err


@pytest.mark.slow
def test_probe_ic_bundled_corpus(synth_corpus, tmp_path):
    """IC on commands spoken with the bundled SYNTHETIC corpus's voices (prep + probe)."""
    from speechssl.downstream.prep_synth_ic import COMMAND_INTENTS

    out = tmp_path / "tasks"
    assert cli(["probe", "prepare-synth", "--corpus", str(synth_corpus), "--out", str(out),
                "--tasks", "ic"]) == 0  # fmt: skip
    spk = {s: set(read_table(out / "ic" / s / "utt2spk").values()) for s in ("train", "test")}
    assert spk["train"] and not spk["train"] & spk["test"]  # the corpus's speaker split
    intents = read_table(out / "ic" / "train" / "utt2intent")
    assert len(intents) == len(spk["train"]) * len(COMMAND_INTENTS)
    assert set(intents.values()) == {"|".join(i) for i in COMMAND_INTENTS}
    exp = tmp_path / "ic_mfcc"
    assert probe(["task=ic", "preset=synth", "upstream=mfcc", f"data.dir={out / 'ic'}",
                  f"trainer.exp_dir={exp}", "trainer.max_steps=8", "trainer.save_every=8",
                  "trainer.tensorboard=false", "lr=[1e-2]"]) == 0  # fmt: skip
    res = json.loads((exp / "results.json").read_text())
    assert res["task"] == "ic" and 0.0 <= res["test"] <= 1.0
