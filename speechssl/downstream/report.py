"""A SUPERB-like table over probing runs: upstreams x tasks.

Reads the ``results.json`` of ``speechssl-probe`` experiment dirs and writes, atomically,
``probe.json`` (rows ``{"upstream", "task", "metric", "value"}``: the test metric of the lr
picked on dev, plus ``dev``, ``lr``, ``mode`` and the learned ``layer_weights``),
``probe.md`` (one row per upstream, one column per task, as in the SUPERB paper, with each
metric's direction; then the lr, or for QbE the layer, picked on dev) and
``probe_layers.png`` (one panel per upstream x task: the learned layer weights; for QbE,
which trains nothing, each layer's dev MTWV, the profile its layer was picked from).

Rates (accuracy, PER, WER, EER, DER, ...) are printed in %, as SUPERB does; MTWV and MAP
(QbE) are printed as they are (SUPERB's QbE column).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from speechssl.errors import ConfigError
from speechssl.utils.atomic import atomic_write_json, atomic_write_text

PROBE_JSON = "probe.json"
PROBE_MD = "probe.md"
PROBE_PNG = "probe_layers.png"
#: task column order (others follow alphabetically)
TASK_ORDER = ("pr", "asr", "ks", "qbe", "sid", "asv", "sd", "ic", "er", "sf")
_ARROW = {"min": "↓", "max": "↑"}
#: metrics printed as they are (not in %)
PLAIN_METRICS = ("mtwv", "map")


def read_run(exp_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(exp_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{exp_dir}: no results.json (not a finished speechssl-probe run)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    for key in ("task", "upstream", "metric", "test", "dev", "lr"):
        if key not in data:
            raise ConfigError(f"{path}: no {key!r} (not a speechssl-probe results file)")
    return data


def collect(runs: Sequence[tuple[str | None, str]]) -> list[dict[str, Any]]:
    """Rows of ``runs`` (``(upstream label or None, exp dir)``); a repeated
    (upstream, task) pair is an error."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for label, exp in runs:
        data = read_run(exp)
        upstream = label or str(data["upstream"])
        key = (upstream, str(data["task"]))
        if key in seen:
            raise ConfigError(f"{exp}: upstream {upstream} task {key[1]} is also in {seen[key]}")
        seen[key] = exp
        rows.append(
            {
                "upstream": upstream,
                "task": data["task"],
                "metric": data["metric"],
                "value": data["test"],
                "dev": data["dev"],
                "lr": data["lr"],
                "mode": data.get("mode", "max"),
                "layer_weights": data.get("layer_weights", {}),
                "layer": data.get("layer"),
                "per_layer": data.get("per_layer", {}),
                "exp_dir": str(exp),
            }
        )
    return rows


def _fmt(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if metric in PLAIN_METRICS:
        return f"{value:.4f}"
    return f"{100 * value:.2f}"


def _head(task: str, metric: str, mode: str) -> str:
    unit = "" if metric in PLAIN_METRICS else " %"
    return f"{task.upper()} {metric.upper()}{unit} {_ARROW.get(mode, '')}".rstrip()


def markdown(rows: Sequence[dict[str, Any]], note: str = "") -> str:
    tasks = sorted(
        {r["task"] for r in rows}, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t)
    )
    upstreams = list(dict.fromkeys(r["upstream"] for r in rows))
    cell = {(r["upstream"], r["task"]): r for r in rows}
    heads = []
    for t in tasks:
        r = next(r for r in rows if r["task"] == t)
        heads.append(_head(t, r["metric"], r["mode"]))
    lines = ["| upstream | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(tasks)]
    for u in upstreams:
        vals = [
            _fmt(cell[(u, t)]["value"], cell[(u, t)]["metric"]) if (u, t) in cell else "–"
            for t in tasks
        ]
        lines.append(f"| {u} | " + " | ".join(vals) + " |")
    # what was picked on dev: the lr (trained tasks) or the layer (QbE, no training)
    lines += ["", "Picked on dev (lr, or the layer where nothing is trained):", ""]
    lines += ["| upstream | " + " | ".join(t.upper() for t in tasks) + " |"]
    lines.append("|---|" + "---:|" * len(tasks))
    for u in upstreams:
        picks = []
        for t in tasks:
            run = cell.get((u, t))
            if run is None:
                picks.append("–")
            elif run["lr"] is not None:
                picks.append(f"lr {run['lr']:g}")
            else:
                picks.append(f"layer {run['layer']}" if run.get("layer") is not None else "–")
        lines.append(f"| {u} | " + " | ".join(picks) + " |")
    text = "\n".join(lines) + "\n"
    if note:
        text += f"\n{note}\n"
    return text


def write_report(
    runs: Sequence[tuple[str | None, str]], out: str | os.PathLike[str], note: str = ""
) -> tuple[list[dict[str, Any]], str]:
    """Write ``probe.json`` and ``probe.md`` into ``out``; returns the rows and the table."""
    rows = collect(runs)
    if not rows:
        raise ConfigError("no probing runs given")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, note)
    atomic_write_json(out_dir / PROBE_JSON, rows)
    atomic_write_text(out_dir / PROBE_MD, table)
    plot_layer_weights(rows, out_dir / PROBE_PNG)
    return rows, table


def plot_layer_weights(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One bar chart per (upstream, task) run of its learned layer weights (softmaxed), the
    upstreams as rows and the tasks as columns; a run that trains nothing (QbE) shows each
    layer's dev score instead, the picked layer in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(
        {r["task"] for r in rows}, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t)
    )
    upstreams = list(dict.fromkeys(r["upstream"] for r in rows))
    cell = {(r["upstream"], r["task"]): r for r in rows}
    fig, axes = plt.subplots(
        len(upstreams), len(tasks), figsize=(2.6 * len(tasks) + 0.5, 2.0 * len(upstreams) + 0.5),
        squeeze=False,
    )  # fmt: skip
    for i, u in enumerate(upstreams):
        for j, t in enumerate(tasks):
            ax = axes[i][j]
            r = cell.get((u, t))
            weights = (r or {}).get("layer_weights") or {}
            per_layer = (r or {}).get("per_layer") or {}
            if weights:
                layers = sorted(weights, key=int)
                ax.bar([int(k) for k in layers], [weights[k] for k in layers])
                ax.set_title(f"{u} / {t}: layer weights", fontsize=8)
            elif per_layer:  # nothing trained (QbE): each layer's dev score, the picked one dark
                layers = sorted(per_layer, key=int)
                key = f"dev_{r['metric']}" if r else ""
                values = [per_layer[k].get(key, math.nan) for k in layers]
                colors = [
                    "tab:red" if r and int(k) == r.get("layer") else "tab:gray" for k in layers
                ]
                ax.bar([int(k) for k in layers], values, color=colors)
                ax.set_title(f"{u} / {t}: dev {r['metric'] if r else ''} per layer", fontsize=8)
            else:
                ax.axis("off")
                continue
            ax.set_xticks([int(k) for k in layers])
            ax.set_xlabel("hidden state", fontsize=7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
