"""DINO: self-distillation with no labels (Caron et al. 2021), modality-free.

A student and an EMA teacher (:class:`speechssl.core.teacher.EMATeacher`) both map each view
of a batch to ``K`` logits (a :class:`speechssl.core.heads.DINOHead`). The teacher's logits
are centred (a running mean of the teacher's outputs, momentum 0.9) and sharpened (teacher
temperature 0.04), the student's are softened (student temperature 0.1), and the loss is
the cross-entropy from every teacher view to every *other* student view.

* :func:`dino_loss` - the cross-entropy, averaged over view pairs and items;
* :func:`dino_center` - the next centre from the teacher logits of a batch;
* :func:`teacher_temperature` - DINO's linear warmup of the teacher temperature;
* :class:`DINOObjective` - holds the centre (a buffer, so checkpoints resume it) and the
  temperatures; returns a :class:`~speechssl.core.loss.LossRecord`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.loss import LossRecord
from speechssl.core.objectives.gather import mean_over_ranks
from speechssl.errors import ConfigError


def _views(x: Tensor, what: str) -> Tensor:
    if x.dim() != 3:
        raise ValueError(f"DINO {what} logits must be [V, N, K], got {tuple(x.shape)}")
    return x.double() if x.dtype == torch.float64 else x.float()


def dino_loss(
    student: Tensor,
    teacher: Tensor,
    center: Tensor,
    *,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """DINO's cross-entropy.

    Args:
        student: ``[Vs, N, K]`` student logits of ``Vs`` views (the first ``Vt`` are the
            views the teacher also saw, in the same order; extra ones are local crops).
        teacher: ``[Vt, N, K]`` teacher logits (no gradient flows into them).
        center: ``[K]`` (or broadcastable) running centre subtracted from the teacher logits.
        student_temp, teacher_temp: softmax temperatures (0.1 and 0.04 in DINO).

    Returns:
        scalar: ``-sum_k p_t log p_s`` averaged over items and over the pairs (teacher view
        ``i``, student view ``j``) with ``i != j``.
    """
    s = _views(student, "student")
    t = _views(teacher, "teacher").detach()
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(
            f"DINO student {tuple(s.shape)} and teacher {tuple(t.shape)} differ in [N, K]"
        )
    vt, vs = t.shape[0], s.shape[0]
    if vs < vt:
        raise ValueError(f"DINO: {vs} student views but {vt} teacher views")
    pairs = vt * vs - vt
    if pairs == 0:
        raise ValueError("DINO needs at least two views (the same view is never its own target)")
    p_t = F.softmax((t - center.to(t.dtype)) / teacher_temp, dim=-1)
    log_p_s = F.log_softmax(s / student_temp, dim=-1)
    # [Vt, Vs] cross-entropies summed over items; pairs of the same view left out
    ce = -torch.einsum("tnk,snk->ts", p_t, log_p_s)
    same = torch.eye(vt, vs, dtype=torch.bool, device=ce.device)
    return ce.masked_fill(same, 0.0).sum() / (pairs * s.shape[1])


@torch.no_grad()
def dino_center(
    center: Tensor, teacher: Tensor, momentum: float = 0.9, gather_distributed: bool = False
) -> Tensor:
    """``momentum * center + (1 - momentum) * mean of the teacher logits [V, N, K]`` over
    views and items (and over ranks with ``gather_distributed``, as DINO's all-reduce)."""
    batch_center = teacher.detach().float().mean(dim=(0, 1))
    if gather_distributed:
        batch_center = mean_over_ranks(batch_center)
    return center * momentum + batch_center.to(center.dtype) * (1.0 - momentum)


def teacher_temperature(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear warmup of the teacher temperature from ``start`` to ``end`` over
    ``warmup_steps`` updates, then ``end`` (DINO warms 0.04 -> 0.07 for long runs)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


class DINOObjective(nn.Module):
    """DINO's loss with its centre and temperatures.

    Args:
        out_dim: ``K``, the number of head outputs (the centre's size).
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature after warmup (0.04).
        warmup_teacher_temp: teacher temperature at step 0 (0.04: no warmup).
        warmup_steps: updates of the linear warmup.
        center_momentum: momentum of the centre (0.9).
        gather_distributed: average the centre's batch mean over ranks (off by default).

    ``forward(student [Vs, N, K], teacher [Vt, N, K], step)`` returns the record (term
    ``dino``) and, in training mode, moves the centre afterwards.
    """

    def __init__(
        self,
        out_dim: int,
        *,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_steps: int = 0,
        center_momentum: float = 0.9,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed
        for name, value in (
            ("student_temp", student_temp),
            ("teacher_temp", teacher_temp),
            ("warmup_teacher_temp", warmup_teacher_temp),
        ):
            if value <= 0:
                raise ConfigError(f"DINO {name} must be > 0, got {value}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ConfigError(f"DINO center_momentum must be in [0, 1], got {center_momentum}")
        if out_dim < 2 or warmup_steps < 0:
            raise ConfigError(f"DINO needs out_dim >= 2 and warmup_steps >= 0, got {out_dim}, {warmup_steps}")  # fmt: skip
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_steps = warmup_steps
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    center: Tensor

    def forward(self, student: Tensor, teacher: Tensor, step: int = 0) -> LossRecord:
        temp = teacher_temperature(
            step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_steps
        )
        loss = dino_loss(
            student, teacher, self.center, student_temp=self.student_temp, teacher_temp=temp
        )
        if self.training:
            self.center.copy_(
                dino_center(self.center, teacher, self.center_momentum, self.gather_distributed)
            )
        return LossRecord(
            total=loss, terms={"dino": loss}, weights={"dino": 1.0}, sample_size=student.shape[1]
        )


__all__ = ["DINOObjective", "dino_center", "dino_loss", "teacher_temperature"]
