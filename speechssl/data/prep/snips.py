"""Audio SNIPS -> slot-filling data dirs (SUPERB SF protocol).

The layout SUPERB's SNIPS preparation produces (and s3prl reads)::

    ROOT/all.iob.snips.txt        one line per (speaker, utterance):
        <spk>-snips-<split>-<n> BOS WORD WORD ... EOS<TAB>O <tag> <tag> ... <intent>
                                  (a tag per word: O or a slot name such as playlist)
    ROOT/slots.txt                the slot names, one a line (O may be among them)
    ROOT/{train,valid,test}/<spk>-snips-<split>-<n>.wav      16 kHz mono

Each split keeps the speakers SUPERB assigns to it (train: Ivy Joanna Joey Justin Kendra
Kimberly Matthew Salli; dev: Aditi Amy Geraint Nicole; test: Brian Emma Raveena Russell);
the other speakers' files in a split folder are left out by the task definition and
counted in the notes. Words are normalised as SUPERB's character-slot targets are:
accented letters folded to ASCII, ``&`` spelled ``AND``, punctuation-only words dropped
(with their tag).

Output ``OUT/{train,dev,test}/`` (``valid`` becomes ``dev``): ``wav.scp``, ``utt2spk``,
``utt2dur``, ``text`` (the words) and ``utt2slots``: the words with each slot's value
bracketed by ``B-<slot>`` and ``E-<slot>`` tokens (``ADD B-music_item SONG E-music_item
TO B-playlist MY LIST E-playlist``; consecutive words with the same tag are one value),
SUPERB's target; ``OUT/slots.txt`` lists the slot names.

Strict (default): a listed wav of a kept speaker without its line, a line of a kept
speaker without its wav, a line whose word and tag counts differ, a tag that is not O or a
name in ``slots.txt``, unreadable audio and a sample rate other than 16 kHz are collected
and raised together; tolerant: skipped and counted.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from speechssl.data.audio import AudioError, AudioSampleRateError, AudioSource, probe
from speechssl.data.prep.common import (
    CorpusError,
    MalformedTranscriptError,
    MissingAudioError,
    MissingTranscriptError,
    PrepResult,
    ProblemCollector,
    write_prepared,
)
from speechssl.utils.atomic import atomic_write_text

SAMPLE_RATE = 16000
TRANSCRIPTS = "all.iob.snips.txt"
SLOTS = "slots.txt"
LABEL_FILE = "utt2slots"
#: output split -> the corpus's split folder
SPLIT_DIRS = {"train": "train", "dev": "valid", "test": "test"}
#: SUPERB's speakers of each split
SPEAKERS: dict[str, tuple[str, ...]] = {
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "dev": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
_PUNCT = set('?!.,;-–…"')


class UnknownSlotError(MalformedTranscriptError):
    """A tag in the transcripts is not O or a name in slots.txt."""

    kind = "unknown-slot"


#: letters NFKD does not decompose, folded as SUPERB folds them
_NO_DECOMPOSITION = str.maketrans({"Æ": "A", "Ð": "D", "Ø": "O", "æ": "a", "ð": "d", "ø": "o"})


def fold_ascii(word: str) -> str:
    """``CAFÉ`` -> ``CAFE``: letters with diacritics lose them (NFKD, marks dropped;
    ``Æ Ð Ø`` -> ``A D O``)."""
    decomposed = unicodedata.normalize("NFKD", word.translate(_NO_DECOMPOSITION))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def read_slot_names(path: Path) -> list[str]:
    if not path.is_file():
        raise CorpusError(str(path), "not found (the slot names of the corpus)")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and n != "O"]


def tag_words(words: list[str], tags: list[str]) -> str:
    """Words and per-word tags -> the ``utt2slots`` value (see the module doc)."""
    out: list[str] = []
    for i, (word, tag) in enumerate(zip(words, tags)):
        if tag != "O" and (i == 0 or tags[i - 1] != tag):
            out.append(f"B-{tag}")
        out.append(word)
        if tag != "O" and (i == len(words) - 1 or tags[i + 1] != tag):
            out.append(f"E-{tag}")
    return " ".join(out)


def parse_iob_line(line: str, slots: set[str], where: str) -> tuple[str, list[str], list[str]]:
    """``(utterance, words, tags)`` of one ``all.iob.snips.txt`` line, normalised."""
    text, sep, tagged = line.rstrip("\n").partition("\t")
    parts = text.split()
    if not sep or len(parts) < 3 or parts[1] != "BOS" or parts[-1] != "EOS":
        raise MalformedTranscriptError(
            parts[0] if parts else where, "not '<utt> BOS <words> EOS<TAB>O <tags> <intent>'",
            where,
        )  # fmt: skip
    utt, raw_words = parts[0], parts[2:-1]
    raw_tags = tagged.split()[1:-1]
    if len(raw_tags) != len(raw_words):
        raise MalformedTranscriptError(
            utt, f"{len(raw_words)} words but {len(raw_tags)} slot tags", where
        )
    unknown = sorted({t for t in raw_tags if t != "O" and t not in slots})
    if unknown:
        raise UnknownSlotError(
            utt, f"slot tag(s) {', '.join(unknown)} are not in {SLOTS}", where
        )  # fmt: skip
    words, tags = [], []
    for word, tag in zip(raw_words, raw_tags):
        if word in _PUNCT:
            continue
        words.append("AND" if word == "&" else fold_ascii(word).upper())
        tags.append(tag)
    if not words:
        raise MalformedTranscriptError(utt, "no words left after dropping punctuation", where)
    return utt, words, tags


def prepare_snips(
    corpus_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tolerant: bool = False,
) -> PrepResult:
    """Write ``out/{train,dev,test}`` and ``out/slots.txt`` for SUPERB slot filling (see the
    module doc)."""
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "SNIPS folder not found")
    slot_names = read_slot_names(root / SLOTS)
    slots = set(slot_names)
    trans_path = root / TRANSCRIPTS
    if not trans_path.is_file():
        raise CorpusError(str(trans_path), "not found (the tagged transcripts of the corpus)")
    collect = ProblemCollector("snips", tolerant)
    lines: dict[str, tuple[str, str]] = {}  # utt -> (line, where)
    with trans_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                lines[line.split(None, 1)[0]] = (line, f"{trans_path}:{lineno}")
    notes: list[str] = []
    rows: dict[str, dict[str, tuple[str, str, str, str, float]]] = {}
    for split, folder in SPLIT_DIRS.items():
        sdir = root / folder
        if not sdir.is_dir():
            raise CorpusError(str(sdir), f"not found (the {split} audio)")
        keep = set(SPEAKERS[split])
        wavs = {w.stem: w for w in sorted(sdir.rglob("*.wav")) if not w.name.startswith(".")}
        other = sum(1 for u in wavs if u.split("-", 1)[0] not in keep)
        notes.append(f"{split}: {other} wav(s) of speakers outside SUPERB's {split} list left out")
        listed = {u for u in lines if u.split("-", 1)[0] in keep and f"-snips-{folder}-" in u}
        for utt in sorted(listed - set(wavs)):
            collect.bad(MissingAudioError(utt, f"no {sdir / utt}.wav", lines[utt][1]))
        rows[split] = {}
        for utt, wav in wavs.items():
            spk = utt.split("-", 1)[0]
            if spk not in keep:
                continue
            if utt not in lines:
                collect.bad(MissingTranscriptError(utt, f"no line in {TRANSCRIPTS}", str(wav)))
                continue
            line, where = lines[utt]
            try:
                _, words, tags = parse_iob_line(line, slots, where)
                head = probe(AudioSource(path=str(wav)), utt=utt)
            except (MalformedTranscriptError, AudioError) as err:
                collect.bad(err)
                continue
            if head.sample_rate != SAMPLE_RATE:
                collect.bad(AudioSampleRateError(
                    utt, f"sample rate {head.sample_rate} Hz, SNIPS audio is {SAMPLE_RATE}",
                    str(wav),
                ))  # fmt: skip
                continue
            rows[split][utt] = (str(wav), spk, " ".join(words), tag_words(words, tags),
                                head.duration)  # fmt: skip
            collect.written()
    collect.raise_if_any()

    out_root = Path(out)
    for split, utts in rows.items():
        if not utts:
            raise CorpusError(split, f"no utterance of SUPERB's {split} speakers")
        write_prepared(
            out_root / split,
            wav_scp={u: r[0] for u, r in utts.items()},
            utt2spk={u: r[1] for u, r in utts.items()},
            text={u: r[2] for u, r in utts.items()},
            utt2dur={u: r[4] for u, r in utts.items()},
            extra={LABEL_FILE: {u: r[3] for u, r in utts.items()}},
        )
        notes.append(f"{split}: {len(utts)} utterances")
    atomic_write_text(out_root / SLOTS, "".join(f"{s}\n" for s in slot_names))
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)
