"""VoxCeleb1 -> SUPERB SID and ASV dirs, on a tiny fixture in the real layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from audio_fixtures import write_audio
from probing_fixtures import POOL, TEST, make_voxceleb1, rel

from speechssl.cli.main import main
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.data.prep.common import CorpusError, CorpusProblems
from speechssl.data.prep.voxceleb import prepare_voxceleb1_asv, prepare_voxceleb1_sid
from speechssl.data.tables import read_table
from speechssl.data.validate import validate_data_dir
from speechssl.downstream.asv import Trial, read_trials


def test_sid_splits_from_iden_split(tmp_path):
    root = make_voxceleb1(tmp_path / "voxceleb1")
    out = tmp_path / "sid"
    result = prepare_voxceleb1_sid(root, out)
    assert (result.report.loaded, result.report.num_skipped) == (24, 0)
    train, dev, test = (KaldiDataDir(out / s) for s in ("train", "dev", "test"))
    assert len(train) == 12 and len(dev) == 6 and len(test) == 6
    assert dev.utt_ids()[0] == "id10001-8jEAjG6-SegY-00001"
    assert test.speaker("id10270-8jEAjG6-SegY-00008") == "id10270"
    assert train.speakers() == sorted(POOL + TEST) == test.speakers()
    src = Path(test.audio_source("id10270-8jEAjG6-SegY-00008").path)
    assert src == root.resolve() / "wav" / rel("id10270", 1, 8)
    assert "train: 12 utterances of 6 speakers" in result.notes
    for split in ("train", "dev", "test"):
        assert main(["data", "validate", str(out / split)]) == 0
        report = validate_data_dir(out / split)
        assert report.ok and report.num_warnings == 0, report.lines()


def test_sid_missing_unlisted_and_bad_lines(tmp_path):
    root = make_voxceleb1(tmp_path / "vc")
    (root / "wav" / rel("id10002", 0, 2)).unlink()
    write_audio(root / "wav" / "id10003" / "newvideo" / "00001.wav", 0.2)
    with open(root / "iden_split.txt", "a") as fh:
        fh.write(f"4 {rel('id10001', 0, 1)}\nrubbish\n")
    with pytest.raises(CorpusProblems) as info:
        prepare_voxceleb1_sid(root, tmp_path / "sid")
    text = "\n".join(str(p) for p in info.value.problems)
    assert sorted(p.kind for p in info.value.problems) == [
        "bad-transcript",
        "bad-transcript",
        "no-audio",
        "unlisted",
    ], text
    assert "id10002/x6uYqmx31kE/00002.wav (" in text and "listed file has no audio" in text
    assert "id10003/newvideo/00001.wav (" in text and "not in iden_split.txt" in text
    assert "iden_split.txt:25): split '4' is not 1, 2 or 3" in text
    assert "rubbish (" in text and "iden_split.txt:26" in text
    result = prepare_voxceleb1_sid(root, tmp_path / "sid", tolerant=True)
    rep = result.report
    assert (rep.loaded, rep.num_skipped) == (23, 4)


def test_asv_dirs_and_trials(tmp_path):
    root = make_voxceleb1(tmp_path / "voxceleb1", split_archives=True)
    out = tmp_path / "asv"
    result = prepare_voxceleb1_asv(root, out, dev_speakers=2)
    train, dev, test = (KaldiDataDir(out / s) for s in ("train", "dev", "test"))
    assert train.speakers() == ["id10001", "id10002"]
    assert dev.speakers() == ["id10003", "id10004"]
    assert test.speakers() == TEST and len(test) == 6  # the utterances the trials name
    trials = read_trials(out / "test" / "trials", set(test.utt_ids()))
    assert trials[:2] == [
        Trial("id10270-x6uYqmx31kE-00001", "id10270-8jEAjG6-SegY-00008", True),
        Trial("id10270-x6uYqmx31kE-00001", "id10271-x6uYqmx31kE-00002", False),
    ]
    dev_trials = read_trials(out / "dev" / "trials", set(dev.utt_ids()))
    assert len(dev_trials) == 16 and sum(t.target for t in dev_trials) == 8
    for t in dev_trials:
        assert (dev.speaker(t.enroll) == dev.speaker(t.test)) == t.target
        assert t.enroll != t.test
    # seeded: a rerun writes the same trials
    prepare_voxceleb1_asv(root, tmp_path / "again", dev_speakers=2)
    assert (tmp_path / "again/dev/trials").read_text() == (out / "dev/trials").read_text()
    assert "test: 6 utterances, 4 trials from veri_test.txt" in result.notes
    assert "2 utterances of trial speakers are in no trial: left out" in result.notes[-1]
    for split in ("train", "dev", "test"):
        assert main(["data", "validate", str(out / split)]) == 0
        report = validate_data_dir(out / split)
        assert report.ok and report.num_warnings == 0, report.lines()


def test_asv_errors(tmp_path):
    root = make_voxceleb1(tmp_path / "vc")
    with pytest.raises(CorpusError, match="leave no training speakers: only 4"):
        prepare_voxceleb1_asv(root, tmp_path / "asv", dev_speakers=4)
    with pytest.raises(CorpusError, match="need at least 2 speakers"):
        prepare_voxceleb1_asv(root, tmp_path / "asv", dev_speakers=1)
    with open(root / "veri_test.txt", "a") as fh:
        fh.write(f"yes {rel('id10270', 0, 1)} {rel('id10270', 0, 2)}\n")
        fh.write(f"1 {rel('id10270', 0, 1)} id10270/gone/00009.wav\n")
    with pytest.raises(CorpusProblems) as info:
        prepare_voxceleb1_asv(root, tmp_path / "asv", dev_speakers=2)
    text = "\n".join(str(p) for p in info.value.problems)
    assert "veri_test.txt:5): trial label 'yes' is not 1 or 0" in text
    assert "id10270/gone/00009.wav (" in text and "trial names a file with no audio" in text
    result = prepare_voxceleb1_asv(root, tmp_path / "asv", dev_speakers=0, tolerant=True)
    assert "1 trials dropped: they name a skipped file" in result.notes
    assert len(read_table(tmp_path / "asv" / "test" / "utt2spk")) == 6
    assert not (tmp_path / "asv" / "dev").exists()


def test_cli_prepare_voxceleb1(tmp_path, capsys):
    root = make_voxceleb1(tmp_path / "vc")
    base = ["data", "prepare-voxceleb1", "--corpus-dir", str(root)]
    assert main([*base, "--task", "sid", "--out", str(tmp_path / "sid")]) == 0
    assert "voxceleb1 sid: 24 loaded, 0 skipped of 24" in capsys.readouterr().out
    out = tmp_path / "asv"
    assert main([*base, "--task", "asv", "--out", str(out), "--dev-speakers", "2"]) == 0
    assert "note: dev: 8 utterances of 2 held-out speakers, 16 seeded trials" in (
        capsys.readouterr().out
    )
    assert main(["data", "validate", str(out / "test")]) == 0
    assert main([*base, "--task", "asv", "--out", str(out)]) == 1  # default 20 dev speakers
    err = capsys.readouterr().err
    assert "20 dev speakers leave no training speakers" in err
    assert "give a smaller --dev-speakers (0 = no dev)" in err  # shown to work above
    assert main([*base, "--task", "sid", "--out", str(out), "--dev-speakers", "2"]) == 1
    assert "--dev-speakers only applies with --task asv" in capsys.readouterr().err


def test_cli_voxceleb1_strict_error_and_tolerant_remedy(tmp_path, capsys):
    root = make_voxceleb1(tmp_path / "vc")
    (root / "wav" / rel("id10003", 1, 8)).write_bytes(b"RIFF....WAVE")  # truncated header
    base = ["data", "prepare-voxceleb1", "--task", "sid", "--corpus-dir", str(root)]
    assert main([*base, "--out", str(tmp_path / "sid")]) == 1
    err = capsys.readouterr().err
    assert "error: id10003-8jEAjG6-SegY-00008" in err and "use --tolerant" in err
    assert main([*base, "--out", str(tmp_path / "sid"), "--tolerant"]) == 0
    out = capsys.readouterr().out
    assert "skipped id10003-8jEAjG6-SegY-00008" in out
    assert "voxceleb1 sid: 23 loaded, 1 skipped (1 corrupt) of 24" in out
    assert "id10003-8jEAjG6-SegY-00008" not in read_table(tmp_path / "sid" / "test" / "utt2spk")
