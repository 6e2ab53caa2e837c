"""IEMOCAP -> emotion-recognition fold roots (SUPERB ER protocol, 5 session folds).

The real layout::

    ROOT/Session{1..5}/sentences/wav/<dialog>/<utt>.wav         16 kHz mono
    ROOT/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt        one line per utterance:
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

(the other lines of an EmoEvaluation file -- the annotators' ``C-E1:`` votes, ``A-E1:``
dimensions, headers and blanks -- are not label lines and are ignored).

SUPERB's task keeps four classes: ``neu``, ``hap`` (with ``exc`` merged into it), ``ang`` and
``sad``. Utterances with the other labels (``fru sur fea dis oth xxx``) are left out by the
task definition; the preparer counts them per label in its notes (nothing is dropped
silently). Fold ``k`` (``OUT/fold<k>/``): ``test`` is Session ``k``; ``train`` and ``dev``
are the other four sessions' utterances, of which a seeded random ``dev_ratio`` (SUPERB:
20 %, not speaker-disjoint) goes to ``dev``. Each split is a data dir with ``wav.scp``,
``utt2spk`` (``Ses01F`` for ``Ses01F_impro01_M013``: the dialog's session and lead
actor, as s3prl names speakers), ``utt2dur`` and ``utt2emotion`` (the 4-class label, see
:mod:`speechssl.downstream.tasks_superb3`).

Strict (default): a dialog folder without its EmoEvaluation file, a wav without a label
line, a labelled utterance (of a kept class) without a wav, a label IEMOCAP does not
define, unreadable audio and a sample rate other than 16 kHz are collected and raised
together; tolerant: skipped and counted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from speechssl.data.audio import AudioError, AudioSampleRateError, AudioSource, probe
from speechssl.data.prep.common import (
    BadMetadataError,
    CorpusError,
    MissingAudioError,
    MissingMetadataError,
    MissingTranscriptError,
    PrepResult,
    ProblemCollector,
    write_prepared,
)

SESSIONS = (1, 2, 3, 4, 5)
SAMPLE_RATE = 16000
#: the task's classes (after merging ``exc`` into ``hap``)
EMOTIONS: tuple[str, ...] = ("ang", "hap", "neu", "sad")
MERGED = {"exc": "hap"}
#: labels IEMOCAP's annotation uses that SUPERB's 4-class task leaves out
EXCLUDED: tuple[str, ...] = ("dis", "fea", "fru", "oth", "sur", "xxx")
LABEL_FILE = "utt2emotion"
_LINE = re.compile(r"^\[\s*[0-9.]+\s*-\s*[0-9.]+\s*\]\t(\S+)\t(\S+)\t")


def read_emo_evaluation(path: Path) -> dict[str, tuple[str, int]]:
    """``{utterance: (label, line number)}`` of one EmoEvaluation file."""
    out: dict[str, tuple[str, int]] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            m = _LINE.match(line)
            if m:
                out[m.group(1)] = (m.group(2), lineno)
    return out


def speaker_of(utt: str) -> str:
    """``Ses01F_impro01_M013`` -> ``Ses01F``: the dialog's session and lead actor, as s3prl
    groups them (a Kaldi speaker id must prefix its utterance ids; the turn's own actor is
    the last part's letter, here M)."""
    return utt.split("_", 1)[0]


def prepare_iemocap(
    corpus_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dev_ratio: float = 0.2,
    seed: int = 0,
    tolerant: bool = False,
) -> PrepResult:
    """Write ``out/fold{1..5}/{train,dev,test}`` for SUPERB emotion recognition (see the
    module doc)."""
    if not 0.0 < dev_ratio < 1.0:
        raise CorpusError("--dev-ratio", f"must be between 0 and 1, got {dev_ratio}")
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "IEMOCAP folder (IEMOCAP_full_release) not found")
    collect = ProblemCollector("iemocap", tolerant)
    excluded: dict[str, int] = {}
    # session -> utt -> (wav, speaker, label, duration)
    kept: dict[int, dict[str, tuple[str, str, str, float]]] = {}
    for session in SESSIONS:
        sdir = root / f"Session{session}"
        wav_root = sdir / "sentences" / "wav"
        label_dir = sdir / "dialog" / "EmoEvaluation"
        if not wav_root.is_dir():
            raise CorpusError(str(wav_root), f"not found (session {session}'s utterance audio)")
        kept[session] = {}
        for dialog in sorted(p for p in wav_root.iterdir() if p.is_dir()):
            wavs = {w.stem: w for w in sorted(dialog.glob("*.wav")) if not w.name.startswith(".")}
            label_path = label_dir / f"{dialog.name}.txt"
            if not label_path.is_file():
                reason = f"no EmoEvaluation file for the {len(wavs)} utterance(s) of {dialog.name}"
                collect.bad(MissingMetadataError(str(label_path), reason))
                continue
            labels = read_emo_evaluation(label_path)
            for utt in sorted(set(wavs) - set(labels)):
                collect.bad(
                    MissingTranscriptError(utt, "no label line", str(label_path))
                )  # fmt: skip
            for utt, (raw, lineno) in labels.items():
                where = f"{label_path}:{lineno}"
                label = MERGED.get(raw, raw)
                if label not in EMOTIONS:
                    if raw in EXCLUDED:
                        excluded[raw] = excluded.get(raw, 0) + 1
                    else:
                        collect.bad(BadMetadataError(
                            utt, f"emotion label {raw!r} is not one of IEMOCAP's "
                            f"{', '.join(sorted((*EMOTIONS, *MERGED, *EXCLUDED)))}", where,
                        ))  # fmt: skip
                    continue
                wav = wavs.get(utt)
                if wav is None:
                    collect.bad(
                        MissingAudioError(utt, f"labelled but no {dialog / utt}.wav", where)
                    )
                    continue
                try:
                    head = probe(AudioSource(path=str(wav)), utt=utt)
                except AudioError as err:
                    collect.bad(err)
                    continue
                if head.sample_rate != SAMPLE_RATE:
                    collect.bad(AudioSampleRateError(
                        utt, f"sample rate {head.sample_rate} Hz, IEMOCAP's is {SAMPLE_RATE}",
                        str(wav),
                    ))  # fmt: skip
                    continue
                kept[session][utt] = (str(wav), speaker_of(utt), label, head.duration)
                collect.written()
    collect.raise_if_any()
    for session, utts in kept.items():
        if not utts:
            raise CorpusError(f"Session{session}", "no utterance of the 4 emotion classes")

    out_root = Path(out)
    notes = [
        "left out by the task definition (labels other than neu/hap/exc/ang/sad): "
        + (", ".join(f"{k} {v}" for k, v in sorted(excluded.items())) or "none")
    ]
    for fold in SESSIONS:
        test = kept[fold]
        pool = sorted(u for s, utts in kept.items() if s != fold for u in utts)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pool))
        n_dev = max(1, round(dev_ratio * len(pool)))
        dev_set = {pool[i] for i in order[:n_dev]}
        everything = {u: r for utts in kept.values() for u, r in utts.items()}
        splits = {
            "train": {u: everything[u] for u in pool if u not in dev_set},
            "dev": {u: everything[u] for u in pool if u in dev_set},
            "test": test,
        }
        counts = []
        for split, utts in splits.items():
            if not utts:
                raise CorpusError(f"fold{fold}/{split}", "no utterance (too small a corpus)")
            write_prepared(
                out_root / f"fold{fold}" / split,
                wav_scp={u: r[0] for u, r in utts.items()},
                utt2spk={u: r[1] for u, r in utts.items()},
                utt2dur={u: r[3] for u, r in utts.items()},
                extra={LABEL_FILE: {u: r[2] for u, r in utts.items()}},
            )
            counts.append(f"{split} {len(utts)}")
        notes.append(f"fold{fold} (test = Session{fold}): {', '.join(counts)} utterances")
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)
