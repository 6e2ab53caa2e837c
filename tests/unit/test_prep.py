"""LibriSpeech / Libri-Light preparation on tiny corpora built in their real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audio_fixtures import write_audio

from speechssl.cli.main import main
from speechssl.data.kaldi_dir import KaldiDataDir
from speechssl.data.prep.common import CorpusError, CorpusProblems
from speechssl.data.prep.librilight import (
    pack_voice_activity,
    prepare_librilight,
    split_evenly,
)
from speechssl.data.prep.librispeech import prepare_librispeech
from speechssl.data.validate import validate_data_dir

SPEAKERS_TXT = """\
; Some comment lines like the real file
;ID  |SEX| SUBSET           |MINUTES| NAME
19   | F | train-clean-100  | 25.19 | Kara Shallenberg
198  | M | train-clean-100  | 25.03 | Heather Duncan
"""


def make_librispeech(root: Path, split: str = "dev-clean") -> Path:
    """ROOT/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac + trans.txt."""
    ls = root / "LibriSpeech"
    chapters = {("19", "198"): 3, ("19", "227"): 2, ("198", "129977"): 2}
    for (spk, ch), n in chapters.items():
        d = ls / split / spk / ch
        lines = []
        for i in range(n):
            utt = f"{spk}-{ch}-{i:04d}"
            write_audio(d / f"{utt}.flac", 0.3 + 0.05 * i, seed=i)
            lines.append(f"{utt} THE WORD NUMBER {i} IT'S HERE\n")
        (d / f"{spk}-{ch}.trans.txt").write_text("".join(lines))
    (ls / "SPEAKERS.TXT").write_text(SPEAKERS_TXT)
    return root


def test_librispeech_layout_to_valid_dir(tmp_path):
    root = make_librispeech(tmp_path / "corpus")
    out = tmp_path / "data" / "dev"
    result = prepare_librispeech(root, "dev-clean", out)
    assert result.report.loaded == 7 and result.report.num_skipped == 0
    r = validate_data_dir(out)
    assert r.ok and r.num_warnings == 0, r.lines()
    kd = KaldiDataDir(out)
    assert kd.utt_ids()[:3] == ["19-198-0000", "19-198-0001", "19-198-0002"]
    assert kd.speakers() == ["19", "198"]
    assert kd.text is not None and kd.text["198-129977-0001"] == "THE WORD NUMBER 1 IT'S HERE"
    assert kd.utt2dur is not None and kd.utt2dur["19-198-0002"] == pytest.approx(0.4)
    assert kd.utt2num_samples is not None and kd.utt2num_samples["19-198-0002"] == 6400
    assert kd.spk2gender == {"19": "f", "198": "m"}
    src = Path(kd.audio_source("19-227-0001").path)
    assert (
        src.is_absolute()
        and src == root.resolve() / "LibriSpeech/dev-clean/19/227/19-227-0001.flac"
    )


def test_librispeech_root_may_be_the_librispeech_dir_and_per_chapter(tmp_path):
    root = make_librispeech(tmp_path / "corpus")
    out = tmp_path / "dev"
    prepare_librispeech(root / "LibriSpeech", "dev-clean", out, per_chapter_speakers=True)
    kd = KaldiDataDir(out)
    assert kd.speakers() == ["19-198", "19-227", "198-129977"]
    assert kd.spk2gender == {"19-198": "f", "19-227": "f", "198-129977": "m"}
    assert validate_data_dir(out).ok


def test_librispeech_missing_and_extra_files_are_named(tmp_path):
    root = make_librispeech(tmp_path / "corpus")
    ch = root / "LibriSpeech/dev-clean/19/198"
    (ch / "19-198-0001.flac").unlink()  # transcript line without audio
    write_audio(ch / "19-198-0007.flac", 0.3)  # audio without transcript line
    (root / "LibriSpeech/dev-clean/198/129977/198-129977.trans.txt").unlink()
    (root / "LibriSpeech/dev-clean/19/227/19-227.trans.txt").write_text(
        "19-227-0000 HELLO\n19-227-0001\n"
    )
    with pytest.raises(CorpusProblems) as info:
        prepare_librispeech(root, "dev-clean", tmp_path / "out")
    msgs = sorted(str(p) for p in info.value.problems)
    assert len(msgs) == 5
    kinds = sorted(p.kind for p in info.value.problems)
    assert kinds == [
        "bad-transcript",
        "no-audio",
        "no-transcript",
        "no-transcript",
        "no-transcript",
    ]
    text = "\n".join(msgs)
    assert "19-198-0001 (" in text and "transcript line has no audio file 19-198-0001.flac" in text
    assert "19-198-0007 (" in text and "audio file has no transcript line" in text
    assert "198-129977-0000" in text and "198-129977.trans.txt is missing" in text
    assert "19-227-0001 (" in text and "19-227.trans.txt:2): no transcript text" in text
    assert not (tmp_path / "out").exists()  # nothing written on failure

    result = prepare_librispeech(root, "dev-clean", tmp_path / "out", tolerant=True)
    rep = result.report
    assert (rep.loaded, rep.num_skipped, rep.seen) == (3, 5, 8)
    assert rep.by_kind() == {"bad-transcript": 1, "no-audio": 1, "no-transcript": 3}
    assert validate_data_dir(tmp_path / "out").ok
    assert KaldiDataDir(tmp_path / "out").utt_ids() == ["19-198-0000", "19-198-0002", "19-227-0000"]


def test_librispeech_corrupt_flac_and_bad_split(tmp_path):
    root = make_librispeech(tmp_path / "corpus")
    (root / "LibriSpeech/dev-clean/19/198/19-198-0000.flac").write_bytes(b"not a flac")
    with pytest.raises(CorpusProblems, match=r"19-198-0000 .*unreadable audio"):
        prepare_librispeech(root, "dev-clean", tmp_path / "out")
    with pytest.raises(CorpusError, match="LibriSpeech split test-other: not found"):
        prepare_librispeech(root, "test-other", tmp_path / "out")


def test_prepare_refuses_to_replace_unrelated_dir(tmp_path):
    root = make_librispeech(tmp_path / "corpus")
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(CorpusError, match="refusing to replace"):
        prepare_librispeech(root, "dev-clean", out)
    assert (out / "notes.txt").read_text() == "keep me"
    # a previous data dir is replaced (reruns redo the output)
    prepare_librispeech(root, "dev-clean", tmp_path / "dd")
    (tmp_path / "dd" / "stale").write_text("x")
    prepare_librispeech(root, "dev-clean", tmp_path / "dd")
    assert not (tmp_path / "dd" / "stale").exists()


def test_cli_prepare_librispeech(tmp_path, capsys):
    root = make_librispeech(tmp_path / "corpus")
    out = tmp_path / "dev"
    args = ["data", "prepare-librispeech", "--corpus-dir", str(root), "--split", "dev-clean"]
    assert main([*args, "--out", str(out)]) == 0
    assert "librispeech dev-clean: 7 loaded, 0 skipped of 7" in capsys.readouterr().out
    assert main(["data", "validate", str(out)]) == 0
    (root / "LibriSpeech/dev-clean/19/198/19-198-0001.flac").unlink()
    assert main([*args, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "error: 19-198-0001 (" in err and "no audio file" in err


def make_librilight(root: Path, subset: str = "small") -> Path:
    """ROOT/<subset>/<speaker>/<book>/<file>.flac + <file>.json with voice_activity."""
    files = {
        ("100", "sea_fairies_0812_librivox_64kb_mp3", "01_baum_sea_fairies_64kb"): 6.0,
        ("100", "sea_fairies_0812_librivox_64kb_mp3", "02_baum_sea_fairies_64kb"): 3.0,
        ("1001", "sherlock_holmes_librivox", "adventure_01"): 9.0,
    }
    for i, ((spk, book, stem), dur) in enumerate(files.items()):
        d = root / subset / spk / book
        write_audio(d / f"{stem}.flac", dur, rate=16000, seed=i)
        meta = {
            "speaker": spk,
            "book_meta": {"title": book},
            "snr": 12.5,
            "voice_activity": [[0.2, 1.5], [1.7, 2.9], [3.4, 5.8]] if dur == 6.0 else [],
        }
        if stem == "adventure_01":
            del meta["voice_activity"]
        (d / f"{stem}.json").write_text(json.dumps(meta))
    return root


def test_librilight_whole_files(tmp_path):
    root = make_librilight(tmp_path / "ll")
    out = tmp_path / "data"
    result = prepare_librilight(root, "small", out)
    assert result.report.loaded == 3
    r = validate_data_dir(out)
    assert r.ok, r.lines()
    kd = KaldiDataDir(out)
    assert kd.utt_ids() == [
        "100-sea_fairies_0812_librivox_64kb_mp3-01_baum_sea_fairies_64kb",
        "100-sea_fairies_0812_librivox_64kb_mp3-02_baum_sea_fairies_64kb",
        "1001-sherlock_holmes_librivox-adventure_01",
    ]
    assert kd.text is None and kd.segments is None
    assert kd.durations()["1001-sherlock_holmes_librivox-adventure_01"] == pytest.approx(9.0)


def test_librilight_segments(tmp_path):
    root = make_librilight(tmp_path / "ll")
    out = tmp_path / "seg"
    result = prepare_librilight(root, "small", out, max_segment=2.5)
    r = validate_data_dir(out, None)
    assert r.ok and r.num_warnings == 0, r.lines()
    kd = KaldiDataDir(out)
    segs = kd.segments
    assert segs is not None
    first = "100-sea_fairies_0812_librivox_64kb_mp3-01_baum_sea_fairies_64kb"
    # VAD [0.2,1.5] [1.7,2.9] [3.4,5.8] packed into <= 2.5 s: [0.2,1.5] alone (adding the
    # second would span 2.7 s), [1.7,2.9], and [3.4,5.8] (2.4 s)
    assert [(s.start, s.end) for u, s in segs.items() if u.startswith(first)] == [
        (0.2, 1.5),
        (1.7, 2.9),
        (3.4, 5.8),
    ]
    sherlock = [s for u, s in segs.items() if u.startswith("1001-")]
    assert [(s.start, s.end) for s in sherlock] == [
        (0.0, 2.25),
        (2.25, 4.5),
        (4.5, 6.75),
        (6.75, 9.0),
    ]
    assert all(s.duration <= 2.5 for s in segs.values())
    assert kd.utt2dur is not None and kd.utt2dur[f"{first}-0001"] == pytest.approx(1.2)
    assert any("cut evenly" in n for n in result.notes)
    assert validate_data_dir(out).ok


def test_librilight_missing_files_are_named(tmp_path):
    root = make_librilight(tmp_path / "ll")
    book = root / "small/100/sea_fairies_0812_librivox_64kb_mp3"
    (book / "02_baum_sea_fairies_64kb.json").unlink()  # audio without metadata
    (book / "03_orphan.json").write_text("{}")  # metadata without audio
    write_audio(book / "04_badmeta.flac", 1.0)
    (book / "04_badmeta.json").write_text("{not json")
    with pytest.raises(CorpusProblems) as info:
        prepare_librilight(root, "small", tmp_path / "out")
    kinds = sorted(p.kind for p in info.value.problems)
    assert kinds == ["bad-metadata", "no-audio", "no-metadata"]
    text = " ".join(str(p) for p in info.value.problems)
    assert "100-sea_fairies_0812_librivox_64kb_mp3-03_orphan" in text
    assert "audio file has no 02_baum_sea_fairies_64kb.json" in text
    result = prepare_librilight(root, "small", tmp_path / "out", tolerant=True)
    assert (result.report.loaded, result.report.num_skipped, result.report.seen) == (2, 3, 5)
    assert validate_data_dir(tmp_path / "out").ok


def test_cli_prepare_librilight(tmp_path, capsys):
    root = make_librilight(tmp_path / "ll")
    out = tmp_path / "seg"
    argv = ["data", "prepare-librilight", "--corpus-dir", str(root), "--subset", "small"]
    assert main([*argv, "--out", str(out), "--max-segment", "4"]) == 0
    assert "librilight small: 3 loaded, 0 skipped of 3" in capsys.readouterr().out
    assert main(["data", "validate", "--strict", str(out)]) == 0
    assert main([*argv[:-1], "nope", "--out", str(out)]) == 1


def test_packing_and_even_split():
    assert split_evenly(0.0, 10.0, 4.0) == [
        (0.0, 10 / 3),
        (10 / 3, 20 / 3),
        (20 / 3, 10.0),
    ]
    assert split_evenly(1.0, 2.0, 4.0) == [(1.0, 2.0)]
    # a region longer than the limit is split; regions outside the file are clipped
    got = pack_voice_activity([(0.0, 1.0), (1.2, 9.2), (9.5, 12.0)], 10.0, 3.0)
    assert got[0] == (0.0, 1.0)
    assert all(e - s <= 3.0 + 1e-9 for s, e in got)
    assert got[-1] == (9.5, 10.0)
    assert pack_voice_activity([(0.5, 1.0), (1.2, 2.0)], 5.0, 3.0) == [(0.5, 2.0)]
