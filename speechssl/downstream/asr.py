"""SUPERB ASR head: character CTC over a 2-layer BiLSTM, greedy and lexicon beam decoding.

As in SUPERB's ASR task (s3prl ``downstream/asr``): the featurizer output is projected to
1024 dims, passed through two single-layer bidirectional LSTMs of 1024 units per direction,
each followed by dropout 0.2, and a linear layer gives per-frame log-probabilities over the
character vocabulary (CTC blank at index 0).

Targets are spelled as in fairseq's letter targets: each word's characters followed by the
word boundary ``|`` (``"HI YOU"`` -> ``H I | Y O U |``), so the lexicon beam search of
``torchaudio.models.decoder.ctc_decoder`` (flashlight-text) can use a lexicon whose
spellings end in ``|``. Greedy decoding needs nothing else; beam search needs the
``flashlight-text`` package (and a KenLM binary or ARPA file when an LM is given).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speechssl.errors import ConfigError, LabelError, SpeechSSLError
from speechssl.utils.atomic import atomic_write_text

BLANK = "<blank>"
WORD_BOUNDARY = "|"


class DecoderUnavailableError(SpeechSSLError):
    """Beam search was asked for, but the package it needs is not installed."""


class CharVocabulary:
    """Characters of the transcripts plus the CTC blank (index 0) and ``|`` (index 1).

    Built from the training transcripts; an unknown character met later (dev/test) is a
    :class:`~speechssl.errors.LabelError` naming the utterance, never silently dropped.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if len(tokens) < 3 or tokens[0] != BLANK or tokens[1] != WORD_BOUNDARY:
            raise ConfigError(
                f"a character vocabulary starts with {BLANK!r}, {WORD_BOUNDARY!r} and has at "
                f"least one character; got {tokens[:5]}"
            )
        if len(set(tokens)) != len(tokens):
            raise ConfigError("character vocabulary has repeated tokens")
        bad = [t for t in tokens[2:] if len(t) != 1 or t.isspace() or t == WORD_BOUNDARY]
        if bad:
            raise ConfigError(f"character vocabulary entries must be single characters: {bad}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def from_texts(cls, texts: Mapping[str, str] | Iterable[str]) -> CharVocabulary:
        """All characters of the transcripts (``text`` values), sorted by code point."""
        values = texts.values() if isinstance(texts, Mapping) else texts
        chars: set[str] = set()
        for value in values:
            chars.update(c for c in value if not c.isspace())
        if WORD_BOUNDARY in chars:
            raise ConfigError(
                f"transcripts contain the word boundary symbol {WORD_BOUNDARY!r}; "
                "it cannot also be a character"
            )
        if not chars:
            raise ConfigError("transcripts have no characters to build a vocabulary from")
        return cls([BLANK, WORD_BOUNDARY, *sorted(chars)])

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and other.tokens == self.tokens

    def encode(self, text: str, utt: str = "<text>") -> list[int]:
        """``"HI YOU"`` -> ids of ``H I | Y O U |``; an unknown character names ``utt``."""
        words = text.split()
        if not words:
            raise LabelError(utt, "empty transcript")
        ids: list[int] = []
        for word in words:
            for c in word:
                idx = self.index.get(c)
                if idx is None or idx < 2:
                    raise LabelError(
                        utt,
                        f"character {c!r} (in word {word!r}) is not in the vocabulary built "
                        "from the training transcripts",
                    )
                ids.append(idx)
            ids.append(1)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (blanks and repeats already removed) -> words separated by spaces."""
        chars = [self.tokens[i] for i in ids if i != 0]
        return " ".join("".join(chars).replace(WORD_BOUNDARY, " ").split())

    def save(self, path: str | os.PathLike[str]) -> None:
        """One token per line (``<blank>`` first), written atomically."""
        atomic_write_text(path, "".join(f"{t}\n" for t in self.tokens))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharVocabulary:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"character vocabulary {p} not found")
        return cls([line.rstrip("\n") for line in p.read_text(encoding="utf-8").splitlines()])


class BiLSTMCTCHead(nn.Module):
    """Projection -> ``layers`` x (BiLSTM ``hidden`` per direction + dropout) -> linear.

    ``forward(feats [N, T, D], lengths [N]) -> (log_probs [N, T, V], lengths [N])``; the
    backward direction runs over each utterance's valid frames reversed, so an utterance's
    output does not depend on the padding of its batch.
    """

    def __init__(
        self,
        in_dim: int,
        vocab_size: int,
        hidden: int = 1024,
        layers: int = 2,
        dropout: float = 0.2,
        *,
        proj_dim: int | None = 1024,
    ) -> None:
        super().__init__()
        if layers < 1 or hidden < 1 or vocab_size < 2:
            raise ConfigError(
                f"BiLSTMCTCHead: layers={layers}, hidden={hidden}, vocab_size={vocab_size}"
            )
        self.proj = nn.Linear(in_dim, proj_dim) if proj_dim else nn.Identity()
        dim = proj_dim or in_dim
        self.lstms = nn.ModuleList()
        for _ in range(layers):
            self.lstms.append(nn.LSTM(dim, hidden, batch_first=True, bidirectional=True))
            dim = 2 * hidden
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, vocab_size)

    def forward(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(feats)
        n = lengths.to(x.device, torch.int64)[:, None]
        steps = torch.arange(x.shape[1], device=x.device)[None, :]
        valid = (steps < n)[..., None].to(x.dtype)
        # each utterance's valid frames reversed in place (padding stays at the end)
        flip = torch.where(steps < n, n - 1 - steps, steps)[..., None]
        for lstm in self.lstms:
            fwd = _one_direction(lstm, x, reverse=False)
            rev = x.gather(1, flip.expand_as(x))
            bwd = _one_direction(lstm, rev, reverse=True)
            bwd = bwd.gather(1, flip.expand_as(bwd))
            x = self.dropout(torch.cat([fwd, bwd], dim=-1) * valid)
        return F.log_softmax(self.out(x), dim=-1), lengths


def _one_direction(lstm: nn.Module, x: torch.Tensor, *, reverse: bool) -> torch.Tensor:
    """One direction of a single-layer bidirectional ``lstm`` run left to right over padded
    ``x [N, T, C]``: padding only follows the valid frames, so their outputs do not depend
    on it. (Packed sequences give the same outputs, but their backward pass is about 25x
    slower on CPU in torch 2.11.)"""
    suffix = "_reverse" if reverse else ""
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    weights: list[torch.Tensor] = [getattr(lstm, name + suffix) for name in names]
    h0 = x.new_zeros(1, x.shape[0], weights[1].shape[1])
    out: torch.Tensor = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, lstm.training, False, True)[
        0
    ]
    return out


def ctc_loss(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    targets: Sequence[Sequence[int]],
    *,
    utts: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean CTC loss (per target token, as ``reduction='mean'``) with blank 0.

    An utterance whose target needs more frames than it has (CTC cannot emit it) is a
    :class:`~speechssl.errors.LabelError` naming it, rather than an infinite or zeroed loss.
    """
    need = [len(t) + sum(1 for a, b in itertools.pairwise(t) if a == b) for t in targets]
    for k, (n, have) in enumerate(zip(need, lengths.tolist())):
        if n > have:
            name = utts[k] if utts is not None else f"utterance #{k}"
            raise LabelError(
                name, f"target needs at least {n} frames for CTC but the features have {have}"
            )
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    return F.ctc_loss(
        log_probs.transpose(0, 1).float(),
        flat.to(log_probs.device),
        lengths.to(torch.long),
        target_lengths.to(log_probs.device),
        blank=0,
        reduction="mean",
    )


def greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor, vocab: CharVocabulary
) -> list[str]:
    """Best path: argmax per frame, merge repeats, drop blanks, ``|`` -> space."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids = torch.unique_consecutive(row[: int(n)]).tolist()
        out.append(vocab.decode(i for i in ids if i != 0))
    return out


def write_char_lexicon(
    words: Iterable[str], path: str | os.PathLike[str], vocab: CharVocabulary
) -> int:
    """Write a flashlight lexicon ``WORD W O R D |`` for ``words``; returns the count.

    A word with a character outside ``vocab`` is a :class:`~speechssl.errors.LabelError`.
    """
    entries = sorted(set(words))
    lines = []
    for word in entries:
        vocab.encode(word, utt=f"lexicon word {word!r}")
        lines.append(f"{word}\t{' '.join(word)} {WORD_BOUNDARY}\n")
    atomic_write_text(path, "".join(lines))
    return len(entries)


def _check_lexicon(path: Path, vocab: CharVocabulary) -> None:
    if not path.is_file():
        raise ConfigError(f"lexicon {path} not found")
    n = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            n += 1
            if len(parts) < 2:
                raise LabelError(parts[0], "lexicon entry has no spelling", f"{path}:{lineno}")
            unknown = [t for t in parts[1:] if t not in vocab.index or t == BLANK]
            if unknown:
                raise LabelError(
                    parts[0],
                    f"spelling uses tokens {unknown} that are not in the character vocabulary",
                    f"{path}:{lineno}",
                )
    if n == 0:
        raise ConfigError(f"lexicon {path} is empty")


def beam_decode(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    vocab: CharVocabulary,
    lexicon: str | os.PathLike[str],
    *,
    lm: str | os.PathLike[str] | None = None,
    beam_size: int = 50,
    lm_weight: float = 2.0,
    word_score: float = 0.0,
    unk_word: str = "<unk>",
) -> list[str]:
    """Lexicon-constrained beam search (optionally with a KenLM n-gram LM).

    Runs ``torchaudio.models.decoder.ctc_decoder`` (flashlight-text). ``lexicon``: one word
    per line, ``WORD c1 c2 ... |`` (see :func:`write_char_lexicon`); ``lm``: a KenLM binary
    or ARPA file, or ``None`` for lexicon-only search.
    """
    lex_path = Path(lexicon)
    _check_lexicon(lex_path, vocab)
    lm_path: str | None = None
    if lm is not None:
        if not Path(lm).is_file():
            raise ConfigError(f"language model {lm} not found")
        lm_path = str(lm)
    try:
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError) as exc:
        raise DecoderUnavailableError(
            "beam search needs the flashlight-text package for torchaudio's ctc_decoder "
            "(pip install flashlight-text, or speechssl[decode]); greedy decoding needs "
            f"nothing ({exc})"
        ) from None
    try:
        decoder = ctc_decoder(
            lexicon=str(lex_path),
            tokens=vocab.tokens,
            lm=lm_path,
            beam_size=beam_size,
            lm_weight=lm_weight if lm_path else 0.0,
            word_score=word_score,
            blank_token=BLANK,
            sil_token=WORD_BOUNDARY,
            unk_word=unk_word,
        )
    except RuntimeError as exc:  # raised by flashlight-text/KenLM when the LM cannot load
        where = lm_path or str(lex_path)
        raise ConfigError(f"ctc_decoder could not load {where}: {exc}") from None
    hyps = decoder(log_probs.detach().float().cpu().contiguous(), lengths.cpu().to(torch.int32))
    return [" ".join(h[0].words) if h else "" for h in hyps]
