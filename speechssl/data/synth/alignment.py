"""Frame-level phone alignments (``ali.phones``) and the phone table (``phones.txt``).

Convention (downstream PNMI, phone purity and phone recognition rely on it):

* 100 frames per second. Frame ``i`` covers ``[i * 10 ms, (i + 1) * 10 ms)`` of the
  utterance, i.e. samples ``[160 i, 160 (i + 1))`` at 16 kHz.
* An utterance of ``num_samples`` samples (``utt2num_samples``) has
  ``floor(num_samples / 160)`` frames = ``floor(duration * 100)``; the corpus pads every
  utterance to a multiple of 160 samples, so there is no partial last frame.
* Frame ``i`` is labelled with the phone being spoken at its centre, ``(i + 0.5) * 10 ms``.
* ``ali.phones`` has one line per utterance: the utterance id, then one phone symbol per
  frame, space separated. Lines are ``LC_ALL=C`` sorted like every Kaldi table.
* ``phones.txt`` is a symbol table ``<symbol> <integer id>``, ids ``0..P-1``, with the
  silence symbol ``SIL`` as id 0 and the other phones in ``LC_ALL=C`` order. It covers
  every symbol in every split of the corpus.

Phone symbols are eSpeak NG's phoneme mnemonics (Kirshenbaum-like ASCII, e.g. ``E``, ``aI``,
``3:``, ``tS``) with stress marks removed and eSpeak's numbered allophone variants merged
into their base phoneme (``@2`` -> ``@``, ``t2`` -> ``t``); every pause phoneme (``_``,
``_:``, ``_!``, ...) and the padding around an utterance is ``SIL``. Accents keep their own
phonemes (a Scottish speaker's ``IR`` is not mapped to ``3:``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence

from speechssl.data.tables import c_sort_key, iter_table, write_table
from speechssl.errors import LabelError
from speechssl.utils.atomic import atomic_write_text

SILENCE = "SIL"
"""The silence symbol (edges, pauses, inter-word gaps)."""
FRAME_RATE = 100
"""Alignment frames per second."""

_STRESS_MARKS = "',%=!"


def normalize_phone(name: str) -> str:
    """Map an eSpeak phoneme event name to the corpus phone symbol."""
    if not name or name.startswith("_"):
        return SILENCE
    symbol = "".join(ch for ch in name if ch not in _STRESS_MARKS)
    stripped = symbol.rstrip("0123456789")
    # "3" or "3:" are phonemes in their own right; only trailing variant digits go
    if stripped and not stripped.endswith(":"):
        symbol = stripped
    return symbol or SILENCE


def frame_labels(
    boundaries: Sequence[tuple[int, str]], num_samples: int, sample_rate: int
) -> list[str]:
    """Per-frame phone labels from ``(start_sample, symbol)`` boundaries.

    A boundary's phone lasts until the next boundary; before the first one is silence.
    Returns ``floor(num_samples * FRAME_RATE / sample_rate)`` labels.
    """
    if sample_rate % FRAME_RATE:
        raise ValueError(f"sample rate {sample_rate} is not a multiple of {FRAME_RATE}")
    shift = sample_rate // FRAME_RATE
    n_frames = num_samples // shift
    starts = [s for s, _ in boundaries]
    if any(b < a for a, b in itertools.pairwise(starts)):
        raise ValueError("phone boundaries are not monotonic")
    labels = []
    j = -1
    for i in range(n_frames):
        centre = i * shift + shift // 2
        while j + 1 < len(boundaries) and boundaries[j + 1][0] <= centre:
            j += 1
        labels.append(boundaries[j][1] if j >= 0 else SILENCE)
    return labels


def write_alignments(path: str | os.PathLike[str], alignments: Mapping[str, Sequence[str]]) -> None:
    """Write ``ali.phones`` (sorted, atomically)."""
    write_table(path, {utt: " ".join(labels) for utt, labels in alignments.items()})


def read_alignments(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read ``ali.phones``: utterance id -> one phone symbol per 10 ms frame."""
    out: dict[str, list[str]] = {}
    for lineno, utt, value in iter_table(path):
        if utt in out:
            raise LabelError(utt, "duplicate utterance", where=f"{path}:{lineno}")
        labels = value.split()
        if not labels:
            raise LabelError(utt, "alignment has no frames", where=f"{path}:{lineno}")
        out[utt] = labels
    return out


def phone_table(symbols: Iterable[str]) -> dict[str, int]:
    """Symbol -> id with ``SIL`` = 0 and the rest in ``LC_ALL=C`` order."""
    others = sorted({s for s in symbols if s != SILENCE}, key=c_sort_key)
    return {SILENCE: 0, **{s: i + 1 for i, s in enumerate(others)}}


def write_phone_table(path: str | os.PathLike[str], table: Mapping[str, int]) -> None:
    lines = [f"{sym} {idx}" for sym, idx in sorted(table.items(), key=lambda kv: kv[1])]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_phone_table(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read ``phones.txt`` (``symbol id`` lines) and check ids are ``0..P-1``, unique."""
    table: dict[str, int] = {}
    for lineno, sym, value in iter_table(path):
        try:
            idx = int(value)
        except ValueError:
            raise LabelError(
                sym, f"id {value!r} is not an integer", where=f"{path}:{lineno}"
            ) from None
        if sym in table:
            raise LabelError(sym, "duplicate phone symbol", where=f"{path}:{lineno}")
        table[sym] = idx
    if sorted(table.values()) != list(range(len(table))):
        raise LabelError(str(path), "phone ids are not exactly 0..P-1")
    return table


def check_alignment_lengths(
    alignments: Mapping[str, Sequence[str]],
    num_samples: Mapping[str, int],
    sample_rate: int = 16000,
    where: str = "ali.phones",
) -> None:
    """Every utterance has an alignment of ``floor(num_samples / (rate / 100))`` frames."""
    shift = sample_rate // FRAME_RATE
    for utt, n in num_samples.items():
        if utt not in alignments:
            raise LabelError(utt, "no alignment", where=where)
        if len(alignments[utt]) != n // shift:
            raise LabelError(
                utt,
                f"{len(alignments[utt])} alignment frames, expected {n // shift} for {n} samples",
                where=where,
            )
    extra = set(alignments) - set(num_samples)
    if extra:
        raise LabelError(
            sorted(extra)[0], f"alignment for an unknown utterance ({len(extra)} such)", where=where
        )
