"""Unit-quality metrics on hand-computed cases, frame pairing across rates, report files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from speechssl.errors import LabelError
from speechssl.units.plotting import plot_report
from speechssl.units.quality import (
    Alignments,
    cooccurrence,
    dominant_phone_order,
    pair_frames,
    phone_unit_metrics,
    usage_stats,
)


def test_metrics_hand_computed_two_by_two():
    # phones x units counts: phone 0 always unit 0; phone 1 split between units 0 and 1
    counts = np.array([[2, 0], [1, 1]])
    m = phone_unit_metrics(counts)
    # p = [[.5, 0], [.25, .25]]; p(y) = (.5, .5); p(z) = (.75, .25)
    assert m["phone_purity"] == pytest.approx(0.5 + 0.25)  # sum_z max_y p(y, z)
    assert m["cluster_purity"] == pytest.approx(0.5 + 0.25)  # sum_y max_z p(y, z)
    mi = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75))
    mi += 0.25 * math.log(0.25 / (0.5 * 0.25))
    assert m["pnmi"] == pytest.approx(mi / math.log(2))
    assert m["phone_entropy_bits"] == pytest.approx(1.0)


def test_perfect_one_to_one_mapping_gives_pnmi_one():
    counts = np.diag([5, 17, 3, 40])[:, [2, 0, 3, 1]]  # a permutation of units
    m = phone_unit_metrics(counts)
    assert m["pnmi"] == pytest.approx(1.0)
    assert m["phone_purity"] == pytest.approx(1.0)
    assert m["cluster_purity"] == pytest.approx(1.0)


def test_many_units_per_phone_keeps_pnmi_one_but_halves_cluster_purity():
    counts = np.array([[10, 10, 0, 0], [0, 0, 10, 10]])
    m = phone_unit_metrics(counts)
    assert m["pnmi"] == pytest.approx(1.0)
    assert m["phone_purity"] == pytest.approx(1.0)
    assert m["cluster_purity"] == pytest.approx(0.5)


def test_independent_labels_give_zero_pnmi():
    py = np.array([1, 2, 3, 4])
    pz = np.array([5, 1, 1, 7, 2])
    exact = phone_unit_metrics(np.outer(py, pz))
    assert exact["pnmi"] == pytest.approx(0.0, abs=1e-12)
    assert exact["phone_purity"] == pytest.approx(4 / 10)  # always the most frequent phone
    rng = np.random.default_rng(0)
    y, z = rng.integers(0, 6, 200_000), rng.integers(0, 50, 200_000)
    counts = np.zeros((6, 50), dtype=np.int64)
    np.add.at(counts, (y, z), 1)
    assert phone_unit_metrics(counts)["pnmi"] < 0.005


def test_pairing_50hz_units_with_100hz_alignments():
    units = np.array([7, 8, 9])
    phones = np.arange(6)
    # 20 ms units with a 25 ms window: unit i centred at 20 i + 12.5 ms owns
    # [20 i + 2.5, 20 i + 22.5) ms; phone frame j is centred at 10 j + 5 ms
    p, u, lost = pair_frames(units, 50.0, 0.025, phones, 100.0)
    assert p.tolist() == [0, 1, 2, 3, 4, 5]
    assert u.tolist() == [7, 7, 8, 8, 9, 9]
    assert lost == 0
    # without a window unit i covers [20 i, 20 i + 20) ms: the same pairs here
    p2, u2, _ = pair_frames(units, 50.0, 0.0, phones, 100.0)
    assert u2.tolist() == u.tolist() and p2.tolist() == p.tolist()


def test_pairing_100hz_mfcc_units_shifts_by_the_window():
    # 25 ms window, 10 ms shift: unit i is centred at 10 i + 12.5 ms, inside phone frame i + 1
    units = np.arange(10, 15)
    phones = np.arange(6)
    p, u, lost = pair_frames(units, 100.0, 0.025, phones, 100.0)
    assert list(zip(p.tolist(), u.tolist())) == [(1, 10), (2, 11), (3, 12), (4, 13), (5, 14)]
    assert lost == 1  # phone frame 0 precedes the first unit's cell


def test_pairing_when_units_are_finer_than_alignments():
    units = np.arange(4)  # 100 Hz, no window: centres 5, 15, 25, 35 ms
    phones = np.array([0, 1])  # 50 Hz: [0, 20), [20, 40) ms
    p, u, lost = pair_frames(units, 100.0, 0.0, phones, 50.0)
    assert p.tolist() == [0, 0, 1, 1] and u.tolist() == [0, 1, 2, 3] and lost == 0


def _ali_file(path, rows):
    path.write_text("".join(f"{u} {' '.join(s)}\n" for u, s in rows.items()))
    return path


def test_cooccurrence_and_mismatch_handling(tmp_path):
    ali = Alignments.read(
        _ali_file(tmp_path / "ali", {"a": ["sil", "aa", "aa", "b"], "b": ["sil", "b", "b", "b"]})
    )
    assert ali.phones == ["sil", "aa", "b"]
    labels = {"a": np.array([0, 0, 1, 1]), "b": np.array([1, 1, 1, 1]), "c": np.array([0])}
    co = cooccurrence(labels, 2, 100.0, 0.0, ali)
    assert co.counts.tolist() == [[1, 1], [1, 1], [0, 4]]
    assert co.utts == 2 and co.utts_without_alignment == ["c"] and co.paired == 8
    co_ex = cooccurrence(labels, 2, 100.0, 0.0, ali, exclude=["sil"])
    assert co_ex.counts[0].sum() == 0 and co_ex.paired == 6
    # labels at a wrong rate (twice as many frames as the alignment) are an error naming it
    bad = {"a": np.zeros(12, dtype=np.int64), "b": np.zeros(4, dtype=np.int64)}
    with pytest.raises(LabelError, match=r"a: labels span 0\.120 s"):
        cooccurrence(bad, 2, 100.0, 0.0, ali)
    co_t = cooccurrence(bad, 2, 100.0, 0.0, ali, tolerant=True)
    assert [u for u, _ in co_t.skipped] == ["a"] and co_t.utts == 1
    with pytest.raises(LabelError, match="no utterance has both"):
        cooccurrence({"x": np.zeros(3, dtype=np.int64)}, 2, 100.0, 0.0, ali)


def test_alignment_file_errors(tmp_path):
    with pytest.raises(LabelError, match="does not exist"):
        Alignments.read(tmp_path / "none")
    (tmp_path / "dup").write_text("a x y\na x\n")
    with pytest.raises(LabelError, match=r"a \(.*dup:2\): duplicate utterance"):
        Alignments.read(tmp_path / "dup")


def test_usage_stats_by_hand():
    labels = {"u1": np.array([0, 0, 0, 2, 2, 0]), "u2": np.array([2, 2, 2, 2])}
    s = usage_stats(labels, k=4, label_rate=100.0)
    assert s["counts"] == [4, 0, 6, 0]
    assert s["dead_clusters"] == 2 and s["dead_cluster_ids"] == [1, 3]
    h = -(0.4 * math.log2(0.4) + 0.6 * math.log2(0.6))
    assert s["entropy_bits"] == pytest.approx(h)
    assert s["perplexity"] == pytest.approx(2**h)
    # runs: 3, 2, 1 in u1 and 4 in u2
    assert s["runs"]["num_runs"] == 4
    assert s["runs"]["mean_frames"] == pytest.approx(2.5)
    assert s["runs"]["mean_ms"] == pytest.approx(25.0)
    assert s["runs"]["p50_frames"] == 2
    uniform = usage_stats({"u": np.arange(8)}, k=8, label_rate=50.0)
    assert uniform["entropy_bits"] == pytest.approx(3.0)
    assert uniform["normalized_entropy"] == pytest.approx(1.0)


def test_dominant_phone_order_groups_units():
    counts = np.array([[0, 9, 0, 1], [5, 0, 0, 0], [0, 1, 7, 6]])
    phone_order, unit_order = dominant_phone_order(counts)
    assert phone_order.tolist() == [2, 0, 1]  # by frequency: 14, 10, 5
    # units of phone 2 first (unit 2 purer than unit 3), then phone 0's unit 1, then unit 0
    assert unit_order.tolist() == [2, 3, 1, 0]


def test_plot_writes_png(tmp_path):
    counts = np.array([[3, 0, 1], [0, 5, 0]])
    plot_report(tmp_path / "r.png", counts.sum(0), counts, ["a", "b"], title="t")
    plot_report(tmp_path / "u.png", np.array([3, 0, 9]))
    for name in ("r.png", "u.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "u.png"]
