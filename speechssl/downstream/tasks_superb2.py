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

from speechssl.data.prep.diarization import parse_activity
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


# --------------------------------------------------------------------------- SD

ACTIVITY_FILE = "utt2activity"


def activity_frames(
    duration: float, turns: Sequence[tuple[int, float, float]], frames: int, speakers: int
) -> Tensor:
    """``[frames, speakers]`` 0/1: frame f (centre ``(f + 0.5) * duration / frames``) is
    active for a speaker whose turn holds its centre."""
    centres = (torch.arange(frames, dtype=torch.float64) + 0.5) * (duration / frames)
    out = torch.zeros(frames, speakers)
    for k, start, end in turns:
        out[(centres >= start) & (centres < end), k] = 1.0
    return out


def frame_der_counts(ref: Tensor, hyp: Tensor) -> tuple[float, float, float, float]:
    """``(miss, false alarm, confusion, reference speech)`` in frames for one recording,
    ``ref``/``hyp`` ``[T, S]`` 0/1, under the speaker mapping (permutation) with the fewest
    errors (md-eval's definition, no collar, overlap scored)."""
    import itertools

    n_ref, n_hyp = ref.sum(1), hyp.sum(1)
    miss = float((n_ref - n_hyp).clamp(min=0).sum())
    fa = float((n_hyp - n_ref).clamp(min=0).sum())
    best = -1.0
    for perm in itertools.permutations(range(hyp.shape[1])):
        best = max(best, float((ref * hyp[:, list(perm)]).sum()))
    conf = float(torch.minimum(n_ref, n_hyp).sum()) - best
    return miss, fa, conf, float(n_ref.sum())


class LSTMDiarizationHead(nn.Module):
    """SUPERB SD: one LSTM layer (512 units) and a linear layer to per-speaker logits."""

    def __init__(self, in_dim: int, speakers: int = 2, hidden: int = 512) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True)
        self.out = nn.Linear(hidden, speakers)

    def forward(self, feats: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """-> ``(logits [N, T, S], frames [N])``."""
        packed = nn.utils.rnn.pack_padded_sequence(
            feats, frames.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=feats.shape[1]
        )
        return self.out(out).float(), frames


class SpeakerDiarization(ProbeTaskSpec):
    name = "sd"
    label_file = ACTIVITY_FILE
    metric = "der"
    mode = "min"
    description = "speaker diarization of 2-speaker recordings: LSTM + linear, PIT (DER)"
    speakers = 2

    def parse(self, utt: str, value: str, where: str) -> Any:
        try:
            duration, turns = parse_activity(value)
        except (ValueError, IndexError):
            raise ProbeLabelError(
                utt, f"cannot read {value.strip()!r} as '<duration> <spk>:<start>-<end> ...'",
                where,
            ) from None  # fmt: skip
        if duration <= 0 or any(not 0 <= a < b for _, a, b in turns):
            raise ProbeLabelError(utt, "a turn with end <= start or a duration <= 0", where)
        if len({s for s, _, _ in turns}) > self.speakers:
            raise ProbeLabelError(utt, f"more than {self.speakers} speakers", where)
        return duration, turns

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        return [f"speaker{k + 1}" for k in range(self.speakers)]

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        duration, turns = label
        order: dict[str, int] = {}
        for spk, _, _ in sorted(turns, key=lambda t: (t[1], t[0])):
            order.setdefault(spk, len(order))
        return duration, [(order[s], a, b) for s, a, b in turns]

    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        return LSTMDiarizationHead(in_dim, num_classes)

    def _targets(self, targets: list[Any], frames: Tensor, width: int) -> Tensor:
        out = torch.zeros(len(targets), width, self.speakers)
        for i, ((duration, turns), n) in enumerate(zip(targets, frames.tolist())):
            out[i, :n] = activity_frames(duration, turns, n, self.speakers)
        return out

    def _pit_bce(self, logits: Tensor, ref: Tensor, frames: Tensor) -> Tensor:
        """Per recording: the summed BCE over its frames under the better of the two
        speaker orders."""
        from speechssl.downstream.heads import frame_mask

        mask = frame_mask(frames, logits.shape[1]).unsqueeze(-1).to(logits.dtype)
        per = []
        for perm in ([0, 1], [1, 0]):
            bce = F.binary_cross_entropy_with_logits(logits, ref[..., perm], reduction="none")
            per.append((bce * mask).sum((1, 2)))
        return torch.stack(per).min(0).values

    def loss(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        logits = out[0]
        ref = self._targets(targets, frames.cpu(), logits.shape[1]).to(logits.device)
        loss = self._pit_bce(logits, ref, frames).sum() / (frames.sum() * self.speakers)
        return loss, {"loss": loss.detach()}

    def score(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[dict[str, float], float]:
        logits = out[0]
        ref = self._targets(targets, frames.cpu(), logits.shape[1])
        hyp = (logits.detach().cpu() > 0).float()
        sums = {"der": 0.0, "miss": 0.0, "fa": 0.0, "conf": 0.0}
        speech = 0.0
        for i, n in enumerate(frames.tolist()):
            miss, fa, conf, total = frame_der_counts(ref[i, :n], hyp[i, :n])
            sums["der"] += miss + fa + conf
            sums["miss"] += miss
            sums["fa"] += fa
            sums["conf"] += conf
            speech += total
        bce = self._pit_bce(logits, ref.to(logits.device), frames)
        sums["loss"] = float(bce.sum()) / self.speakers  # summed BCE, per reference frame
        return sums, speech


TASKS.add(SpeakerDiarization.name, SpeakerDiarization())
