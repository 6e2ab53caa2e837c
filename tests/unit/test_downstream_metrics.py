"""Downstream metrics against independent implementations (jiwer, scikit-learn, brute force)."""

from __future__ import annotations

import random

import jiwer
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from speechssl.downstream.metrics import (
    ErrorCounts,
    MetricInputError,
    accuracy,
    char_error_rate,
    edit_distance_counts,
    equal_error_rate,
    min_dcf,
    phone_error_rate,
    word_error_rate,
)

WORDS = ["a", "b", "c", "the", "cat", "sat"]


def _random_corpus(rng: random.Random, n: int) -> tuple[list[str], list[str]]:
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
        hyp = [w for w in ref if rng.random() > 0.2]
        for _ in range(rng.randint(0, 3)):
            op = rng.random()
            pos = rng.randint(0, len(hyp))
            if op < 0.5:
                hyp.insert(pos, rng.choice(WORDS))
            elif hyp and pos < len(hyp):
                hyp[pos] = rng.choice(WORDS)
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    return refs, hyps


def test_wer_cer_match_jiwer_on_random_corpora():
    rng = random.Random(1)
    for _ in range(20):
        refs, hyps = _random_corpus(rng, 6)
        out = jiwer.process_words(refs, hyps)
        ours = edit_distance_counts([r.split() for r in refs], [h.split() for h in hyps])
        # jiwer may break ties between alignments differently; the edit count cannot differ
        assert ours.errors == out.substitutions + out.deletions + out.insertions
        assert ours.ref_length == out.hits + out.substitutions + out.deletions
        assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
        assert char_error_rate(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)


def _reference_counts(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    """Plain O(n m) dynamic programme over (edits, indels, S, D, I) tuples, cell by cell."""
    prev = [(j, j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            e, x, s, d, n = prev[j - 1]
            best = (e, x, s, d, n) if ref[i - 1] == hyp[j - 1] else (e + 1, x, s + 1, d, n)
            e, x, s, d, n = prev[j]
            best = min(best, (e + 1, x + 1, s, d + 1, n), key=lambda t: t[:2])
            e, x, s, d, n = cur[j - 1]
            best = min(best, (e + 1, x + 1, s, d, n + 1), key=lambda t: t[:2])
            cur.append(best)
        prev = cur
    return prev[-1][2:]


def test_vectorised_alignment_matches_cell_by_cell_programme():
    rng = random.Random(7)
    for _ in range(300):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        hyp = [rng.choice("abcde") for _ in range(rng.randint(0, 12))]
        if not ref:
            continue
        c = edit_distance_counts([ref], [hyp])
        assert (c.substitutions, c.deletions, c.insertions) == _reference_counts(ref, hyp)


def test_counts_on_hand_made_alignments():
    # one substitution, one deletion, one insertion, unambiguous
    c = edit_distance_counts([["a", "b", "c", "d"]], [["a", "x", "c", "d", "f"]])
    assert (c.substitutions, c.deletions, c.insertions, c.ref_length) == (1, 0, 1, 4)
    c = edit_distance_counts([["a", "b", "c"]], [["a", "c"]])
    assert (c.substitutions, c.deletions, c.insertions) == (0, 1, 0)
    # substitution preferred over deletion + insertion at equal cost
    c = edit_distance_counts([["a", "b"]], [["b", "c"]])
    assert (c.substitutions, c.deletions, c.insertions) == (2, 0, 0)
    assert c.rate == 1.0
    assert ErrorCounts(1, 2, 3, 10) + ErrorCounts(1, 0, 0, 5) == ErrorCounts(2, 2, 3, 15)


def test_empty_hypothesis_and_empty_reference():
    assert word_error_rate(["the cat sat"], [""]) == 1.0
    assert word_error_rate(["the cat sat"], [""]) == jiwer.wer(["the cat sat"], [""])
    c = edit_distance_counts([["a", "b"]], [[]])
    assert (c.substitutions, c.deletions, c.insertions) == (0, 2, 0)
    with pytest.raises(MetricInputError, match=r"utt2: empty reference"):
        word_error_rate(["a b", "  "], ["a b", "c"], ids=["utt1", "utt2"])
    with pytest.raises(MetricInputError, match=r"utterance #0: empty reference"):
        phone_error_rate([[]], [["p"]])
    with pytest.raises(MetricInputError, match="1 hypotheses for 2 references"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(MetricInputError, match="no utterances"):
        word_error_rate([], [])
    with pytest.raises(MetricInputError, match="plain string"):
        phone_error_rate(["ab"], ["ab"])


def test_per_matches_jiwer_on_phone_tokens():
    refs = [["sil", "dh", "ah", "k", "ae", "t"], ["s", "ae", "t"]]
    hyps = [["dh", "ah", "k", "eh", "t", "t"], ["s", "ae", "t", "sil"]]
    expected = jiwer.wer([" ".join(r) for r in refs], [" ".join(h) for h in hyps])
    assert phone_error_rate(refs, hyps) == pytest.approx(expected)


def test_accuracy():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert accuracy(torch.tensor([0, 1]), torch.tensor([1, 1])) == 0.5
    assert accuracy(["yes", "no"], ["yes", "no"]) == 1.0
    with pytest.raises(MetricInputError, match="1 predictions for 2 labels"):
        accuracy([1, 2], [1])
    with pytest.raises(MetricInputError, match="no utterances"):
        accuracy([], [])


def _sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER where FNR and FPR cross on scikit-learn's ROC, interpolated linearly."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fnr - fpr
    k = int(np.flatnonzero(diff <= 0)[0])
    if diff[k] == 0:
        return float(fpr[k])
    a = diff[k - 1] / (diff[k - 1] - diff[k])
    return float(fpr[k - 1] + a * (fpr[k] - fpr[k - 1]))


def _brute_min_dcf(scores, labels, p_target, c_miss, c_fa) -> float:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    best = np.inf
    for t in [*np.unique(scores).tolist(), np.inf]:
        accept = scores >= t
        p_miss = np.mean(~accept[labels])
        p_fa = np.mean(accept[~labels])
        best = min(best, c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


@pytest.mark.parametrize("seed", range(6))
def test_eer_and_min_dcf_against_peers(seed):
    rng = np.random.default_rng(seed)
    n_tar, n_non = int(rng.integers(5, 60)), int(rng.integers(20, 200))
    scores = np.r_[rng.normal(1.0, 1.0, n_tar), rng.normal(-0.5, 1.0, n_non)]
    if seed % 2:  # ties across classes
        scores = np.round(scores, 1)
    labels = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
    eer, thr = equal_error_rate(scores, labels)
    assert eer == pytest.approx(_sklearn_eer(scores, labels), abs=1e-12)
    assert scores.min() <= thr <= scores.max()
    for p, cm, cf in [(0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.5, 2.0, 1.0)]:
        assert min_dcf(scores, labels, p, cm, cf) == pytest.approx(
            _brute_min_dcf(scores, labels, p, cm, cf), abs=1e-12
        )


def test_eer_hand_made():
    # perfect separation: EER 0, threshold between the classes
    eer, thr = equal_error_rate([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
    assert eer == 0.0 and 0.2 <= thr <= 0.8
    # fully inverted: EER 1
    assert equal_error_rate([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0])[0] == 1.0
    # 1 of 2 targets and 1 of 2 non-targets on the wrong side: EER 0.5
    assert equal_error_rate([0.9, 0.3, 0.6, 0.1], [1, 1, 0, 0])[0] == pytest.approx(0.5)
    assert min_dcf([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 0.0


def test_trial_input_errors():
    with pytest.raises(MetricInputError, match="both target"):
        equal_error_rate([0.1, 0.2], [1, 1])
    with pytest.raises(MetricInputError, match=r"trial #1: label 2"):
        equal_error_rate([0.1, 0.2], [1, 2])
    with pytest.raises(MetricInputError, match=r"trial #0: score is nan"):
        min_dcf([float("nan"), 0.2], [1, 0])
    with pytest.raises(MetricInputError, match="3 scores for 2"):
        min_dcf([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(MetricInputError, match="p_target"):
        min_dcf([0.1, 0.2], [1, 0], p_target=1.0)
