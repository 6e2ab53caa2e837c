"""The default k-means schedule (chosen from N*d*k and d), explicit overrides, validation on
construction, and the "same fit already exists" rule of reruns."""

from __future__ import annotations

import pytest

from speechssl.errors import ConfigError
from speechssl.units.kmeans import (
    LOW_DIM,
    SMALL_WORK,
    KMeansConfig,
    fit_kmeans,
    resolve_schedule,
    schedule_name,
)
from speechssl.units.stream import store_fingerprint
from speechssl.units.synthetic import MixtureSpec, write_mixture_store


def test_benchmark_cases_and_small_data_get_their_schedules():
    mfcc = KMeansConfig(k=100)
    # 39-d MFCC, 1M frames: 3.9e9 multiply-adds per pass -> mini-batch epochs only
    run, name = resolve_schedule(mfcc, 39, 1_000_000)
    assert name == "minibatch-start"
    assert LOW_DIM >= 39 and SMALL_WORK < 1e6 * 39 * 100
    assert (run.mode, run.max_iter, run.n_init, run.init_lloyd_iters) == ("lloyd", 0, 1, 3)
    assert run.minibatch_epochs == pytest.approx(0.3)
    # just above the threshold the mini-batch part still spans 30 batches
    run, _ = resolve_schedule(mfcc, 39, 600_000)
    assert run.minibatch_epochs == pytest.approx(30 * 10_000 / 600_000)
    # 768-d layer, K=500, 200k frames: Lloyd to a relative change of 1e-3
    run, name = resolve_schedule(KMeansConfig(k=500), 768, 200_000)
    assert name == "lloyd-large"
    assert (run.mode, run.tol, run.n_init, run.minibatch_epochs) == ("lloyd", 1e-3, 3, 0.0)
    # small data (the synthetic recipe's 1 h of MFCC): the thorough Lloyd schedule
    run, name = resolve_schedule(mfcc, 39, 360_000)
    assert name == "lloyd" and (run.tol, run.max_iter, run.n_init) == (1e-4, 100, 3)


def test_explicit_settings_override_the_rule():
    run, name = resolve_schedule(KMeansConfig(k=100, max_iter=5, n_init=2), 39, 1_000_000)
    assert name == "minibatch-start" and (run.max_iter, run.n_init) == (5, 2)
    run, name = resolve_schedule(KMeansConfig(k=100, mode="lloyd"), 39, 1_000_000)
    assert name == "lloyd-large" and run.minibatch_epochs == 0.0 and run.tol == 1e-3
    run, name = resolve_schedule(KMeansConfig(k=100, mode="minibatch"), 39, 1_000_000)
    assert (name, run.mode, run.max_iter) == ("minibatch", "minibatch", 100)
    # no mini-batch epochs on the mini-batch start: full-batch iterations take their place
    run, _ = resolve_schedule(KMeansConfig(k=100, minibatch_epochs=0.0), 39, 1_000_000)
    assert run.max_iter == 100
    assert schedule_name(KMeansConfig(k=100, tol=1e-6), 768, 200_000) == "lloyd-large"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"k": 0}, "k must be >= 1"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"tol": -1.0}, "tol must be >= 0"),
        ({"tol": float("nan")}, "tol must be >= 0"),
        ({"minibatch_epochs": -0.5}, "minibatch_epochs must be >= 0"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 0.5, "max_frames": 10}, "not both"),
        ({"max_frames": 0}, "max_frames must be positive"),
        ({"n_init": 0}, "n_init and batch_size"),
        ({"init_sample_frames": 0}, "init_sample_frames must be >= 1"),
        ({"max_iter": 0}, "max_iter must be >= 1"),
    ],
)
def test_invalid_settings_are_refused_on_construction(kw, message):
    with pytest.raises(ConfigError, match=message):
        KMeansConfig(**kw)


def test_same_fit_exists_rule(tmp_path):
    write_mixture_store(tmp_path / "s", MixtureSpec(num_frames=3000, dim=4, components=4, seed=2))
    other = tmp_path / "s2"
    write_mixture_store(other, MixtureSpec(num_frames=3000, dim=4, components=4, seed=3))
    from speechssl.features.store import FeatureStore

    data_hash = store_fingerprint(FeatureStore(tmp_path / "s"))
    cfg = KMeansConfig(k=4, device="cpu", n_init=1)
    assert cfg.same_fit_exists(tmp_path / "km", data_hash) is False  # nothing there yet
    fit_kmeans(tmp_path / "s", cfg).model.save(tmp_path / "km")
    assert cfg.same_fit_exists(tmp_path / "km", data_hash) is True
    # where and how fast it runs does not matter; what it computes does
    assert KMeansConfig(k=4, n_init=1, cache_gb=2.0).same_fit_exists(tmp_path / "km", data_hash)
    with pytest.raises(ConfigError, match="other settings or data"):
        KMeansConfig(k=4, n_init=2).same_fit_exists(tmp_path / "km", data_hash)
    with pytest.raises(ConfigError, match="other settings or data"):
        cfg.same_fit_exists(tmp_path / "km", store_fingerprint(FeatureStore(other)))


def test_small_fit_records_the_schedule(tmp_path):
    write_mixture_store(tmp_path / "s", MixtureSpec(num_frames=3000, dim=4, components=4, seed=2))
    meta = fit_kmeans(tmp_path / "s", KMeansConfig(k=4, device="cpu")).model.meta
    assert meta["schedule"] == "lloyd" and meta["config"]["tol"] is None
    assert meta["resolved_config"]["tol"] == 1e-4 and meta["resolved_config"]["n_init"] == 3


def test_fit_help_states_the_rule_with_the_library_thresholds(capsys):
    from speechssl.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["kmeans", "fit", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert "N*d*k" in text and f"up to {SMALL_WORK:.0e}".replace("e+0", "e") in text
    assert f"d <= {LOW_DIM}" in text and f"d > {LOW_DIM}" in text
    assert "explicitly overrides the rule" in text
