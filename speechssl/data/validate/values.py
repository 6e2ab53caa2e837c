"""Value checks shared by the rules: positive numbers (one value, or a whole block)."""

from __future__ import annotations

import math


def positive(text: str, *, integer: bool) -> float | None:
    """``text`` as a finite number > 0 (an integer if ``integer``), else None."""
    try:
        num = int(text) if integer else float(text)
    except ValueError:
        return None
    return float(num) if math.isfinite(num) and num > 0 else None


def positive_block(texts: list[str], *, integer: bool) -> list[float] | None:
    """All values as numbers if every one is a positive (integer) number, else None."""
    try:
        vals = list(map(float, map(int, texts) if integer else texts))
    except ValueError:
        return None
    if vals and min(vals) > 0 and max(vals) < math.inf and not any(map(math.isnan, vals)):
        return vals
    return None


def finite_span(start: str, end: str) -> tuple[float, float] | None:
    """``(start, end)`` of a segment if both are finite numbers with ``0 <= start < end``."""
    try:
        a, b = float(start), float(end)
    except ValueError:
        return None
    return (a, b) if 0 <= a < b < math.inf else None
