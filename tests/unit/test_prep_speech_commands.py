"""Speech Commands v0.01 -> SUPERB keyword-spotting dirs, on a tiny real-layout fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from audio_fixtures import write_audio

from speechssl.cli.main import main
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.data.prep.common import CorpusError, CorpusProblems
from speechssl.data.prep.speech_commands import prepare_speech_commands
from speechssl.data.tables import read_table
from speechssl.data.validate import validate_data_dir

# (word, hash, n): yes/no/stop are keywords, bed/marvin become _unknown_
CLIPS = [
    ("yes", "0a7c2a8d", 0),
    ("yes", "0a7c2a8d", 1),
    ("yes", "1b4c9b89", 0),
    ("no", "0a7c2a8d", 0),
    ("no", "2c6d9e1f", 2),
    ("stop", "1b4c9b89", 0),
    ("bed", "0a7c2a8d", 0),
    ("marvin", "2c6d9e1f", 0),
    ("marvin", "3d7e0f2a", 1),
]
VALIDATION = ["yes/1b4c9b89_nohash_0.wav", "marvin/2c6d9e1f_nohash_0.wav"]
TESTING = ["no/2c6d9e1f_nohash_2.wav", "marvin/3d7e0f2a_nohash_1.wav"]


def make_speech_commands(root: Path) -> Path:
    """ROOT/<word>/<hash>_nohash_<n>.wav, the two lists, _background_noise_/*.wav."""
    for i, (word, h, n) in enumerate(CLIPS):
        write_audio(root / word / f"{h}_nohash_{n}.wav", 1.0, seed=i, subtype="PCM_16")
    (root / "validation_list.txt").write_text("".join(f"{r}\n" for r in VALIDATION))
    (root / "testing_list.txt").write_text("".join(f"{r}\n" for r in TESTING))
    noise = root / "_background_noise_"
    write_audio(noise / "white_noise.wav", 10.5, seed=50, subtype="PCM_16")
    write_audio(noise / "running_tap.wav", 4.0, seed=51, subtype="PCM_16")
    (noise / "README.md").write_text("background noise files\n")
    return root


def make_test_set(root: Path) -> Path:
    """speech_commands_test_set_v0.01/<label>/*.wav with the 12 class folders."""
    write_audio(root / "yes" / "9f8e7d6c_nohash_0.wav", 1.0, seed=60)
    write_audio(root / "off" / "9f8e7d6c_nohash_1.wav", 1.0, seed=61)
    write_audio(root / "_unknown_" / "9f8e7d6c_nohash_0.wav", 1.0, seed=62)
    write_audio(root / "_unknown_" / "8e7d6c5b_nohash_3.wav", 1.0, seed=63)
    write_audio(root / "_silence_" / "pink_noise_0.wav", 1.0, seed=64)
    return root


def test_training_archive_to_three_dirs(tmp_path):
    root = make_speech_commands(tmp_path / "speech_commands_v0.01")
    out = tmp_path / "ks"
    result = prepare_speech_commands(root, out)
    # 9 clips + 10 + 4 one-second silence clips
    assert (result.report.loaded, result.report.num_skipped) == (23, 0)
    train, dev, test = (read_table(out / s / "utt2keyword") for s in ("train", "dev", "test"))
    assert dev == {
        "1b4c9b89-yes-0": "yes",
        "2c6d9e1f-marvin-0": "_unknown_",
        "noise-white_noise-0008": "_silence_",
    }
    assert test == {
        "2c6d9e1f-no-2": "no",
        "3d7e0f2a-marvin-1": "_unknown_",
        "noise-white_noise-0009": "_silence_",
    }
    assert train["0a7c2a8d-bed-0"] == "_unknown_" and train["0a7c2a8d-yes-1"] == "yes"
    silence = sorted(u for u, k in train.items() if k == "_silence_")
    assert len(silence) == 8 + 4 and "noise-running_tap-0003" in silence
    kd = KaldiDataDir(out / "train")
    seg = kd.segment("noise-white_noise-0007")
    assert (seg.recording, seg.start, seg.end) == ("noise-white_noise", 7.0, 8.0)
    assert kd.speaker("0a7c2a8d-no-0") == "0a7c2a8d"
    wav, rate = kd.load("noise-white_noise-0003")
    assert rate == 16000 and wav.shape[-1] == 16000
    for split in ("train", "dev", "test"):
        assert main(["data", "validate", str(out / split)]) == 0
        report = validate_data_dir(out / split)
        assert report.ok and report.num_warnings == 0, report.lines()
    assert "train: 17 utterances (yes=2 no=1 stop=1 _unknown_=1 _silence_=12)" in result.notes
    assert "dev: 3 utterances (yes=1 _unknown_=1 _silence_=1)" in result.notes


def test_separate_test_set_replaces_testing_list(tmp_path):
    root = make_speech_commands(tmp_path / "train_archive")
    test_root = make_test_set(tmp_path / "speech_commands_test_set_v0.01")
    out = tmp_path / "ks"
    result = prepare_speech_commands(root, out, test_set_dir=test_root)
    test = read_table(out / "test" / "utt2keyword")
    assert test == {
        "9f8e7d6c-yes-9f8e7d6c_nohash_0": "yes",
        "9f8e7d6c-off-9f8e7d6c_nohash_1": "off",
        "9f8e7d6c-_unknown_-9f8e7d6c_nohash_0": "_unknown_",
        "8e7d6c5b-_unknown_-8e7d6c5b_nohash_3": "_unknown_",
        "_silence_-pink_noise_0": "_silence_",
    }
    train = read_table(out / "train" / "utt2keyword")
    assert "2c6d9e1f-no-2" not in train and "noise-white_noise-0009" in train
    assert any("2 testing_list.txt clips left out" in n for n in result.notes)
    assert main(["data", "validate", str(out / "test")]) == 0


def test_layout_problems_are_named_and_tolerant_skips(tmp_path):
    root = make_speech_commands(tmp_path / "sc")
    (root / "yes" / "0a7c2a8d_nohash_1.wav").write_bytes(b"RIFF broken")
    write_audio(root / "go" / "not-a-clip.wav", 1.0)
    (root / "validation_list.txt").write_text(
        "yes/1b4c9b89_nohash_0.wav\nup/ffffffff_nohash_0.wav\n"
    )
    test_root = make_test_set(tmp_path / "test")
    write_audio(test_root / "dog" / "9f8e7d6c_nohash_0.wav", 1.0)
    with pytest.raises(CorpusProblems) as info:
        prepare_speech_commands(root, tmp_path / "ks", test_set_dir=test_root)
    text = "\n".join(str(p) for p in info.value.problems)
    assert sorted(p.kind for p in info.value.problems) == [
        "bad-name",
        "corrupt",
        "no-audio",
        "unknown-class",
    ], text
    assert "go/not-a-clip.wav" in text and "expected <hash>_nohash_<n>.wav" in text
    assert "up/ffffffff_nohash_0.wav (" in text and "validation_list.txt:2" in text
    assert "dog/9f8e7d6c_nohash_0.wav" in text and "not one of the 12 classes" in text
    assert not (tmp_path / "ks").exists()
    result = prepare_speech_commands(root, tmp_path / "ks", test_set_dir=test_root, tolerant=True)
    rep = result.report
    assert rep.num_skipped == 4 and rep.loaded + rep.num_skipped == rep.seen


def test_missing_lists_and_noise_are_named(tmp_path):
    root = make_speech_commands(tmp_path / "sc")
    (root / "testing_list.txt").unlink()
    with pytest.raises(CorpusError, match=r"testing_list\.txt: not found"):
        prepare_speech_commands(root, tmp_path / "ks")
    root = make_speech_commands(tmp_path / "sc2")
    for f in (root / "_background_noise_").iterdir():
        f.unlink()
    (root / "_background_noise_").rmdir()
    with pytest.raises(CorpusError, match="_background_noise_: not found"):
        prepare_speech_commands(root, tmp_path / "ks")


def test_cli_prepare_speech_commands(tmp_path, capsys):
    root = make_speech_commands(tmp_path / "sc")
    test_root = make_test_set(tmp_path / "test")
    out = tmp_path / "ks"
    args = ["data", "prepare-speech-commands", "--corpus-dir", str(root), "--out", str(out)]
    assert main([*args, "--test-set-dir", str(test_root)]) == 0
    printed = capsys.readouterr().out
    assert "speech commands: 26 loaded, 0 skipped of 26" in printed
    assert "note: test: 5 utterances (yes=1 off=1 _unknown_=2 _silence_=1)" in printed
    assert main(["data", "validate", str(out / "train")]) == 0
    write_audio(root / "go" / "bad-name.wav", 1.0)
    assert main([*args]) == 1
    err = capsys.readouterr().err
    assert "error: go/bad-name.wav" in err and "--tolerant" in err
    assert main([*args, "--tolerant"]) == 0
    assert "skipped go/bad-name.wav" in capsys.readouterr().out
