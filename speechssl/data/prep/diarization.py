"""Kaldi diarization dirs (LibriMix style) -> speaker-diarization probing dirs.

Input ``ROOT/{train,dev,test}/``, as LibriMix-style diarization data is prepared: a Kaldi
data dir whose ``wav.scp`` holds the mixtures (recordings), ``segments`` and ``utt2spk`` the
speakers' turns, ``reco2dur`` each recording's length, and ``rttm`` the reference
(``SPEAKER <reco> <chan> <start> <dur> <NA> <NA> <spk> <NA> <NA>``). The ``rttm`` is the
reference used; every recording must have a ``reco2dur`` line, an RTTM line naming an
unknown recording or a turn past the end is an error naming ``file:line``.

Output ``OUT/{train,dev,test}/``: one utterance per recording (``wav.scp``, ``utt2spk``
= the recording, ``utt2dur``) and ``utt2activity``
(``<duration> <spk>:<start>-<end> ...``, :mod:`speechssl.downstream.tasks_superb2`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from speechssl.data.prep.common import CorpusError, PrepResult, ProblemCollector, write_prepared
from speechssl.data.tables import read_table

SPLITS = ("train", "dev", "test")


def parse_activity(value: str) -> tuple[float, list[tuple[str, float, float]]]:
    """``"<duration> <spk>:<start>-<end> ..."`` (seconds) -> ``(duration, turns)``."""
    fields = value.split()
    duration = float(fields[0])
    turns = []
    for f in fields[1:]:
        spk, _, span = f.rpartition(":")
        start, _, end = span.partition("-")
        turns.append((spk, float(start), float(end)))
    return duration, turns


def format_activity(duration: float, turns: Sequence[tuple[str, float, float]]) -> str:
    """The ``utt2activity`` value of a recording."""
    return " ".join([f"{duration:.3f}", *(f"{s}:{a:.3f}-{b:.3f}" for s, a, b in turns)])


def read_rttm(path: Path, known: dict[str, float]) -> dict[str, list[tuple[str, float, float]]]:
    """reco -> [(speaker, start, end)] from the SPEAKER lines of an RTTM."""
    turns: dict[str, list[tuple[str, float, float]]] = {r: [] for r in known}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        f = line.split()
        if not f or f[0] != "SPEAKER":
            continue
        where = f"{path}:{lineno}"
        if len(f) < 8:
            raise CorpusError(where, "a SPEAKER line needs at least 8 fields")
        reco, spk = f[1], f[7]
        try:
            start, dur = float(f[3]), float(f[4])
        except ValueError:
            raise CorpusError(where, f"start {f[3]!r} / duration {f[4]!r} not numbers") from None
        if reco not in known:
            raise CorpusError(where, f"recording {reco} is not in wav.scp")
        if dur <= 0 or start < 0 or start + dur > known[reco] + 0.01:
            raise CorpusError(
                where, f"turn {start:.3f}+{dur:.3f} s outside {reco} ({known[reco]:.3f} s)"
            )
        turns[reco].append((spk, start, min(start + dur, known[reco])))
    return turns


def prepare_diarization(
    corpus_dir: str | os.PathLike[str], out: str | os.PathLike[str]
) -> PrepResult:
    """Write ``out/{train,dev,test}`` for SUPERB speaker diarization (see the module doc)."""
    root = Path(corpus_dir)
    collect = ProblemCollector("diarization", False)
    notes = []
    for split in SPLITS:
        d = root / split
        for name in ("wav.scp", "reco2dur", "rttm"):
            if not (d / name).is_file():
                raise CorpusError(str(d), f"no {name} (a diarization dir has wav.scp, "
                                  "segments, utt2spk, reco2dur and rttm)")  # fmt: skip
        scp = read_table(d / "wav.scp")
        dur_raw = read_table(d / "reco2dur")
        missing = [r for r in scp if r not in dur_raw]
        if missing:
            raise CorpusError(missing[0], f"no line in {d / 'reco2dur'}")
        dur = {r: float(dur_raw[r]) for r in scp}
        turns = read_rttm(d / "rttm", dur)
        for r in scp:
            if len({s for s, _, _ in turns[r]}) > 2:
                raise CorpusError(r, f"more than 2 speakers in {d / 'rttm'} (the SD task has 2)")
            collect.written()
        write_prepared(
            Path(out) / split,
            wav_scp=scp,
            utt2spk={r: r for r in scp},
            utt2dur=dur,
            extra={"utt2activity": {r: format_activity(dur[r], turns[r]) for r in scp}},
        )
        notes.append(f"{split}: {len(scp)} recordings, {sum(map(len, turns.values()))} turns")
    collect.report.check()
    return PrepResult(Path(out), collect.report, notes)
