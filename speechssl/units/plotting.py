"""PNG figures of unit quality (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from speechssl.units.quality import dominant_phone_order
from speechssl.utils.atomic import atomic_path


def plot_report(
    path: str | os.PathLike[str],
    usage: np.ndarray,
    counts: np.ndarray | None = None,
    phones: list[str] | None = None,
    title: str = "",
) -> None:
    """Write a PNG: unit-usage histogram, and (given phone counts) the ``p(phone | unit)``
    matrix with units ordered by their dominant phone, so a block-diagonal shape means
    units that map onto phones."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    k = usage.shape[0]
    width = max(8.0, min(24.0, k / 12))
    if counts is None:
        fig, ax0 = plt.subplots(1, 1, figsize=(width, 4.0))
        axes: Any = [ax0]
    else:
        # one readable tick label per phone: the matrix panel grows with the phone count
        matrix_h = max(4.0, 0.16 * counts.shape[0])
        fig, axes = plt.subplots(
            2, 1, figsize=(width, 4.0 + matrix_h + 1.0), height_ratios=[4.0, matrix_h]
        )
    total = max(int(usage.sum()), 1)
    order = np.argsort(-usage, kind="stable")
    ax = axes[0]
    ax.bar(np.arange(k), usage[order] / total, width=1.0, color="tab:blue")
    ax.axhline(1.0 / k, color="tab:red", lw=0.8, ls="--", label="uniform")
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_xlabel(f"units sorted by frequency (k={k}, dead={int((usage == 0).sum())})")
    ax.set_ylabel("fraction of frames")
    ax.set_title("cluster usage" + (f" - {title}" if title else ""))
    ax.legend(loc="upper right")
    if counts is not None:
        assert phones is not None
        phone_order, unit_order = dominant_phone_order(counts)
        col = counts.sum(0).astype(np.float64)
        cond = np.divide(counts, col, out=np.zeros(counts.shape), where=col > 0)
        mat = cond[phone_order][:, unit_order]
        ax = axes[1]
        im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(np.arange(len(phone_order)))
        ax.set_yticklabels([phones[i] for i in phone_order], fontsize=7)
        ax.set_xlabel("units (ordered by dominant phone)")
        ax.set_ylabel("phone (by frequency)")
        ax.set_title("p(phone | unit)")
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
