"""Slot filling (SUPERB SF): Audio SNIPS prep on a tiny fixture in SUPERB's layout, the
slot-type F1 and slot-value CER against independent computations (scikit-learn, jiwer),
and `speechssl-probe task=sf` end to end. SF has no synthetic stand-in: it runs on this
fixture only."""

from __future__ import annotations

import json
import math
import re
import shutil

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
from probing_fixtures import make_snips
from sklearn.metrics import f1_score

from speechssl.cli.main import main as cli
from speechssl.data.tables import read_table
from speechssl.downstream.cli import main as probe_main
from speechssl.downstream.slots import (
    SlotVocabulary,
    parse_tagged,
    slot_type_f1,
    slot_value_cer,
)
from speechssl.downstream.tasks import TASKS, load_task_data
from speechssl.downstream.tasks_superb3 import SlotFilling


def probe(args: list[str]) -> int:
    try:
        probe_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("speechssl-probe main() did not exit")


def prepare(corpus, out, *extra: str) -> int:
    return cli(["data", "prepare-snips", "--corpus-dir", str(corpus), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def snips(tmp_path_factory):
    root = tmp_path_factory.mktemp("snips")
    corpus = make_snips(root)
    out = root / "sf"
    assert prepare(corpus, out) == 0
    return corpus, out


def test_prepare_snips_layout(snips, capsys):
    corpus, out = snips
    slots = {s: read_table(out / s / "utt2slots") for s in ("train", "dev", "test")}
    assert {s: len(v) for s, v in slots.items()} == {"train": 6, "dev": 3, "test": 3}
    assert {u.split("-")[0] for u in slots["train"]} == {"Ivy", "Joanna"}  # not Aditi
    assert slots["dev"]["Aditi-snips-valid-1"] == (
        "ADD B-music_item SONG E-music_item TO B-playlist ROCK LIST E-playlist"
    )
    assert slots["test"]["Brian-snips-test-0"] == "PLAY B-artist BEYONCE E-artist"  # É -> E
    assert read_table(out / "test" / "text")["Brian-snips-test-1"] == "ADD SONG TO ROCK LIST"
    assert (out / "slots.txt").read_text().split() == ["playlist", "music_item", "artist"]
    # the train folder's dev-speaker files are left out by the task and counted
    assert prepare(corpus, out.parent / "again") == 0
    assert "train: 3 wav(s) of speakers outside SUPERB's train list left out" in (
        capsys.readouterr().out
    )


def test_prepare_snips_errors(snips, tmp_path, capsys):
    corpus, _ = snips
    bad = tmp_path / "SNIPS"
    shutil.copytree(corpus, bad)
    (bad / "test" / "Brian-snips-test-2.wav").unlink()
    trans = bad / "all.iob.snips.txt"
    trans.write_text(trans.read_text().replace("Ivy-snips-train-0 BOS PLAY BEYONCÉ EOS\tO O artist",
                                               "Ivy-snips-train-0 BOS PLAY BEYONCÉ EOS\tO O singer"))  # fmt: skip
    assert prepare(bad, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "Brian-snips-test-2" in err and "no " in err and ".wav" in err
    assert "Ivy-snips-train-0" in err and "singer are not in slots.txt" in err
    # the recommended --tolerant skips and counts both
    assert prepare(bad, tmp_path / "out", "--tolerant") == 0
    assert "2 skipped" in capsys.readouterr().out
    assert len(read_table(tmp_path / "out" / "test" / "wav.scp")) == 2
    assert len(read_table(tmp_path / "out" / "train" / "wav.scp")) == 5
    # a wrong sample rate names the utterance
    wav = bad / "valid" / "Aditi-snips-valid-0.wav"
    data, _ = sf.read(str(wav))
    sf.write(str(wav), data, 22050)
    assert prepare(bad, tmp_path / "out2", "--tolerant") == 0
    assert "Aditi-snips-valid-0" in capsys.readouterr().out
    assert prepare(bad, tmp_path / "out3") == 1
    assert "sample rate 22050 Hz" in capsys.readouterr().err
    # a missing slots.txt is named
    (bad / "slots.txt").unlink()
    assert prepare(bad, tmp_path / "out4") == 1
    assert "slots.txt" in capsys.readouterr().err


# ------------------------------------------------------------------ metrics, independently

_SLOT = re.compile(r"B-(\S+) (.+?) E-\1(?!\S)")


def brute_slots(text: str) -> list[tuple[str, str]]:
    """(type, value) pairs by scanning tokens (a second reading of the definition)."""
    toks = text.split()
    out = []
    for i, t in enumerate(toks):
        if t.startswith("B-"):
            kind = t[2:]
            for j in range(i + 1, len(toks)):
                if toks[j] == f"E-{kind}":
                    if j > i + 1:
                        value = [w for w in toks[i + 1 : j] if not re.match(r"[BE]-", w)]
                        out.append((kind, " ".join(value)))
                    break
    return out


REFS = [
    "ADD B-music_item SONG E-music_item TO B-playlist ROCK LIST E-playlist",
    "PLAY B-artist BEYONCE E-artist",
    "PLAY MUSIC",
    "PLAY B-artist A B E-artist AND B-artist C E-artist",
    "BOOK B-city PARIS E-city",
]
HYPS = [
    "AD B-music_item SONGS E-music_item TO B-playlist ROCK LIS E-playlist",
    "PLAY B-artist BEYONSE",  # unclosed: no slot
    "PLAY B-city MUSIC E-city",
    "PLAY B-artist C E-artist AND B-artist AB E-artist B-genre X E-genre",
    "BOOK PARIS",
]


def test_slot_type_f1_against_sklearn():
    types = sorted({k for t in REFS + HYPS for k, _ in brute_slots(t)})
    per = []
    for ref, hyp in zip(REFS, HYPS):
        r = np.array([k in {x for x, _ in brute_slots(ref)} for k in types], dtype=int)
        h = np.array([k in {x for x, _ in brute_slots(hyp)} for k in types], dtype=int)
        per.append(f1_score(r, h, zero_division=1.0))
    assert slot_type_f1(REFS, HYPS) == pytest.approx(float(np.mean(per)), abs=1e-12)
    assert slot_type_f1(REFS, REFS) == 1.0


def test_slot_value_cer_against_jiwer():
    pair_refs, pair_hyps = [], []
    for ref, hyp in zip(REFS, HYPS):
        hv = brute_slots(hyp)
        for kind, value in brute_slots(ref):
            cands = [v for k, v in hv if k == kind]
            best = min(cands, key=lambda c: jiwer.cer(value, c), default="")
            pair_refs.append(value)
            pair_hyps.append(best)
    # jiwer's corpus CER: total character edits / total reference characters
    expected = jiwer.cer(pair_refs, pair_hyps)
    assert slot_value_cer(REFS, HYPS) == pytest.approx(expected, abs=1e-12)
    assert slot_value_cer(REFS, REFS) == 0.0
    assert math.isnan(slot_value_cer(["PLAY MUSIC"], ["PLAY"]))


def test_tagged_transcript_vocabulary_round_trip(snips):
    _, out = snips
    spec = TASKS.get("sf")
    assert isinstance(spec, SlotFilling)
    vocab, targets = load_task_data(spec, out)
    # every slot of slots.txt has its B-/E- tokens, after blank, | and the characters
    assert vocab[:2] == ["<blank>", "|"] and vocab[-6:] == [
        "B-playlist", "E-playlist", "B-music_item", "E-music_item", "B-artist", "E-artist",
    ]  # fmt: skip
    sv = SlotVocabulary(vocab)
    labels = read_table(out / "dev" / "utt2slots")
    for utt, ids in targets["dev"].items():
        assert sv.decode(ids) == labels[utt]
    # a perfect CTC output decodes to the references: F1 1, CER 0
    configured = spec.configured(None, vocab)
    utts = sorted(targets["test"])
    width = max(2 * len(targets["test"][u]) for u in utts)
    log_probs = torch.full((len(utts), width, len(vocab)), -30.0)
    for i, u in enumerate(utts):
        for j, t in enumerate(targets["test"][u]):
            log_probs[i, 2 * j, t] = 0.0
            log_probs[i, 2 * j + 1, 0] = 0.0
    frames = torch.tensor([2 * len(targets["test"][u]) for u in utts])
    outputs = configured.outputs((log_probs, frames), utts)
    scores = configured.score_pooled(outputs, out / "test")
    assert scores == {"slot_type_f1": 1.0, "slot_value_cer": 0.0, "wer": 0.0, "cer": 0.0}


def test_sf_label_errors(snips, tmp_path, capsys):
    _, out = snips
    for bad_label, reason in [
        ("PLAY B-artist X", "never closed"),
        ("B-a B-b X E-b E-a", "inside the open B-a"),
        ("PLAY X E-artist", "without a matching B-artist"),
        ("B-artist E-artist PLAY", "holds no word"),
        ("B-a E-a", "no words"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_tagged(bad_label)
    assert parse_tagged(" PLAY  B-a X Y E-a ") == ["PLAY", "B-a", "X", "Y", "E-a"]
    bad = tmp_path / "sf"
    shutil.copytree(out, bad)
    path = bad / "dev" / "utt2slots"
    lines = path.read_text().splitlines()
    utt = lines[0].split()[0]
    path.write_text("\n".join([f"{utt} PLAY B-genre JAZZ E-genre", *lines[1:]]) + "\n")
    code = probe(["task=sf", "upstream=fbank", f"data.dir={bad}",
                  f"trainer.exp_dir={tmp_path / 'exp'}", "preset=synth"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert (
        utt in err
        and "B-genre E-genre are not in the slot vocabulary (the task root's slots.txt" in err
    )
    path.write_text("\n".join([f"{utt} PLAY B-artist JAZZ", *lines[1:]]) + "\n")
    assert probe(["task=sf", "upstream=fbank", f"data.dir={bad}",
                  f"trainer.exp_dir={tmp_path / 'exp'}", "preset=synth"]) == 1  # fmt: skip
    assert "B-artist is never closed" in capsys.readouterr().err


def test_probe_sf_fixture(snips, tmp_path):
    _, out = snips
    exp = tmp_path / "sf_fbank"
    assert probe(["task=sf", "preset=synth", "upstream=fbank", f"data.dir={out}",
                  f"trainer.exp_dir={exp}", "trainer.max_steps=6", "trainer.save_every=6",
                  "trainer.log_every=3", "trainer.tensorboard=false", "lr=[1e-2]",
                  "task.proj_dim=32"]) == 0  # fmt: skip
    res = json.loads((exp / "results.json").read_text())
    assert res["task"] == "sf" and res["metric"] == "slot_type_f1" and res["mode"] == "max"
    for split in ("dev", "test"):
        m = res[f"{split}_metrics"]
        assert set(m) == {"slot_type_f1", "slot_value_cer", "wer", "cer"}
        assert 0.0 <= m["slot_type_f1"] <= 1.0 and m["slot_value_cer"] >= 0.0
    assert res["test"] == res["test_metrics"]["slot_type_f1"]
