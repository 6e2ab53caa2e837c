"""speechssl data fix (makes a broken dir valid, backs up, never deletes audio) and info."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audio_fixtures import make_data_dir, write_audio

from speechssl.data.fix import fix_data_dir
from speechssl.data.info import data_dir_info
from speechssl.data.kaldi_dir import KaldiDataDir, Segment, write_data_dir
from speechssl.data.validate import ValidateOptions, validate_data_dir
from speechssl.errors import DataDirError


def _break(d: Path) -> dict[str, bytes]:
    """Typical hand-made-dir faults; returns the original bytes of every file."""
    originals = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    text = (d / "text").read_text().splitlines(keepends=True)
    # unsorted, one utterance missing from text, a blank line, a duplicate, CRLF
    (d / "text").write_bytes(
        "".join([text[2], text[0], "\n", text[0], *text[3:5]]).replace("\n", "\r\n").encode()
    )
    (d / "spk2gender").write_text("spk0 m\nspk1 f\nspk9 m\n")  # a speaker with no utterances
    wav = (d / "wav.scp").read_text()
    (d / "wav.scp").write_text(wav + "zzz-orphan /nowhere/orphan.wav\n")
    utt2dur = (d / "utt2dur").read_text().splitlines(keepends=True)
    (d / "utt2dur").write_text("".join(utt2dur[:-1]))  # drops spk1-u002
    (d / "spk2utt").write_text("spk0 spk0-u000\n")
    return originals


def test_fix_makes_broken_dir_valid(tmp_path):
    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=3)
    assert validate_data_dir(d).ok
    originals = _break(d)
    broken = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    assert not validate_data_dir(d, ValidateOptions(level="fast")).ok
    audio_before = sorted((tmp_path / "audio").iterdir())

    report = fix_data_dir(d)
    lines = report.lines()
    assert "filtered text: 6 -> 4 [1 blank, 1 duplicate key]" in lines
    assert "filtered utt2spk: 6 -> 4 [2 not in every per-utterance file]" in lines
    assert (
        "filtered wav.scp: 7 -> 4 [3 not in every per-utterance file]" in lines
    )  # orphan + two utts
    assert "filtered spk2gender: 3 -> 2 [1 speaker without utterances]" in lines
    assert "filtered spk2utt: 1 -> 2" in lines
    assert report.backup_dir == str(d / ".backup")

    r = validate_data_dir(d)
    assert r.ok and r.num_warnings == 0, r.lines()
    kd = KaldiDataDir(d)
    assert kd.utt_ids() == ["spk0-u000", "spk0-u002", "spk1-u000", "spk1-u001"]
    assert (d / "text").read_bytes().count(b"\r") == 0
    # the backup holds the files as they were before the fix; audio untouched
    for name, data in broken.items():
        assert (d / ".backup" / name).read_bytes() == data
    assert sorted((tmp_path / "audio").iterdir()) == audio_before
    assert originals["utt2spk"] != (d / "utt2spk").read_bytes()

    # fixing again changes nothing and makes no second backup
    again = fix_data_dir(d)
    assert not again.changed and again.backup_dir is None
    assert again.lines()[-1].endswith("already consistent, nothing changed")
    assert not (d / ".backup.1").exists()

    # a later fix never overwrites the first backup
    (d / "utt2dur").write_text((d / "utt2dur").read_text().splitlines(keepends=True)[0])
    third = fix_data_dir(d, force=True)  # drops 3 of 4 utterances: needs force
    assert third.backup_dir == str(d / ".backup.1")
    assert (d / ".backup" / "text").read_bytes() == broken["text"]
    assert KaldiDataDir(d).utt_ids() == ["spk0-u000"]


def test_fix_segments_filters_recordings_and_extra_files(tmp_path):
    rec1 = write_audio(tmp_path / "r1.wav", 2.0)
    rec2 = write_audio(tmp_path / "r2.wav", 2.0)
    d = tmp_path / "d"
    write_data_dir(
        d,
        wav_scp={"r1": str(rec1), "r2": str(rec2), "r3": str(rec2)},
        utt2spk={"r1-a": "s1", "r2-a": "s2", "r9-a": "s9"},
        segments={
            "r1-a": Segment("r1", 0, 1),
            "r2-a": Segment("r2", 0, 1),
            "r9-a": Segment("r9", 0, 1),  # recording not in wav.scp
        },
        reco2dur={"r1": 2.0, "r2": 2.0, "r3": 2.0},
        extra={
            "words": {"r1-a": "a", "r2-a": "b", "r3-x": "c"},
            "utt2keyword": {"r2-a": "yes", "r9-a": "no"},  # a subset: must not drop r1-a
            "spk2voice": {"s1": "en", "s2": "en", "s9": "de"},
        },
    )
    (d / "phones.txt").write_text("a 1\nb 2\n")
    report = fix_data_dir(d, utt_extra_files=["words"])
    lines = report.lines()
    assert "filtered wav.scp: 3 -> 2 [1 recording not used]" in lines
    assert "filtered reco2dur: 3 -> 2 [1 recording not used]" in lines
    assert "filtered segments: 3 -> 2 [1 not in every per-utterance file]" in lines
    assert "filtered words: 3 -> 2 [1 utterance dropped]" in lines
    assert "filtered utt2keyword: 2 -> 1 [1 utterance dropped]" in lines
    assert "filtered spk2voice: 3 -> 2 [1 speaker without utterances]" in lines
    assert lines[-1].endswith("): phones.txt")
    assert KaldiDataDir(d).utt_ids() == ["r1-a", "r2-a"]
    assert validate_data_dir(d, ValidateOptions(level="fast")).ok


def test_fix_drops_malformed_lines(tmp_path):
    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=2)
    (d / "utt2dur").write_text("spk0-u000 0.5\nspk0-u001 -3\nspk1-u000 abc\nspk1-u001 0.6\n")
    report = fix_data_dir(d)
    assert "filtered utt2dur: 4 -> 2 [2 malformed]" in report.lines()
    assert validate_data_dir(d).ok


def test_fix_errors(tmp_path):
    with pytest.raises(DataDirError, match="does not exist"):
        fix_data_dir(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataDirError, match="without utt2spk"):
        fix_data_dir(tmp_path / "d")


def test_info(tmp_path):
    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=3)
    (d / "spk2gender").write_text("spk0 f\nspk1 m\n")
    info = data_dir_info(d)
    assert (info.utterances, info.recordings, info.speakers) == (6, 6, 2)
    assert info.duration_source == "utt2dur"
    assert info.total_hours == pytest.approx((0.5 + 0.6 + 0.7) * 2 / 3600)
    assert info.duration_stats["max"] == pytest.approx(0.7)
    assert info.sample_rates == {"16000": 6} and info.channels == {"1": 6}
    assert info.genders == {"f": 1, "m": 1}
    assert info.utts_per_speaker["median"] == 3
    assert info.words == 18 and info.vocabulary == 5
    assert sum(b["count"] for b in info.histogram) == 6
    assert info.histogram[0]["count"] == 6
    text = info.format()
    assert "utterances      6" in text and "16000 Hz x6" in text
    json.dumps(info.to_json())


def test_info_durations_from_headers_and_segments(tmp_path):
    d = make_data_dir(tmp_path, speakers=1, utts_per_speaker=2, utt2dur=False)
    write_audio(tmp_path / "audio" / "spk0-u001.wav", 12.0, rate=8000)
    info = data_dir_info(d)
    assert info.duration_source == "audio headers"
    assert info.total_hours == pytest.approx(12.5 / 3600)
    assert info.sample_rates == {"8000": 1, "16000": 1}
    counts = {b["from"]: b["count"] for b in info.histogram}
    assert counts[0.0] == 1 and counts[10.0] == 1

    rec = write_audio(tmp_path / "rec.wav", 4.0)
    s = tmp_path / "s"
    write_data_dir(
        s,
        wav_scp={"rec": str(rec)},
        utt2spk={"rec-1": "a", "rec-2": "a"},
        segments={"rec-1": Segment("rec", 0, 1.5), "rec-2": Segment("rec", 1.5, 4.0)},
    )
    info = data_dir_info(s)
    assert info.duration_source == "segments" and info.has_segments
    assert (info.utterances, info.recordings) == (2, 1)
    assert info.total_hours == pytest.approx(4.0 / 3600)


# -- regression tests (issue 15, data dirs) ------------------------------------------------

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("name", ["text", "utt2spk", "wav.scp"])
def test_fix_strips_a_bom_and_keeps_the_utterance(tmp_path, name):
    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=2)
    (d / name).write_bytes(BOM + (d / name).read_bytes())
    assert "bom" in validate_data_dir(d, ValidateOptions(level="fast")).codes()
    report = fix_data_dir(d)
    assert f"filtered {name}: 4 -> 4 [1 byte order mark stripped]" in report.lines()
    assert not (d / name).read_bytes().startswith(BOM)
    assert KaldiDataDir(d).utt_ids() == ["spk0-u000", "spk0-u001", "spk1-u000", "spk1-u001"]
    r = validate_data_dir(d)
    assert r.ok and r.num_warnings == 0, r.lines()


def test_fix_refuses_to_drop_most_utterances_unless_forced(tmp_path):
    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=2)
    import numpy as np

    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (d / "wav.scp").write_bytes(garbage)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    with pytest.raises(DataDirError, match=r"would drop 4 of 4 utterances .*--force"):
        fix_data_dir(d)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert not (d / ".backup").exists()
    report = fix_data_dir(d, force=True)
    assert "filtered utt2spk: 4 -> 0 [4 not in every per-utterance file]" in report.lines()
    assert (d / ".backup" / "wav.scp").read_bytes() == garbage


def test_fix_cli_force(tmp_path, capsys):
    from speechssl.cli.main import main

    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=2)
    (d / "utt2dur").write_text("spk0-u000 0.5\n")  # 3 of 4 utterances would go
    assert main(["data", "fix", str(d)]) == 1
    err = capsys.readouterr().err
    assert "would drop 3 of 4 utterances (75%" in err and "--force" in err
    assert main(["data", "fix", "--force", str(d)]) == 0
    assert "filtered utt2spk: 4 -> 1" in capsys.readouterr().out
    assert KaldiDataDir(d).utt_ids() == ["spk0-u000"]
