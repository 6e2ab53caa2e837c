"""`features dump --channels` and `--overwrite`: a stereo recording is one line naming the
utterance and the option that resolves it; the option works (select:N is that channel, mean
the average); a store made under one policy refuses a rerun under another, and --overwrite
replaces it.

Regressions (issue 14): the error recommended ``channels='select:N'``, which no ``features
dump`` option set, and a store made with other settings told the user to "overwrite" with
no option to do so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main
from speechssl.data.kaldi_dir import write_data_dir
from speechssl.features.store import FeatureStore


@pytest.fixture
def stereo_dir(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Two utterances: ``a`` mono, ``b`` stereo whose channels differ; plus mono copies of
    b's channel 0 and of its channel mean, each in a data dir of its own."""
    rng = np.random.default_rng(0)
    n = 8000
    mono = (0.1 * rng.standard_normal(n)).astype(np.float32)
    stereo = (0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    stereo[:, 1] *= 3.0
    files = {
        "a": tmp_path / "a.wav",
        "b": tmp_path / "b.wav",
        "b0": tmp_path / "b0.wav",
        "bmean": tmp_path / "bmean.wav",
    }
    sf.write(files["a"], mono, 16000, subtype="FLOAT")
    sf.write(files["b"], stereo, 16000, subtype="FLOAT")
    sf.write(files["b0"], stereo[:, 0], 16000, subtype="FLOAT")
    sf.write(files["bmean"], stereo.mean(axis=1), 16000, subtype="FLOAT")
    data = tmp_path / "data"
    write_data_dir(
        data, wav_scp={"a": str(files["a"]), "b": str(files["b"])}, utt2spk={"a": "s", "b": "s"}
    )
    refs = {}
    for name in ("b0", "bmean"):
        refs[name] = tmp_path / f"data_{name}"
        write_data_dir(refs[name], wav_scp={"b": str(files[name])}, utt2spk={"b": "s"})
    return data, refs


def _dump(data: Path, out: Path, *extra: str) -> int:
    return main(
        ["features", "dump", "--data", str(data), "--kind", "fbank", "--out", str(out),
         "--device", "cpu", "--dither", "0", *extra]
    )  # fmt: skip


def test_stereo_error_names_the_option_and_the_option_works(
    stereo_dir: tuple[Path, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, refs = stereo_dir
    assert _dump(data, tmp_path / "strict") == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("speechssl features: error: b (") and "2 channels" in line
    assert line.endswith("for features dump use --channels select:N (0-based) or --channels mean")

    for policy, ref in (("select:0", "b0"), ("mean", "bmean")):
        out = tmp_path / policy.replace(":", "")
        assert _dump(data, out, "--channels", policy) == 0
        assert _dump(refs[ref], tmp_path / f"ref_{ref}") == 0
        got = FeatureStore(out)
        want = FeatureStore(tmp_path / f"ref_{ref}")
        assert sorted(got.utt_ids) == ["a", "b"]
        np.testing.assert_allclose(got["b"], want["b"], rtol=1e-5, atol=1e-4)
        assert got.meta.extractor["channels"] == policy
    capsys.readouterr()

    # the same store under another policy is refused (its features are of other samples)...
    assert _dump(data, tmp_path / "select0", "--channels", "mean") == 1
    err = capsys.readouterr().err
    assert "exists with different settings" in err and "'channels': 'mean'" in err
    # ... and --overwrite replaces it (the failed strict store too)
    for out in ("select0", "strict"):
        assert _dump(data, tmp_path / out, "--channels", "mean", "--overwrite") == 0
        store = FeatureStore(tmp_path / out)
        assert store.meta.extractor["channels"] == "mean"
        np.testing.assert_allclose(
            store["b"], FeatureStore(tmp_path / "ref_bmean")["b"], rtol=1e-5, atol=1e-4
        )


def test_overwrite_redoes_complete_shards_and_drops_another_shard_count(
    stereo_dir: tuple[Path, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = stereo_dir
    out = tmp_path / "store"
    assert _dump(data, out, "--channels", "mean", "--nshard", "2") == 0
    assert len(list(out.glob("shard-*-of-00002.done.json"))) == 2
    capsys.readouterr()
    assert _dump(data, out, "--channels", "mean", "--nshard", "2") == 0
    assert '"shards": {"0": "complete", "1": "complete"}' in capsys.readouterr().out
    assert _dump(data, out, "--channels", "mean", "--nshard", "2", "--overwrite") == 0
    assert '"shards": {"0": "written", "1": "written"}' in capsys.readouterr().out
    assert _dump(data, out, "--channels", "mean", "--overwrite") == 0
    # the shards of the old count are gone (their hidden lock files may stay: a lock file is
    # never removed, another process may hold it)
    old = [p.name for p in out.iterdir() if "-of-00002" in p.name and not p.name.startswith(".")]
    assert old == []
    assert sorted(FeatureStore(out).utt_ids) == ["a", "b"]


def test_a_bad_policy_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_data_dir(data, wav_scp={"a": str(tmp_path / "a.wav")}, utt2spk={"a": "s"})
    assert _dump(data, tmp_path / "out", "--channels", "left") == 1
    assert capsys.readouterr().err.strip() == (
        "speechssl features: error: --channels must be error, mean or select:N (N >= 0), got 'left'"
    )


def test_labels_straight_from_audio_read_it_as_the_store_was(
    stereo_dir: tuple[Path, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the channel policy is part of what the k-means model's features were; `kmeans apply
    # --data` (no store) must read the stereo file the same way, not refuse it
    from speechssl.units.labels import UnitLabels

    data, _ = stereo_dir
    store, km = tmp_path / "store", tmp_path / "km"
    assert _dump(data, store, "--channels", "mean") == 0
    assert main(["kmeans", "fit", "--features", str(store), "--k", "3", "--out", str(km),
                 "--device", "cpu"]) == 0  # fmt: skip
    for how, source in (("store", ["--features", str(store)]), ("audio", ["--data", str(data)])):
        assert main(["kmeans", "apply", "--kmeans", str(km), *source, "--out",
                     str(tmp_path / f"labels_{how}"), "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    from_store = UnitLabels.load(tmp_path / "labels_store")
    from_audio = UnitLabels.load(tmp_path / "labels_audio")
    for utt in ("a", "b"):
        np.testing.assert_array_equal(from_audio[utt], from_store[utt])


def test_labels_from_audio_name_the_way_to_read_a_stereo_file(
    stereo_dir: tuple[Path, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a k-means model fitted on a store dumped with the default --channels error cannot label
    # a stereo file straight from audio; the error names the options that make it work (the
    # test above shows them working)
    data, refs = stereo_dir
    store, km = tmp_path / "store", tmp_path / "km"
    assert _dump(refs["b0"], store) == 0
    assert main(["kmeans", "fit", "--features", str(store), "--k", "2", "--out", str(km),
                 "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["kmeans", "apply", "--kmeans", str(km), "--data", str(data), "--out",
                 str(tmp_path / "labels"), "--device", "cpu"]) == 1  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("speechssl kmeans: error: b (") and "2 channels" in line
    assert line.endswith(
        "labels from audio read it as the k-means model's store was dumped (--channels error); "
        "dump and fit one with features dump --channels select:N or --channels mean"
    )
