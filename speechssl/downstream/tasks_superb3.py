"""SUPERB's ER and SF probing tasks, registered in :data:`speechssl.downstream.tasks.TASKS`.

====  ===============  ==========================================  ================
name  label file       head                                        metric
====  ===============  ==========================================  ================
er    ``utt2emotion``  projection + mean pooling + linear          ``acc``
sf    ``utt2slots``    projection + 2 x BiLSTM, CTC over characters ``slot_type_f1``
                       and slot tags
====  ===============  ==========================================  ================

ER (emotion recognition, IEMOCAP): 4 classes ``ang hap neu sad`` (``exc`` merged into
``hap`` by :mod:`speechssl.data.prep.iemocap`), cross-entropy, accuracy; SUPERB reports the
mean accuracy over 5 session folds (one run per fold root, :func:`fold_summary`).

SF (slot filling, Audio SNIPS): the ASR task's BiLSTM CTC head (:mod:`.asr`) over the
characters and the ``B-<slot>``/``E-<slot>`` tags of :mod:`.slots`; scored over a whole
split (greedy decoding) by slot-type F1 (picks the lr) and slot-value CER, plus the WER and
CER of the words.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from speechssl.data.prep.iemocap import EMOTIONS
from speechssl.data.prep.snips import SLOTS
from speechssl.downstream.asr import greedy_decode
from speechssl.downstream.metrics import edit_distance_counts
from speechssl.downstream.slots import (
    SlotVocabulary,
    is_tag,
    parse_tagged,
    plain_words,
    slot_type_f1,
    slot_value_cer,
)
from speechssl.downstream.tasks import (
    TASKS,
    ClassificationTask,
    CTCTask,
    ProbeLabelError,
    ProbeTaskSpec,
)
from speechssl.errors import ConfigError, LabelError


class EmotionRecognition(ClassificationTask):
    name = "er"
    label_file = "utt2emotion"
    description = "emotion recognition: neutral, happy (+excited), angry, sad (accuracy)"

    def parse(self, utt: str, value: str, where: str) -> str:
        label = value.strip()
        if label not in EMOTIONS:
            raise ProbeLabelError(
                utt, f"emotion {label!r} is not one of the task's classes "
                f"{', '.join(EMOTIONS)}", where,
            )  # fmt: skip
        return label

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        return list(EMOTIONS)  # all four, even if a fold's training set lacked one


class SlotFilling(CTCTask):
    name = "sf"
    ctc_tokens = "characters, word boundaries and slot tags"
    label_file = "utt2slots"
    metric = "slot_type_f1"
    mode = "max"
    description = "slot filling: BiLSTM CTC over characters and slot tags (slot-type F1)"
    pooled = True

    def __init__(self, vocab: SlotVocabulary | None = None) -> None:
        self.vocab = vocab

    def configured(self, task: Any, vocab: list[str]) -> ProbeTaskSpec:
        return SlotFilling(SlotVocabulary(vocab))

    def parse(self, utt: str, value: str, where: str) -> str:
        try:
            return " ".join(parse_tagged(value))
        except ValueError as err:
            raise ProbeLabelError(utt, f"bad tagged transcript: {err}", where) from None

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        """Blank, ``|``, the training transcripts' characters, then ``B-``/``E-`` of every
        slot in ``<root>/slots.txt`` (else of the slots the training labels use)."""
        path = root / SLOTS
        slots = None
        if path.is_file():
            slots = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            slots = [s for s in slots if s and s != "O"]
        return SlotVocabulary.build(train_labels, slots).tokens

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        unknown = sorted({t for t in label.split() if is_tag(t) and t not in vocab})
        if unknown:
            raise ProbeLabelError(
                utt, f"slot tag(s) {' '.join(unknown)} are not in the slot vocabulary (the "
                f"task root's {SLOTS}, else the training labels' slots)", where,
            )  # fmt: skip
        try:
            return SlotVocabulary(list(vocab)).encode(label, utt)
        except LabelError as err:
            raise ProbeLabelError(utt, err.reason, where) from None

    def outputs(self, out: tuple[Tensor, Tensor], utts: list[str]) -> dict[str, Any]:
        if self.vocab is None:
            raise ConfigError("the sf task was not configured with its vocabulary")
        return dict(zip(utts, greedy_decode(out[0], out[1], self.vocab)))

    def score_pooled(self, outputs: dict[str, Any], data_dir: Path) -> dict[str, float]:
        from speechssl.downstream.tasks import read_labels

        labels = read_labels(self, data_dir)
        utts = sorted(outputs)
        refs = [labels[u] for u in utts]
        hyps = [outputs[u] for u in utts]
        words = edit_distance_counts(
            [plain_words(r).split() for r in refs], [plain_words(h).split() for h in hyps]
        )
        chars = edit_distance_counts(
            [list(plain_words(r)) for r in refs], [list(plain_words(h)) for h in hyps]
        )
        return {
            "slot_type_f1": slot_type_f1(refs, hyps),
            "slot_value_cer": slot_value_cer(refs, hyps),
            "wer": words.rate,
            "cer": chars.rate,
        }


for _spec in (EmotionRecognition(), SlotFilling()):
    TASKS.add(_spec.name, _spec)


# --------------------------------------------------------------------------- ER folds

_FOLD = re.compile(r"^fold(\d+)$")


def fold_summary(exp_dirs: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Per-fold and mean test metric of one upstream's runs of a fold task (ER).

    Each run's ``results.json`` must name the same task and upstream (weights identity),
    and its data root must be a distinct ``fold<k>`` folder (as
    ``speechssl data prepare-iemocap`` writes them).
    """
    from speechssl.downstream.report import read_run

    if not exp_dirs:
        raise ConfigError("no fold runs given")
    folds: dict[int, dict[str, Any]] = {}
    first: dict[str, Any] | None = None
    for exp in exp_dirs:
        data = read_run(exp)
        m = _FOLD.match(Path(str(data.get("data", ""))).name)
        if m is None:
            raise ConfigError(
                f"{exp}: its data root {data.get('data')} is not a fold<k> folder "
                "(speechssl data prepare-iemocap writes OUT/fold1..fold5)"
            )
        k = int(m.group(1))
        if first is None:
            first = data
        for key in ("task", "upstream_identity", "metric"):
            if data.get(key) != first.get(key):
                raise ConfigError(
                    f"{exp}: {key} {data.get(key)!r} differs from the first run's "
                    f"{first.get(key)!r} (one upstream and task per summary)"
                )
        if k in folds:
            raise ConfigError(f"{exp}: fold{k} is also in {folds[k]['exp_dir']}")
        folds[k] = {"exp_dir": str(exp), "test": data["test"], "dev": data["dev"],
                    "lr": data["lr"]}  # fmt: skip
    assert first is not None
    values = [folds[k]["test"] for k in sorted(folds)]
    return {
        "task": first["task"],
        "upstream": first["upstream"],
        "metric": first["metric"],
        "folds": {str(k): folds[k] for k in sorted(folds)},
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "complete": sorted(folds) == [1, 2, 3, 4, 5],
    }


def fold_markdown(summary: dict[str, Any]) -> str:
    ks = list(summary["folds"])
    head = " | ".join(f"fold{k}" for k in ks)
    vals = " | ".join(_pct(summary["folds"][k]["test"]) for k in ks)
    lines = [
        f"| upstream | task | {head} | mean | std |",
        "|---|---|" + "---:|" * (len(ks) + 2),
        f"| {summary['upstream']} | {summary['task']} {summary['metric']} % | {vals} | "
        f"{_pct(summary['mean'])} | {_pct(summary['std'])} |",
    ]
    if not summary["complete"]:
        lines.append(f"\nonly folds {', '.join(ks)} of 1-5: not SUPERB's 5-fold mean")
    return "\n".join(lines) + "\n"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}" if math.isfinite(value) else "n/a"


def write_fold_summary(summary: dict[str, Any], out: str | os.PathLike[str]) -> None:
    from speechssl.utils.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(summary, indent=2, sort_keys=True) + "\n")
