"""More SUPERB probing tasks, registered in :data:`speechssl.downstream.tasks.TASKS`.

====  ===============  ==========================================  ========
name  label file       head                                        metric
====  ===============  ==========================================  ========
ic    ``utt2intent``   projection + mean pooling + linear per slot ``acc``
====  ===============  ==========================================  ========

IC (intent classification, Fluent Speech Commands): an ``utt2intent`` line is
``<utt> <action>|<object>|<location>`` (a slot value may hold spaces, never ``|``). The
vocabulary is every ``<slot>=<value>`` seen in training, sorted, so each slot's classes are
one contiguous block of the head's output; the loss is the sum of the three slots'
cross-entropies and an utterance counts as right only when all three slots are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.data.prep.fluent_speech_commands import INTENT_SLOTS, SLOT_SEP
from speechssl.downstream.heads import MeanPoolClassifier
from speechssl.downstream.tasks import TASKS, ProbeLabelError, ProbeTaskSpec


class IntentClassification(ProbeTaskSpec):
    name = "ic"
    label_file = "utt2intent"
    metric = "acc"
    mode = "max"
    description = "intent classification: action, object, location (accuracy, all slots right)"

    def parse(self, utt: str, value: str, where: str) -> tuple[str, ...]:
        parts = tuple(p.strip() for p in value.strip().split(SLOT_SEP))
        if len(parts) != len(INTENT_SLOTS) or not all(parts):
            raise ProbeLabelError(
                utt, f"intent {value.strip()!r} is not "
                f"{SLOT_SEP.join('<' + s + '>' for s in INTENT_SLOTS)} with no empty slot",
                where,
            )  # fmt: skip
        return parts

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        return sorted({f"{slot}={v}" for lab in train_labels for slot, v in zip(INTENT_SLOTS, lab)})

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        """-> per slot ``(first, end, index within the slot)`` of the head's output block."""
        out = []
        for slot, value in zip(INTENT_SLOTS, label):
            key = f"{slot}={value}"
            if key not in vocab:
                raise ProbeLabelError(
                    utt, f"{slot} {value!r} does not occur in the training set's "
                    f"{self.label_file}", where,
                )  # fmt: skip
            block = [i for k, i in vocab.items() if k.startswith(f"{slot}=")]
            first, end = min(block), max(block) + 1
            out.append((first, end, vocab[key] - first))
        return tuple(out)

    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        # one linear over all slots' classes = a linear per slot (disjoint output blocks)
        return MeanPoolClassifier(in_dim, num_classes, proj_dim)

    @staticmethod
    def _slots(out: Tensor, targets: list[Any]) -> list[tuple[Tensor, Tensor]]:
        """Per slot: ``(logits [N, C_slot], target [N])``."""
        res = []
        for s in range(len(INTENT_SLOTS)):
            first, end, _ = targets[0][s]
            y = torch.tensor([t[s][2] for t in targets], device=out.device)
            res.append((out[:, first:end], y))
        return res

    def loss(
        self, out: Tensor, targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        slots = self._slots(out, targets)
        loss = sum((F.cross_entropy(lg, y) for lg, y in slots), torch.zeros((), device=out.device))
        right = torch.stack([lg.argmax(-1) == y for lg, y in slots]).all(0)
        return loss, {"loss": loss.detach(), "acc": right.float().mean().detach()}

    def score(
        self, out: Tensor, targets: list[Any], frames: Tensor
    ) -> tuple[dict[str, float], float]:
        slots = self._slots(out, targets)
        loss = sum(float(F.cross_entropy(lg, y, reduction="sum")) for lg, y in slots)
        right = torch.stack([lg.argmax(-1) == y for lg, y in slots]).all(0)
        sums = {"acc": float(right.sum()), "loss": loss}
        for slot, (lg, y) in zip(INTENT_SLOTS, slots):
            sums[f"acc_{slot}"] = float((lg.argmax(-1) == y).sum())
        return sums, float(len(targets))


for _spec in (IntentClassification(),):
    TASKS.add(_spec.name, _spec)
