"""SUPERB ASV head: x-vector TDNN + statistics pooling, AM-softmax, cosine trial scoring.

As in SUPERB's ASV task (s3prl ``downstream/sv_voxceleb1``): the featurizer output is
projected to 512 dims, five TDNN layers (contexts 5, 3, 3, 1, 1 with dilations 1, 2, 3, 1, 1
and 512, 512, 512, 512, 1500 channels; ReLU, batch norm, dropout) run over the frames,
statistics pooling concatenates the mean and standard deviation over each utterance's valid
frames, and a linear layer gives the speaker embedding. Training uses the additive-margin
softmax (AM-softmax, s = 30, m = 0.4) over the training speakers; a trial is scored by the
cosine similarity of its two utterances' embeddings.

Trials use Kaldi's format, one per line: ``<enroll-utt> <test-utt> target|nontarget``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speechssl.errors import ConfigError, DataDirError, LabelError

#: (context size, dilation, output channels) of SUPERB's x-vector TDNN layers
XVECTOR_LAYERS: tuple[tuple[int, int, int], ...] = (
    (5, 1, 512),
    (3, 2, 512),
    (3, 3, 512),
    (1, 1, 512),
    (1, 1, 1500),
)


def _masked_batch_norm(bn: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batch norm over the valid frames only (``x [N, C, T]``, ``mask [N, T]``), so padding
    never enters the batch statistics."""
    frames = x.transpose(1, 2)[mask]  # [valid, C]
    out = torch.zeros_like(x.transpose(1, 2))
    out[mask] = bn(frames)
    return out.transpose(1, 2)


class XVectorHead(nn.Module):
    """Projection -> TDNN stack -> statistics pooling -> embedding.

    ``forward(feats [N, T, D], lengths [N]) -> embeddings [N, embed_dim]``. The TDNN layers
    use no padding (as Kaldi's and s3prl's), so each utterance needs at least
    :attr:`min_frames` frames; a shorter one is an error. Statistics use only each
    utterance's valid frames, so the embedding does not depend on the batch's padding.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        proj_dim: int = 512,
        embed_dim: int = 512,
        layers: Sequence[tuple[int, int, int]] = XVECTOR_LAYERS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("XVectorHead needs at least one TDNN layer")
        self.proj = nn.Linear(in_dim, proj_dim)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.shrink: list[int] = []  # frames lost by each layer (no padding)
        dim = proj_dim
        for context, dilation, channels in layers:
            self.convs.append(nn.Conv1d(dim, channels, context, dilation=dilation))
            self.norms.append(nn.BatchNorm1d(channels))
            self.shrink.append((context - 1) * dilation)
            dim = channels
        self.dropout = nn.Dropout(dropout)
        self.embed = nn.Linear(2 * dim, embed_dim)
        self.embed_dim = embed_dim
        self.min_frames = sum(self.shrink) + 1

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(feats.device, torch.long)
        short = torch.nonzero(lengths < self.min_frames).flatten().tolist()
        if short:
            raise ConfigError(
                f"x-vector head needs at least {self.min_frames} frames per utterance; batch "
                f"items {short} have {[int(lengths[i]) for i in short]}"
            )
        x = self.proj(feats).transpose(1, 2)  # [N, C, T]
        for conv, norm, shrink in zip(self.convs, self.norms, self.shrink):
            x = F.relu(conv(x))
            lengths = lengths - shrink
            mask = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
            x = self.dropout(_masked_batch_norm(norm, x, mask))
        mask = torch.arange(x.shape[-1], device=x.device)[None, :] < lengths[:, None]
        return self.embed(statistics_pooling(x, mask))


def statistics_pooling(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``x [N, C, T]``, ``mask [N, T]`` -> ``[N, 2C]``: mean and standard deviation over the
    valid frames (variance floored at ``eps``)."""
    m = mask[:, None, :].to(x.dtype)
    count = m.sum(-1).clamp_min(1.0)
    mean = (x * m).sum(-1) / count
    var = (((x - mean[..., None]) ** 2) * m).sum(-1) / count
    return torch.cat([mean, var.clamp_min(eps).sqrt()], dim=-1)


class AMSoftmaxLoss(nn.Module):
    """Additive-margin softmax (Wang et al. 2018): cross-entropy over
    ``s * (cos(theta_j) - m * [j == y])`` with unit-norm embeddings and class weights."""

    def __init__(self, embed_dim: int, num_classes: int, s: float = 30.0, m: float = 0.4) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"AM-softmax needs at least 2 classes (speakers), got {num_classes}")
        self.s = s
        self.m = m
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[N, num_classes]`` cosine similarities to each class weight."""
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_from_cosine(self.cosine(embeddings), labels, self.s, self.m)

    @staticmethod
    def loss_from_cosine(
        cos: torch.Tensor, labels: torch.Tensor, s: float = 30.0, m: float = 0.4
    ) -> torch.Tensor:
        """The AM-softmax loss of ``[N, classes]`` cosines (see :meth:`cosine`)."""
        margin = F.one_hot(labels, cos.shape[-1]).to(cos.dtype) * m
        return F.cross_entropy(s * (cos - margin), labels)


@dataclass(frozen=True)
class Trial:
    enroll: str
    test: str
    target: bool


_LABELS = {"target": True, "nontarget": False}


def read_trials(
    path: str | os.PathLike[str], known_utts: Collection[str] | None = None
) -> list[Trial]:
    """Read a Kaldi ``trials`` file; with ``known_utts``, every utterance must be in it.

    Errors name ``file:line`` and the offending utterance or word.
    """
    p = Path(path)
    if not p.is_file():
        raise DataDirError(str(p), "trials file not found")
    trials: list[Trial] = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            where = f"{p}:{lineno}"
            parts = line.split()
            if len(parts) != 3:
                raise DataDirError(
                    str(p),
                    f"expected '<enroll-utt> <test-utt> target|nontarget', got {line!r}",
                    where,
                )
            enroll, test, word = parts
            if word not in _LABELS:
                raise DataDirError(
                    f"{enroll} {test}", f"label {word!r} is not 'target' or 'nontarget'", where
                )
            if known_utts is not None:
                for utt in (enroll, test):
                    if utt not in known_utts:
                        raise DataDirError(
                            utt, "trial names an utterance not in the data dir", where
                        )
            trials.append(Trial(enroll, test, _LABELS[word]))
    if not trials:
        raise DataDirError(str(p), "trials file is empty")
    return trials


def write_trials(path: str | os.PathLike[str], trials: Iterable[Trial]) -> None:
    """Write trials in Kaldi's format (in the given order), atomically."""
    from speechssl.utils.atomic import atomic_write_text

    atomic_write_text(
        path,
        "".join(f"{t.enroll} {t.test} {'target' if t.target else 'nontarget'}\n" for t in trials),
    )


def score_trials(
    embeddings: Mapping[str, torch.Tensor], trials: Iterable[Trial]
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each trial's two embeddings -> ``(scores float64, labels 0/1)``.

    A trial naming an utterance without an embedding is a
    :class:`~speechssl.errors.LabelError` naming it.
    """
    trials = list(trials)
    if not trials:
        raise LabelError("trials", "no trials to score")
    missing = sorted({u for t in trials for u in (t.enroll, t.test) if u not in embeddings})
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise LabelError(missing[0], f"no embedding for trial utterances {missing[:5]}{more}")
    names = sorted({u for t in trials for u in (t.enroll, t.test)})
    row = {u: i for i, u in enumerate(names)}
    emb = torch.stack([embeddings[u].detach().reshape(-1).double().cpu() for u in names])
    emb = F.normalize(emb, dim=-1)
    a = torch.tensor([row[t.enroll] for t in trials])
    b = torch.tensor([row[t.test] for t in trials])
    scores = (emb[a] * emb[b]).sum(-1).numpy()
    labels = np.array([int(t.target) for t in trials], dtype=np.int64)
    return scores, labels
