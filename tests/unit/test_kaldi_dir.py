"""speechssl.data.kaldi_dir: reading, writing, and what consumers ask of a data dir."""

from __future__ import annotations

import pytest
from audio_fixtures import make_data_dir, write_audio

from speechssl.data.kaldi_dir import (
    KaldiDataDir,
    Segment,
    format_seconds,
    parse_wav_entry,
    spk2utt_from_utt2spk,
    write_data_dir,
)
from speechssl.errors import DataDirError


def test_write_then_read_roundtrip(tmp_path):
    ddir = make_data_dir(tmp_path, speakers=2, utts_per_speaker=2)
    names = sorted(p.name for p in ddir.iterdir())
    assert names == ["spk2utt", "text", "utt2dur", "utt2spk", "wav.scp"]
    assert (ddir / "spk2utt").read_text() == "spk0 spk0-u000 spk0-u001\nspk1 spk1-u000 spk1-u001\n"
    kd = KaldiDataDir(ddir)
    assert kd.utt_ids() == ["spk0-u000", "spk0-u001", "spk1-u000", "spk1-u001"]
    assert len(kd) == 4 and "spk1-u000" in kd and "nope" not in kd
    assert kd.speakers() == ["spk0", "spk1"]
    assert kd.speaker("spk1-u001") == "spk1"
    assert kd.text == {
        "spk0-u000": "HELLO WORLD 0",
        "spk0-u001": "HELLO WORLD 1",
        "spk1-u000": "HELLO WORLD 0",
        "spk1-u001": "HELLO WORLD 1",
    }
    assert kd.duration("spk0-u001") == pytest.approx(0.6)
    src = kd.audio_source("spk0-u000")
    assert src.path.endswith("spk0-u000.wav") and not src.pipe and not src.is_segment


def test_reading_is_lazy(tmp_path):
    ddir = make_data_dir(tmp_path, speakers=1, utts_per_speaker=2)
    (ddir / "text").write_text("broken\n\n")  # a blank line: an error, but only when read
    kd = KaldiDataDir(ddir)
    assert kd.utt_ids() == ["spk0-u000", "spk0-u001"]
    with pytest.raises(DataDirError, match=r"text:2.*empty line"):
        _ = kd.text


def test_durations_from_utt2dur_segments_or_headers(tmp_path):
    ddir = make_data_dir(tmp_path, speakers=1, utts_per_speaker=2, utt2dur=False)
    kd = KaldiDataDir(ddir)
    assert kd.utt2dur is None
    assert kd.durations() == {"spk0-u000": 0.5, "spk0-u001": 0.6}

    rec = write_audio(tmp_path / "rec.wav", 3.0)
    seg_dir = tmp_path / "seg"
    write_data_dir(
        seg_dir,
        wav_scp={"rec": str(rec)},
        utt2spk={"rec-1": "s1", "rec-2": "s2"},
        segments={"rec-1": Segment("rec", 0.25, 1.0), "rec-2": Segment("rec", 1.0, 2.5)},
    )
    kd = KaldiDataDir(seg_dir)
    assert kd.durations() == {"rec-1": 0.75, "rec-2": 1.5}
    assert kd.recording_of("rec-2") == "rec"
    src = kd.audio_source("rec-2")
    assert (src.start, src.end, src.recording, src.is_segment) == (1.0, 2.5, "rec", True)
    assert (seg_dir / "segments").read_text() == "rec-1 rec 0.25 1\nrec-2 rec 1 2.5\n"


def test_no_utt2spk_falls_back_to_wav_scp(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("b /x/b.wav\na /x/a.wav\n")
    kd = KaldiDataDir(d)
    assert kd.utt_ids() == ["a", "b"]
    assert kd.speaker("a") == "a"
    assert kd.spk2utt == {"a": ["a"], "b": ["b"]}


def test_malformed_lines_name_file_and_line(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("r /x.wav\n")
    (d / "segments").write_text("u1 r 0 1\nu2 r 2 1\n")
    with pytest.raises(DataDirError, match=r"u2 \(.*segments:2\): segment needs 0 <= start < end"):
        _ = KaldiDataDir(d).segments
    (d / "segments").write_text("u1 r 0\n")
    with pytest.raises(DataDirError, match="needs 4 fields, got 3"):
        _ = KaldiDataDir(d).segments
    (d / "utt2dur").write_text("u1 abc\n")
    with pytest.raises(DataDirError, match=r"utt2dur:1.*not a number"):
        _ = KaldiDataDir(d).utt2dur
    with pytest.raises(DataDirError, match="does not exist"):
        KaldiDataDir(tmp_path / "absent")
    with pytest.raises(DataDirError, match="no text"):
        KaldiDataDir(d).table("text")


def test_helpers():
    assert parse_wav_entry("/a b.wav") == ("/a b.wav", False)
    assert parse_wav_entry("sox x.wav -t wav - |") == ("sox x.wav -t wav -", True)
    assert spk2utt_from_utt2spk({"b": "s2", "a": "s1", "c": "s1"}) == {
        "s1": ["a", "c"],
        "s2": ["b"],
    }
    assert format_seconds(1.0) == "1" and format_seconds(0.12345) == "0.1235"
    assert format_seconds(0.0) == "0"


def test_rewrite_removes_stale_optional_files(tmp_path):
    ddir = make_data_dir(tmp_path, speakers=1, utts_per_speaker=1)
    kd = KaldiDataDir(ddir)
    write_data_dir(ddir, wav_scp=kd.wav_scp, utt2spk=kd.utt2spk or {})
    assert not (ddir / "text").exists() and not (ddir / "utt2dur").exists()


# -- regression tests (issue 15, data dirs) ------------------------------------------------


def test_one_bad_segments_line_spoils_only_its_utterance(tmp_path):
    rec = write_audio(tmp_path / "rec.wav", 3.0)
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec {rec}\n")
    (d / "utt2spk").write_text("rec-1 s\nrec-2 s\nrec-3 s\n")
    (d / "segments").write_text("rec-1 rec 0 1\nrec-2 rec 2 1\nrec-3 rec nan 2\n")
    kd = KaldiDataDir(d)
    assert kd.utt_ids() == ["rec-1", "rec-2", "rec-3"]
    assert kd.duration("rec-1") == 1.0
    assert kd.audio_source("rec-1").end == 1.0
    wave, _ = kd.load("rec-1")
    assert wave.shape[0] == 16000
    with pytest.raises(DataDirError, match=r"rec-2 \(.*segments:2\): segment needs 0 <= start"):
        kd.duration("rec-2")
    with pytest.raises(DataDirError, match=r"segments:3"):
        kd.audio_source("rec-3")
    table = kd.segment_table
    assert table is not None and list(table.good) == ["rec-1"]
    assert [(e.item, e.where) for e in table.errors()] == [
        ("rec-2", f"{d / 'segments'}:2"),
        ("rec-3", f"{d / 'segments'}:3"),
    ]
    with pytest.raises(DataDirError, match="segments:2"):
        _ = kd.segments  # the whole-table view is strict


def test_wav_scp_line_without_path_names_the_line(tmp_path):
    wav = write_audio(tmp_path / "a.wav")
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text(f"a {wav}\nb\n")
    (d / "utt2spk").write_text("a a\nb b\n")
    kd = KaldiDataDir(d)
    assert kd.load("a")[0].shape[0] == 8000
    with pytest.raises(DataDirError, match=r"b \(.*wav.scp:2\): no path/command after the key"):
        kd.audio_source("b")
    with pytest.raises(DataDirError, match="no path/command after the key"):
        kd.load("b")


def test_bom_is_refused_by_the_reader(tmp_path):
    d = make_data_dir(tmp_path, speakers=1, utts_per_speaker=2)
    (d / "text").write_bytes(b"\xef\xbb\xbf" + (d / "text").read_bytes())
    with pytest.raises(DataDirError, match=r"text:1.*byte order mark"):
        _ = KaldiDataDir(d).text


def test_tolerant_iter_audio_skips_only_the_bad_segment(tmp_path):
    from speechssl.data.audio import SkipReport

    rec = write_audio(tmp_path / "rec.wav", 3.0)
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text(f"rec {rec}\n")
    (d / "utt2spk").write_text("rec-1 s\nrec-2 s\n")
    (d / "segments").write_text("rec-1 rec 0 1\nrec-2 rec 2 inf\n")
    kd = KaldiDataDir(d)
    with pytest.raises(DataDirError, match="segments:2"):
        list(kd.iter_audio())
    report = SkipReport()
    assert [u.utt_id for u in kd.iter_audio(tolerant=True, report=report)] == ["rec-1"]
    report.check()
    assert report.by_kind() == {"data-dir": 1} and report.skipped[0][0] == "rec-2"
