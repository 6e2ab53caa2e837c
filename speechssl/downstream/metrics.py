"""Downstream metrics: edit-distance rates (WER, CER, PER), accuracy, EER and minDCF.

Conventions (as in SUPERB / s3prl and NIST SRE):

- Error rates are corpus-level: ``(S + D + I) / N`` summed over all utterances, where ``N``
  is the total reference length. Each utterance is aligned by Levenshtein distance; among
  alignments with the fewest edits, substitutions are preferred over a deletion plus an
  insertion (so ``S``/``D``/``I`` are well defined). An empty reference is refused (its rate
  is undefined); an empty hypothesis is fine (all deletions).
- Words are whitespace-separated tokens. Characters for CER are those of the transcript with
  runs of whitespace collapsed to one space and the ends stripped; spaces count as characters
  (as ``jiwer.cer`` counts them).
- Verification scores: higher means "more likely the same speaker"; label 1 = target trial,
  0 = non-target. A trial is accepted when ``score >= threshold``.
- EER is the crossing of the miss and false-alarm rates on the piecewise-linear ROC curve
  (linear interpolation between the two operating points around the crossing), the value
  s3prl and the VoxCeleb tools report.
- minDCF is normalised: ``min_t (C_miss P_miss(t) p + C_fa P_fa(t) (1 - p)) /
  min(C_miss p, C_fa (1 - p))`` over every threshold, including accept-all and reject-all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from speechssl.errors import ItemError

if TYPE_CHECKING:
    import torch


class MetricInputError(ItemError):
    """The inputs of a metric are unusable (mismatched lengths, empty reference, ...)."""

    kind = "metric-input"


@dataclass(frozen=True)
class ErrorCounts:
    """Edit-distance counts summed over a corpus."""

    substitutions: int
    deletions: int
    insertions: int
    ref_length: int
    """Total number of reference tokens (N)."""

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """``(S + D + I) / N``."""
        return self.errors / self.ref_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.ref_length + other.ref_length,
        )


def align_counts(ref: Sequence[str], hyp: Sequence[str]) -> tuple[int, int, int]:
    """``(substitutions, deletions, insertions)`` of one Levenshtein alignment.

    Among minimal alignments the one with most substitutions is kept: the dynamic programme
    minimises ``edits * B + (deletions + insertions)`` with ``B > len(ref) + len(hyp)``, so
    the edit count comes first and ties go to fewer deletions + insertions. Rows are
    vectorised: within a row, ``cur[j] = min(a[j], cur[j-1] + c)`` (``c`` the cost of an
    insertion) is ``j c + cummin(a[k] - k c)``, so there is no Python loop over columns.
    """
    n, m = len(ref), len(hyp)
    if n == 0 or m == 0:
        return 0, n, m
    ids: dict[str, int] = {}
    r = np.array([ids.setdefault(t, len(ids)) for t in ref], dtype=np.int64)
    h = np.array([ids.setdefault(t, len(ids)) for t in hyp], dtype=np.int64)
    big = n + m + 1  # cost of a substitution: one edit, no indel
    step = big + 1  # cost of a deletion or an insertion: one edit and one indel
    ramp = np.arange(m + 1, dtype=np.int64) * step
    prev = ramp.copy()  # row 0: j insertions
    a = np.empty(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        a[0] = i * step  # i deletions
        np.minimum(prev[:-1] + np.where(h == r[i - 1], 0, big), prev[1:] + step, out=a[1:])
        prev = np.minimum.accumulate(a - ramp) + ramp
    edits, indels = divmod(int(prev[m]), big)
    # matches + S + D = n and matches + S + I = m, so D - I = n - m
    deletions = (indels + n - m) // 2
    insertions = indels - deletions
    return edits - indels, deletions, insertions


def edit_distance_counts(
    refs: Sequence[Sequence[str]],
    hyps: Sequence[Sequence[str]],
    *,
    ids: Sequence[str] | None = None,
) -> ErrorCounts:
    """Sum the alignment counts of token sequences ``refs[i]`` vs ``hyps[i]``.

    ``ids`` (optional) names the utterances in errors; otherwise they are named by index.
    Raises :class:`MetricInputError` for a length mismatch, no utterances, or an empty
    reference.
    """
    if len(refs) != len(hyps):
        raise MetricInputError("hypotheses", f"{len(hyps)} hypotheses for {len(refs)} references")
    if ids is not None and len(ids) != len(refs):
        raise MetricInputError("ids", f"{len(ids)} ids for {len(refs)} references")
    if not refs:
        raise MetricInputError("references", "no utterances to score")
    s = d = ins = n = 0
    for k, (ref, hyp) in enumerate(zip(refs, hyps)):
        if isinstance(ref, str) or isinstance(hyp, str):
            name = ids[k] if ids is not None else f"utterance #{k}"
            raise MetricInputError(name, "expected token sequences, got a plain string")
        if len(ref) == 0:
            name = ids[k] if ids is not None else f"utterance #{k}"
            raise MetricInputError(name, "empty reference: its error rate is undefined")
        cs, cd, ci = align_counts(ref, hyp)
        s, d, ins, n = s + cs, d + cd, ins + ci, n + len(ref)
    return ErrorCounts(s, d, ins, n)


def _words(text: str) -> list[str]:
    return text.split()


def _chars(text: str) -> list[str]:
    return list(" ".join(text.split()))


def word_error_rate(
    refs: Sequence[str], hyps: Sequence[str], *, ids: Sequence[str] | None = None
) -> float:
    """Corpus WER of transcripts (whitespace-separated words)."""
    return edit_distance_counts([_words(r) for r in refs], [_words(h) for h in hyps], ids=ids).rate


def char_error_rate(
    refs: Sequence[str], hyps: Sequence[str], *, ids: Sequence[str] | None = None
) -> float:
    """Corpus CER of transcripts (characters incl. single spaces between words)."""
    return edit_distance_counts([_chars(r) for r in refs], [_chars(h) for h in hyps], ids=ids).rate


def phone_error_rate(
    refs: Sequence[Sequence[str]],
    hyps: Sequence[Sequence[str]],
    *,
    ids: Sequence[str] | None = None,
) -> float:
    """Corpus PER of phone sequences (lists of phone symbols)."""
    return edit_distance_counts(refs, hyps, ids=ids).rate


def _as_1d(values: ArrayLike | torch.Tensor, what: str) -> np.ndarray:
    import torch

    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(what, f"expected a 1-D sequence, got shape {tuple(arr.shape)}")
    return arr


def accuracy(labels: Sequence[int] | torch.Tensor, preds: Sequence[int] | torch.Tensor) -> float:
    """Fraction of ``preds`` equal to ``labels`` (class indices or names)."""
    y = _as_1d(labels, "labels")
    p = _as_1d(preds, "predictions")
    if len(y) != len(p):
        raise MetricInputError("predictions", f"{len(p)} predictions for {len(y)} labels")
    if len(y) == 0:
        raise MetricInputError("labels", "no utterances to score")
    return float(np.mean(y == p))


def _trial_arrays(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _as_1d(scores, "scores").astype(np.float64)
    y = _as_1d(labels, "labels")
    if len(s) != len(y):
        raise MetricInputError("scores", f"{len(s)} scores for {len(y)} trial labels")
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise MetricInputError(f"trial #{bad}", f"score is {s[bad]} (not finite)")
    bad_label = ~np.isin(y, [0, 1])
    if bad_label.any():
        k = int(np.flatnonzero(bad_label)[0])
        raise MetricInputError(f"trial #{k}", f"label {y[k].item()!r} is not 0 or 1 (1 = target)")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise MetricInputError("labels", "trials need both target (1) and non-target (0) labels")
    return s, y


def _operating_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (descending, +inf first) with the miss and false-alarm rates of
    ``accept iff score >= threshold`` at each, from reject-all to accept-all."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # the last index of each run of equal scores: all tied trials flip together
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    n_tar, n_non = y.sum(), (~y).sum()
    p_miss = np.r_[1.0, 1.0 - tp / n_tar]
    p_fa = np.r_[0.0, fp / n_non]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return thresholds, p_miss, p_fa


def equal_error_rate(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """``(eer, threshold)``: where the miss and false-alarm rates cross.

    Between the two operating points around the crossing both rates (and the threshold) are
    interpolated linearly; the threshold at the accept-nothing end is taken as the highest
    score.
    """
    s, y = _trial_arrays(scores, labels)
    thr, p_miss, p_fa = _operating_points(s, y)
    thr = thr.copy()
    thr[0] = thr[1]
    diff = p_miss - p_fa  # 1 at reject-all, -1 at accept-all, non-increasing
    k = int(np.flatnonzero(diff <= 0)[0])
    if diff[k] == 0:
        return float(p_fa[k]), float(thr[k])
    # crossing between points k-1 (diff > 0) and k (diff < 0)
    a = diff[k - 1] / (diff[k - 1] - diff[k])
    eer = p_fa[k - 1] + a * (p_fa[k] - p_fa[k - 1])
    threshold = thr[k - 1] + a * (thr[k] - thr[k - 1])
    return float(eer), float(threshold)


def min_dcf(
    scores: ArrayLike,
    labels: ArrayLike,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Normalised minimum detection cost over all thresholds (NIST SRE / SUPERB)."""
    if not 0.0 < p_target < 1.0:
        raise MetricInputError("p_target", f"{p_target} is not in (0, 1)")
    if c_miss <= 0 or c_fa <= 0:
        raise MetricInputError("costs", f"c_miss={c_miss}, c_fa={c_fa}: both must be > 0")
    s, y = _trial_arrays(scores, labels)
    _, p_miss, p_fa = _operating_points(s, y)
    dcf = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))
