"""Optimizers and learning-rate schedules, chosen by registry name.

Schedules are plain functions ``lr(step)`` of the config (fairseq's ``polynomial_decay``:
linear warmup from ``warmup_init_lr`` to ``lr``, then ``(1 - progress) ** power`` decay to
``end_lr``). :class:`Schedule` keeps only the step count as state, so a resumed run sets
exactly the same learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from speechssl.registry import Registry
from speechssl.train.config import OptimConfig

#: name -> function(config, total_steps, step) -> learning rate
SCHEDULES: Registry[Callable[[OptimConfig, int, int], float]] = Registry("lr schedule")
#: name -> function(params, config) -> optimizer
OPTIMIZERS: Registry[Callable[[Iterable[Any], OptimConfig], torch.optim.Optimizer]] = Registry(
    "optimizer"
)


def _warmup(cfg: OptimConfig, step: int) -> float | None:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.warmup_init_lr + (cfg.lr - cfg.warmup_init_lr) * step / cfg.warmup_steps
    return None


def _warmup_then_power_decay(cfg: OptimConfig, total_steps: int, step: int, power: float) -> float:
    warm = _warmup(cfg, step)
    if warm is not None:
        return warm
    if step >= total_steps:
        return cfg.end_lr
    span = max(1, total_steps - cfg.warmup_steps)
    remaining = 1.0 - (step - cfg.warmup_steps) / span
    return cfg.end_lr + (cfg.lr - cfg.end_lr) * remaining**power


@SCHEDULES.register("polynomial_decay")
def polynomial_decay(cfg: OptimConfig, total_steps: int, step: int) -> float:
    """Warmup, then ``end_lr + (lr - end_lr) * (1 - progress) ** power``; ``end_lr`` after."""
    return _warmup_then_power_decay(cfg, total_steps, step, cfg.power)


@SCHEDULES.register("linear")
def linear_decay(cfg: OptimConfig, total_steps: int, step: int) -> float:
    """Warmup, then linear decay to ``end_lr`` (polynomial decay with power 1)."""
    # x ** 1.0 == x exactly in IEEE arithmetic, so this is the plain linear formula
    return _warmup_then_power_decay(cfg, total_steps, step, 1.0)


@SCHEDULES.register("cosine")
def cosine_decay(cfg: OptimConfig, total_steps: int, step: int) -> float:
    """Warmup, then half a cosine from ``lr`` to ``end_lr``."""
    warm = _warmup(cfg, step)
    if warm is not None:
        return warm
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.end_lr + (cfg.lr - cfg.end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("constant")
def constant(cfg: OptimConfig, total_steps: int, step: int) -> float:
    """Warmup, then ``lr``."""
    warm = _warmup(cfg, step)
    return cfg.lr if warm is None else warm


class Schedule:
    """Sets each param group's ``lr`` from a registered schedule; state = the step count."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.fn = SCHEDULES.get(cfg.schedule)
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        lr = self.fn(self.cfg, self.total_steps, self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    @property
    def lr(self) -> float:
        return self.fn(self.cfg, self.total_steps, self.step_count)

    def step(self) -> None:
        """Advance one optimizer update."""
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "schedule": self.cfg.schedule,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        self._apply()


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


@OPTIMIZERS.register("adam")
def adam(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam with L2 (coupled) weight decay, as fairseq's ``adam`` without ``use_old_adam``."""
    return torch.optim.Adam(
        params,
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.get(cfg.name)(params, cfg)
