"""Training curves from ``log.jsonl`` as one PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from speechssl.errors import SpeechSSLError
from speechssl.train.monitor import LOG_NAME, iter_kind, read_log
from speechssl.utils.atomic import atomic_path

# panels: title -> keys (train keys; "dev:" prefix = dev record), in display order
PANELS: list[tuple[str, list[str]]] = [
    ("loss", ["loss", "dev:loss"]),
    ("loss terms", ["loss/*"]),
    ("accuracy", ["acc_masked", "acc_unmasked", "dev:acc_masked", "dev:acc_unmasked"]),
    ("code perplexity", ["code_perplexity", "prob_perplexity"]),
    ("learning rate", ["lr"]),
    ("gradient norm", ["grad_norm"]),
    ("loss scale", ["loss_scale"]),
    ("throughput (audio s / s)", ["audio_sec_per_sec"]),
    ("padding / crop waste", ["padding_fraction", "crop_waste"]),
]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def plot_log(exp_or_log: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the curves of an experiment (dir or ``log.jsonl``) to ``out`` (default
    ``<exp>/curves.png``); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = Path(exp_or_log)
    log_path = src / LOG_NAME if src.is_dir() else src
    if not log_path.is_file():
        raise SpeechSSLError(f"{log_path}: no training log (is this an experiment dir?)")
    records = read_log(log_path)
    train = list(iter_kind(records, "train"))
    dev = list(iter_kind(records, "dev"))
    if not train:
        raise SpeechSSLError(f"{log_path}: no train records yet")
    term_keys = sorted({k for r in train for k in r if k.startswith("loss/")})
    panels = []
    for title, keys in PANELS:
        expanded = [k for key in keys for k in (term_keys if key == "loss/*" else [key])]
        lines = []
        for key in expanded:
            recs, name = (dev, key[4:]) if key.startswith("dev:") else (train, key)
            steps, values = _series(recs, name)
            if steps:
                lines.append((("dev " if key.startswith("dev:") else "") + name, steps, values))
        if lines:
            panels.append((title, lines))
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels):
        for label, steps, values in lines:
            ax.plot(
                steps, values, label=label, marker="o" if label.startswith("dev") else None, ms=3
            )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title in ("learning rate", "loss scale"):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(lines) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(str(log_path.parent.name))
    fig.tight_layout()
    target = Path(out) if out is not None else log_path.parent / "curves.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return target
