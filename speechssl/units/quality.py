"""How good are the units: phone purity, cluster purity, PNMI, usage and durations.

Definitions follow the HuBERT paper (Hsu et al., 2021, section IV-D). From frame counts of
(phone ``y``, unit ``z``) pairs the joint distribution ``p(y, z)`` is estimated, and

* phone purity   ``= E_z[max_y p(y|z)] = sum_z max_y p(y, z)``
* cluster purity ``= E_y[max_z p(z|y)] = sum_y max_z p(y, z)``
* PNMI           ``= I(y; z) / H(y)``

**Pairing frames of different rates.** Phone alignments are given at ``ali_rate`` frames
per second, frame ``j`` covering ``[j, j+1) / ali_rate``. Unit frame ``i`` is centred at
``i / label_rate + W / 2`` (``W`` = the labels' ``frame_window_s``; ``(i + 0.5) / label_rate``
when ``W`` is 0) and owns the ``1 / label_rate`` wide cell around its centre. The pairs are
taken on the finer of the two grids: each frame of the finer stream is paired, at its
centre time, with the frame of the other stream whose cell contains it. So 50 Hz units
against 100 Hz alignments count each unit twice (once per 10 ms phone frame), as fairseq's
``measure_teacher_quality.py`` does by repeating labels, and 100 Hz MFCC units (25 ms
window) pair unit ``i`` with phone frame ``i + 1``, whose span holds the unit's centre.
Frames without a partner at the edges are counted as ``unpaired``. An utterance whose two
streams differ in length by more than ``max_mismatch_s`` is an error (tolerant: skipped).

Without alignments: code usage counts, entropy, perplexity (``2 ** entropy_bits``), dead
clusters, and the length distribution of runs of identical consecutive units.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.errors import LabelError


@dataclass
class Alignments:
    """Frame-level phone alignments: a symbol table and per-utterance symbol ids."""

    phones: list[str]
    frames: dict[str, np.ndarray]
    rate: float = 100.0

    @staticmethod
    def read(path: str | os.PathLike[str], rate: float = 100.0) -> Alignments:
        """Read ``utt sym sym ...`` lines (one phone symbol per frame; the bundled corpus's
        ``ali.phones`` format, read with its reader)."""
        from speechssl.data.synth.alignment import read_alignments

        p = Path(path)
        if not p.exists():
            raise LabelError(str(p), "alignment file does not exist")
        phones: list[str] = []
        ids: dict[str, int] = {}
        frames: dict[str, np.ndarray] = {}
        for utt, symbols in read_alignments(p).items():
            row = np.empty(len(symbols), dtype=np.int32)
            for n, sym in enumerate(symbols):
                i = ids.get(sym)
                if i is None:
                    i = ids[sym] = len(phones)
                    phones.append(sym)
                row[n] = i
            frames[utt] = row
        return Alignments(phones=phones, frames=frames, rate=rate)


def _unit_center0(label_rate: float, window_s: float) -> float:
    return window_s / 2 if window_s > 0 else 0.5 / label_rate


def pair_frames(
    units: np.ndarray,
    label_rate: float,
    window_s: float,
    phones: np.ndarray,
    ali_rate: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pair unit and phone frames in time (module doc).

    Returns ``(phone ids, unit ids, number of finer-grid frames left unpaired)``.
    """
    c0 = _unit_center0(label_rate, window_s)
    if ali_rate >= label_rate:
        t = (np.arange(phones.shape[0]) + 0.5) / ali_rate
        ui = np.floor((t - c0) * label_rate + 0.5).astype(np.int64)
        ok = (ui >= 0) & (ui < units.shape[0])
        return phones[ok], units[ui[ok]], int((~ok).sum())
    t = c0 + np.arange(units.shape[0]) / label_rate
    pj = np.floor(t * ali_rate).astype(np.int64)
    ok = (pj >= 0) & (pj < phones.shape[0])
    return phones[pj[ok]], units[ok], int((~ok).sum())


def stream_span_s(n: int, rate: float, window_s: float = 0.0) -> float:
    """Seconds covered by ``n`` frames at ``rate`` with analysis window ``window_s``."""
    if n == 0:
        return 0.0
    return (n - 1) / rate + window_s if window_s > 0 else n / rate


@dataclass
class Cooccurrence:
    """Frame counts of (phone, unit) pairs and what could not be paired."""

    counts: np.ndarray  # [num_phones, k] int64
    phones: list[str]
    paired: int = 0
    unpaired: int = 0
    utts: int = 0
    utts_without_alignment: list[str] = field(default_factory=list)
    alignments_without_labels: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def cooccurrence(
    labels: Mapping[str, np.ndarray],
    k: int,
    label_rate: float,
    window_s: float,
    ali: Alignments,
    max_mismatch_s: float = 0.05,
    exclude: Iterable[str] = (),
    tolerant: bool = False,
) -> Cooccurrence:
    """Count (phone, unit) pairs over every utterance that has both labels and alignments."""
    excluded = {ali.phones.index(p) for p in exclude if p in ali.phones}
    counts = np.zeros((len(ali.phones), k), dtype=np.int64)
    out = Cooccurrence(counts=counts, phones=list(ali.phones))
    for utt, units in labels.items():
        ph = ali.frames.get(utt)
        if ph is None:
            out.utts_without_alignment.append(utt)
            continue
        u = np.asarray(units, dtype=np.int64)
        span_u = stream_span_s(u.shape[0], label_rate, window_s)
        span_p = stream_span_s(ph.shape[0], ali.rate)
        if abs(span_u - span_p) > max_mismatch_s:
            reason = (
                f"labels span {span_u:.3f} s ({u.shape[0]} frames at {label_rate:g} Hz) but the "
                f"alignment spans {span_p:.3f} s ({ph.shape[0]} frames at {ali.rate:g} Hz); "
                "wrong label or alignment rate?"
            )
            if not tolerant:
                raise LabelError(utt, reason)
            out.skipped.append((utt, reason))
            continue
        p_ids, u_ids, lost = pair_frames(u, label_rate, window_s, ph, ali.rate)
        if excluded:
            keep = ~np.isin(p_ids, list(excluded))
            p_ids, u_ids = p_ids[keep], u_ids[keep]
        np.add.at(counts, (p_ids, u_ids), 1)
        out.paired += int(p_ids.shape[0])
        out.unpaired += lost
        out.utts += 1
    out.alignments_without_labels = sum(1 for u in ali.frames if u not in labels)
    if out.utts == 0:
        raise LabelError(
            "alignments", "no utterance has both labels and alignments (different utterance ids?)"
        )
    return out


def _entropy(p: np.ndarray) -> float:
    """Entropy in nats of a (possibly unnormalised) distribution."""
    p = p[p > 0].astype(np.float64)
    p = p / p.sum()
    return float(-(p * np.log(p)).sum())


def phone_unit_metrics(counts: np.ndarray) -> dict[str, float]:
    """Phone purity, cluster purity, PNMI (and entropies in bits) of a ``[phones, units]``
    count matrix."""
    total = counts.sum()
    if total <= 0:
        raise ValueError("empty co-occurrence matrix")
    p = counts.astype(np.float64) / total
    py = p.sum(1)
    pz = p.sum(0)
    nz = p > 0
    outer = np.outer(py, pz)
    mi = float((p[nz] * np.log(p[nz] / outer[nz])).sum())
    h_y = _entropy(py)
    h_z = _entropy(pz)
    return {
        "phone_purity": float(p.max(axis=0).sum()),
        "cluster_purity": float(p.max(axis=1).sum()),
        "pnmi": mi / h_y if h_y > 0 else float("nan"),
        "mutual_information_bits": mi / math.log(2),
        "phone_entropy_bits": h_y / math.log(2),
        "unit_entropy_bits": h_z / math.log(2),
    }


def _percentile_from_hist(hist: np.ndarray, q: float) -> float:
    cdf = np.cumsum(hist)
    if cdf[-1] == 0:
        return float("nan")
    return float(np.searchsorted(cdf, q / 100.0 * cdf[-1]))


def usage_stats(labels: Mapping[str, np.ndarray], k: int, label_rate: float) -> dict[str, Any]:
    """Code usage and unit-run durations (no alignments needed)."""
    usage = np.zeros(k, dtype=np.int64)
    run_hist = np.zeros(1, dtype=np.int64)  # run_hist[n] = runs of length n frames
    for units in labels.values():
        u = np.asarray(units, dtype=np.int64)
        if u.size == 0:
            continue
        usage += np.bincount(u, minlength=k)[:k]
        change = np.flatnonzero(u[1:] != u[:-1]) + 1
        bounds = np.concatenate(([0], change, [u.size]))
        lengths = np.diff(bounds)
        h = np.bincount(lengths)
        if h.size > run_hist.size:
            run_hist = np.pad(run_hist, (0, h.size - run_hist.size))
        run_hist[: h.size] += h
    total = int(usage.sum())
    h_bits = _entropy(usage) / math.log(2) if total else 0.0
    n_runs = int(run_hist.sum())
    mean_run = (
        float((np.arange(run_hist.size) * run_hist).sum() / n_runs) if n_runs else float("nan")
    )
    dead = np.flatnonzero(usage == 0)
    return {
        "num_frames": total,
        "counts": usage.tolist(),
        "entropy_bits": h_bits,
        "normalized_entropy": h_bits / math.log2(k) if k > 1 else 0.0,
        "perplexity": 2.0**h_bits,
        "dead_clusters": int(dead.size),
        "dead_cluster_ids": dead.tolist()[:100],
        "runs": {
            "num_runs": n_runs,
            "mean_frames": mean_run,
            "mean_ms": mean_run * 1000.0 / label_rate,
            "p10_frames": _percentile_from_hist(run_hist, 10),
            "p50_frames": _percentile_from_hist(run_hist, 50),
            "p90_frames": _percentile_from_hist(run_hist, 90),
            "units_per_second": n_runs / (total / label_rate) if total else 0.0,
        },
    }


def dominant_phone_order(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orders for plotting: phones by frequency (descending); units grouped by their most
    frequent phone in that order, then by ``p(phone | unit)`` descending."""
    phone_order = np.argsort(-counts.sum(1), kind="stable")
    rank_of_phone = np.empty_like(phone_order)
    rank_of_phone[phone_order] = np.arange(phone_order.size)
    col = counts.sum(0).astype(np.float64)
    cond = np.divide(counts, col, out=np.zeros(counts.shape), where=col > 0)
    dom = cond.argmax(0)
    unit_order = np.lexsort((-cond.max(0), rank_of_phone[dom]))
    return phone_order, unit_order
