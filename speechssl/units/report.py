"""``speechssl kmeans report``: unit-quality JSON, co-occurrence table and PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.units.labels import UnitLabels
from speechssl.units.plotting import plot_report
from speechssl.units.quality import Alignments, cooccurrence, phone_unit_metrics, usage_stats
from speechssl.utils.atomic import atomic_open, atomic_write_json

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
COOC_TSV = "cooccurrence.tsv"


def write_report(
    label_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    alignments: str | os.PathLike[str] | None = None,
    ali_rate: float = 100.0,
    data_dir: str | os.PathLike[str] | None = None,
    tolerance: float = 2.0,
    exclude_phones: Sequence[str] = (),
    max_mismatch_s: float = 0.05,
    tolerant: bool = False,
    plot: bool = True,
) -> dict[str, Any]:
    """Compute the report of ``label_dir`` and write ``report.json`` (+ ``report.png``,
    and ``cooccurrence.tsv`` with alignments) into ``out_dir``; returns the report dict."""
    labels = UnitLabels.load(label_dir, data_dir=data_dir, tolerance=tolerance, tolerant=tolerant)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = labels.meta
    usage = usage_stats(labels, meta.k, meta.label_rate)
    report: dict[str, Any] = {
        "labels": str(label_dir),
        "k": meta.k,
        "label_rate": meta.label_rate,
        "frame_window_s": meta.frame_window_s,
        "source": meta.source,
        "kmeans": meta.kmeans,
        "num_utts": len(labels),
        "usage": usage,
    }
    if data_dir is not None:
        report["data_dir"] = {
            "path": str(data_dir),
            "labels_not_in_data_dir": len(labels.extra),
            "skipped": [{"utt": u, "reason": r} for u, r in labels.skipped],
        }
    counts = None
    ali = None
    if alignments is not None:
        ali = Alignments.read(alignments, rate=ali_rate)
        co = cooccurrence(
            labels,
            meta.k,
            meta.label_rate,
            meta.frame_window_s,
            ali,
            max_mismatch_s=max_mismatch_s,
            exclude=exclude_phones,
            tolerant=tolerant,
        )
        counts = co.counts
        report["phones"] = {
            "alignments": str(alignments),
            "ali_rate": ali_rate,
            "num_phones": len(co.phones),
            "excluded_phones": list(exclude_phones),
            "utts_scored": co.utts,
            "utts_without_alignment": len(co.utts_without_alignment),
            "alignments_without_labels": co.alignments_without_labels,
            "frames_paired": co.paired,
            "frames_unpaired": co.unpaired,
            "skipped": [{"utt": u, "reason": r} for u, r in co.skipped],
            **phone_unit_metrics(co.counts),
        }
        with atomic_open(out / COOC_TSV) as fh:
            fh.write("phone\t" + "\t".join(str(z) for z in range(meta.k)) + "\n")
            for y, name in enumerate(co.phones):
                fh.write(name + "\t" + "\t".join(map(str, co.counts[y].tolist())) + "\n")
    atomic_write_json(out / REPORT_JSON, report)
    if plot:
        plot_report(
            out / REPORT_PNG,
            np.asarray(usage["counts"], dtype=np.int64),
            counts,
            None if ali is None else ali.phones,
            title=f"k={meta.k}, {meta.source.get('kind', '?')}",
        )
    return report
