"""Slot filling (SUPERB SF): tagged transcripts, their CTC vocabulary, and SUPERB's metrics.

A tagged transcript is words with each slot value bracketed by ``B-<slot>`` and
``E-<slot>`` tokens: ``ADD B-music_item SONG E-music_item TO B-playlist MY LIST
E-playlist``. The CTC targets spell each word's characters followed by the word boundary
``|`` (as the ASR task does, :mod:`.asr`); a slot tag is one token of its own, so the
vocabulary is ``<blank>``, ``|``, the characters, then ``B-<slot>`` and ``E-<slot>`` for
every slot.

Metrics, as SUPERB defines them (s3prl ``metric/slot_filling.py``; written anew here):

- **slot-type F1**: per utterance, the precision and recall of the *set* of slot types in
  the hypothesis against the reference (both empty: 1; exactly one empty: 0), their F1,
  averaged over utterances.
- **slot-value CER**: for every reference slot value, the hypothesis value of the same type
  with the lowest CER against it (the empty string when the hypothesis has no slot of that
  type); the corpus CER (characters, single spaces between words) over all these pairs.

A hypothesis slot is ``B-<t> <value> E-<t>`` with the same ``<t>`` (the shortest such
span); tag tokens inside a hypothesis value are removed from it. Unlike s3prl's regular
expression, ``E-<t>`` must be a whole token (``E-playlist_owner`` does not close a
``B-playlist``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from speechssl.downstream.asr import BLANK, WORD_BOUNDARY, CharVocabulary
from speechssl.downstream.metrics import ErrorCounts, align_counts
from speechssl.errors import ConfigError, LabelError

_TAG = re.compile(r"^[BE]-\S+$")
_SPAN = re.compile(r"(?<!\S)B-(\S+) (.+?) E-\1(?!\S)")


def is_tag(token: str) -> bool:
    return bool(_TAG.match(token))


def parse_tagged(value: str) -> list[str]:
    """Tokens of a tagged transcript; raises ``ValueError`` (with the reason) unless every
    ``B-<t>`` is closed by ``E-<t>`` around at least one word, without nesting."""
    items = value.split()
    if not any(not is_tag(t) for t in items):
        raise ValueError("no words")
    open_tag: str | None = None
    words_in = 0
    for t in items:
        if t.startswith("B-") and is_tag(t):
            if open_tag is not None:
                raise ValueError(f"{t} inside the open B-{open_tag}")
            open_tag, words_in = t[2:], 0
        elif t.startswith("E-") and is_tag(t):
            if open_tag != t[2:]:
                raise ValueError(f"{t} without a matching B-{t[2:]}")
            if words_in == 0:
                raise ValueError(f"B-{open_tag} ... {t} holds no word")
            open_tag = None
        else:
            words_in += 1
    if open_tag is not None:
        raise ValueError(f"B-{open_tag} is never closed")
    return items


def plain_words(text: str) -> str:
    """A tagged transcript without its tags."""
    return " ".join(t for t in text.split() if not is_tag(t))


class SlotVocabulary(CharVocabulary):
    """``<blank>``, ``|``, characters, then ``B-<slot>``/``E-<slot>`` per slot."""

    def __init__(self, tokens: Sequence[str]) -> None:
        tokens = list(tokens)
        if len(tokens) < 3 or tokens[0] != BLANK or tokens[1] != WORD_BOUNDARY:
            raise ConfigError(
                f"a slot vocabulary starts with {BLANK!r}, {WORD_BOUNDARY!r}; got {tokens[:5]}"
            )
        if len(set(tokens)) != len(tokens):
            raise ConfigError("slot vocabulary has repeated tokens")
        bad = [t for t in tokens[2:] if not (len(t) == 1 and not t.isspace()) and not is_tag(t)]
        if bad:
            raise ConfigError(f"slot vocabulary entries must be characters or tags: {bad[:5]}")
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], slots: Sequence[str] | None = None) -> SlotVocabulary:
        """Characters of the (tagged) training transcripts, sorted; then the tags of
        ``slots`` (the task root's ``slots.txt``) or, without it, of the transcripts."""
        chars: set[str] = set()
        seen: set[str] = set()
        for text in texts:
            for t in text.split():
                if is_tag(t):
                    seen.add(t[2:])
                else:
                    chars.update(t)
        if WORD_BOUNDARY in chars:
            raise ConfigError(f"transcripts contain the word boundary {WORD_BOUNDARY!r}")
        names = list(slots) if slots is not None else sorted(seen)
        tags = [f"{p}-{s}" for s in names for p in ("B", "E")]
        return cls([BLANK, WORD_BOUNDARY, *sorted(chars), *tags])

    def encode(self, text: str, utt: str = "<text>") -> list[int]:
        """Tagged transcript -> ids: a word's characters then ``|``; a tag as itself."""
        ids: list[int] = []
        for t in text.split():
            if is_tag(t):
                if t not in self.index:
                    raise LabelError(utt, f"slot tag {t} is not in the slot vocabulary")
                ids.append(self.index[t])
                continue
            for c in t:
                idx = self.index.get(c)
                if idx is None or idx < 2:
                    raise LabelError(
                        utt, f"character {c!r} (in word {t!r}) is not in the vocabulary "
                        "built from the training transcripts",
                    )  # fmt: skip
                ids.append(idx)
            ids.append(1)
        if not ids:
            raise LabelError(utt, "empty transcript")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids (blanks and repeats removed) -> a tagged transcript, single-spaced."""
        parts = []
        for i in ids:
            if i == 0:
                continue
            t = self.tokens[i]
            parts.append(" " if t == WORD_BOUNDARY else f" {t} " if is_tag(t) else t)
        return " ".join("".join(parts).split())


def slot_values(text: str, *, clean: bool = True) -> dict[str, list[str]]:
    """``{slot type: [values in order]}`` of a tagged transcript (see the module doc)."""
    out: dict[str, list[str]] = {}
    for kind, value in _SPAN.findall(" ".join(text.split())):
        if clean:
            value = plain_words(value)
        out.setdefault(kind, []).append(value)
    return out


def slot_type_f1(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Mean over utterances of the F1 of the hypothesis's slot-type set (module doc)."""
    if len(refs) != len(hyps) or not refs:
        raise ConfigError(f"slot_type_f1: {len(hyps)} hypotheses for {len(refs)} references")
    total = 0.0
    for ref, hyp in zip(refs, hyps):
        r, h = set(slot_values(ref, clean=False)), set(slot_values(hyp))
        if not r and not h:
            total += 1.0
        elif r and h:
            both = len(r & h)
            p, rec = both / len(h), both / len(r)
            total += 2 * p * rec / (p + rec) if both else 0.0
    return total / len(refs)


def _chars(text: str) -> list[str]:
    return list(" ".join(text.split()))


def slot_value_counts(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Character edit counts over every reference slot value against its best-matching
    hypothesis value of the same type (module doc)."""
    if len(refs) != len(hyps):
        raise ConfigError(f"slot_value_cer: {len(hyps)} hypotheses for {len(refs)} references")
    total = ErrorCounts(0, 0, 0, 0)
    for ref, hyp in zip(refs, hyps):
        hyp_values = slot_values(hyp)
        for kind, values in slot_values(ref, clean=False).items():
            for value in values:
                r = _chars(value)
                best: tuple[int, int, int] | None = None
                for cand in hyp_values.get(kind, []):
                    counts = align_counts(r, _chars(cand))
                    if best is None or sum(counts) < sum(best):
                        best = counts
                s, d, i = best if best is not None else (0, len(r), 0)
                total = total + ErrorCounts(s, d, i, len(r))
    return total


def slot_value_cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Slot-value CER; NaN when the references hold no slot."""
    counts = slot_value_counts(refs, hyps)
    return counts.rate if counts.ref_length else math.nan
