"""The bundled synthetic corpus end to end: files, formats, alignments, determinism, reruns."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main as cli_main
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.data.synth import (
    KEYWORDS,
    SILENCE,
    UNKNOWN_LABEL,
    SpeakerConfig,
    SynthCorpusConfig,
    check_alignment_lengths,
    make_corpus,
    read_alignments,
    read_phone_table,
)
from speechssl.data.tables import read_table
from speechssl.data.validate import ValidateOptions, validate_data_dir
from speechssl.errors import ConfigError

SPLITS = ("train", "dev", "test")
DATA_FILES = (
    "wav.scp",
    "text",
    "utt2spk",
    "spk2utt",
    "utt2dur",
    "utt2num_samples",
    "spk2gender",
    "ali.phones",
    "phones.txt",
    "utt2keyword",
    "utt2kind",
    "utt2aug",
    "spk2voice",
)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path; wav.scp with the root made relative."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "wav.scp":
                data = data.replace(str(root).encode(), b"<root>")
            out[str(path.relative_to(root))] = data
    return out


def _longest_zero_run(x: np.ndarray) -> int:
    padded = np.r_[False, x == 0, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def _frame_energy_db(wav: np.ndarray, shift: int = 160) -> np.ndarray:
    frames = wav[: len(wav) // shift * shift].reshape(-1, shift).astype(float)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def test_layout_and_kaldi_files(synth_corpus):
    root = synth_corpus
    meta = json.loads((root / "meta.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 123
    assert "SYNTHETIC" in (root / "README").read_text()
    speakers = {}
    for split in SPLITS:
        d = root / split
        for name in DATA_FILES:
            assert (d / name).is_file(), f"{split}/{name} missing"
        ddir = KaldiDataDir(d)
        utts = ddir.utt_ids()
        assert len(utts) == meta["splits"][split]["utterances"] > 0
        utt2spk = read_table(d / "utt2spk")
        for utt, spk in utt2spk.items():
            assert utt.startswith(spk + "-")
        speakers[split] = set(utt2spk.values())
        assert set(read_table(d / "spk2gender")) == speakers[split]
        assert set(read_table(d / "spk2gender").values()) <= {"m", "f"}
        for utt, words in read_table(d / "text").items():
            assert words and words == words.upper(), utt
        for name in ("text", "utt2dur", "utt2num_samples", "ali.phones", "utt2kind", "utt2aug"):
            assert list(read_table(d / name)) == utts, name  # same set, C-sorted
    assert not speakers["train"] & speakers["dev"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]


def test_splits_pass_strict_validation(synth_corpus):
    opts = ValidateOptions(level="strict", sample_rate=16000, require_text=True)
    for split in SPLITS:
        report = validate_data_dir(synth_corpus / split, opts)
        assert (report.num_errors, report.num_warnings) == (0, 0), report.problems


def test_audio_format_and_durations(synth_corpus):
    for split in SPLITS:
        d = synth_corpus / split
        wav_scp = read_table(d / "wav.scp")
        n_samples = read_table(d / "utt2num_samples")
        utt2dur = read_table(d / "utt2dur")
        for utt, path in wav_scp.items():
            assert os.path.isabs(path) and Path(path).is_file()
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.format) == (
                16000,
                1,
                "PCM_16",
                "WAV",
            )
            assert info.frames == int(n_samples[utt]) and info.frames % 160 == 0
            assert float(utt2dur[utt]) == pytest.approx(info.frames / 16000, abs=1e-4)
            wav, _ = sf.read(path, dtype="int16")
            assert _longest_zero_run(wav) < 16  # the noise floor: no stretch of digital silence
            assert np.max(np.abs(wav)) < 32767  # no clipping


def test_alignments_are_consistent_with_audio(synth_corpus):
    table = read_phone_table(synth_corpus / "phones.txt")
    assert table[SILENCE] == 0 and len(table) > 15
    sil_db, speech_db = [], []
    for split in SPLITS:
        d = synth_corpus / split
        assert read_phone_table(d / "phones.txt") == table
        ali = read_alignments(d / "ali.phones")
        n_samples = {u: int(n) for u, n in read_table(d / "utt2num_samples").items()}
        check_alignment_lengths(ali, n_samples)
        text = read_table(d / "text")
        wav_scp = read_table(d / "wav.scp")
        for utt, labels in ali.items():
            assert set(labels) <= set(table)
            assert labels[0] == SILENCE and labels[-1] == SILENCE, utt  # silence at the edges
            assert labels[:10] == [SILENCE] * 10  # lead silence >= 150 ms
            # phone segments (runs) against the letters of the text: plausibly one per letter
            runs = [
                p for i, p in enumerate(labels) if p != SILENCE and (i == 0 or labels[i - 1] != p)
            ]
            letters = sum(c.isalpha() for c in text[utt])
            assert 0.4 * letters <= len(runs) <= 1.3 * letters + 2, (utt, text[utt], runs)
            energy = _frame_energy_db(sf.read(wav_scp[utt], dtype="float32")[0])
            lab = np.array(labels)
            sil_db.append(np.median(energy[lab == SILENCE]))
            speech_db.append(np.median(energy[lab != SILENCE]))
    # silence frames are far quieter than phone frames in every utterance
    assert all(s + 25 < p for s, p in zip(sil_db, speech_db)), list(zip(sil_db, speech_db))


def test_keyword_labels(synth_corpus):
    n_iso = 0
    for split in SPLITS:
        d = synth_corpus / split
        kinds = read_table(d / "utt2kind")
        text = read_table(d / "text")
        kw = read_table(d / "utt2keyword")
        assert set(kw) == {u for u, k in kinds.items() if k in ("keyword", "word")}
        for utt, label in kw.items():
            word = text[utt].lower()
            assert len(word.split()) == 1
            assert label == (word if word in KEYWORDS else UNKNOWN_LABEL)
        n_iso += len(kw)
    assert n_iso > 0


def test_same_seed_same_bytes_for_any_nj(tmp_path, synth_corpus):
    cfg = SynthCorpusConfig(
        hours=0.004, speakers=SpeakerConfig(num_speakers=5), noise=True, reverb=True
    )
    a = make_corpus(tmp_path / "a", seed=8, nj=1, config=cfg)
    b = make_corpus(tmp_path / "b", seed=8, nj=2, config=cfg)
    # seed 8 draws f2 and f5, whose breath noise comes from eSpeak's clock-seeded generator
    voices = (tmp_path / "a" / "train" / "spk2voice").read_text() + (
        tmp_path / "a" / "dev" / "spk2voice"
    ).read_text()
    assert "+f5 " in voices or "+f2 " in voices
    assert a.splits == b.splits
    ta, tb = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert ta.keys() == tb.keys()
    assert [k for k in ta if ta[k] != tb[k]] == []
    c = make_corpus(tmp_path / "c", seed=6, nj=1, config=cfg)
    assert _tree_bytes(tmp_path / "c") != ta
    assert c.hours >= 0.004


def test_noise_and_reverb_are_applied_and_recorded(tmp_path):
    cfg = SynthCorpusConfig(
        hours=0.006,
        speakers=SpeakerConfig(num_speakers=4),
        noise=True,
        noise_prob=1.0,
        snr_db=(10.0, 10.0),
        reverb=True,
        reverb_prob=1.0,
    )
    make_corpus(tmp_path / "n", seed=3, config=cfg)
    kinds = set()
    for split in SPLITS:
        d = tmp_path / "n" / split
        aug = read_table(d / "utt2aug")
        ali = read_alignments(d / "ali.phones")
        for utt, desc in aug.items():
            assert desc.startswith("reverb(rt60=") and "snr=10.0dB" in desc, desc
            kinds.add(desc.split("+")[1].split("(")[0])
            wav = sf.read(read_table(d / "wav.scp")[utt], dtype="float32")[0]
            energy = _frame_energy_db(wav)
            lab = np.array(ali[utt])
            # at 10 dB SNR silence is still clearly quieter than speech, not 60 dB quieter
            gap = np.median(energy[lab != SILENCE]) - np.median(energy[lab == SILENCE])
            assert 3 < gap < 30, (utt, desc, gap)
    assert kinds <= {"white", "pink", "babble"} and len(kinds) >= 2


def test_rerun_is_noop_and_other_settings_need_overwrite(tmp_path):
    out = tmp_path / "c"
    first = make_corpus(out, hours=0.003, seed=1, num_speakers=3)
    assert not first.reused
    stamp = (out / "train" / "text").stat().st_mtime_ns
    again = make_corpus(out, hours=0.003, seed=1, num_speakers=3)
    assert again.reused and again.splits == first.splits
    assert (out / "train" / "text").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="exists and is not this corpus"):
        make_corpus(out, hours=0.003, seed=2, num_speakers=3)
    # a crashed run's temporary dir is cleaned up, a partial target is redone with overwrite
    debris = tmp_path / ".c.tmp-crashed"
    debris.mkdir()
    (out / "meta.json").unlink()
    with pytest.raises(ConfigError):
        make_corpus(out, hours=0.003, seed=1, num_speakers=3)
    redo = make_corpus(out, hours=0.003, seed=1, num_speakers=3, overwrite=True)
    assert not redo.reused and (out / "meta.json").is_file() and not debris.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--hours",
            "0.003",
            "--seed",
            "4",
            "--num-speakers",
            "3",
            "--json",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 4 and summary["hours"] >= 0.003 and not summary["reused"]
    assert set(summary["splits"]) == set(SPLITS)
    rc = cli_main(
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--hours",
            "0.003",
            "--seed",
            "4",
            "--num-speakers",
            "3",
        ]
    )
    assert rc == 0 and "up to date" in capsys.readouterr().out
    rc = cli_main(["data", "synth", "--out", str(tmp_path / "x"), "--hours", "-1"])
    assert rc == 1 and "hours must be positive" in capsys.readouterr().err
    rc = cli_main(["data", "synth", "--out", str(tmp_path / "x"), "--num-speakers", "2"])
    assert rc == 1 and "num_speakers" in capsys.readouterr().err


def test_alignment_boundaries_match_acoustics(synth_corpus):
    """Speech onsets agree with energy onsets; fricative frames are noisier than vowels."""
    onset_err = []
    zcr: dict[str, list[float]] = {"s": [], "vowel": []}
    vowels = {"a", "E", "I", "i:", "aI", "eI", "oU", "u:", "@", "0", "V", "aU", "O:"}
    for split in SPLITS:
        d = synth_corpus / split
        wav_scp = read_table(d / "wav.scp")
        for utt, labels in read_alignments(d / "ali.phones").items():
            wav = sf.read(wav_scp[utt], dtype="float32")[0]
            frames = wav.reshape(-1, 160)
            energy = _frame_energy_db(wav)
            lab = np.array(labels)
            loud = np.flatnonzero(energy > np.median(energy[lab == SILENCE]) + 15)
            onset_err.append(loud[0] - np.flatnonzero(lab != SILENCE)[0])
            crossings = np.mean(np.abs(np.diff(np.sign(frames), axis=1)) > 0, axis=1)
            zcr["s"] += crossings[lab == "s"].tolist()
            zcr["vowel"] += crossings[np.isin(lab, list(vowels))].tolist()
    onset_err = np.abs(np.array(onset_err))
    assert np.mean(onset_err <= 2) >= 0.9, onset_err
    assert len(zcr["s"]) > 20 and len(zcr["vowel"]) > 100
    assert np.mean(zcr["s"]) > 2 * np.mean(zcr["vowel"])


def test_synth_error_pickles():
    import pickle

    from speechssl.data.synth.corpus import SynthError

    err = pickle.loads(pickle.dumps(SynthError("spk01-000001", "boom", where="x:3")))
    assert (type(err), err.item, err.reason, err.where) == (
        SynthError,
        "spk01-000001",
        "boom",
        "x:3",
    )


@pytest.mark.slow
def test_worker_failure_reaches_the_parent_naming_the_utterance(tmp_path):
    """A spawned worker's SynthError crosses the process boundary intact."""
    import dataclasses
    import multiprocessing

    from speechssl.data.synth.corpus import CorpusPlan, SynthError, _worker_init, _worker_render

    plan = CorpusPlan(SynthCorpusConfig(hours=0.01, speakers=SpeakerConfig(num_speakers=3)), 0)
    spec = plan.spec(0)
    bad = dataclasses.replace(spec, settings=dataclasses.replace(spec.settings, voice="xx-nope"))
    ctx = multiprocessing.get_context("spawn")
    expected = rf"{spec.utt_id}: eSpeak NG failed .*xx-nope"
    with (
        ctx.Pool(1, initializer=_worker_init, initargs=(str(tmp_path), 16000)) as pool,
        pytest.raises(SynthError, match=expected),
    ):
        pool.apply(_worker_render, (bad,))
