"""Exponential moving average of weights (data2vec / BYOL-style teachers), as free functions.

``ema_update(teacher, student, decay)`` moves every floating-point parameter of the teacher
towards the student's: ``t <- decay * t + (1 - decay) * s``; buffers are copied. The teacher
is a separate module with the same structure (``copy.deepcopy(student)``); names that only
the student has (e.g. a prediction head) are ignored, names missing from the student are
an error.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from speechssl.errors import ConfigError


def ema_decay(step: int, start: float, end: float, anneal_steps: int) -> float:
    """data2vec's schedule: linear from ``start`` to ``end`` over ``anneal_steps``, then
    constant at ``end``."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    return start + (end - start) * (step / anneal_steps)


@torch.no_grad()
def ema_update(
    teacher: nn.Module,
    student: nn.Module,
    decay: float,
    *,
    skip: Iterable[str] = (),
    copy_buffers: bool = True,
) -> None:
    """In-place EMA step of ``teacher`` towards ``student``.

    Args:
        teacher: the averaged copy (its parameters should not require grad).
        student: the trained model.
        decay: weight of the old teacher value (1 = frozen teacher, 0 = copy).
        skip: name prefixes left untouched (e.g. parts the teacher keeps fixed).
        copy_buffers: copy floating buffers (e.g. running stats) from the student.
    """
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"EMA decay must be in [0, 1], got {decay}")
    skip = tuple(skip)
    student_params = dict(student.named_parameters())
    t_list: list[torch.Tensor] = []
    s_list: list[torch.Tensor] = []
    for name, t in teacher.named_parameters():
        if name.startswith(skip) if skip else False:
            continue
        s = student_params.get(name)
        if s is None:
            raise ConfigError(f"EMA teacher parameter {name!r} has no counterpart in the student")
        if s.shape != t.shape:
            raise ConfigError(
                f"EMA parameter {name!r}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}"
            )
        if t.dtype.is_floating_point:
            t_list.append(t)
            s_list.append(s.detach().to(t.dtype))
    if t_list:
        # lerp: t + (1 - decay) * (s - t) == decay * t + (1 - decay) * s
        torch._foreach_lerp_(t_list, s_list, 1.0 - decay)
    if copy_buffers:
        student_buffers = dict(student.named_buffers())
        for name, buf in teacher.named_buffers():
            if skip and name.startswith(skip):
                continue
            src = student_buffers.get(name)
            if src is not None and src.shape == buf.shape:
                buf.copy_(src)
