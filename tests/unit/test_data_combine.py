"""`speechssl data combine` on real data dirs (wav files through soundfile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main
from speechssl.data.combine import combine_data_dirs
from speechssl.data.kaldi_dir import KaldiDataDir, Segment, write_data_dir
from speechssl.errors import DataDirError


def make_dir(root: Path, spk: str, n: int, gender: str = "m", text: bool = True) -> Path:
    wavs = root / "wav"
    wavs.mkdir(parents=True)
    wav_scp, utt2spk, txt = {}, {}, {}
    for i in range(n):
        utt = f"{spk}-{i:03d}"
        path = wavs / f"{utt}.wav"
        noise = np.random.default_rng(i).normal(scale=0.1, size=1600 * (i + 1))
        sf.write(path, noise.astype(np.float32), 16000, subtype="PCM_16")
        wav_scp[utt], utt2spk[utt], txt[utt] = str(path), spk, f"WORD {i}"
    write_data_dir(
        root,
        wav_scp=wav_scp,
        utt2spk=utt2spk,
        text=txt if text else None,
        spk2gender={spk: gender},
        extra={"utt2kind": dict.fromkeys(wav_scp, "word")},
    )
    return root


def test_combine_two_dirs_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_dir(tmp_path / "a", "spkA", 2)
    b = make_dir(tmp_path / "b", "spkB", 3, gender="f")
    out = tmp_path / "all"
    assert main(["data", "combine", "--out", str(out), str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert f"combined into {out}: " in printed and "utt2spk 5" in printed
    assert f"not keyed tables, not copied: {a}/wav, {b}/wav" in printed
    d = KaldiDataDir(out)
    assert d.utt_ids() == ["spkA-000", "spkA-001", "spkB-000", "spkB-001", "spkB-002"]
    assert d.spk2utt == {
        "spkA": ["spkA-000", "spkA-001"],
        "spkB": ["spkB-000", "spkB-001", "spkB-002"],
    }
    assert d.spk2gender == {"spkA": "m", "spkB": "f"}
    assert (out / "utt2kind").read_text().count("\n") == 5
    assert main(["data", "validate", "--strict", str(out)]) == 0


def test_table_missing_in_one_input_is_left_out(tmp_path: Path) -> None:
    a = make_dir(tmp_path / "a", "spkA", 2)
    b = make_dir(tmp_path / "b", "spkB", 2, text=False)
    res = combine_data_dirs([a, b], tmp_path / "all")
    assert res.left_out == {"text": [str(b)]}
    assert "note: text left out: missing in " + str(b) in res.lines()
    assert not (tmp_path / "all" / "text").exists()


def test_duplicate_utterance_is_an_error_naming_it(tmp_path: Path) -> None:
    a = make_dir(tmp_path / "a", "spkA", 2)
    with pytest.raises(DataDirError, match=r"spkA-000 \(.*/a/utt2spk\): in both .*/a and .*/a"):
        combine_data_dirs([a, a], tmp_path / "all")
    assert not (tmp_path / "all").exists()  # nothing half-written


def test_same_speaker_in_two_dirs(tmp_path: Path) -> None:
    a = make_dir(tmp_path / "a", "spkA", 2)
    b = make_dir(tmp_path / "b", "spkA", 2)
    # same utterance ids too: rename b's utterances
    for name in ("wav.scp", "utt2spk", "text", "utt2kind"):
        p = b / name
        p.write_text(p.read_text().replace("spkA-00", "spkA-10"))
    b2 = tmp_path / "b2"
    sp = KaldiDataDir(b)
    write_data_dir(b2, wav_scp=sp.wav_scp, utt2spk=sp.utt2spk, spk2gender={"spkA": "m"})
    res = combine_data_dirs([a, b2], tmp_path / "all")
    assert res.counts["spk2gender"] == 1 and res.counts["utt2spk"] == 4
    write_data_dir(b2, wav_scp=sp.wav_scp, utt2spk=sp.utt2spk, spk2gender={"spkA": "f"})
    with pytest.raises(DataDirError, match=r"spkA .*spk2gender.*in both"):
        combine_data_dirs([a, b2], tmp_path / "all", overwrite=True)


def test_refusals(tmp_path: Path) -> None:
    a = make_dir(tmp_path / "a", "spkA", 2)
    b = make_dir(tmp_path / "b", "spkB", 1)
    seg = tmp_path / "seg"
    write_data_dir(
        seg,
        wav_scp={"rec1": str(a / "wav" / "spkA-001.wav")},
        utt2spk={"spkC-000": "spkC"},
        segments={"spkC-000": Segment("rec1", 0.0, 0.1)},
    )
    with pytest.raises(DataDirError, match="combining dirs with and without segments"):
        combine_data_dirs([a, seg], tmp_path / "all")
    combine_data_dirs([a, b], tmp_path / "all")
    with pytest.raises(DataDirError, match="exists"):
        combine_data_dirs([a, b], tmp_path / "all")
    with pytest.raises(DataDirError, match="no such data dir"):
        combine_data_dirs([a, tmp_path / "nope"], tmp_path / "x")
    with pytest.raises(DataDirError, match="is also the output dir"):
        combine_data_dirs([a, b], a, overwrite=True)
    assert main(["data", "combine", "--out", str(tmp_path / "all"), str(a), str(b)]) == 1
