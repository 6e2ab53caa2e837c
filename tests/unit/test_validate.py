"""speechssl data validate: each fault kind produces its named message; a clean dir passes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from audio_fixtures import make_data_dir, write_audio

from speechssl.data.kaldi_dir import Segment, write_data_dir
from speechssl.data.validate import ValidateOptions, validate_data_dir
from speechssl.errors import ConfigError, DataDirError


@pytest.fixture
def clean(tmp_path) -> Path:
    return make_data_dir(tmp_path, speakers=2, utts_per_speaker=3)


def _validate(d: Path, **kw):
    return validate_data_dir(d, ValidateOptions(**kw))


def _lines(d: Path, name: str) -> list[str]:
    return (d / name).read_text(encoding="utf-8").splitlines(keepends=True)


def _write(d: Path, name: str, lines: list[str]) -> None:
    (d / name).write_bytes("".join(lines).encode("utf-8"))


def _find(report, code: str):
    hits = [p for p in report.problems if p.code == code]
    assert hits, f"no {code} in {[p.format() for p in report.problems]}"
    return hits


def test_clean_dir_passes(clean):
    r = _validate(clean)
    assert r.ok and r.num_warnings == 0, r.lines()
    assert r.stats["utterances"] == 6 and r.stats["speakers"] == 2
    assert r.stats["audio_checked"] == 6 and r.stats["sample_rates"] == {"16000": 1 * 6}
    assert r.summary().startswith(f"validate {clean}: OK")


def test_not_sorted(clean):
    lines = _lines(clean, "text")
    lines[1], lines[2] = lines[2], lines[1]
    _write(clean, "text", lines)
    (p,) = _find(_validate(clean, level="fast"), "not-sorted")
    assert (p.file, p.line, p.key) == ("text", 3, "spk0-u001")
    assert p.format().startswith("error: text:3: spk0-u001: not in LC_ALL=C sorted order")


def test_c_locale_order_is_bytewise(tmp_path):
    # "B" < "a" in C order; a locale-aware sort would put "a" first
    d = tmp_path / "d"
    wav = write_audio(tmp_path / "x.wav")
    write_data_dir(d, wav_scp={"B": str(wav), "a": str(wav)}, utt2spk={"B": "B", "a": "a"})
    assert _validate(d, level="fast").ok
    _write(d, "wav.scp", [f"a {wav}\n", f"B {wav}\n"])
    _find(_validate(d, level="fast"), "not-sorted")


def test_duplicate_key(clean):
    lines = _lines(clean, "text")
    _write(clean, "text", [*lines[:2], lines[1], *lines[2:]])
    (p,) = _find(_validate(clean, level="fast"), "duplicate-key")
    assert (p.file, p.line, p.key) == ("text", 3, "spk0-u001")


def test_duplicate_key_in_unsorted_file_is_found(clean):
    lines = _lines(clean, "utt2dur")
    _write(clean, "utt2dur", [*lines, lines[0]])
    r = _validate(clean, level="fast")
    assert {p.line for p in _find(r, "duplicate-key")} == {7}


def test_missing_trailing_newline(clean):
    (clean / "text").write_bytes((clean / "text").read_bytes().rstrip(b"\n"))
    (p,) = _find(_validate(clean, level="fast"), "missing-newline")
    assert (p.file, p.line) == ("text", 6)


def test_blank_line(clean):
    lines = _lines(clean, "utt2spk")
    _write(clean, "utt2spk", [*lines[:2], "\n", *lines[2:]])
    (p,) = _find(_validate(clean, level="fast"), "blank-line")
    assert (p.file, p.line) == ("utt2spk", 3)


def test_crlf(clean):
    (clean / "text").write_bytes((clean / "text").read_bytes().replace(b"\n", b"\r\n"))
    assert len(_find(_validate(clean, level="fast"), "crlf")) == 6


def test_wrong_number_of_fields(clean):
    lines = _lines(clean, "utt2spk")
    lines[0] = lines[0].rstrip("\n") + " extra\n"
    _write(clean, "utt2spk", lines)
    (p,) = _find(_validate(clean, level="fast"), "bad-fields")
    assert p.format() == "error: utt2spk:1: spk0-u000: needs 2 fields, got 3 [bad-fields]"


def test_missing_required_files_and_empty_file(clean):
    os.remove(clean / "spk2utt")
    (clean / "utt2spk").write_text("")
    r = _validate(clean, level="fast")
    assert {(p.code, p.file) for p in r.problems} >= {
        ("missing-file", "spk2utt"),
        ("empty-file", "utt2spk"),
    }
    assert not _validate(clean, level="fast", require_text=False).ok
    os.remove(clean / "text")
    assert "missing-file" in _validate(clean, level="fast", require_text=True).codes()


def test_utt2spk_spk2utt_disagree(clean):
    _write(
        clean,
        "spk2utt",
        ["spk0 spk0-u000 spk0-u001 spk1-u000\n", "spk1 spk1-u000 spk1-u001 spk1-u002\n"],
    )
    r = _validate(clean, level="fast")
    msgs = {p.format() for p in _find(r, "spk2utt-mismatch")}
    assert "error: spk2utt:1: spk0: spk1-u000 belongs to spk1 in utt2spk [spk2utt-mismatch]" in msgs
    assert "error: spk2utt:2: spk1: spk1-u000 is listed twice [spk2utt-mismatch]" in msgs
    assert (
        "error: utt2spk:3: spk0-u002: not listed under spk0 in spk2utt [spk2utt-mismatch]" in msgs
    )


def test_utt2spk_not_sorted_by_speaker(tmp_path):
    wav = write_audio(tmp_path / "x.wav")
    d = tmp_path / "d"
    u2s = {"a1": "s2", "a2": "s1", "b1": "s2"}
    write_data_dir(d, wav_scp={u: str(wav) for u in u2s}, utt2spk=u2s)
    (p,) = _find(_validate(d, level="fast"), "not-sorted-by-speaker")
    assert (p.line, p.key, p.severity) == (2, "a2", "error")
    r = _validate(d, level="fast", spk_sort=False)
    assert r.ok and "not-sorted-by-speaker" in r.codes("warning")


def test_utterance_sets_differ(clean):
    lines = _lines(clean, "text")
    _write(clean, "text", lines[:3] + lines[4:] + ["zzz-extra HI\n"])
    r = _validate(clean, level="fast")
    msgs = {p.format() for p in _find(r, "key-mismatch")}
    assert "error: text: spk1-u000: utterance in utt2spk is missing here [key-mismatch]" in msgs
    assert "error: text:6: zzz-extra: utterance not in utt2spk [key-mismatch]" in msgs


def test_utterance_sets_differ_when_unsorted(clean):
    lines = _lines(clean, "utt2dur")
    _write(clean, "utt2dur", [lines[1], lines[0], *lines[3:]])
    r = _validate(clean, level="fast")
    assert [p.key for p in _find(r, "key-mismatch")] == ["spk0-u002"]


def test_text_checks(clean):
    lines = _lines(clean, "text")
    lines[0] = "spk0-u000 HELLO <eps> WORLD\n"
    lines[1] = "spk0-u001 A #0 B\n"
    lines[2] = "spk0-u002 <s> HI </s>\n"
    lines[3] = "spk1-u000 BELL \x07 RINGS\n"
    lines[4] = "spk1-u001 NO\u00a0BREAK\n"
    lines[5] = "spk1-u002\n"
    _write(clean, "text", lines)
    r = _validate(clean, level="fast")
    illegal = [p.format() for p in _find(r, "illegal-symbol")]
    assert len(illegal) == 4
    assert illegal[0].startswith("error: text:1: spk0-u000: reserved symbol <eps>")
    assert _find(r, "non-printable")[0].key == "spk1-u000"
    assert _find(r, "odd-whitespace")[0].key == "spk1-u001"
    assert _find(r, "empty-text")[0].severity == "warning"
    assert r.ok is False
    assert "non-printable" not in _validate(clean, level="fast", non_print=True).codes()


def test_invalid_utf8(clean):
    data = (clean / "text").read_bytes().replace(b"WORLD 1", b"W\xffRLD 1", 1)
    (clean / "text").write_bytes(data)
    (p,) = _find(_validate(clean, level="fast"), "invalid-utf8")
    assert (p.file, p.line) == ("text", 2)


def test_bad_values(clean):
    lines = _lines(clean, "utt2dur")
    lines[0] = "spk0-u000 -1\n"
    _write(clean, "utt2dur", lines)
    _write(clean, "spk2gender", ["spk0 m\n", "spk1 x\n"])
    _write(clean, "utt2num_samples", [f"{ln.split()[0]} 1.5\n" for ln in lines])
    r = _validate(clean, level="fast")
    got = {(p.file, p.key) for p in _find(r, "bad-value")}
    assert ("utt2dur", "spk0-u000") in got and ("spk2gender", "spk1") in got
    assert sum(1 for f, _ in got if f == "utt2num_samples") == 6


def test_speaker_file_must_cover_speakers(clean):
    _write(clean, "spk2gender", ["spk0 m\n"])
    (p,) = _find(_validate(clean, level="fast"), "key-mismatch")
    assert p.format() == (
        "error: spk2gender: spk1: speaker in spk2utt is missing here [key-mismatch]"
    )


def test_pipes_and_tilde(clean):
    lines = _lines(clean, "wav.scp")
    lines[0] = "spk0-u000 sox in.wav -t wav - |\n"
    lines[1] = "spk0-u001 ~/audio/x.wav\n"
    _write(clean, "wav.scp", lines)
    r = _validate(clean, level="fast")
    assert _find(r, "pipe-entry")[0].key == "spk0-u000"
    assert _find(r, "tilde")[0].key == "spk0-u001"
    assert "pipe-entry" not in _validate(clean, level="fast", allow_pipes=True).codes()


def test_one_speaker_warning(tmp_path):
    d = make_data_dir(tmp_path, speakers=1, utts_per_speaker=2)
    r = _validate(d, level="fast")
    assert r.ok and "one-speaker" in r.codes("warning")


def test_reco2file_and_channel(clean):
    utts = [ln.split()[0] for ln in _lines(clean, "utt2spk")]
    chans = ["A", "B", "1", "C", "A", "A"]
    _write(clean, "reco2file_and_channel", [f"{u} {u} {c}\n" for u, c in zip(utts, chans)])
    r = _validate(clean, level="fast")
    assert [p.key for p in r.problems if p.code == "bad-value" and p.severity == "error"] == [
        "spk1-u000"
    ]
    assert "bad-value" in r.codes("warning")  # the "1" channel


def _segmented(tmp_path: Path) -> Path:
    rec1 = write_audio(tmp_path / "r1.wav", 3.0)
    rec2 = write_audio(tmp_path / "r2.wav", 2.0, seed=1)
    d = tmp_path / "seg"
    write_data_dir(
        d,
        wav_scp={"r1": str(rec1), "r2": str(rec2)},
        utt2spk={"r1-a": "r1", "r1-b": "r1", "r2-a": "r2"},
        segments={
            "r1-a": Segment("r1", 0.0, 1.5),
            "r1-b": Segment("r1", 1.5, 3.0),
            "r2-a": Segment("r2", 0.2, 1.9),
        },
        utt2dur={"r1-a": 1.5, "r1-b": 1.5, "r2-a": 1.7},
        reco2dur={"r1": 3.0, "r2": 2.0},
    )
    return d


def test_segmented_dir_passes(tmp_path):
    r = _validate(_segmented(tmp_path), level="strict")
    assert r.ok and r.num_warnings == 0, r.lines()


def test_bad_segments(tmp_path):
    d = _segmented(tmp_path)
    _write(
        d,
        "segments",
        ["r1-a r1 1.5 1.0\n", "r1-b r1 -0.5 3.0\n", "r2-a r9 0.2 1.9\n"],
    )
    r = _validate(d, level="fast")
    bad = {p.format() for p in _find(r, "bad-segment")}
    assert "error: segments:1: r1-a: end 1.0 <= start 1.5 [bad-segment]" in bad
    assert "error: segments:2: r1-b: start -0.5 < 0 [bad-segment]" in bad
    (unknown,) = _find(r, "unknown-recording")
    assert (
        unknown.format()
        == "error: segments:3: r2-a: recording r9 not in wav.scp [unknown-recording]"
    )
    assert _find(r, "unused-recording")[0].key == "r2"


def test_segment_outside_recording(tmp_path):
    d = _segmented(tmp_path)
    _write(d, "segments", ["r1-a r1 0 1.5\n", "r1-b r1 1.5 3.5\n", "r2-a r2 0.2 1.9\n"])
    _write(d, "utt2dur", ["r1-a 1.5\n", "r1-b 2\n", "r2-a 1.7\n"])
    r = _validate(d, level="fast")
    (p,) = _find(r, "segment-outside")
    assert "ends at 3.5 s, after the end of r1 (3.0 s in reco2dur)" in p.reason
    os.remove(d / "reco2dur")
    r = _validate(d)  # no reco2dur: the audio header tells
    (p,) = _find(r, "segment-outside")
    assert "after the end of r1 (3.0000 s)" in p.reason


def test_duration_disagreements(tmp_path):
    d = _segmented(tmp_path)
    _write(d, "utt2dur", ["r1-a 1.5\n", "r1-b 1.2\n", "r2-a 1.7\n"])
    _write(d, "reco2dur", ["r1 3.0\n", "r2 2.5\n"])
    r = _validate(d)
    got = {p.format() for p in _find(r, "duration-mismatch")}
    assert "error: utt2dur:2: r1-b: 1.2 s but segments says 1.5000 s [duration-mismatch]" in got
    assert "error: reco2dur:2: r2: 2.5 s but the audio is 2.0000 s [duration-mismatch]" in got


def test_utt2dur_and_num_samples_against_audio(clean):
    lines = _lines(clean, "utt2dur")
    lines[0] = "spk0-u000 0.9\n"
    _write(clean, "utt2dur", lines)
    _write(clean, "utt2num_samples", [f"{ln.split()[0]} 8000\n" for ln in lines])
    r = _validate(clean)
    got = {p.format() for p in _find(r, "duration-mismatch")}
    assert "error: utt2dur:1: spk0-u000: 0.9 s but the audio is 0.5000 s [duration-mismatch]" in got
    assert (
        "error: utt2num_samples:2: spk0-u001: 8000 samples but the audio has 9600 "
        "[duration-mismatch]" in got
    )
    assert "duration-mismatch" not in _validate(clean, level="fast").codes()  # needs audio


def test_audio_header_problems(clean, tmp_path):
    audio = tmp_path / "audio"
    os.remove(audio / "spk0-u000.wav")
    (audio / "spk0-u001.wav").write_bytes(b"")
    data = (audio / "spk0-u002.wav").read_bytes()
    (audio / "spk0-u002.wav").write_bytes(data[: len(data) // 2])
    (audio / "spk1-u000.wav").write_bytes(b"RIFF garbage" * 10)
    write_audio(audio / "spk1-u001.wav", 0.6, rate=8000)
    write_audio(audio / "spk1-u002.wav", 0.7, channels=2)
    r = _validate(clean)
    by_key = {p.key: p for p in r.problems if p.code.startswith("audio-")}
    assert by_key["spk0-u000"].code == "audio-missing"
    assert by_key["spk0-u000"].format().startswith("error: wav.scp:1: spk0-u000: ")
    assert "audio file does not exist" in by_key["spk0-u000"].reason
    assert by_key["spk0-u001"].code == "audio-empty"
    assert by_key["spk0-u002"].code == "audio-truncated"
    assert by_key["spk1-u000"].code == "audio-corrupt"
    assert (
        by_key["spk1-u002"].code == "audio-channels" and by_key["spk1-u002"].severity == "warning"
    )
    assert "mixed-sample-rates" in r.codes("warning")
    r16 = _validate(clean, sample_rate=16000)
    assert "8000 Hz, expected 16000 Hz" in _find(r16, "audio-sample-rate")[0].reason
    # --fast reads no audio at all
    assert not any(c.startswith("audio-") for c in _validate(clean, level="fast").codes())


def test_strict_decodes_content(clean, tmp_path):
    audio = tmp_path / "audio"
    write_audio(audio / "spk0-u000.wav", 0.5, fill="nan")
    write_audio(audio / "spk0-u001.wav", 0.6, fill="zeros")
    r_default = _validate(clean)
    assert r_default.ok  # headers are fine
    r = _validate(clean, level="strict")
    assert _find(r, "audio-non-finite")[0].key == "spk0-u000"
    assert _find(r, "audio-all-zero")[0].key == "spk0-u001"


def test_strict_finds_silent_segment(tmp_path):
    import numpy as np
    import soundfile as sf

    d = _segmented(tmp_path)
    x, rate = sf.read(str(tmp_path / "r1.wav"), dtype="float32")
    x[rate * 3 // 2 :] = 0.0  # second half of r1 (segment r1-b) digital silence
    sf.write(str(tmp_path / "r1.wav"), x, rate, subtype="FLOAT")
    assert np.any(x)
    (p,) = _find(_validate(d, level="strict"), "audio-all-zero")
    assert p.key == "r1" and "segment r1-b" in p.reason


def test_strict_truncated_flac(tmp_path):
    d = make_data_dir(tmp_path, speakers=2, utts_per_speaker=1, seconds=2.0, suffix="flac")
    victim = tmp_path / "audio" / "spk1-u000.flac"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    r = _validate(d, level="strict")
    assert {p.code for p in r.problems if p.key == "spk1-u000"} & {
        "audio-corrupt",
        "audio-truncated",
    }


def test_audio_sampling_and_parallel_agree(clean, tmp_path):
    os.remove(tmp_path / "audio" / "spk1-u001.wav")
    r = _validate(clean, audio_sample=2, seed=3)
    assert r.stats["audio_checked"] == 2
    assert any("random sample of 2 of 6" in n for n in r.notes)
    serial = _validate(clean)
    parallel = _validate(clean, nj=2)
    assert [p.format() for p in serial.problems] == [p.format() for p in parallel.problems]
    assert [p.key for p in serial.problems] == ["spk1-u001"]


def test_many_problems_are_counted_but_printing_is_capped(clean):
    _write(clean, "utt2num_samples", [f"u{i:03d} -1\n" for i in range(50)])
    r = validate_data_dir(clean, ValidateOptions(level="fast", keep_per_code=10))
    assert r.counts[("error", "bad-value", "utt2num_samples")] == 50
    assert sum(p.code == "bad-value" for p in r.problems) == 10
    lines = r.lines(max_per_code=5)
    assert "error: utt2num_samples: ... and 45 more [bad-value]" in lines


def test_options_and_missing_dir(tmp_path):
    with pytest.raises(ConfigError):
        ValidateOptions(level="quick")
    with pytest.raises(DataDirError, match="does not exist"):
        validate_data_dir(tmp_path / "nope")


def test_extra_tables_may_be_subsets_but_name_no_unknown_key(clean):
    _write(clean, "utt2keyword", ["spk0-u001 yes\n"])
    _write(clean, "ali.phones", ["spk0-u000 SIL a b\n", "spk9-u000 SIL\n"])
    _write(clean, "spk2voice", ["spk1 en\n", "spk0 en\n"])
    r = _validate(clean, level="fast")
    assert {(p.code, p.file, p.key) for p in r.problems} == {
        ("key-mismatch", "ali.phones", "spk9-u000"),
        ("not-sorted", "spk2voice", "spk0"),
    }


# -- regression tests (issue 15, data dirs) ------------------------------------------------


def test_utf8_bom_is_named_as_its_own_problem(clean):
    for name in ("text", "wav.scp"):
        (clean / name).write_bytes(b"\xef\xbb\xbf" + (clean / name).read_bytes())
    r = _validate(clean, level="fast")
    boms = _find(r, "bom")
    assert {(p.file, p.line, p.key) for p in boms} == {
        ("text", 1, "spk0-u000"),
        ("wav.scp", 1, "spk0-u000"),
    }
    assert boms[0].format().startswith("error: ")
    assert "byte order mark" in boms[0].reason and "speechssl data fix" in boms[0].reason
    # the invisible character is named once, not as sort-order or key-set errors
    assert r.codes() == {"bom"}, r.lines()


def test_strict_reports_nan_and_inf_segment_times_per_line(tmp_path):
    d = _segmented(tmp_path)
    _write(d, "segments", ["r1-a r1 0 nan\n", "r1-b r1 inf 3.0\n", "r2-a r2 0.2 1.9\n"])
    r = _validate(d, level="strict")
    bad = {(p.line, p.key) for p in _find(r, "bad-segment")}
    assert bad == {(1, "r1-a"), (2, "r1-b")}
    assert all("not finite" in p.reason for p in _find(r, "bad-segment"))
    assert "segment-outside" not in r.codes()
