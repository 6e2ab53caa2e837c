"""Unit labels: apply (sharded, rerun-safe), text/binary forms, and every misalignment case."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from speechssl.data.tables import write_table
from speechssl.errors import ConfigError, LabelError
from speechssl.features.store import FeatureStore, ShardWriter, StoreMeta, write_meta
from speechssl.units.apply import apply_to_store
from speechssl.units.kmeans import KMeansConfig, KMeansModel, fit_kmeans
from speechssl.units.labels import LabelsMeta, UnitLabels, expected_num_frames
from speechssl.units.synthetic import MixtureSpec, write_mixture_store

WINDOW = 0.025


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    store_dir = root / "store"
    write_mixture_store(
        store_dir, MixtureSpec(num_frames=3000, dim=5, components=4, seed=1), nshard=2
    )
    fit_kmeans(store_dir, KMeansConfig(k=4, device="cpu", n_init=1, init_lloyd_iters=2)).model.save(
        root / "km"
    )
    return root, store_dir


def _durations(store: FeatureStore) -> dict[str, float]:
    # the duration whose 25 ms / 10 ms framing gives exactly the stored frame count
    return {u: round((store.num_frames(u) - 1) / 100 + WINDOW + 0.004, 3) for u in store.utt_ids}


def _data_dir(path, durations: dict[str, float]):
    path.mkdir(parents=True, exist_ok=True)
    write_table(path / "utt2spk", {u: u for u in durations})
    write_table(path / "utt2dur", {u: f"{d:.3f}" for u, d in durations.items()})
    return path


def _apply_all(root, store_dir, out, nshard=1, **kw):
    return [
        apply_to_store(root / "km", store_dir, out, nshard=nshard, rank=r, device="cpu", **kw)
        for r in range(nshard)
    ]


def test_apply_matches_model_and_text_form(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "lab")
    store = FeatureStore(store_dir)
    model = KMeansModel.load(root / "km")
    labels = UnitLabels.load(tmp_path / "lab")
    assert len(labels) == len(store)
    assert labels.k == 4 and labels.label_rate == 100.0
    for u in store.utt_ids:
        np.testing.assert_array_equal(labels[u], model.assign(np.asarray(store[u]))[0].numpy())
    # the text form holds the same labels, keyed by utterance
    text = {}
    for line in (tmp_path / "lab" / "shard-00000-of-00001.txt").read_text().splitlines():
        utt, *vals = line.split()
        text[utt] = [int(v) for v in vals]
    assert text == {u: labels[u].tolist() for u in labels}
    meta = json.loads((tmp_path / "lab" / "meta.json").read_text())
    assert meta["kmeans"]["sha256"] == model.sha256
    assert meta["source"]["kind"] == "mfcc" and meta["label_rate"] == 100.0
    assert meta["frame_window_s"] == WINDOW


def test_sharded_apply_equals_single(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "one")
    summaries = _apply_all(root, store_dir, tmp_path / "three", nshard=3)
    one, three = UnitLabels.load(tmp_path / "one"), UnitLabels.load(tmp_path / "three")
    assert sum(s["utterances"] for s in summaries) == len(one)
    assert set(one) == set(three)
    for u in one:
        np.testing.assert_array_equal(one[u], three[u])


def test_rerun_skips_complete_and_redoes_partial(setup, tmp_path):
    root, store_dir = setup
    out = tmp_path / "lab"
    _apply_all(root, store_dir, out, nshard=2)
    again = _apply_all(root, store_dir, out, nshard=2)
    assert all(s["skipped_existing"] for s in again)
    # a crash after the .bin rename but before done.json: the shard is incomplete
    (out / "shard-00001-of-00002.done.json").unlink()
    with pytest.raises(LabelError, match=r"shard-00001-of-00002.*--rank 1"):
        UnitLabels.load(out)
    redo = apply_to_store(root / "km", store_dir, out, nshard=2, rank=1, device="cpu")
    assert not redo["skipped_existing"]
    # a truncated .bin is detected too
    binp = out / "shard-00000-of-00002.bin"
    binp.write_bytes(binp.read_bytes()[:-2])
    with pytest.raises(LabelError, match="shard-00000-of-00002"):
        UnitLabels.load(out)
    apply_to_store(root / "km", store_dir, out, nshard=2, rank=0, device="cpu")
    assert len(UnitLabels.load(out)) == len(FeatureStore(store_dir))


def test_changed_settings_are_refused(setup, tmp_path):
    root, store_dir = setup
    out = tmp_path / "lab"
    _apply_all(root, store_dir, out, nshard=2)
    with pytest.raises(LabelError, match=r"different settings.*nshard"):
        apply_to_store(root / "km", store_dir, out, nshard=3, rank=0, device="cpu")
    apply_to_store(root / "km", store_dir, out, nshard=3, rank=0, device="cpu", overwrite=True)
    assert LabelsMeta.read(out).nshard == 3


def test_model_store_mismatch_is_refused(setup, tmp_path):
    root, _ = setup
    write_mixture_store(tmp_path / "s", MixtureSpec(num_frames=200, dim=7))
    with pytest.raises(ConfigError, match=r"dim 5.*has 7"):
        apply_to_store(root / "km", tmp_path / "s", tmp_path / "lab", device="cpu")


def test_expected_frames_convention_matches_kaldi_framing():
    # Kaldi snip_edges framing at 16 kHz: 1 + (N - 400) // 160 frames
    for n_samples in range(400, 40_000, 37):
        kaldi = 1 + (n_samples - 400) // 160
        dur = round(n_samples / 16000, 3)  # utt2dur is printed with 3 decimals
        assert abs(expected_num_frames(dur, 100.0, WINDOW) - kaldi) <= 1
        # HuBERT's CNN (400-sample receptive field, stride 320): 1 + (N - 400) // 320
        cnn = 1 + (n_samples - 400) // 320
        assert abs(expected_num_frames(dur, 50.0, WINDOW) - cnn) <= 1
    assert expected_num_frames(0.01, 100.0, WINDOW) == 0
    assert expected_num_frames(1.234, 100.0, 0.0) == 123
    assert math.isclose(expected_num_frames(0.045, 100.0, WINDOW), 3)


def test_load_with_data_dir_accepts_aligned_labels(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "lab")
    store = FeatureStore(store_dir)
    ddir = _data_dir(tmp_path / "data", _durations(store))
    labels = UnitLabels.load(tmp_path / "lab", data_dir=ddir, tolerance=1)
    assert len(labels) == len(store) and labels.extra == [] and labels.skipped == []


def test_missing_utterance_is_an_error_naming_it(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "lab")
    durs = _durations(FeatureStore(store_dir))
    durs["zz-not-labelled"] = 1.0
    ddir = _data_dir(tmp_path / "data", durs)
    with pytest.raises(LabelError, match=r"zz-not-labelled.*has no labels") as err:
        UnitLabels.load(tmp_path / "lab", data_dir=ddir)
    assert err.value.item == "zz-not-labelled"
    # tolerant mode drops it and records why
    labels = UnitLabels.load(tmp_path / "lab", data_dir=ddir, tolerant=True)
    assert [u for u, _ in labels.skipped] == ["zz-not-labelled"]
    assert len(labels) == len(durs) - 1


def test_count_mismatch_is_an_error_naming_it(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "lab")
    durs = _durations(FeatureStore(store_dir))
    victim, other = sorted(durs)[3], sorted(durs)[7]
    durs[victim] += 0.03  # three frames longer than its labels
    durs[other] -= 0.05
    ddir = _data_dir(tmp_path / "data", durs)
    with pytest.raises(LabelError, match=rf"{victim}: \d+ labels.*off by -3.*1 more bad.*{other}"):
        UnitLabels.load(tmp_path / "lab", data_dir=ddir, tolerance=2)
    # within tolerance when it is wide enough
    assert len(UnitLabels.load(tmp_path / "lab", data_dir=ddir, tolerance=5)) == len(durs)


def test_wrong_label_rate_is_caught(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "lab")
    store = FeatureStore(store_dir)
    # a consumer expecting 50 Hz labels must not get 100 Hz ones
    with pytest.raises(LabelError, match=r"label rate 100.0 Hz, but 50.0 Hz expected"):
        UnitLabels.load(tmp_path / "lab", label_rate=50.0)
    with pytest.raises(LabelError, match="k=4, but k=100 expected"):
        UnitLabels.load(tmp_path / "lab", k=100)
    # durations of a dir at half speed: every utterance is off by about half its frames
    ddir = _data_dir(tmp_path / "data", {u: d * 2 for u, d in _durations(store).items()})
    with pytest.raises(LabelError, match="off by -"):
        UnitLabels.load(tmp_path / "lab", data_dir=ddir)


def test_labels_not_in_data_dir_are_reported(setup, tmp_path):
    root, store_dir = setup
    _apply_all(root, store_dir, tmp_path / "lab")
    durs = _durations(FeatureStore(store_dir))
    dropped = sorted(durs)[:4]
    ddir = _data_dir(tmp_path / "data", {u: d for u, d in durs.items() if u not in dropped})
    labels = UnitLabels.load(tmp_path / "lab", data_dir=ddir)
    assert labels.extra == dropped
    assert len(labels) == len(durs) - 4 and all(u not in labels for u in dropped)


def test_utterance_skipped_at_dump_is_named_with_its_reason(tmp_path):
    write_meta(
        tmp_path / "s", StoreMeta(kind="mfcc", dim=2, dtype="float32", frame_rate=100, nshard=1)
    )
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "s", 0, 1, dim=2, dtype="float32") as w:
        w.add("a", rng.standard_normal((50, 2)))
        w.add("b", rng.standard_normal((60, 2)))
        w.skip("c", "corrupt audio")
    fit_kmeans(tmp_path / "s", KMeansConfig(k=2, device="cpu", n_init=1)).model.save(
        tmp_path / "km"
    )
    apply_to_store(tmp_path / "km", tmp_path / "s", tmp_path / "lab", device="cpu")
    ddir = _data_dir(tmp_path / "d", {"a": 0.515, "b": 0.615, "c": 1.0})
    with pytest.raises(LabelError, match=r"c: .*no labels.*feature dump skipped it: corrupt audio"):
        UnitLabels.load(tmp_path / "lab", data_dir=ddir)


def test_corrupt_label_files_are_caught(setup, tmp_path):
    root, store_dir = setup
    out = tmp_path / "lab"
    _apply_all(root, store_dir, out)
    binp = out / "shard-00000-of-00001.bin"
    data = np.fromfile(binp, dtype="<u2")
    data[5] = 9  # k = 4
    data.tofile(binp)
    with pytest.raises(LabelError, match="label value 9 >= k=4"):
        UnitLabels.load(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(LabelError, match=r"corrupt meta.json"):
        UnitLabels.load(out)
    with pytest.raises(LabelError, match=r"no meta.json"):
        UnitLabels.load(tmp_path / "nothing")
