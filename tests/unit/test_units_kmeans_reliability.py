"""k-means refuses what it cannot fit or use: non-finite features (naming the utterance),
tampered or malformed model files (one-line KMeansError), empty selections."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from speechssl.cli.main import main
from speechssl.errors import ConfigError
from speechssl.features.store import FeatureStore, shard_stem
from speechssl.units.kmeans import (
    MODEL_META,
    MODEL_WEIGHTS,
    FeatureValueError,
    KMeansConfig,
    KMeansError,
    KMeansModel,
    fit_kmeans,
)
from speechssl.units.synthetic import MixtureSpec, write_mixture_store
from speechssl.utils.files import sha256_file


def _store(root, nshard=2, num_frames=6000, dim=4):
    write_mixture_store(
        root, MixtureSpec(num_frames=num_frames, dim=dim, components=5, seed=1), nshard=nshard
    )
    return FeatureStore(root)


def _poison(store: FeatureStore, utt: str, frame: int, value: float) -> None:
    """Overwrite one value of ``utt`` in its shard file (a store damaged after its dump)."""
    for r in store.ranks:
        stem = shard_stem(r, store.meta.nshard)
        for line in (store.root / f"{stem}.index").read_text().splitlines():
            name, offset, count = line.split()
            if name == utt:
                assert frame < int(count)
                rows = np.memmap(store.root / f"{stem}.bin", dtype="<f4", mode="r+")
                rows[(int(offset) + frame) * store.dim + 1] = value
                rows.flush()
                return
    raise AssertionError(f"{utt} not in {store.root}")


def _cfg(**kw) -> KMeansConfig:
    return KMeansConfig(**{"k": 5, "device": "cpu", "n_init": 1, "init_lloyd_iters": 2, **kw})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize(
    "settings",
    [
        {},  # Lloyd; the initialisation reads a subset of utterances only
        {"normalize": "global_mv"},  # statistics pass over everything first
        {"minibatch_epochs": 0.2, "max_iter": 0, "batch_size": 500},  # mini-batch epochs only
        {"mode": "minibatch", "batch_size": 500, "max_iter": 2},
        {"cache_gb": 1.0},
    ],
)
def test_non_finite_feature_is_refused_naming_the_utterance(tmp_path, value, settings):
    store = _store(tmp_path / "s")
    victim = sorted(store.utt_ids)[len(store) // 2]
    _poison(store, victim, 3, value)
    with pytest.raises(FeatureValueError) as exc:
        fit_kmeans(store, _cfg(init_sample_frames=200, **settings))
    assert exc.value.item == victim
    assert "at frame 3" in exc.value.reason and str(value) in exc.value.reason


def test_non_finite_feature_cli_is_one_line_exit_1(tmp_path, capsys):
    store = _store(tmp_path / "s")
    victim = sorted(store.utt_ids)[0]
    _poison(store, victim, 0, float("nan"))
    rc = main(["kmeans", "fit", "--features", str(store.root), "--k", "5",
               "--out", str(tmp_path / "km"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and victim in err and "nan" in err and "Traceback" not in err
    assert not (tmp_path / "km").exists()


def test_overflowing_finite_values_are_refused_with_a_working_hint(tmp_path):
    # finite, but squares overflow float32: no NaN model, a clear error with a remedy
    store = _store(tmp_path / "s", num_frames=3000)
    for u in sorted(store.utt_ids)[:3]:
        _poison(store, u, 0, 3e38)
    with pytest.raises(ConfigError, match=r"overflowed float32.*--normalize global_mv"):
        fit_kmeans(store, _cfg())
    model = fit_kmeans(store, _cfg(normalize="global_mv")).model
    assert bool(torch.isfinite(model.centroids).all())
    assert np.isfinite(model.meta["inertia_per_frame"])


# ------------------------------------------------------------------ model files


@pytest.fixture
def model_dir(tmp_path):
    store = _store(tmp_path / "s", num_frames=2000)
    fit_kmeans(store, _cfg(normalize="global_mv")).model.save(tmp_path / "km")
    return tmp_path / "km"


def _rewrite(model_dir, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and update the checksum (a consistent tampering, so the checks
    after the checksum are what must catch it)."""
    save_file(tensors, str(model_dir / MODEL_WEIGHTS))
    meta = json.loads((model_dir / MODEL_META).read_text())
    meta["weights_sha256"] = sha256_file(model_dir / MODEL_WEIGHTS)
    (model_dir / MODEL_META).write_text(json.dumps(meta))


def _tensors(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(model_dir / MODEL_WEIGHTS)))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t["centroids"].__setitem__((2, 1), float("nan")), r"NaN/inf .*row 2"),
        (lambda t: t["centroids"].__setitem__((0, 0), float("inf")), r"NaN/inf .*row 0"),
        (lambda t: t.pop("centroids"), r"no 'centroids' tensor"),
        (
            lambda t: t.update(centroids=t["centroids"].to(torch.int32)),
            r"centroids must be .*int32",
        ),
        (lambda t: t.update(mean=t["mean"][:-1].clone()), r"mean must be a float vector of size 4"),
        (lambda t: t.update(std=torch.ones(7)), r"std must be a float vector of size 4"),
        (lambda t: t.pop("std"), r"one of mean/std"),
        (lambda t: t["std"].__setitem__(0, 0.0), r"std has values <= 0"),
        (lambda t: t["mean"].__setitem__(1, float("nan")), r"mean has NaN/inf"),
        (
            lambda t: t.update(centroids=t["centroids"][:3].clone()),
            r"centroids are 3 x 4, kmeans.json says 5 x 4",
        ),
    ],
)
def test_malformed_model_is_a_one_line_kmeans_error(model_dir, damage, message, capsys, tmp_path):
    tensors = _tensors(model_dir)
    damage(tensors)
    _rewrite(model_dir, tensors)
    with pytest.raises(KMeansError, match=message):
        KMeansModel.load(model_dir)
    # the command line: exit 1, one line naming the weights file, no traceback
    rc = main(["kmeans", "apply", "--kmeans", str(model_dir), "--features",
               str(model_dir.parent / "s"), "--out", str(tmp_path / "lab"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "Traceback" not in err and MODEL_WEIGHTS in err
    assert len(err.splitlines()) == 1


def test_unreadable_weights_with_matching_checksum(model_dir):
    (model_dir / MODEL_WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    meta = json.loads((model_dir / MODEL_META).read_text())
    meta["weights_sha256"] = sha256_file(model_dir / MODEL_WEIGHTS)
    (model_dir / MODEL_META).write_text(json.dumps(meta))
    with pytest.raises(KMeansError, match="unreadable safetensors"):
        KMeansModel.load(model_dir)


def test_saving_a_nan_model_is_refused(tmp_path):
    bad = KMeansModel(centroids=torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    with pytest.raises(KMeansError, match="NaN/inf"):
        bad.save(tmp_path / "km")
    assert not (tmp_path / "km").exists()


# ------------------------------------------------------------------ selections


def test_fraction_selecting_nothing_is_refused_clearly(tmp_path, capsys):
    store = _store(tmp_path / "s", num_frames=2000)  # a dozen utterances
    with pytest.raises(
        ConfigError, match=r"fraction=1e-06 selected no utterance.*larger --fraction"
    ):
        fit_kmeans(store, _cfg(fraction=1e-6))
    rc = main(["kmeans", "fit", "--features", str(store.root), "--k", "5", "--fraction", "1e-6",
               "--out", str(tmp_path / "km"), "--device", "cpu"])  # fmt: skip
    assert rc == 1 and "selected no utterance" in capsys.readouterr().err
    # the option the message recommends works
    assert main(["kmeans", "fit", "--features", str(store.root), "--k", "5", "--fraction", "0.8",
                 "--out", str(tmp_path / "km"), "--device", "cpu"]) == 0  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fraction", "10"], r"fraction must be in \(0, 1\]"),
        (["--fraction", "0"], r"fraction must be in \(0, 1\]"),
        (["--percent", "150"], r"--percent must be in \(0, 100\]"),
    ],
)
def test_out_of_range_fraction_or_percent(tmp_path, capsys, flags, message):
    import re

    store = _store(tmp_path / "s", num_frames=2000)
    rc = main(["kmeans", "fit", "--features", str(store.root), "--k", "5", *flags,
               "--out", str(tmp_path / "km"), "--device", "cpu"])  # fmt: skip
    assert rc == 1 and re.search(message, capsys.readouterr().err)


def test_percent_is_the_fraction_in_percent(tmp_path, capsys, caplog):
    store = _store(tmp_path / "s", num_frames=6000)
    common = ["kmeans", "fit", "--features", str(store.root), "--k", "5", "--device", "cpu"]
    assert main([*common, "--fraction", "0.5", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--percent", "50", "--out", str(tmp_path / "b")]) == 0
    a, b = KMeansModel.load(tmp_path / "a"), KMeansModel.load(tmp_path / "b")
    assert a.meta["config"]["fraction"] == b.meta["config"]["fraction"] == 0.5
    assert a.meta["num_frames"] == b.meta["num_frames"] < store.num_frames()
    assert torch.equal(a.centroids, b.centroids)
    # fairseq's unit (a fraction) given to --percent: 0.5 % of 26 utterances is none;
    # the error says so and the log names the fraction that was probably meant
    caplog.clear()
    capsys.readouterr()
    assert main([*common, "--percent", "0.5", "--out", str(tmp_path / "c")]) == 1
    assert "selected no utterance" in capsys.readouterr().err
    assert "--fraction 0.5 here" in caplog.text
