"""Probing tasks and the probe :class:`~speechssl.train.task.TrainTask`.

A task (registered in :data:`TASKS`) says which label file it reads, how a label is parsed,
which head it trains, its loss and its metric (name and direction):

====  ===============  ==========================================  ========
name  label file       head                                        metric
====  ===============  ==========================================  ========
pr    ``utt2phones``   projection + linear, CTC over phones        ``per``
asr   ``text``         projection + 2 x BiLSTM, CTC over characters ``wer``
ks    ``utt2keyword``  projection + mean pooling + linear          ``acc``
sid   ``utt2spk``      projection + mean pooling + linear          ``acc``
asv   ``utt2spk``      x-vector TDNN + AM-softmax; cosine trials   ``eer``
====  ===============  ==========================================  ========

ASV scores whole splits at once (:attr:`ProbeTaskSpec.pooled`): every utterance's
embedding is gathered from all ranks, then the split's ``trials`` file is scored.

:class:`ProbeTask` trains the featurizer and head on a task's ``train`` split with
:class:`~speechssl.train.trainer.TrainLoop` (its checkpoints, resume, logs, DDP), either from
cached layers (:mod:`speechssl.downstream.cache`) or with the frozen upstream run on every
batch. Batches are bucketed by length (padded frames per batch bounded). Bad input is
refused naming the utterance: a missing label, an empty transcript, a dev/test class the
training set does not have, an utterance shorter (in upstream frames) than its phone
sequence, a cache that lacks an utterance or was made from another upstream.
"""

from __future__ import annotations

import abc
import itertools
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl import distributed as dist
from speechssl.distributed import DistEnv
from speechssl.downstream.asr import (
    BLANK,
    WORD_BOUNDARY,
    BiLSTMCTCHead,
    CharVocabulary,
    beam_decode,
    ctc_loss,
    greedy_decode,
)
from speechssl.downstream.asv import (
    XVECTOR_LAYERS,
    AMSoftmaxLoss,
    XVectorHead,
    read_trials,
    score_trials,
)
from speechssl.downstream.featurizer import Featurizer
from speechssl.downstream.heads import LinearCTCHead, MeanPoolClassifier
from speechssl.downstream.metrics import accuracy, edit_distance_counts, equal_error_rate, min_dcf
from speechssl.downstream.upstreams import Upstream
from speechssl.errors import ConfigError, ItemError
from speechssl.registry import Registry
from speechssl.train.task import BatchInfo, StepOutput

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


class ProbeLabelError(ItemError):
    """A probing label is missing, empty, or not a class the head was trained on."""

    kind = "probe-label"


# --------------------------------------------------------------------------- tasks


class ProbeTaskSpec(abc.ABC):
    """A probing task (subclass and register in :data:`TASKS`)."""

    name: str = ""
    label_file: str = ""
    metric: str = ""
    mode: str = "max"  # which direction of the metric is better
    description: str = ""
    pooled: bool = False
    """The metric is computed over a whole split (:meth:`score_pooled`), not summed over
    batches (:meth:`score`)."""

    def configured(self, task: Any, vocab: list[str]) -> ProbeTaskSpec:
        """The spec for one run (``task``: its :class:`ProbeTaskConfig`); most tasks have
        no per-run settings."""
        return self

    def check_data(self, root: Path, labels: dict[str, dict[str, Any]]) -> None:
        """Refuse a task root whose extra files disagree with its labels (e.g. trials);
        most tasks have no extra files (nothing to check)."""
        return None

    def parse(self, utt: str, value: str, where: str) -> Any:
        value = value.strip()
        if not value:
            raise ProbeLabelError(utt, f"empty label in {self.label_file}", where)
        return value

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        """The label vocabulary, from the training labels (``root``: the task root)."""
        return sorted(set(train_labels))

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        if label not in vocab:
            raise ProbeLabelError(
                utt, f"class {label!r} does not occur in the training set's {self.label_file}",
                where,
            )  # fmt: skip
        return vocab[label]

    def check_frames(self, utt: str, frames: int, target: Any) -> None:
        """Refuse an utterance whose upstream frame count cannot carry its label."""
        if frames < 1:
            raise ProbeLabelError(utt, "the upstream gives no frames for this utterance")

    @abc.abstractmethod
    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        """The trained head on top of the featurizer."""

    @abc.abstractmethod
    def loss(
        self, out: Any, targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean loss of a batch and training scalars."""

    def score(self, out: Any, targets: list[Any], frames: Tensor) -> tuple[dict[str, float], float]:
        """``(sums, weight)`` for the metric: ``sums[metric] / weight`` is the metric
        (tasks with ``pooled = False``)."""
        raise NotImplementedError(f"{self.name} is scored over whole splits (pooled)")

    def outputs(self, out: Any, utts: list[str]) -> dict[str, Any]:
        """Per-utterance outputs kept for :meth:`score_pooled` (pooled tasks only)."""
        raise NotImplementedError(f"{self.name} is scored per batch (not pooled)")

    def score_pooled(self, outputs: dict[str, Any], data_dir: Path) -> dict[str, float]:
        """Metrics of a whole split from every utterance's output (pooled tasks only)."""
        raise NotImplementedError(f"{self.name} is scored per batch (not pooled)")


TASKS: Registry[ProbeTaskSpec] = Registry("probing task")


class ClassificationTask(ProbeTaskSpec):
    metric = "acc"
    mode = "max"

    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        return MeanPoolClassifier(in_dim, num_classes, proj_dim)

    def loss(
        self, out: Tensor, targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        y = torch.tensor(targets, device=out.device)
        loss = F.cross_entropy(out, y)
        acc = (out.argmax(-1) == y).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc.detach()}

    def score(
        self, out: Tensor, targets: list[Any], frames: Tensor
    ) -> tuple[dict[str, float], float]:
        y = torch.tensor(targets, device=out.device)
        loss = F.cross_entropy(out, y, reduction="sum")
        correct = accuracy(y, out.argmax(-1)) * len(targets)
        return {"acc": correct, "loss": float(loss)}, float(len(targets))


class KeywordSpotting(ClassificationTask):
    name = "ks"
    label_file = "utt2keyword"
    description = "keyword spotting: 10 words + _unknown_ + _silence_ (accuracy)"


class SpeakerIdentification(ClassificationTask):
    name = "sid"
    label_file = "utt2spk"
    description = "speaker identification (accuracy)"


class PhoneRecognition(ProbeTaskSpec):
    name = "pr"
    label_file = "utt2phones"
    metric = "per"
    mode = "min"
    description = "phone recognition: linear CTC head (phone error rate)"
    blank = "<blank>"

    def parse(self, utt: str, value: str, where: str) -> list[str]:
        phones = value.split()
        if not phones:
            raise ProbeLabelError(utt, f"empty phone sequence in {self.label_file}", where)
        return phones

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        """Blank, then the phone inventory: ``<root>/phones.txt`` (``symbol [id]`` lines;
        the task's full phone set) if present, else the phones of the training labels."""
        inventory = root / "phones.txt"
        if inventory.is_file():
            phones = [
                line.split()[0] for line in inventory.read_text().splitlines() if line.strip()
            ]
            if self.blank in phones or len(set(phones)) != len(phones):
                raise ConfigError(f"{inventory}: repeated phones or the reserved {self.blank}")
            return [self.blank, *phones]
        return [self.blank, *sorted({p for seq in train_labels for p in seq})]

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        unknown = sorted({p for p in label if p not in vocab})
        if unknown:
            raise ProbeLabelError(
                utt, f"phone(s) {', '.join(unknown)} are not in the phone inventory "
                "(the task root's phones.txt, else the training set's phones)", where,
            )  # fmt: skip
        return [vocab[p] for p in label]

    def check_frames(self, utt: str, frames: int, target: Any) -> None:
        if frames < len(target):
            raise ProbeLabelError(
                utt, f"the upstream gives {frames} frames for {len(target)} phones; CTC needs "
                "at least one frame per phone (wrong labels for this audio, or an upstream "
                "with too low a frame rate)",
            )  # fmt: skip

    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        return LinearCTCHead(in_dim, num_classes, proj_dim)

    def _ctc(self, out: tuple[Tensor, Tensor], targets: list[Any], reduction: str) -> Tensor:
        log_probs, frames = out
        flat = torch.tensor([t for seq in targets for t in seq], device=log_probs.device)
        target_lengths = torch.tensor([len(seq) for seq in targets], device=log_probs.device)
        return F.ctc_loss(
            log_probs.transpose(0, 1), flat, frames, target_lengths, blank=0,
            reduction=reduction, zero_infinity=False,
        )  # fmt: skip

    def loss(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self._ctc(out, targets, "mean")
        return loss, {"loss": loss.detach()}

    @staticmethod
    def greedy(log_probs: Tensor, frames: Tensor) -> list[list[int]]:
        """Best path: argmax per frame, repeats merged, blanks (0) dropped."""
        best = log_probs.argmax(-1).cpu()
        out = []
        for i, n in enumerate(frames.tolist()):
            seq = torch.unique_consecutive(best[i, :n]).tolist()
            out.append([t for t in seq if t != 0])
        return out

    def score(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[dict[str, float], float]:
        hyps = self.greedy(out[0], frames)
        counts = edit_distance_counts(
            [[str(p) for p in r] for r in targets], [[str(p) for p in h] for h in hyps]
        )
        edits = counts.errors
        loss = float(self._ctc(out, targets, "sum"))
        ref_len = float(sum(len(r) for r in targets))
        # every value is divided by the reference length: per = edits / phones
        return {"per": float(edits), "loss": loss}, ref_len


class CTCTask(ProbeTaskSpec):
    """A BiLSTM CTC head (:class:`BiLSTMCTCHead`; projection and LSTM width ``task.proj_dim``)
    over token sequences: ASR (characters) and SF (characters and slot tags)."""

    #: what the target's tokens are, for the too-few-frames error
    ctc_tokens = "characters and word boundaries"

    def check_frames(self, utt: str, frames: int, target: Any) -> None:
        # CTC needs a frame per token and a blank between two equal neighbours
        need = len(target) + sum(1 for a, b in itertools.pairwise(target) if a == b)
        if frames < need:
            raise ProbeLabelError(
                utt, f"the upstream gives {frames} frames for {len(target)} {self.ctc_tokens}; "
                f"CTC needs at least {need}",
            )  # fmt: skip

    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        return BiLSTMCTCHead(in_dim, num_classes, hidden=proj_dim, proj_dim=proj_dim)

    def loss(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss = ctc_loss(out[0], out[1], targets)
        return loss, {"loss": loss.detach()}


class SpeechRecognition(CTCTask):
    """SUPERB ASR: a 2-layer BiLSTM CTC head over characters (:mod:`.asr`), scored by WER.

    The head's projection and LSTM width are ``task.proj_dim`` (SUPERB: 1024 for both).
    Decoding is greedy unless ``task.lexicon`` is set: then flashlight's lexicon beam
    search (with ``task.lm``, a KenLM model, if given) decodes dev and test.
    """

    name = "asr"
    label_file = "text"
    metric = "wer"
    mode = "min"
    description = "speech recognition: BiLSTM CTC over characters (word error rate)"

    def __init__(self, vocab: CharVocabulary | None = None, beam: dict[str, Any] | None = None):
        self.vocab = vocab
        self.beam = beam

    def configured(self, task: Any, vocab: list[str]) -> ProbeTaskSpec:
        beam = None
        if task.lexicon:
            beam = {
                "lexicon": task.lexicon, "lm": task.lm or None, "beam_size": task.beam_size,
                "lm_weight": task.lm_weight, "word_score": task.word_score,
            }  # fmt: skip
        return SpeechRecognition(CharVocabulary(vocab), beam)

    def parse(self, utt: str, value: str, where: str) -> str:
        text = " ".join(value.split())
        if not text:
            raise ProbeLabelError(utt, "empty transcript in text", where)
        return text

    def classes(self, train_labels: Sequence[Any], root: Path) -> list[str]:
        """Blank, the word boundary ``|``, then the characters: ``<root>/chars.txt`` (one
        per line; the task's full character set) if present, else the training
        transcripts' characters."""
        inventory = root / "chars.txt"
        if inventory.is_file():
            chars = [ln.strip() for ln in inventory.read_text().splitlines() if ln.strip()]
            return CharVocabulary([BLANK, WORD_BOUNDARY, *chars]).tokens
        return CharVocabulary.from_texts(train_labels).tokens

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        unknown = sorted({c for c in label if not c.isspace() and vocab.get(c, 0) < 2})
        if unknown:
            raise ProbeLabelError(
                utt, f"character(s) {' '.join(unknown)} are not in the character vocabulary "
                "(the task root's chars.txt, else the training transcripts)", where,
            )  # fmt: skip
        return CharVocabulary(list(vocab)).encode(label, utt)

    def decode(self, out: tuple[Tensor, Tensor]) -> list[str]:
        if self.vocab is None:
            raise ConfigError("the asr task was not configured with its vocabulary")
        if self.beam is None:
            return greedy_decode(out[0], out[1], self.vocab)
        return beam_decode(out[0], out[1], self.vocab, **self.beam)

    def score(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[dict[str, float], float]:
        assert self.vocab is not None
        hyps = self.decode(out)
        refs = [self.vocab.decode(t) for t in targets]
        words = edit_distance_counts([r.split() for r in refs], [h.split() for h in hyps])
        chars = edit_distance_counts([list(r) for r in refs], [list(h) for h in hyps])
        loss = float(ctc_loss(out[0], out[1], targets)) * len(targets)
        # wer = word edits / reference words; cer and loss share that weight, so they are
        # rescaled here to come out per character and per utterance
        w = float(words.ref_length)
        return {
            "wer": float(words.errors),
            "cer": chars.errors / chars.ref_length * w,
            "loss": loss / len(targets) * w,
        }, w


class SpeakerEmbeddingHead(nn.Module):
    """SUPERB ASV's trained part: x-vector embedding + AM-softmax over training speakers.

    ``forward(feats, frames) -> (embeddings [N, E], cosines to each speaker [N, S])``.
    """

    def __init__(self, in_dim: int, num_speakers: int, proj_dim: int) -> None:
        super().__init__()
        self.xvector = XVectorHead(in_dim, proj_dim=proj_dim)
        self.amsoftmax = AMSoftmaxLoss(self.xvector.embed_dim, num_speakers)

    def forward(self, feats: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.xvector(feats, frames)
        return emb, self.amsoftmax.cosine(emb)


class SpeakerVerification(ProbeTaskSpec):
    """SUPERB ASV: x-vector + AM-softmax (s 30, m 0.4) trained on the ``train`` speakers;
    ``dev`` and ``test`` hold other speakers and a Kaldi ``trials`` file each, scored by the
    cosine of the two utterances' embeddings. Metrics: EER (picks the lr) and minDCF
    (p_target 0.01)."""

    name = "asv"
    label_file = "utt2spk"
    metric = "eer"
    mode = "min"
    description = "speaker verification: x-vector + AM-softmax, cosine trials (EER, minDCF)"
    pooled = True
    min_frames = sum((context - 1) * dilation for context, dilation, _ in XVECTOR_LAYERS) + 1

    def check_data(self, root: Path, labels: dict[str, dict[str, Any]]) -> None:
        speakers = set(labels["train"].values())
        if len(speakers) < 2:
            raise ConfigError(f"{root / 'train'}: asv needs at least 2 training speakers")
        for split in ("dev", "test"):
            read_trials(root / split / "trials", known_utts=labels[split])

    def encode(self, utt: str, label: Any, vocab: dict[str, int], where: str) -> Any:
        # dev/test speakers are held out: only training utterances have a class
        return vocab.get(label, -1)

    def check_frames(self, utt: str, frames: int, target: Any) -> None:
        if frames < self.min_frames:
            raise ProbeLabelError(
                utt, f"the upstream gives {frames} frames; the x-vector TDNN needs at least "
                f"{self.min_frames}",
            )  # fmt: skip

    def build_head(self, in_dim: int, num_classes: int, proj_dim: int) -> nn.Module:
        return SpeakerEmbeddingHead(in_dim, num_classes, proj_dim)

    def loss(
        self, out: tuple[Tensor, Tensor], targets: list[Any], frames: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        _, cos = out
        y = torch.tensor(targets, device=cos.device)
        loss = AMSoftmaxLoss.loss_from_cosine(cos, y)
        return loss, {"loss": loss.detach()}

    def outputs(self, out: tuple[Tensor, Tensor], utts: list[str]) -> dict[str, Any]:
        emb = out[0].detach().float().cpu()
        return {u: emb[i] for i, u in enumerate(utts)}

    def score_pooled(self, outputs: dict[str, Any], data_dir: Path) -> dict[str, float]:
        trials = read_trials(data_dir / "trials", known_utts=outputs)
        scores, labels = score_trials(outputs, trials)
        eer, _ = equal_error_rate(scores, labels)
        return {"eer": eer, "min_dcf": min_dcf(scores, labels, p_target=0.01)}


for _spec in (
    PhoneRecognition(), SpeechRecognition(), KeywordSpotting(), SpeakerIdentification(),
    SpeakerVerification(),
):  # fmt: skip
    TASKS.add(_spec.name, _spec)


def get_task(name: str) -> ProbeTaskSpec:
    if name not in TASKS:
        raise ConfigError(
            f"task.name={name}: no such probing task; tasks: {', '.join(TASKS.names())}"
        )
    return TASKS.get(name)


# --------------------------------------------------------------------------- data


@dataclass
class ProbeSplit:
    """One split of a task: its utterances, encoded targets and frame counts."""

    name: str
    data_dir: Path
    utts: list[str]
    targets: dict[str, Any]
    frames: dict[str, int] = field(default_factory=dict)
    """Upstream frames per utterance (exact from a cache; estimated from durations when
    the upstream runs on every batch)."""
    cache: Any = None
    """The :class:`~speechssl.downstream.cache.LayerCache` when training from cache."""


def read_labels(spec: ProbeTaskSpec, data_dir: Path) -> dict[str, Any]:
    """Every utterance's parsed label; a missing label file or label is an error."""
    from speechssl.data.kaldi_dir import KaldiDataDir
    from speechssl.data.tables import iter_table

    path = data_dir / spec.label_file
    if not path.is_file():
        raise ConfigError(
            f"{data_dir}: no {spec.label_file} (task {spec.name} needs one label per utterance)"
        )
    labels: dict[str, Any] = {}
    for lineno, utt, value in iter_table(path):
        labels[utt] = spec.parse(utt, value, f"{path}:{lineno}")
    utts = KaldiDataDir(data_dir).utt_ids()
    missing = [u for u in utts if u not in labels]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ProbeLabelError(missing[0], f"no label in {path}{more}")
    return {u: labels[u] for u in utts}


def load_task_data(spec: ProbeTaskSpec, root: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``(vocabulary, {split: {utt: encoded target}})`` of a task data root."""
    raw: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            raise ConfigError(
                f"data.dir={root}: no {split}/ data dir (a task root holds train/, dev/, test/)"
            )
        raw[split] = read_labels(spec, d)
    spec.check_data(root, raw)
    vocab = spec.classes(list(raw["train"].values()), root)
    index = {c: i for i, c in enumerate(vocab)}
    encoded = {
        split: {
            u: spec.encode(u, lab, index, str(root / split / spec.label_file))
            for u, lab in labels.items()
        }
        for split, labels in raw.items()
    }
    return vocab, encoded


def plan_batches(lengths: dict[str, int], max_frames: int, max_utts: int) -> list[list[str]]:
    """Length-bucketed batches: utterances sorted by length, packed while the padded size
    (longest x count) stays within ``max_frames`` and ``max_utts``."""
    order = sorted(lengths, key=lambda u: (lengths[u], u))
    batches: list[list[str]] = []
    cur: list[str] = []
    for u in order:
        if cur and (lengths[u] * (len(cur) + 1) > max_frames or len(cur) >= max_utts):
            batches.append(cur)
            cur = []
        cur.append(u)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class ProbeBatch:
    """A micro-batch: stacked hidden states ``[N, T, L, D]`` and frame counts."""

    epoch: int
    index: int
    utt_ids: list[str]
    feats: Tensor
    frames: Tensor
    targets: list[Any]


class ProbeModel(nn.Module):
    """What is trained: the featurizer and the head (the upstream stays outside, frozen)."""

    def __init__(self, featurizer: Featurizer, head: nn.Module) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.head = head

    def forward(self, feats: Tensor, frames: Tensor) -> Any:
        return self.head(self.featurizer(feats), frames)


class ProbeTask:
    """A probing run of one task, upstream and learning rate, for :class:`TrainLoop`.

    Args:
        spec: the task.
        upstream: the frozen upstream.
        layers: indices of the hidden states available (all, or a cache's subset).
        vocab: the label vocabulary.
        splits: ``train`` and ``dev`` (and ``test``) splits.
        env: this process's place in the world.
        seed: seed of the head's initialisation and the batch order.
        layer: one hidden state to probe, or None for the weighted sum.
        feature_stats: per-layer ``(mean, std)`` of the training split (raw upstreams).
    """

    def __init__(
        self,
        spec: ProbeTaskSpec,
        upstream: Upstream,
        layers: list[int],
        vocab: list[str],
        splits: dict[str, ProbeSplit],
        env: DistEnv,
        *,
        seed: int,
        layer: int | None,
        layer_norm: bool,
        proj_dim: int,
        max_batch_frames: int,
        max_batch_utts: int,
        grad_accum: int = 1,
        feature_stats: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.spec, self.upstream, self.layers, self.vocab = spec, upstream, layers, vocab
        self.splits, self.env, self.seed = splits, env, seed
        self.device = env.device
        self.max_batch_frames, self.max_batch_utts = max_batch_frames, max_batch_utts
        self.grad_accum = grad_accum
        self._dirs: dict[str, Any] = {}  # split -> KaldiDataDir (uncached mode)
        torch.manual_seed(seed)
        featurizer = Featurizer(layers, layer, layer_norm, feature_stats)
        head = spec.build_head(upstream.dim, len(vocab), proj_dim)
        self.model: nn.Module = ProbeModel(featurizer, head).to(self.device)
        self.sample_rate = max(1, round(upstream.frame_rate))  # lengths are in frames
        self.model_name = f"probe-{spec.name}"
        self.settings = {"layer": layer, "layer_norm": layer_norm, "proj_dim": proj_dim}
        self._plans: dict[str, list[list[str]]] = {
            name: plan_batches(s.frames, max_batch_frames, max_batch_utts)
            for name, s in splits.items()
        }

    # batches ---------------------------------------------------------------------------

    def _epoch_plan(self, epoch: int) -> list[list[str]]:
        plan = list(self._plans["train"])
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(plan))
        plan = [plan[i] for i in order]
        unit = self.env.world_size * self.grad_accum  # whole steps on every rank
        pad = (-len(plan)) % unit
        plan += [plan[i % len(plan)] for i in range(pad)]
        return plan[self.env.rank :: self.env.world_size]

    def batches_per_rank(self, epoch: int) -> int:
        return len(self._epoch_plan(epoch))

    def batches(self, epoch: int, start: int) -> Iterator[ProbeBatch]:
        for i, utts in enumerate(self._epoch_plan(epoch)):
            if i >= start:
                yield self.make_batch(self.splits["train"], utts, epoch, i)

    def make_batch(self, split: ProbeSplit, utts: list[str], epoch: int, index: int) -> ProbeBatch:
        if split.cache is not None:
            arrays = [split.cache.get(u) for u in utts]
            frames = torch.tensor([a.shape[0] for a in arrays])
            width = int(frames.max())
            # kept in the cache's dtype (float16 halves the copy); forward() upcasts
            dtype = torch.float16 if arrays[0].dtype == np.float16 else torch.float32
            feats = torch.zeros(len(utts), width, len(self.layers), self.upstream.dim, dtype=dtype)
            for i, a in enumerate(arrays):
                feats[i, : a.shape[0]] = torch.from_numpy(np.array(a))  # memmap -> RAM
        else:
            feats, frames = self._run_upstream(split, utts)
        targets = [split.targets[u] for u in utts]
        for u, f, t in zip(utts, frames.tolist(), targets):
            self.spec.check_frames(u, int(f), t)
        return ProbeBatch(epoch, index, list(utts), feats, frames, targets)

    def _run_upstream(self, split: ProbeSplit, utts: list[str]) -> tuple[Tensor, Tensor]:
        from speechssl.data.audio import LoadOptions
        from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance

        ddir = self._dirs.get(split.name)
        if ddir is None:
            ddir = self._dirs[split.name] = KaldiDataDir(split.data_dir)
        waves = [
            load_utterance(ddir, u, LoadOptions(sample_rate=self.upstream.sample_rate))[0]
            for u in utts
        ]
        lengths = torch.tensor([len(w) for w in waves])
        padded = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            padded[i, : len(w)] = w
        out = self.upstream(padded, lengths, self.layers)
        return torch.stack(out.hidden_states, dim=2).float(), out.frames.cpu()

    def info(self, batch: ProbeBatch) -> BatchInfo:
        return BatchInfo(
            index=batch.index,
            utt_ids=batch.utt_ids,
            lengths=batch.frames,
            padded_samples=int(batch.feats.shape[0] * batch.feats.shape[1]),
            loaded_samples=int(batch.frames.sum()),
        )

    # steps -----------------------------------------------------------------------------

    def forward(self, module: nn.Module, batch: ProbeBatch) -> StepOutput:
        feats = batch.feats.to(self.device, non_blocking=True).float()
        frames = batch.frames.to(self.device)
        out = module(feats, frames)
        loss, scalars = self.spec.loss(out, batch.targets, frames)
        return StepOutput(loss=loss, scalars=scalars)

    @torch.no_grad()
    def score_split(self, module: nn.Module, name: str) -> tuple[dict[str, float], float]:
        """Weighted metric sums over a split (this rank's share of its batches)."""
        split = self.splits[name]
        plan = self._plans[name][self.env.rank :: self.env.world_size]
        if self.spec.pooled:
            outputs: dict[str, Any] = {}
            for i, utts in enumerate(plan):
                batch = self.make_batch(split, utts, 0, i)
                out = module(batch.feats.to(self.device).float(), batch.frames.to(self.device))
                outputs.update(self.spec.outputs(out, batch.utt_ids))
            for part in dist.all_gather_objects(outputs):
                outputs.update(part)
            # every rank computes the same metrics over the whole split; each returns a
            # 1/world share, so summing over ranks gives them back
            share = 1.0 / self.env.world_size
            metrics = self.spec.score_pooled(outputs, split.data_dir)
            return {k: v * share for k, v in metrics.items()}, share
        sums: dict[str, float] = {}
        weight = 0.0
        for i, utts in enumerate(plan):
            batch = self.make_batch(split, utts, 0, i)
            out = module(batch.feats.to(self.device).float(), batch.frames.to(self.device))
            vals, w = self.spec.score(out, batch.targets, batch.frames.to(self.device))
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            weight += w
        return sums, weight

    def evaluate(self, module: nn.Module) -> tuple[dict[str, float], float] | None:
        return self.score_split(module, "dev") if "dev" in self.splits else None

    def description(self) -> dict[str, Any]:
        return {
            "format": "speechssl-probe/1",
            "task": self.spec.name,
            "metric": self.spec.metric,
            "vocab": self.vocab,
            "layers": self.layers,
            "upstream": self.upstream.identity(),
            **self.settings,
        }

    def model_files(self) -> dict[str, str]:
        return {"probe.json": json.dumps(self.description(), indent=2, sort_keys=True) + "\n"}

    def start_events(self, epoch: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [
            {
                "event": "data",
                "split": n,
                "utterances": len(s.utts),
                "frames": sum(s.frames.values()),
            }
            for n, s in self.splits.items()
        ]
        events.append(
            {"event": "plan", "epoch": epoch, "batches_per_rank": self.batches_per_rank(epoch)}
        )
        return events

    def export(self, target: Path, fsdp: bool, step: int) -> None:
        """``<run>/final``: the head and featurizer weights and ``probe.json``."""
        from safetensors.torch import save_file

        from speechssl.models.io import state_dict_for_saving
        from speechssl.utils.atomic import atomic_dir

        if not self.env.is_main:
            return
        with atomic_dir(target, overwrite=True) as tmp:
            save_file(state_dict_for_saving(self.model), str(tmp / "model.safetensors"))
            (tmp / "probe.json").write_text(self.model_files()["probe.json"])


def metric_value(sums: dict[str, float], weight: float, metric: str) -> float:
    return sums.get(metric, 0.0) / weight if weight else math.nan
