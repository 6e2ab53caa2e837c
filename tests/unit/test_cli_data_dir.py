"""`speechssl data validate | fix | info`: output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from audio_fixtures import make_data_dir

import speechssl
from speechssl.cli.main import main


def test_validate_clean_exit_0(tmp_path, capsys):
    d = make_data_dir(tmp_path)
    assert main(["data", "validate", str(d)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith(f"validate {d}: OK, 0 warnings")


def test_validate_errors_exit_1_and_name_the_item(tmp_path, capsys):
    d = make_data_dir(tmp_path)
    os.remove(tmp_path / "audio" / "spk1-u001.wav")
    assert main(["data", "validate", "--fast", str(d)]) == 0  # text files are fine
    capsys.readouterr()
    assert main(["data", "validate", str(d)]) == 1
    out = capsys.readouterr().out
    assert "error: wav.scp:5: spk1-u001: " in out and "audio file does not exist" in out
    assert "1 errors" in out.splitlines()[-1]


def test_validate_json(tmp_path, capsys):
    d = make_data_dir(tmp_path)
    (d / "text").write_text("spk0-u000 <s>\n")
    assert main(["data", "validate", "--fast", "--json", str(d)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {p["code"] for p in report["problems"]} >= {"illegal-symbol", "key-mismatch"}


def test_validate_warning_only_exits_0(tmp_path, capsys):
    d = make_data_dir(tmp_path, speakers=1)
    assert main(["data", "validate", str(d)]) == 0
    assert "warning: spk2utt: only one speaker" in capsys.readouterr().out


def test_usage_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["data", "validate", "--fast", "--strict", str(tmp_path)])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["data", "validate"])
    assert info.value.code == 2


def test_missing_dir_exit_1(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope")]) == 1
    assert "data directory does not exist" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "nope")]) == 1
    assert main(["data", "fix", str(tmp_path / "nope")]) == 1


def test_fix_then_validate(tmp_path, capsys):
    d = make_data_dir(tmp_path)
    lines = (d / "utt2spk").read_text().splitlines(keepends=True)
    (d / "utt2spk").write_text("".join(reversed(lines[1:])))
    assert main(["data", "validate", "--fast", str(d)]) == 1
    assert main(["data", "fix", str(d)]) == 0
    out = capsys.readouterr().out
    assert "filtered utt2spk: 5 -> 5 (rewritten: sorted / line endings normalised)" in out
    assert "filtered text: 6 -> 5 [1 not in every per-utterance file]" in out
    assert main(["data", "validate", str(d)]) == 0


def test_info_text_and_json(tmp_path, capsys):
    d = make_data_dir(tmp_path)
    assert main(["data", "info", str(d)]) == 0
    out = capsys.readouterr().out
    assert "speakers        2" in out and "duration histogram:" in out
    assert main(["data", "info", "--json", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["utterances"] == 6


def test_console_entry_point_exit_code(tmp_path):
    d = make_data_dir(tmp_path)
    (d / "utt2dur").write_text("spk0-u000 -1\n")
    repo = Path(speechssl.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", "speechssl", "data", "validate", "--fast", str(d)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: utt2dur:1: spk0-u000: '-1' is not a positive number [bad-value]" in proc.stdout
