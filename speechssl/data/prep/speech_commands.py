"""Speech Commands v0.01 -> keyword-spotting data dirs (SUPERB KS protocol).

The real layouts::

    ROOT/<word>/<speaker-hash>_nohash_<n>.wav        30 words, 1 s clips, 16 kHz
    ROOT/validation_list.txt                         "<word>/<file>.wav" per line
    ROOT/testing_list.txt                            "<word>/<file>.wav" per line
    ROOT/_background_noise_/*.wav                    long noise recordings (+ a README)

    TEST/<label>/<file>.wav      speech_commands_test_set_v0.01: label = one of the 10
                                 words, _unknown_ or _silence_ (clips already cut)

SUPERB's 12 classes: the 10 words ``yes no up down left right on off stop go``, every other
word as ``_unknown_``, and ``_silence_``: clips of ``silence_seconds`` cut from the
background noise recordings (each recording's clips go, in turn, 8 to train, 1 to dev and 1
to test; the test share is used only when no separate test set is given).

Splits: a clip listed in ``validation_list.txt`` is dev, in ``testing_list.txt`` test, any
other is train. With ``test_set_dir`` (SUPERB's protocol) the test dir is the separate v0.01
test set and the ``testing_list.txt`` clips are left out (and counted in a note).

Output ``OUT/{train,dev,test}/``: ``wav.scp`` (recordings: clip files and noise files),
``segments`` (whole clips, or the 1 s slices of the noise), ``utt2spk`` (speaker = the
clip's hash; ``noise-<name>`` for silence clips), ``utt2dur`` and ``utt2keyword`` (the class).
Utterance ids: ``<hash>-<word>-<n>`` for the training archive.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.kaldi_dir import Segment
from speechssl.data.prep.common import (
    CorpusError,
    MissingAudioError,
    PrepResult,
    ProblemCollector,
    write_prepared,
)

KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
CLASSES: tuple[str, ...] = (*KEYWORDS, UNKNOWN, SILENCE)
NOISE_DIR = "_background_noise_"
SPLITS = ("train", "dev", "test")

_CLIP = re.compile(r"^([0-9a-f]{8})_nohash_(\d+)$")
_HASH = re.compile(r"([0-9a-f]{8})_nohash_(\d+)")


class BadClipNameError(CorpusError):
    """A clip's file name does not follow ``<hash>_nohash_<n>.wav``."""

    kind = "bad-name"


class UnknownClassError(CorpusError):
    """A test-set folder is not one of the 12 SUPERB classes."""

    kind = "unknown-class"


@dataclass
class _Utt:
    reco: str
    path: Path
    spk: str
    keyword: str
    start: float
    end: float


def _read_list(root: Path, name: str) -> dict[str, int]:
    path = root / name
    if not path.is_file():
        raise CorpusError(str(path), f"not found; Speech Commands v0.01 has {name} in its root")
    entries: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            rel = line.strip()
            if rel:
                entries[rel] = lineno
    return entries


def _safe(name: str) -> str:
    return re.sub(r"\s+", "_", name)


def prepare_speech_commands(
    corpus_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    test_set_dir: str | os.PathLike[str] | None = None,
    silence_seconds: float = 1.0,
    tolerant: bool = False,
) -> PrepResult:
    """Write ``out/{train,dev,test}`` for SUPERB keyword spotting (see the module doc).

    Strict (default): missing list entries, badly named clips, unreadable audio and
    test-set folders outside the 12 classes are collected and raised together. Tolerant:
    they are skipped and counted.
    """
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "Speech Commands folder not found")
    if silence_seconds <= 0:
        raise CorpusError("--silence-seconds", f"{silence_seconds} is not > 0")
    lists = {
        "dev": _read_list(root, "validation_list.txt"),
        "test": _read_list(root, "testing_list.txt"),
    }
    noise_dir = root / NOISE_DIR
    if not noise_dir.is_dir():
        raise CorpusError(
            str(noise_dir), "not found; the _silence_ class is cut from the background noise"
        )
    collect = ProblemCollector("speech commands", tolerant)
    splits: dict[str, dict[str, _Utt]] = {s: {} for s in SPLITS}
    left_out = 0

    word_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name != NOISE_DIR)
    word_dirs = [p for p in word_dirs if not p.name.startswith(".")]
    on_disk: set[str] = set()
    for word_dir in word_dirs:
        word = word_dir.name
        for wav in sorted(word_dir.glob("*.wav")):
            rel = f"{word}/{wav.name}"
            on_disk.add(rel)
            split = "dev" if rel in lists["dev"] else "test" if rel in lists["test"] else "train"
            m = _CLIP.match(wav.stem)
            if m is None:
                collect.bad(BadClipNameError(rel, "expected <hash>_nohash_<n>.wav", str(wav)))
                continue
            if split == "test" and test_set_dir is not None:
                left_out += 1
                continue
            utt = f"{m[1]}-{word}-{m[2]}"
            try:
                head = probe(AudioSource(path=str(wav)), utt=utt)
            except AudioError as err:
                collect.bad(err)
                continue
            keyword = word if word in KEYWORDS else UNKNOWN
            splits[split][utt] = _Utt(utt, wav, m[1], keyword, 0.0, head.duration)
            collect.written()
    for split, entries in lists.items():
        name = "validation_list.txt" if split == "dev" else "testing_list.txt"
        for rel, lineno in entries.items():
            if rel not in on_disk:
                collect.bad(
                    MissingAudioError(
                        rel, "listed clip has no audio file", f"{root / name}:{lineno}"
                    )
                )

    for wav in sorted(noise_dir.glob("*.wav")):
        reco = f"noise-{_safe(wav.stem)}"
        try:
            head = probe(AudioSource(path=str(wav)), utt=reco)
        except AudioError as err:
            collect.bad(err)
            continue
        n_clips = math.floor(head.duration / silence_seconds + 1e-9)
        for k in range(n_clips):
            slot = k % 10
            split = "dev" if slot == 8 else "test" if slot == 9 else "train"
            if split == "test" and test_set_dir is not None:
                split = "train"
            utt = f"{reco}-{k:04d}"
            start = k * silence_seconds
            splits[split][utt] = _Utt(reco, wav, reco, SILENCE, start, start + silence_seconds)
            collect.written()

    notes: list[str] = []
    if test_set_dir is not None:
        splits["test"] = _read_test_set(Path(test_set_dir).resolve(), collect)
        notes.append(
            f"test: the separate v0.01 test set {test_set_dir}; {left_out} testing_list.txt "
            "clips left out"
        )
    collect.raise_if_any()

    out_root = Path(out)
    for split in SPLITS:
        utts = splits[split]
        if not utts:
            raise CorpusError(split, f"no utterance for the {split} split")
        write_prepared(
            out_root / split,
            wav_scp={u.reco: str(u.path) for u in utts.values()},
            segments={utt: Segment(u.reco, u.start, u.end) for utt, u in utts.items()},
            utt2spk={utt: u.spk for utt, u in utts.items()},
            utt2dur={utt: u.end - u.start for utt, u in utts.items()},
            extra={"utt2keyword": {utt: u.keyword for utt, u in utts.items()}},
        )
        counts = Counter(u.keyword for u in utts.values())
        per_class = " ".join(f"{c}={counts[c]}" for c in CLASSES if counts[c])
        notes.append(f"{split}: {len(utts)} utterances ({per_class})")
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)


def _read_test_set(test_root: Path, collect: ProblemCollector) -> dict[str, _Utt]:
    """The v0.01 test set: ``<label>/<file>.wav`` with labels among the 12 classes."""
    if not test_root.is_dir():
        raise CorpusError(str(test_root), "Speech Commands test set folder not found")
    utts: dict[str, _Utt] = {}
    for label_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
        label = label_dir.name
        wavs = sorted(label_dir.glob("*.wav"))
        if label not in CLASSES:
            for wav in wavs:
                collect.bad(
                    UnknownClassError(
                        f"{label}/{wav.name}",
                        f"test-set folder {label!r} is not one of the 12 classes "
                        f"({' '.join(CLASSES)})",
                        str(wav),
                    )
                )
            continue
        for wav in wavs:
            m = _HASH.search(wav.stem)
            if m is not None:
                spk = m[1]
                utt = f"{spk}-{label}-{_safe(wav.stem)}"
            else:
                spk = utt = f"{label}-{_safe(wav.stem)}"
            try:
                head = probe(AudioSource(path=str(wav)), utt=utt)
            except AudioError as err:
                collect.bad(err)
                continue
            utts[utt] = _Utt(utt, wav, spk, label, 0.0, head.duration)
            collect.written()
    return utts
