"""EMA teachers and the targets they produce (data2vec), modality-free.

* :class:`EMATeacher` - a frozen copy of (part of) a student, moved towards it after every
  optimizer step with a decay annealed linearly from ``start`` to ``end`` over
  ``anneal_steps`` updates (:func:`speechssl.core.ema.ema_decay`); names listed in
  ``copy_prefixes`` are copied from the student instead of averaged (data2vec's
  "layers only" EMA: the position embedding and LayerNorms follow the student). The
  update counter is a buffer, so a resumed run continues the schedule.
* :func:`collect_layer_outputs` - per-layer outputs of an encoder: the block outputs, or
  the output of each layer's feed-forward sub-module before its residual (``source="ffn"``,
  what data2vec regresses), captured with forward hooks so any encoder whose layers have
  an ``ffn`` module works.
* :func:`average_top_k_targets` - data2vec's targets: normalise each of the top ``K``
  layer outputs (instance norm over time per channel, padding excluded; or parameter-free
  layer norm per frame), average them, optionally normalise the average again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.ema import ema_decay, ema_update
from speechssl.errors import ConfigError

TARGET_NORMS = ("instance", "layer", "none")
LAYER_SOURCES = ("ffn", "layer")


class EMATeacher(nn.Module):
    """An exponential-moving-average copy of ``student`` that is never trained directly.

    Args:
        student: the module to copy (its current weights become the teacher's).
        start, end, anneal_steps: the decay schedule (:func:`ema_decay`).
        copy_prefixes: parameter/buffer name prefixes copied from the student on every
            update instead of averaged.

    The copy is always in eval mode (no dropout, no layer drop) and its parameters do not
    require gradients, so optimizers and DDP leave them alone; they are part of the
    state dict, so checkpoints resume the teacher exactly.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        start: float,
        end: float,
        anneal_steps: int,
        copy_prefixes: Iterable[str] = (),
    ) -> None:
        super().__init__()
        for name, value in (("start", start), ("end", end)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"EMA {name} decay must be in [0, 1], got {value}")
        if anneal_steps < 0:
            raise ConfigError(f"EMA anneal_steps must be >= 0, got {anneal_steps}")
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.start, self.end, self.anneal_steps = float(start), float(end), int(anneal_steps)
        self.copy_prefixes = tuple(copy_prefixes)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    num_updates: Tensor

    def train(self, mode: bool = True) -> EMATeacher:
        # the teacher never runs in training mode (data2vec evaluates it without dropout)
        super().train(mode)
        self.model.eval()
        return self

    def decay_at(self, num_updates: int) -> float:
        return ema_decay(num_updates, self.start, self.end, self.anneal_steps)

    @property
    def decay(self) -> float:
        """The decay of the last update (the start value before any)."""
        return self.decay_at(int(self.num_updates))

    @torch.no_grad()
    def update(self, student: nn.Module, num_updates: int) -> float:
        """Move the teacher towards ``student`` after optimizer step ``num_updates`` (the
        count of completed steps) with the decay of that step, and return the decay."""
        decay = self.decay_at(num_updates)
        ema_update(self.model, student, decay, skip=self.copy_prefixes)
        if self.copy_prefixes:
            own: dict[str, Tensor] = {**dict(self.model.named_parameters())}
            own.update(self.model.named_buffers())
            theirs: dict[str, Tensor] = {**dict(student.named_parameters())}
            theirs.update(student.named_buffers())
            for name, value in own.items():
                if name.startswith(self.copy_prefixes) and name in theirs:
                    value.copy_(theirs[name].detach())
        self.num_updates.fill_(num_updates)
        return decay

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The copy's forward, without gradients."""
        with torch.no_grad():
            return self.model(*args, **kwargs)


def collect_layer_outputs(
    encoder: nn.Module,
    x: Tensor,
    padding_mask: Tensor | None = None,
    *,
    source: str = "ffn",
) -> list[Tensor]:
    """Run ``encoder`` on ``x`` and return one ``[N, S, D]`` tensor per layer.

    ``source="layer"``: each layer's output (``hidden_states[1:]``). ``source="ffn"``: the
    output of each layer's ``ffn`` sub-module (before dropout and the residual), as data2vec
    uses; for a conformer layer the second (last) feed-forward half is taken.
    """
    if source not in LAYER_SOURCES:
        raise ConfigError(f"layer output source must be one of {LAYER_SOURCES}, got {source!r}")
    if source == "layer":
        out = encoder(x, padding_mask, output_hidden_states=True)
        assert out.hidden_states is not None
        return list(out.hidden_states[1:])
    captured: list[Tensor] = []
    handles = []
    for layer in encoder.layers:  # type: ignore[union-attr]
        ffn = getattr(layer, "ffn", None)
        if ffn is None:
            ffn = getattr(layer, "ffn2", None)
        if ffn is None:
            raise ConfigError(f"{type(layer).__name__} has no ffn sub-module to take targets from")
        handles.append(ffn.register_forward_hook(_capture(captured)))
    try:
        encoder(x, padding_mask)
    finally:
        for h in handles:
            h.remove()
    return captured


def _capture(store: list[Tensor]) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        store.append(output)

    return hook


def masked_instance_norm(x: Tensor, padding_mask: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise ``x [N, S, D]`` per sequence and channel over its real frames (``F.instance_norm``
    with padding excluded from the statistics); padded frames come out as 0."""
    xf = x.float()
    if padding_mask is None:
        return F.instance_norm(xf.transpose(1, 2), eps=eps).transpose(1, 2)
    valid = (~padding_mask).unsqueeze(-1).to(xf.dtype)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (xf * valid).sum(dim=1, keepdim=True) / count
    var = (((xf - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (xf - mean) * torch.rsqrt(var + eps) * valid


def normalize_target(x: Tensor, padding_mask: Tensor | None, kind: str) -> Tensor:
    """``instance`` (over time, per channel), ``layer`` (over channels, per frame, no
    parameters) or ``none``; always float32."""
    if kind == "instance":
        return masked_instance_norm(x, padding_mask)
    if kind == "layer":
        return F.layer_norm(x.float(), x.shape[-1:])
    if kind == "none":
        return x.float()
    raise ConfigError(f"target normalisation must be one of {TARGET_NORMS}, got {kind!r}")


def average_top_k_targets(
    layer_outputs: Sequence[Tensor],
    top_k: int,
    padding_mask: Tensor | None = None,
    *,
    layer_norm: str = "instance",
    final_norm: str = "none",
) -> Tensor:
    """data2vec targets: ``final_norm(mean_{l in top K} layer_norm(y_l))``.

    Args:
        layer_outputs: per-layer ``[N, S, D]`` outputs, first layer first.
        top_k: how many of the last layers to average (all of them if fewer exist).
        padding_mask: ``[N, S]`` True at padding (excluded from instance statistics).
        layer_norm: normalisation of each layer output (``instance`` in data2vec audio).
        final_norm: normalisation of the average (``layer`` in data2vec vision).

    Returns:
        ``[N, S, D]`` float32 targets.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if not layer_outputs:
        raise ConfigError("no layer outputs to build targets from")
    chosen = list(layer_outputs)[-top_k:]
    total = normalize_target(chosen[0], padding_mask, layer_norm)
    for y in chosen[1:]:
        total = total + normalize_target(y, padding_mask, layer_norm)
    return normalize_target(total / len(chosen), padding_mask, final_norm)


__all__ = [
    "LAYER_SOURCES",
    "TARGET_NORMS",
    "EMATeacher",
    "average_top_k_targets",
    "collect_layer_outputs",
    "masked_instance_norm",
    "normalize_target",
]
