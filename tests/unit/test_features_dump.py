"""`speechssl features dump` end to end on a 1000-utterance data dir with injected bad
files: strict and tolerant modes, reruns, partial (killed) shards, --nj vs --nshard."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.cli.main import main
from speechssl.data.tables import write_table
from speechssl.features import FbankOptions, MfccOptions, compute_features
from speechssl.features.dump import DumpOptions, ExtractorRequest, dump_features, shard_range
from speechssl.features.store import FeatureStore, FeatureStoreError, shard_is_complete

ROOT = Path(__file__).resolve().parents[2]
NUM_UTTS = 1000
BAD = {
    "spk0-u0005": "missing",
    "spk1-u0121": "corrupt",
    "spk2-u0402": "empty",
    "spk3-u0778": "nan",
    "spk4-u0904": "short",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1000 tiny 16 kHz utterances (30-250 ms) with five bad ones."""
    root = tmp_path_factory.mktemp("dump") / "data"
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    wav_scp, utt2spk = {}, {}
    for i in range(NUM_UTTS):
        spk = f"spk{i % 5}"
        utt = f"{spk}-u{i:04d}"
        path = wav_dir / f"{utt}.wav"
        kind = BAD.get(utt)
        n = int(rng.integers(480, 4000))
        t = np.arange(n) / 16000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(n)
        if kind == "corrupt":
            path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + rng.bytes(200))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "nan":
            wave[n // 2] = np.nan
            sf.write(path, wave.astype(np.float32), 16000, subtype="FLOAT")
        elif kind == "short":
            sf.write(path, wave[:150], 16000, subtype="PCM_16")
        elif kind != "missing":
            sf.write(path, wave, 16000, subtype="PCM_16")
        wav_scp[utt] = str(path)
        utt2spk[utt] = spk
    write_table(root / "wav.scp", wav_scp)
    write_table(root / "utt2spk", utt2spk)
    return root


def _run(*args: str) -> int:
    return main(["features", "dump", *args])


def test_shard_ranges_are_contiguous_and_cover_everything() -> None:
    for total in (0, 1, 7, 1000):
        for nshard in (1, 2, 3, 8):
            ranges = [shard_range(total, nshard, r) for r in range(nshard)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_strict_mode_fails_naming_the_utterance(data_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "strict"
    rc = _run("--data", str(data_dir), "--kind", "mfcc", "--out", str(out), "--nshard", "4")
    assert rc == 1
    err = capsys.readouterr().err
    # shard 0 (sorted ids spk0-*) meets the missing file first
    assert "spk0-u0005" in err and "does not exist" in err
    assert not shard_is_complete(out, 0, 4)
    assert not list(out.glob(".shard-*tmp*")), "the failed shard left temp files"


def test_tolerant_mode_counts_and_matches_direct_computation(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "tolerant"
    # the same command twice: the second run must find every shard complete
    argv = ("--data", str(data_dir), "--kind", "mfcc", "--out", str(out), "--nshard", "3")
    argv += ("--tolerant", "--deltas", "2")
    assert _run(*argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inputs"] == NUM_UTTS
    assert summary["written"] + summary["skipped"] == NUM_UTTS
    assert summary["skipped"] == len(BAD)
    store = FeatureStore(out)
    assert len(store) == NUM_UTTS - len(BAD)
    skipped = {s["utt"]: s["reason"] for s in store.skipped()}
    assert set(skipped) == set(BAD)
    assert "missing" in skipped["spk0-u0005"] or "exist" in skipped["spk0-u0005"]
    assert "NaN" in skipped["spk3-u0778"]
    assert "too-short" in skipped["spk4-u0904"]
    for rank in range(3):
        done = json.loads((out / f"shard-{rank:05d}-of-00003.done.json").read_text())
        assert done["utterances"] + len(done["skipped"]) == done["inputs"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dim"] == 39 and meta["extractor"]["options"]["num_ceps"] == 13
    # features equal a direct computation on the same audio
    from speechssl.features.deltas import add_deltas

    for utt in ("spk0-u0000", "spk1-u0401", "spk4-u0999"):
        wave, _ = sf.read(data_dir / "wav" / f"{utt}.wav", dtype="float32")
        feats, nf = compute_features(
            torch.from_numpy(wave).unsqueeze(0) * 32768, None, MfccOptions()
        )
        ref = add_deltas(feats, nf, order=2)[0]
        np.testing.assert_allclose(store[utt], ref.numpy(), atol=1e-4, rtol=1e-5)
    # same settings again: every shard is complete, nothing is rewritten
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    assert _run(*argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before
    # other options into the same store are refused, not mixed
    assert (
        _run(
            "--data",
            str(data_dir),
            "--kind",
            "mfcc",
            "--out",
            str(out),
            "--nshard",
            "3",
            "--tolerant",
        )
        == 1
    )
    assert "different settings" in capsys.readouterr().err


def test_killed_shard_is_redone(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = [
        "--data",
        str(data_dir),
        "--kind",
        "fbank",
        "--out",
        str(out),
        "--nshard",
        "2",
        "--tolerant",
    ]
    # a real process killed while writing shard 0 (small batches keep it busy long enough)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "speechssl",
            "features",
            "dump",
            *args,
            "--rank",
            "0",
            "--batch-seconds",
            "0.3",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        tmp = list(out.glob(".shard-00000-of-00002.bin.tmp-*"))
        if tmp and tmp[0].stat().st_size > 0:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the dump finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not shard_is_complete(out, 0, 2)
    with pytest.raises(FeatureStoreError, match="incomplete shards"):
        FeatureStore(out)
    assert _run(*args) == 0
    store = FeatureStore(out)
    assert len(store) + len(store.skipped()) == NUM_UTTS
    assert not list(out.glob(".shard-*tmp*"))


def test_nj_equals_nshard_run_twice(data_dir: Path, tmp_path: Path) -> None:
    common = [
        "--data",
        str(data_dir),
        "--kind",
        "fbank",
        "--tolerant",
        "--num-mel-bins",
        "40",
        "--dtype",
        "float16",
    ]
    assert _run(*common, "--out", str(tmp_path / "nj"), "--nj", "2") == 0
    for rank in (1, 0):
        assert (
            _run(*common, "--out", str(tmp_path / "ns"), "--nshard", "2", "--rank", str(rank)) == 0
        )
    for name in (
        "shard-00000-of-00002.bin",
        "shard-00001-of-00002.index",
        "shard-00001-of-00002.bin",
        "meta.json",
    ):
        assert (tmp_path / "nj" / name).read_bytes() == (tmp_path / "ns" / name).read_bytes(), name
    store = FeatureStore(tmp_path / "nj")
    assert store.meta.dtype == "float16" and store.dim == 40


def test_library_api_and_option_errors(data_dir: Path, tmp_path: Path) -> None:
    from speechssl.errors import ConfigError

    request = ExtractorRequest(kind="fbank", options={"num_mel_bins": 24, "snip_edges": False})
    res = dump_features(
        data_dir, tmp_path / "lib", request, DumpOptions(nshard=5, tolerant=True), ranks=[2]
    )
    assert [r.rank for r in res] == [2] and res[0].written + len(res[0].skipped) == res[
        0
    ].inputs == 200
    with pytest.raises(ConfigError, match="--num-ceps"):
        ExtractorRequest(kind="fbank", options={"num_ceps": 3}).build()
    with pytest.raises(ConfigError, match="--kind model needs --checkpoint"):
        ExtractorRequest(kind="model", options={}).build()
    with pytest.raises(ConfigError, match="--checkpoint"):
        ExtractorRequest(kind="mfcc", options={"checkpoint": "x.pt"}).build()
    assert FbankOptions().dim == 23


#: kinds that cannot be built without artifacts, and where their own test lives
NEEDS_ARTIFACTS = {"model": "tests/integration/test_model_features_dump.py (a trained model dir)"}


def _registered() -> list[str]:
    from speechssl.features.extractors import EXTRACTORS, load_extractor_plugins

    load_extractor_plugins()
    return [k for k in EXTRACTORS.names() if k not in NEEDS_ARTIFACTS]


def test_registry_lists_the_model_kind() -> None:
    from speechssl.features.extractors import EXTRACTORS, load_extractor_plugins

    load_extractor_plugins()
    assert set(NEEDS_ARTIFACTS) <= set(EXTRACTORS.names())


@pytest.mark.parametrize("kind", _registered())
def test_every_registered_extractor_honours_the_interface(kind: str) -> None:
    """New kinds are checked automatically; a kind that needs artifacts (a checkpoint) is
    listed in NEEDS_ARTIFACTS with the test that covers it instead."""
    extractor = ExtractorRequest(kind=kind, options={}).build()
    json.dumps(extractor.describe())  # meta.json must be able to record it
    rate = extractor.sample_rate
    waves = torch.zeros(2, rate)
    waves[0] = torch.sin(torch.arange(rate) * 0.05) * 0.3
    waves[1, : rate // 2] = torch.sin(torch.arange(rate // 2) * 0.11) * 0.2
    lengths = torch.tensor([rate, rate // 2])
    feats, nf = extractor(waves, lengths, ["a", "b"])
    assert feats.dim() == 3 and feats.shape[0] == 2 and feats.shape[2] == extractor.dim
    assert nf[0] > nf[1] > 0 and abs(int(nf[0]) - extractor.frame_rate) <= 3
    assert torch.isfinite(feats).all()
