"""The summary stage of a recipe: unit quality per iteration and training results as tables.

Reads what earlier stages wrote (``speechssl kmeans report`` directories and
``speechssl-train`` experiment directories), writes ``results.md`` (Markdown tables) and
``results.json`` atomically, and optionally checks that a unit-quality metric improved from
the first units to the last (the HuBERT recipes' "iteration 2 beats MFCC" promise).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from speechssl.errors import SpeechSSLError
from speechssl.utils.atomic import atomic_write_json, atomic_write_text

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"

#: unit-quality metrics a check can name, with where they live in ``report.json``
UNIT_METRICS: dict[str, tuple[str, ...]] = {
    "pnmi": ("phones", "pnmi"),
    "phone_purity": ("phones", "phone_purity"),
    "cluster_purity": ("phones", "cluster_purity"),
    "perplexity": ("usage", "perplexity"),
}

#: model metrics shown for a training run when its log has them, in this order
TRAIN_METRICS: tuple[str, ...] = ("acc_masked", "acc_unmasked", "code_perplexity")


class SummaryError(SpeechSSLError):
    """An input of the summary is missing or malformed, or a check failed."""


@dataclass(kw_only=True)
class UnitRow:
    """Quality of one set of units (one ``speechssl kmeans report``)."""

    name: str
    """Row name given on the command line (``iter1:mfcc``)."""
    report: str
    """The report directory."""
    features: str
    """What was clustered: feature kind, and layer for model features."""
    k: int
    """Number of clusters."""
    num_utts: int
    """Utterances the report covers."""
    perplexity: float
    """Perplexity of the unit distribution (out of ``k``)."""
    dead_clusters: int
    """Clusters that never occur."""
    mean_run_ms: float
    """Mean duration of a run of one unit, in milliseconds."""
    pnmi: float | None = None
    """Phone-normalised mutual information (with phone alignments only)."""
    phone_purity: float | None = None
    """Phone purity (with phone alignments only)."""
    cluster_purity: float | None = None
    """Cluster purity (with phone alignments only)."""


@dataclass(kw_only=True)
class TrainRow:
    """Where one pretraining run ended (a ``speechssl-train`` experiment directory)."""

    name: str
    """Row name given on the command line (``iter1``)."""
    exp_dir: str
    """The experiment directory."""
    model: str
    """Registry name of the model, from the experiment's resolved config."""
    step: int
    """Last logged optimizer step."""
    loss: float
    """Training loss of the last log record."""
    dev_loss: float | None = None
    """Dev loss of the last dev evaluation, if any."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Model metrics of the last log record (``TRAIN_METRICS`` that are present)."""
    final_model: str | None = None
    """The exported final model directory, if it exists."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SummaryError(f"{path}: missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SummaryError(f"{path}: unreadable ({exc})") from None
    if not isinstance(obj, dict):
        raise SummaryError(f"{path}: expected a JSON object")
    return obj


def _get(obj: dict[str, Any], keys: Sequence[str], where: str) -> Any:
    cur: Any = obj
    for key in keys:
        if not isinstance(cur, dict) or key not in cur:
            raise SummaryError(f"{where}: no {'.'.join(keys)}")
        cur = cur[key]
    return cur


def read_unit_report(name: str, report_dir: str | os.PathLike[str]) -> UnitRow:
    """One row of the unit table from a ``speechssl kmeans report`` output directory."""
    from speechssl.units.report import REPORT_JSON

    path = Path(report_dir) / REPORT_JSON
    rep = _read_json(path)
    where = str(path)
    source = rep.get("source", {}) if isinstance(rep.get("source"), dict) else {}
    features = str(source.get("kind", "?"))
    if source.get("layer") is not None:
        features += f" layer {source['layer']}"
    row = UnitRow(
        name=name,
        report=str(report_dir),
        features=features,
        k=int(_get(rep, ("k",), where)),
        num_utts=int(_get(rep, ("num_utts",), where)),
        perplexity=float(_get(rep, ("usage", "perplexity"), where)),
        dead_clusters=int(_get(rep, ("usage", "dead_clusters"), where)),
        mean_run_ms=float(_get(rep, ("usage", "runs", "mean_ms"), where)),
    )
    if "phones" in rep:
        row.pnmi = float(_get(rep, ("phones", "pnmi"), where))
        row.phone_purity = float(_get(rep, ("phones", "phone_purity"), where))
        row.cluster_purity = float(_get(rep, ("phones", "cluster_purity"), where))
    return row


def _model_name(exp: Path) -> str:
    config = exp / "config.yaml"
    if not config.is_file():
        return "?"
    from omegaconf import OmegaConf

    try:
        name = OmegaConf.select(OmegaConf.load(config), "model.name")
    except Exception as exc:  # a malformed YAML of any kind
        raise SummaryError(f"{config}: unreadable ({exc})") from None
    return str(name) if name is not None else "?"


def read_train_exp(name: str, exp_dir: str | os.PathLike[str]) -> TrainRow:
    """One row of the training table from a ``speechssl-train`` experiment directory."""
    from speechssl.train.monitor import LOG_NAME, iter_kind, read_log

    exp = Path(exp_dir)
    log_path = exp / LOG_NAME
    if not log_path.is_file():
        raise SummaryError(f"{log_path}: missing (is {exp} a speechssl-train experiment?)")
    records = read_log(log_path)
    train = list(iter_kind(records, "train"))
    if not train:
        raise SummaryError(f"{log_path}: no training records")
    last = train[-1]
    dev = list(iter_kind(records, "dev"))
    final = exp / "final"
    return TrainRow(
        name=name,
        exp_dir=str(exp),
        model=_model_name(exp),
        step=int(last["step"]),
        loss=float(last["loss"]),
        dev_loss=float(dev[-1]["loss"]) if dev and "loss" in dev[-1] else None,
        metrics={k: float(last[k]) for k in TRAIN_METRICS if isinstance(last.get(k), int | float)},
        final_model=str(final) if final.is_dir() else None,
    )


def unit_metric(row: UnitRow, metric: str) -> float:
    """The value of a unit-quality metric of a row (error if the report lacks it)."""
    if metric not in UNIT_METRICS:
        raise SummaryError(f"unknown unit metric {metric!r}; known: {', '.join(UNIT_METRICS)}")
    value = getattr(row, metric)
    if value is None:
        raise SummaryError(
            f"units {row.name}: no {metric} in {row.report} (a report needs phone alignments "
            "for PNMI and purities)"
        )
    return float(value)


def check_higher(units: Sequence[UnitRow], metric: str) -> str:
    """Check that the last units beat the first on ``metric``; returns the verdict line.

    Raises SummaryError naming both values when they do not.
    """
    if len(units) < 2:
        raise SummaryError(f"--expect-higher {metric} needs at least two unit rows")
    first, last = units[0], units[-1]
    a, b = unit_metric(first, metric), unit_metric(last, metric)
    if not b > a:
        raise SummaryError(
            f"units {last.name} have {metric} {b:.4f}, not higher than {first.name}'s {a:.4f}"
        )
    return f"{metric}: {last.name} {b:.4f} > {first.name} {a:.4f}"


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _unit_cells(u: UnitRow) -> list[str]:
    return [
        u.name,
        u.features,
        str(u.k),
        _fmt(u.pnmi),
        _fmt(u.phone_purity),
        _fmt(u.cluster_purity),
        _fmt(u.perplexity, 1),
        str(u.dead_clusters),
        _fmt(u.mean_run_ms, 1),
        str(u.num_utts),
    ]


UNIT_HEADER = (
    "units", "features", "K", "PNMI", "phone purity", "cluster purity",
    "perplexity", "dead", "mean run (ms)", "utts",
)  # fmt: skip


def render_markdown(
    units: Sequence[UnitRow], trains: Sequence[TrainRow], checks: Sequence[str]
) -> str:
    """The results as Markdown: a unit-quality table, a training table, the checks."""
    parts = ["# Results"]
    if units:
        parts += ["## Unit quality", _table(UNIT_HEADER, [_unit_cells(u) for u in units])]
    if trains:
        shown = [m for m in TRAIN_METRICS if any(m in t.metrics for t in trains)]
        header = ["run", "model", "steps", "train loss", "dev loss", *shown, "final model"]
        rows = [
            [t.name, t.model, str(t.step), _fmt(t.loss), _fmt(t.dev_loss)]
            + [_fmt(t.metrics.get(m)) for m in shown]
            + [t.final_model or "-"]
            for t in trains
        ]
        parts += ["## Pretraining", _table(header, rows)]
    if checks:
        parts += ["## Checks", "\n".join(f"- {c}" for c in checks)]
    return "\n\n".join(parts) + "\n"


@dataclass(kw_only=True)
class Summary:
    """What ``write_summary`` produced."""

    units: list[UnitRow]
    """Unit-quality rows, in the order given."""
    trains: list[TrainRow]
    """Training rows, in the order given."""
    checks: list[str]
    """Verdict lines of the checks that passed."""
    failed: list[str]
    """Messages of the checks that failed (the caller decides what a failure means)."""
    markdown: str
    """The text of ``results.md``."""


def write_summary(
    out_dir: str | os.PathLike[str],
    units: Sequence[tuple[str, str | os.PathLike[str]]] = (),
    trains: Sequence[tuple[str, str | os.PathLike[str]]] = (),
    expect_higher: Sequence[str] = (),
) -> Summary:
    """Read every input, write ``results.md`` and ``results.json`` into ``out_dir``.

    A missing or malformed input raises SummaryError naming it. Failed checks do not raise:
    they are listed in the tables, in ``results.json`` (``failed_checks``) and in
    ``Summary.failed``, so the tables are there to look at either way.
    """
    unit_rows = [read_unit_report(name, path) for name, path in units]
    train_rows = [read_train_exp(name, path) for name, path in trains]
    passed: list[str] = []
    failed: list[str] = []
    for metric in expect_higher:
        try:
            passed.append(check_higher(unit_rows, metric))
        except SummaryError as exc:
            failed.append(str(exc))
    markdown = render_markdown(unit_rows, train_rows, passed + [f"FAILED: {f}" for f in failed])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RESULTS_MD, markdown)
    atomic_write_json(
        out / RESULTS_JSON,
        {
            "units": [asdict(u) for u in unit_rows],
            "train": [asdict(t) for t in train_rows],
            "checks": passed,
            "failed_checks": failed,
        },
    )
    return Summary(
        units=unit_rows, trains=train_rows, checks=passed, failed=failed, markdown=markdown
    )
