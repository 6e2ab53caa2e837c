"""Device resolution: one rule for every command (``auto`` means CUDA when there is one)."""

from __future__ import annotations

import torch

from speechssl.errors import ConfigError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> ``cuda`` when available, else ``cpu``; an explicit CUDA device
    without CUDA is a :class:`ConfigError` naming it."""
    if name is None or (isinstance(name, str) and name == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r} requested but CUDA is not available")
    return dev
