import json

import numpy as np
import pytest

from speechssl.features.store import (
    FeatureStore,
    FeatureStoreError,
    ShardWriter,
    StoreMeta,
    shard_is_complete,
    write_meta,
)


def _meta(nshard: int, dtype: str = "float32") -> StoreMeta:
    return StoreMeta(kind="mfcc", dim=3, dtype=dtype, frame_rate=100.0, nshard=nshard)


def test_roundtrip_two_shards(tmp_path):
    rng = np.random.default_rng(0)
    write_meta(tmp_path, _meta(2))
    data = {f"u{i}": rng.standard_normal((5 + i, 3)).astype(np.float32) for i in range(6)}
    for rank in range(2):
        with ShardWriter(tmp_path, rank, 2, dim=3, dtype="float32") as w:
            for i, (u, x) in enumerate(data.items()):
                if i % 2 == rank:
                    w.add(u, x)
            if rank == 1:
                w.skip("bad", "empty file")
    store = FeatureStore(tmp_path)
    assert sorted(store.utt_ids) == sorted(data)
    for u, x in data.items():
        np.testing.assert_array_equal(store[u], x)
    assert store.num_frames() == sum(len(x) for x in data.values())
    assert store.skipped() == [{"utt": "bad", "reason": "empty file"}]
    blocks = list(store.iter_blocks(4))
    assert sum(len(b) for b in blocks) == store.num_frames()
    assert all(len(b) <= 4 for b in blocks)


def test_incomplete_shard_is_detected_and_redone(tmp_path):
    write_meta(tmp_path, _meta(1))
    w = ShardWriter(tmp_path, 0, 1, dim=3, dtype="float16")
    w.add("a", np.ones((2, 3)))
    # simulate a crash: writer never closed
    assert not shard_is_complete(tmp_path, 0, 1)
    with pytest.raises(FeatureStoreError, match="incomplete shards: shard-00000-of-00001"):
        FeatureStore(tmp_path)
    w.abort()
    with ShardWriter(tmp_path, 0, 1, dim=3, dtype="float16") as w2:
        w2.add("a", np.ones((2, 3)))
    assert shard_is_complete(tmp_path, 0, 1)
    # truncated .bin after completion is detected
    binp = tmp_path / "shard-00000-of-00001.bin"
    binp.write_bytes(binp.read_bytes()[:-2])
    assert not shard_is_complete(tmp_path, 0, 1)


def test_meta_mismatch_is_refused(tmp_path):
    write_meta(tmp_path, _meta(1))
    other = _meta(1)
    other.dim = 4
    with pytest.raises(FeatureStoreError, match="different settings"):
        write_meta(tmp_path, other)
    assert json.loads((tmp_path / "meta.json").read_text())["dim"] == 3


def test_bad_features_rejected(tmp_path):
    with ShardWriter(tmp_path, 0, 1, dim=3, dtype="float32") as w:
        with pytest.raises(FeatureStoreError, match="u1: features of shape"):
            w.add("u1", np.ones((2, 4)))
        with pytest.raises(FeatureStoreError, match="u2: features contain NaN"):
            w.add("u2", np.full((2, 3), np.nan))


def test_utterance_list_is_recorded_and_a_changed_one_is_refused(tmp_path):
    write_meta(tmp_path, _meta(1), utts=["a", "b", "c"])
    assert (tmp_path / "utterances.txt").read_text() == "a\nb\nc\n"
    recorded = json.loads((tmp_path / "meta.json").read_text())["utterances"]
    assert recorded["count"] == 3 and len(recorded["sha256"]) == 64
    write_meta(tmp_path, _meta(1), utts=["a", "b", "c"])  # same list: accepted as is
    with pytest.raises(FeatureStoreError, match=r"3 utterances then, 3 now; no longer in the "
                       r"data dir: b; new: d\); rerun with --overwrite"):  # fmt: skip
        write_meta(tmp_path, _meta(1), utts=["a", "c", "d"])
    assert (tmp_path / "utterances.txt").read_text() == "a\nb\nc\n"  # refused: untouched


def test_shards_written_under_replaced_settings_are_incomplete(tmp_path):
    write_meta(tmp_path, _meta(1), utts=["a"])
    with ShardWriter(tmp_path, 0, 1, dim=3, dtype="float32") as w:
        w.add("a", np.ones((2, 3)))
    assert shard_is_complete(tmp_path, 0, 1)
    write_meta(tmp_path, _meta(1), overwrite=True, utts=["a", "b"])  # --overwrite
    assert not shard_is_complete(tmp_path, 0, 1)  # made from the old list: redone, not kept
    with pytest.raises(FeatureStoreError, match="incomplete shards: shard-00000-of-00001"):
        FeatureStore(tmp_path)
    with ShardWriter(tmp_path, 0, 1, dim=3, dtype="float32") as w:
        w.add("a", np.ones((2, 3)))
        w.add("b", np.ones((1, 3)))
    assert len(FeatureStore(tmp_path)) == 2


def test_a_store_from_before_utterance_lists_is_redone_only_when_told(tmp_path):
    write_meta(tmp_path, _meta(1))  # no list recorded, as older stores
    with pytest.raises(FeatureStoreError, match=r"records no utterance list .* --overwrite"):
        write_meta(tmp_path, _meta(1), utts=["a"])
    write_meta(tmp_path, _meta(1), overwrite=True, utts=["a"])
    assert (tmp_path / "utterances.txt").read_text() == "a\n"
