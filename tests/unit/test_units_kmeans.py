"""k-means: initialisation, Lloyd/mini-batch fitting, streaming, sampling, model files."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from speechssl.errors import ConfigError
from speechssl.features.store import FeatureStore
from speechssl.units.kmeans import (
    MODEL_META,
    MODEL_WEIGHTS,
    KMeansConfig,
    KMeansError,
    KMeansModel,
    fit_kmeans,
    kmeans_plusplus,
)
from speechssl.units.kmeans.lloyd import lloyd_pass, update_centroids
from speechssl.units.stream import StoreStream, select_utterances
from speechssl.units.synthetic import MixtureSpec, write_mixture_store


@pytest.fixture(scope="module")
def gmm(tmp_path_factory):
    root = tmp_path_factory.mktemp("gmm")
    spec = MixtureSpec(num_frames=12_000, dim=8, components=6, spread=5.0, seed=3)
    truth = write_mixture_store(root, spec, nshard=3)
    return root, truth


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of frames whose cluster's majority component equals their component."""
    total = 0
    for z in np.unique(labels):
        total += np.bincount(truth[labels == z]).max()
    return total / labels.size


def _small_cfg(**kw):
    base = dict(k=6, device="cpu", n_init=2, init_lloyd_iters=3, block_frames=1000)
    base.update(kw)
    return KMeansConfig(**base)


def test_kmeans_plusplus_is_deterministic_and_spreads_centers():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 4) * 20
    x = (centers.repeat_interleave(50, 0) + torch.randn(250, 4)).contiguous()
    a = kmeans_plusplus(x, 5, torch.Generator().manual_seed(1))
    b = kmeans_plusplus(x, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # greedy k-means++ on well separated blobs takes one seed from each blob
    nearest_blob = torch.cdist(a, centers).argmin(1)
    assert sorted(nearest_blob.tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="cannot pick 6 centroids from 5"):
        kmeans_plusplus(x[:5], 6, g)


def test_kmeans_plusplus_restarts_in_lockstep_are_independent_seedings():
    centers = torch.randn(8, 6) * 20
    x = (centers.repeat_interleave(40, 0) + torch.randn(320, 6)).contiguous()
    seeds = kmeans_plusplus(x, 8, torch.Generator().manual_seed(3), restarts=4)
    again = kmeans_plusplus(x, 8, torch.Generator().manual_seed(3), restarts=4)
    assert seeds.shape == (4, 8, 6) and torch.equal(seeds, again)
    for r in range(4):
        # every seed is a row of x, and each restart takes one seed per blob
        assert (seeds[r][:, None, :] == x[None]).all(-1).any(1).all()
        assert sorted(torch.cdist(seeds[r], centers).argmin(1).tolist()) == list(range(8))
    # the restarts draw their own candidates: not four copies of one seeding
    assert len({tuple(seeds[r, 0].tolist()) for r in range(4)}) > 1
    # one restart in lockstep is exactly the plain call
    plain = kmeans_plusplus(x, 8, torch.Generator().manual_seed(5))
    assert torch.equal(
        kmeans_plusplus(x, 8, torch.Generator().manual_seed(5), restarts=1)[0], plain
    )


def test_fit_recovers_mixture(gmm):
    root, truth = gmm
    result = fit_kmeans(root, _small_cfg())
    model = result.model
    store = FeatureStore(root)
    labels = np.concatenate([model.assign(store[u])[0].numpy() for u in truth])
    assert _purity(labels, np.concatenate(list(truth.values()))) > 0.99
    # unit-variance components in 8 dims: the optimal inertia per frame is about 8
    assert 7.5 < model.meta["inertia_per_frame"] < 8.5
    assert model.meta["converged"] is True
    hist = [h for h in result.history if "inertia" in h and h.get("stage") != "final"]
    assert all({"inertia", "moved", "empty", "seconds"} <= set(h) for h in hist)
    inertias = [h["inertia"] for h in hist]
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(inertias))  # Lloyd is monotone
    assert result.history[-1]["stage"] == "final"
    assert model.meta["num_frames"] == store.num_frames()


def test_deterministic_on_one_thread(gmm):
    root, _ = gmm
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = fit_kmeans(root, _small_cfg(seed=5)).model
        b = fit_kmeans(root, _small_cfg(seed=5)).model
        c = fit_kmeans(root, _small_cfg(seed=6, k=9)).model
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.centroids, b.centroids)
    assert a.meta["history"][1:] != [] and a.meta["iterations"] == b.meta["iterations"]
    assert c.k == 9


def test_block_size_and_cache_do_not_change_the_result(gmm):
    root, _ = gmm
    a = fit_kmeans(root, _small_cfg(block_frames=191)).model  # utterances span blocks
    b = fit_kmeans(root, _small_cfg(block_frames=100_000, cache_gb=1.0)).model
    torch.testing.assert_close(a.centroids, b.centroids, rtol=0, atol=1e-5)
    assert a.meta["iterations"] == b.meta["iterations"]
    # float32 matmul rounding depends on the chunk shape, hence not bitwise
    assert a.meta["inertia_per_frame"] == pytest.approx(b.meta["inertia_per_frame"], rel=1e-5)


def test_float16_store_is_upcast(tmp_path):
    spec = MixtureSpec(num_frames=5000, dim=6, components=4, spread=6.0, seed=1)
    write_mixture_store(tmp_path / "f32", spec, dtype="float32")
    write_mixture_store(tmp_path / "f16", spec, dtype="float16")
    a = fit_kmeans(tmp_path / "f32", _small_cfg(k=4)).model
    b = fit_kmeans(tmp_path / "f16", _small_cfg(k=4)).model
    torch.testing.assert_close(a.centroids, b.centroids, rtol=0, atol=2e-2)
    assert b.centroids.dtype == torch.float32


def test_large_offset_features_keep_exact_inertia(tmp_path):
    # ||x||^2 ~ 6 * 1e6: the expanded distance form alone would lose the inertia entirely
    spec = MixtureSpec(num_frames=4000, dim=6, components=3, spread=5.0, offset=1000.0)
    write_mixture_store(tmp_path, spec)
    model = fit_kmeans(tmp_path, _small_cfg(k=3)).model
    assert 5.5 < model.meta["inertia_per_frame"] < 6.5


def test_minibatch_close_to_lloyd(gmm):
    root, _ = gmm
    lloyd = fit_kmeans(root, _small_cfg()).model
    mb = fit_kmeans(root, _small_cfg(mode="minibatch", batch_size=500, max_iter=5)).model
    assert mb.meta["mode"] == "minibatch"
    assert mb.meta["inertia_per_frame"] < lloyd.meta["inertia_per_frame"] * 1.03


def test_minibatch_epochs_alone_then_final_pass(gmm):
    root, truth = gmm
    lloyd = fit_kmeans(root, _small_cfg()).model
    result = fit_kmeans(root, _small_cfg(minibatch_epochs=0.5, max_iter=0, batch_size=500))
    fast = result.model
    stages = [h["stage"] for h in result.history]
    assert "lloyd" not in stages and stages[-1] == "final"
    assert fast.meta["inertia_per_frame"] < lloyd.meta["inertia_per_frame"] * 1.05
    store = FeatureStore(root)
    labels = np.concatenate([fast.assign(store[u])[0].numpy() for u in truth])
    assert _purity(labels, np.concatenate(list(truth.values()))) > 0.95
    # no full-batch iterations and no mini-batch epochs: nothing would be fitted
    for bad in (dict(max_iter=0), dict(max_iter=0, mode="minibatch"), dict(max_iter=-1)):
        with pytest.raises(ConfigError, match="max_iter must be >= 1"):
            _small_cfg(**bad).validate()


def test_global_mv_normalisation_is_stored(gmm):
    root, _ = gmm
    store = FeatureStore(root)
    allx = np.concatenate([np.asarray(x) for _, x in store.iter_utterances()]).astype(np.float64)
    model = fit_kmeans(root, _small_cfg(normalize="global_mv")).model
    assert model.mean is not None and model.std is not None
    np.testing.assert_allclose(model.mean.numpy(), allx.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.std.numpy(), allx.std(0), rtol=1e-5)
    # assignment applies the same normalisation: centroids mapped back are near data means
    raw_centroids = model.centroids * model.std + model.mean
    labels, _ = model.assign(torch.from_numpy(allx.astype(np.float32)))
    for z in range(model.k):
        member_mean = allx[labels.numpy() == z].mean(0)
        np.testing.assert_allclose(raw_centroids[z].numpy(), member_mean, atol=0.05)


def test_sampling_is_deterministic_and_independent_of_sharding(tmp_path):
    spec = MixtureSpec(num_frames=6000, dim=4, components=3, seed=2)
    write_mixture_store(tmp_path / "one", spec, nshard=1)
    write_mixture_store(tmp_path / "three", spec, nshard=3)
    one, three = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "three")

    def chosen(store, seed_override=4, **kw):
        sel = select_utterances(store, seed=seed_override, **kw)
        return {store.shard(r).utts[i] for r, idx in sel.items() for i in idx}

    a = chosen(one, fraction=0.3)
    assert a == chosen(three, fraction=0.3)
    assert 0.15 < len(a) / len(one) < 0.45
    assert a != chosen(one, fraction=0.3, seed_override=5)
    b = chosen(one, max_frames=2000)
    assert b == chosen(three, max_frames=2000)
    assert sum(one.num_frames(u) for u in b) <= 2000
    with pytest.raises(ConfigError, match="not both"):
        select_utterances(one, fraction=0.1, max_frames=10)
    with pytest.raises(ConfigError, match="fraction"):
        select_utterances(one, fraction=0)
    model = fit_kmeans(tmp_path / "three", _small_cfg(k=3, fraction=0.3, seed=4)).model
    assert model.meta["num_frames"] == sum(one.num_frames(u) for u in a)


def test_stream_reads_exact_rows(gmm):
    root, truth = gmm
    store = FeatureStore(root)
    stream = StoreStream(store, block_frames=333)
    seen: dict[str, list[np.ndarray]] = {}
    for block in stream.blocks():
        assert block.rows.shape[0] <= 333
        for seg in block.segments:
            seen.setdefault(seg.utt, []).append(block.rows[seg.start : seg.start + seg.count])
    assert set(seen) == set(truth)
    for u, parts in seen.items():
        np.testing.assert_array_equal(np.concatenate(parts), store[u])


def test_stream_keeps_no_python_object_per_utterance(tmp_path):
    """A stream over many utterances holds arrays, not an object per utterance (a
    Libri-Light-sized store has millions): its own memory stays a few dozen bytes per
    utterance beyond the store's index, and it still reads every frame in order."""
    import tracemalloc

    from speechssl.features.store import ShardWriter, StoreMeta, write_meta

    n = 30_000
    write_meta(tmp_path, StoreMeta(kind="mfcc", dim=2, dtype="float32", frame_rate=100.0, nshard=1))
    with ShardWriter(tmp_path, 0, 1, dim=2, dtype="float32") as w:
        for i in range(n):
            w.add(f"utt{i:06d}", np.full((1 + i % 3, 2), i, dtype=np.float32))
    store = FeatureStore(tmp_path)
    store.shard(0)  # the index itself (ids, offsets, counts) is the store's, loaded first
    tracemalloc.start()
    stream = StoreStream(store, block_frames=4096)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 40 * n, f"{held / n:.0f} bytes per utterance"
    assert stream.num_utts == n and stream.num_frames == sum(1 + i % 3 for i in range(n))
    firsts = []
    for block in stream.blocks():
        firsts.extend(block.rows[seg.start, 0] for seg in block.segments if seg.frame0 == 0)
    np.testing.assert_array_equal(np.asarray(firsts), np.arange(n, dtype=np.float32))


def test_empty_cluster_is_split_from_the_largest():
    x = torch.cat([torch.zeros(80, 2), torch.full((20, 2), 10.0)]) + torch.randn(100, 2) * 0.1
    # third centroid far away: it gets no points
    c = torch.tensor([[0.0, 0.0], [10.0, 10.0], [500.0, 500.0]])
    st = lloyd_pass([(0, x)], c, rows=64, reduce=False)
    assert st.counts.tolist() == [80, 20, 0]
    new, n_empty, n_split = update_centroids(st, c, torch.Generator().manual_seed(0))
    assert n_empty == 1 and n_split == 1
    # the empty centroid now sits next to the largest cluster, split symmetrically around it
    mean0 = x[:80].mean(0)
    assert torch.allclose((new[0] + new[2]) / 2, mean0, atol=1e-5)
    assert 0 < (new[0] - new[2]).norm() < 1.0
    st2 = lloyd_pass([(0, x)], new, rows=64, reduce=False)
    assert int((st2.counts == 0).sum()) == 0


def test_end_to_end_with_duplicate_points_reports_empty_clusters(tmp_path):
    # 3 distinct vectors, k=5: two clusters cannot be populated; that must be reported
    from speechssl.features.store import ShardWriter, StoreMeta, write_meta

    write_meta(tmp_path, StoreMeta(kind="mfcc", dim=2, dtype="float32", frame_rate=100, nshard=1))
    with ShardWriter(tmp_path, 0, 1, dim=2, dtype="float32") as w:
        for i in range(6):
            w.add(f"u{i}", np.repeat(np.eye(3, 2, dtype=np.float32) * 5, 10, axis=0))
    model = fit_kmeans(tmp_path, _small_cfg(k=5)).model
    assert model.meta["inertia_per_frame"] == pytest.approx(0.0, abs=1e-6)
    assert model.meta["empty_clusters"] == 2


def test_too_few_frames_is_a_config_error(tmp_path):
    write_mixture_store(tmp_path, MixtureSpec(num_frames=50, dim=3, utt_frames=(20, 30)))
    with pytest.raises(ConfigError, match="fewer than k=500"):
        fit_kmeans(tmp_path, _small_cfg(k=500))
    with pytest.raises(ConfigError, match="mode"):
        fit_kmeans(tmp_path, _small_cfg(mode="nope"))


def test_model_roundtrip_and_integrity(gmm, tmp_path):
    root, _ = gmm
    model = fit_kmeans(root, _small_cfg(normalize="global_mv")).model
    model.save(tmp_path / "km")
    meta = json.loads((tmp_path / "km" / MODEL_META).read_text())
    for key in ("k", "dim", "feature", "normalization", "inertia_per_frame", "iterations", "seed"):
        assert key in meta
    assert meta["feature"]["kind"] == "mfcc" and len(meta["feature"]["data_hash"]) == 64
    loaded = KMeansModel.load(tmp_path / "km")
    assert torch.equal(loaded.centroids, model.centroids)
    assert loaded.mean is not None and torch.equal(loaded.mean, model.mean)
    x = torch.randn(50, model.dim)
    assert torch.equal(loaded.assign(x)[0], model.assign(x)[0])
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "km")
    # a modified weights file is caught by the checksum
    w = tmp_path / "km" / MODEL_WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(KMeansError, match="checksum"):
        KMeansModel.load(tmp_path / "km")
    (tmp_path / "km" / MODEL_META).unlink()
    with pytest.raises(KMeansError, match="not a k-means model dir"):
        KMeansModel.load(tmp_path / "km")


def test_frame_uniforms_are_uniform_and_pair_determined():
    from speechssl.units.stream import frame_uniforms

    keys = np.repeat(np.array([11, 2**62 + 5], dtype=np.int64), 50_000)
    frames = np.tile(np.arange(50_000), 2)
    u = frame_uniforms(keys, frames)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs((u < 0.1).mean() - 0.1) < 0.01
    # the value depends on the (key, frame) pair only, not on what else is in the batch
    np.testing.assert_array_equal(frame_uniforms(keys[7:9], frames[7:9]), u[7:9])


def test_small_init_sample_reads_a_subset_of_utterances(gmm):
    root, truth = gmm
    model = fit_kmeans(root, _small_cfg(init_sample_frames=800)).model
    assert 400 < model.meta["init"]["sample_frames"] < 1300
    store = FeatureStore(root)
    labels = np.concatenate([model.assign(store[u])[0].numpy() for u in truth])
    assert _purity(labels, np.concatenate(list(truth.values()))) > 0.99


@pytest.mark.cuda
def test_cuda_fit_matches_cpu(gmm, tmp_path):
    root, truth = gmm
    cpu = fit_kmeans(root, _small_cfg(normalize="global_mv")).model
    # streamed from the store, and cached on the device
    for cache_gb in (0.0, 1.0):
        gpu = fit_kmeans(root, _small_cfg(normalize="global_mv", device="cuda", cache_gb=cache_gb))
        torch.testing.assert_close(gpu.model.centroids, cpu.centroids, rtol=0, atol=1e-3)
        assert gpu.model.meta["iterations"] == cpu.meta["iterations"]
    mb = fit_kmeans(root, _small_cfg(mode="minibatch", device="cuda", batch_size=500, max_iter=2))
    assert mb.model.meta["inertia_per_frame"] < cpu.meta["inertia_per_frame"] * 1.05
    from speechssl.units.apply import apply_to_store
    from speechssl.units.labels import UnitLabels

    cpu.save(tmp_path / "km")
    apply_to_store(tmp_path / "km", root, tmp_path / "lab", device="cuda")
    labels = UnitLabels.load(tmp_path / "lab")
    store = FeatureStore(root)
    agree = np.mean(
        np.concatenate([labels[u] == cpu.assign(np.asarray(store[u]))[0].numpy() for u in truth])
    )
    assert agree > 0.999
