"""Fluent Speech Commands -> intent-classification data dirs (SUPERB IC protocol).

The real layout::

    ROOT/wavs/speakers/<speakerId>/<file>.wav        16 kHz mono
    ROOT/data/{train,valid,test}_data.csv            header with at least the columns
                                                     path,speakerId,transcription,
                                                     action,object,location
                                                     (the released files also have an
                                                     unnamed index column first)

``path`` is relative to ROOT (``wavs/speakers/<spk>/<file>.wav``). Output
``OUT/{train,dev,test}/`` (``valid`` becomes ``dev``): ``wav.scp``, ``utt2spk`` (the
``speakerId``), ``utt2dur``, ``text`` (the transcription) and ``utt2intent``
(``<action>|<object>|<location>``, see :mod:`speechssl.downstream.tasks_superb2`).
Utterance ids are ``<speakerId>-<file stem>``.

Strict (default): a row without its audio file, a row with an empty field, unreadable audio
and a repeated utterance are collected and raised together; tolerant: skipped and counted.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.prep.common import (
    CorpusError,
    MalformedTranscriptError,
    MissingAudioError,
    PrepResult,
    ProblemCollector,
    write_prepared,
)

CSV_SPLITS = {"train": "train_data.csv", "dev": "valid_data.csv", "test": "test_data.csv"}
COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
INTENT_SLOTS: tuple[str, ...] = ("action", "object", "location")
SLOT_SEP = "|"


def intent_label(action: str, obj: str, location: str) -> str:
    """The ``utt2intent`` value of one utterance: ``<action>|<object>|<location>``."""
    values = (action.strip(), obj.strip(), location.strip())
    for slot, v in zip(INTENT_SLOTS, values):
        if not v or SLOT_SEP in v:
            raise ValueError(f"{slot} value {v!r} is empty or holds {SLOT_SEP!r}")
    return SLOT_SEP.join(values)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def prepare_fluent_speech_commands(
    corpus_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tolerant: bool = False,
) -> PrepResult:
    """Write ``out/{train,dev,test}`` for SUPERB intent classification (see the module doc)."""
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "Fluent Speech Commands folder not found")
    collect = ProblemCollector("fluent speech commands", tolerant)
    notes: list[str] = []
    rows: dict[str, dict[str, tuple[str, str, str, str, float]]] = {}
    seen: set[str] = set()
    for split, name in CSV_SPLITS.items():
        path = root / "data" / name
        if not path.is_file():
            raise CorpusError(str(path), f"not found (the {split} list of the corpus)")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CorpusError(str(path), f"no column(s) {', '.join(missing)} in the header")
            rows[split] = {}
            for lineno, row in enumerate(reader, start=2):
                where = f"{path}:{lineno}"
                empty = [c for c in COLUMNS if not (row.get(c) or "").strip()]
                rel = (row.get("path") or "").strip()
                if empty:
                    collect.bad(MalformedTranscriptError(rel or where, f"empty {empty[0]}", where))
                    continue
                spk = row["speakerId"].strip()
                utt = f"{_safe(spk)}-{_safe(Path(rel).stem)}"
                if utt in seen:
                    collect.bad(MalformedTranscriptError(utt, "listed twice", where))
                    continue
                seen.add(utt)
                wav = root / rel
                if not wav.is_file():
                    collect.bad(MissingAudioError(rel, "listed row has no audio file", where))
                    continue
                try:
                    label = intent_label(row["action"], row["object"], row["location"])
                except ValueError as err:
                    collect.bad(MalformedTranscriptError(utt, str(err), where))
                    continue
                try:
                    head = probe(AudioSource(path=str(wav)), utt=utt)
                except AudioError as err:
                    collect.bad(err)
                    continue
                text = " ".join(row["transcription"].split())
                rows[split][utt] = (str(wav), _safe(spk), text, label, head.duration)
                collect.written()
    collect.raise_if_any()

    out_root = Path(out)
    for split, utts in rows.items():
        if not utts:
            raise CorpusError(split, f"no utterance for the {split} split")
        write_prepared(
            out_root / split,
            wav_scp={u: r[0] for u, r in utts.items()},
            utt2spk={u: r[1] for u, r in utts.items()},
            text={u: r[2] for u, r in utts.items()},
            utt2dur={u: r[4] for u, r in utts.items()},
            extra={"utt2intent": {u: r[3] for u, r in utts.items()}},
        )
        intents = len({r[3] for r in utts.values()})
        notes.append(f"{split}: {len(utts)} utterances, {intents} intents")
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)
