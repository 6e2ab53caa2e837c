"""The LibriSpeech and Libri-Light recipes on tiny corpora built in the real layouts: data
preparation and the first stages really run; the rest is checked in --dry-run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from audio_fixtures import write_audio

from speechssl.data.kaldi_dir import KaldiDataDir

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs"

# LibriSpeech: split -> {(speaker, chapter): utterances}; speakers differ between splits
LIBRISPEECH = {
    "train-clean-100": {("19", "198"): 3, ("26", "495"): 2},
    "train-clean-360": {("100", "121669"): 3},
    "train-other-500": {("20", "205"): 2},
    "dev-clean": {("84", "121123"): 2},
    "dev-other": {("116", "288045"): 3},
}
# Libri-Light: subset -> [(speaker, book, file, seconds)]
LIBRILIGHT = {
    "small": [("100", "sea_fairies", "01_baum", 7.0), ("101", "oz", "02_baum", 3.0)],
    "medium": [("200", "holmes", "adventure_01", 5.0)],
    "large": [("300", "alice", "chapter_01", 4.0)],
}


def make_librispeech(root: Path) -> Path:
    for split, chapters in LIBRISPEECH.items():
        for (spk, ch), n in chapters.items():
            d = root / "LibriSpeech" / split / spk / ch
            lines = []
            for i in range(n):
                utt = f"{spk}-{ch}-{i:04d}"
                write_audio(d / f"{utt}.flac", 1.2 + 0.3 * i, seed=int(spk) + i)
                lines.append(f"{utt} A FEW WORDS NUMBER {i}\n")
            (d / f"{spk}-{ch}.trans.txt").write_text("".join(lines))
    return root / "LibriSpeech"


def make_librilight(root: Path) -> Path:
    for subset, files in LIBRILIGHT.items():
        for i, (spk, book, stem, seconds) in enumerate(files):
            d = root / subset / spk / book
            write_audio(d / f"{stem}.flac", seconds, seed=i)
            meta = {
                "speaker": spk,
                "voice_activity": [[0.1, seconds / 2], [seconds / 2 + 0.2, seconds - 0.1]],
            }
            (d / f"{stem}.json").write_text(json.dumps(meta))
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def run(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *map(str, argv)], capture_output=True, text=True, env=_env(), timeout=900
    )


def plan(stdout: str) -> dict[int, list[list[str]]]:
    out: dict[int, list[list[str]]] = {}
    current = 0
    for line in stdout.splitlines():
        if line.startswith("# stage "):
            current = int(line.split()[2])
            out[current] = []
        elif line.strip():
            out[current].append(shlex.split(line))
    return out


@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    return make_librispeech(tmp_path / "corpus")


def test_librispeech_data_prep_and_validation(librispeech: Path, tmp_path: Path) -> None:
    data, exp = tmp_path / "data", tmp_path / "exp"
    script = EGS / "librispeech" / "hubert" / "run.sh"
    common = [
        "--data-root",
        data,
        "--exp-dir",
        exp,
        "--local-data-opts",
        f"--corpus-dir {librispeech}",
    ]
    res = run(script, *common, "--stop-stage", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    train = KaldiDataDir(data / "train_960")
    assert len(train) == 3 + 2 + 3 + 2  # the three training splits combined
    assert sorted(train.speakers()) == ["100", "19", "20", "26"]
    assert len(KaldiDataDir(data / "dev_other")) == 3
    assert "validate" in (exp / "logs" / "stage-02.validate.log").read_text()

    # the remaining stages, as they would run on this data
    res = run(script, *common, "--stage", "3", "--dry-run", "true")
    assert res.returncode == 0, res.stderr
    stages = plan(res.stdout)
    dump = stages[3][0]
    assert dump[dump.index("--data") + 1] == str(data / "train_960")
    fit = stages[4][0]
    assert fit[fit.index("--k") + 1] == "100" and fit[fit.index("--percent") + 1] == "10"
    train_cmd = stages[6][0]
    assert f"data.dir={data}/train_960" in train_cmd and "trainer.max_steps=250000" in train_cmd


def test_librispeech_missing_corpus_is_named(tmp_path: Path) -> None:
    res = run(
        EGS / "librispeech" / "hubert" / "run.sh", "--data-root", tmp_path / "data",
        "--exp-dir", tmp_path / "exp", "--local-data-opts", f"--corpus-dir {tmp_path / 'nope'}",
    )  # fmt: skip
    assert res.returncode == 1
    assert f"--corpus-dir {tmp_path / 'nope'}: no such directory" in res.stderr
    assert "stage 1 (data) failed" in res.stderr


@pytest.mark.slow
def test_librispeech_first_stages_run(librispeech: Path, tmp_path: Path) -> None:
    """Data prep through iteration 1's labels and report, for real (small K for tiny data)."""
    data, exp = tmp_path / "data", tmp_path / "exp"
    res = run(
        EGS / "librispeech" / "hubert" / "run.sh", "--data-root", data, "--exp-dir", exp,
        "--local-data-opts", f"--corpus-dir {librispeech}", "--stop-stage", "5",
        "--nj", "2", "--valid-nj", "1", "--iter1-k", "4", "--iter1-percent", "100",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((exp / "dump" / "mfcc" / "train_960" / "meta.json").read_text())
    assert meta["dim"] == 39 and meta["nshard"] == 2  # 13 MFCCs + deltas + delta-deltas
    report = json.loads((exp / "iter1" / "report" / "report.json").read_text())
    assert report["k"] == 4 and report["num_utts"] == 3  # dev-other, usage statistics only
    assert "phones" not in report


def test_librilight_data_prep_and_validation(librispeech: Path, tmp_path: Path) -> None:
    librilight = make_librilight(tmp_path / "librilight")
    data, exp = tmp_path / "data", tmp_path / "exp"
    script = EGS / "librilight" / "hubert" / "run.sh"
    opts = f"--corpus-dir {librilight} --librispeech-dir {librispeech} --max-segment 4"
    common = ["--data-root", data, "--exp-dir", exp, "--local-data-opts", opts]
    res = run(script, *common, "--stop-stage", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    train = KaldiDataDir(data / "ll_60k")
    assert sorted(train.speakers()) == ["100", "101", "200", "300"]
    assert (data / "ll_60k" / "segments").is_file()  # recordings cut into <= 4 s segments
    assert max(train.durations().values()) <= 4.0 + 1e-6
    assert len(KaldiDataDir(data / "dev_other")) == 3

    res = run(script, *common, "--stage", "3", "--dry-run", "true")
    assert res.returncode == 0, res.stderr
    stages = plan(res.stdout)
    assert stages[3][0][0] == "launch_slurm.sh"
    assert f"{data}/ll_60k" in stages[3][0] and "--layer" in stages[3][0]
