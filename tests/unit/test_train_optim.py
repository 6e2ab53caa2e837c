"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from speechssl.errors import ConfigError
from speechssl.train.config import OptimConfig
from speechssl.train.optim import SCHEDULES, Schedule, build_optimizer


def test_polynomial_decay_matches_fairseq_shape() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=10, end_lr=0.1, power=2.0, schedule="polynomial_decay")
    lr = lambda step: SCHEDULES.get("polynomial_decay")(cfg, 110, step)  # noqa: E731
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.1 + 0.9 * 0.5**2)
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
def test_schedules_warm_up_then_never_exceed_peak(name: str) -> None:
    cfg = OptimConfig(lr=2.0, warmup_steps=4, schedule=name)
    values = [SCHEDULES.get(name)(cfg, 20, s) for s in range(25)]
    assert values[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert max(values) == pytest.approx(2.0)
    if name != "constant":
        assert values[20] == pytest.approx(0.0, abs=1e-12)
        assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values[4:]))


def test_schedule_state_resumes_exactly() -> None:
    model = torch.nn.Linear(3, 2)
    cfg = OptimConfig(lr=1e-3, warmup_steps=3, schedule="polynomial_decay")
    opt = build_optimizer(model, cfg)
    sched = Schedule(opt, cfg, total_steps=10)
    for _ in range(5):
        sched.step()
    state = sched.state_dict()
    opt2 = build_optimizer(model, cfg)
    sched2 = Schedule(opt2, cfg, total_steps=10)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 5 / 7)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert not math.isnan(sched2.lr)


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown lr schedule 'step'"):
        SCHEDULES.get("step")
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer(torch.nn.Linear(1, 1), OptimConfig(name="lamb"))
