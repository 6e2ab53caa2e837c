"""LibriSpeech -> Kaldi data dir.

The real layout (``ROOT`` is the folder holding ``LibriSpeech/``, or ``LibriSpeech/``
itself)::

    ROOT/LibriSpeech/SPEAKERS.TXT                      ";"-comments, then "ID | SEX | ..."
    ROOT/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac
    ROOT/LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>.trans.txt   "<utt-id> TEXT"

Output: ``wav.scp`` (absolute flac paths), ``text``, ``utt2spk`` (speaker = reader id, or
``<spk>-<chapter>`` as in Kaldi's recipe with ``per_chapter_speakers``), ``spk2utt``,
``utt2dur`` and ``utt2num_samples`` from the flac headers, ``spk2gender`` from
``SPEAKERS.TXT`` when it covers every speaker. Utterance ids start with the speaker id, so
``utt2spk`` is sorted both ways.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.prep.common import (
    MalformedTranscriptError,
    MissingAudioError,
    MissingTranscriptError,
    PrepResult,
    ProblemCollector,
    find_dir,
    write_prepared,
)

_UTT_ID = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def read_speakers_txt(path: Path) -> dict[str, str]:
    """``{speaker id: 'm' | 'f'}`` from LibriSpeech's SPEAKERS.TXT (unknown lines skipped)."""
    genders: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(";") or "|" not in line:
                continue
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 2 and parts[1].upper() in ("M", "F"):
                genders[parts[0]] = parts[1].lower()
    return genders


def prepare_librispeech(
    corpus_dir: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    *,
    tolerant: bool = False,
    per_chapter_speakers: bool = False,
) -> PrepResult:
    """Prepare ``split`` (e.g. ``train-clean-100``) of LibriSpeech under ``corpus_dir``.

    Strict (default): every missing/extra file and unreadable flac is collected and raised
    together as :class:`~speechssl.data.prep.common.CorpusProblems`. Tolerant: those
    utterances are skipped and counted in the result's report.
    """
    root = Path(corpus_dir).resolve()
    split_dir = find_dir([root / "LibriSpeech" / split, root / split], f"LibriSpeech split {split}")
    collect = ProblemCollector(f"librispeech {split}", tolerant)
    wav_scp: dict[str, str] = {}
    text: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    utt2dur: dict[str, float] = {}
    utt2num: dict[str, int] = {}
    reader_of: dict[str, str] = {}
    for spk_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for chapter_dir in sorted(p for p in spk_dir.iterdir() if p.is_dir()):
            stem = f"{spk_dir.name}-{chapter_dir.name}"
            flacs = {p.stem: p for p in chapter_dir.glob("*.flac")}
            trans_path = chapter_dir / f"{stem}.trans.txt"
            transcripts: dict[str, tuple[str, int]] = {}
            if trans_path.is_file():
                with open(trans_path, encoding="utf-8") as fh:
                    for lineno, line in enumerate(fh, start=1):
                        where = f"{trans_path}:{lineno}"
                        parts = line.strip().split(maxsplit=1)
                        if not parts:
                            continue
                        utt = parts[0]
                        m = _UTT_ID.match(utt)
                        if len(parts) < 2 or m is None or f"{m[1]}-{m[2]}" != stem:
                            why = (
                                "no transcript text"
                                if len(parts) < 2 and m is not None
                                else f"expected '{stem}-NNNN TEXT'"
                            )
                            collect.bad(MalformedTranscriptError(utt, why, where))
                            flacs.pop(utt, None)
                            continue
                        if utt in transcripts:
                            collect.bad(
                                MalformedTranscriptError(utt, "transcript given twice", where)
                            )
                            continue
                        transcripts[utt] = (parts[1], lineno)
            for utt, (words, lineno) in transcripts.items():
                flac = flacs.pop(utt, None)
                if flac is None:
                    collect.bad(
                        MissingAudioError(
                            utt,
                            f"transcript line has no audio file {utt}.flac",
                            f"{trans_path}:{lineno}",
                        )
                    )
                    continue
                try:
                    head = probe(AudioSource(path=str(flac)), utt=utt)
                except AudioError as err:
                    collect.bad(err)
                    continue
                spk = stem if per_chapter_speakers else spk_dir.name
                wav_scp[utt] = str(flac)
                text[utt] = words
                utt2spk[utt] = spk
                utt2dur[utt] = head.duration
                utt2num[utt] = head.frames
                reader_of[spk] = spk_dir.name
                collect.written()
            for utt, flac in sorted(flacs.items()):
                reason = (
                    "audio file has no transcript line"
                    if trans_path.is_file()
                    else f"audio file has no transcript: {trans_path.name} is missing"
                )
                collect.bad(MissingTranscriptError(utt, reason, str(flac)))
    collect.raise_if_any()
    result_notes: list[str] = []
    spk2gender: dict[str, str] | None = None
    speakers_txt = split_dir.parent / "SPEAKERS.TXT"
    if speakers_txt.is_file():
        genders = read_speakers_txt(speakers_txt)
        missing = sorted({r for r in reader_of.values() if r not in genders})
        if missing:
            result_notes.append(
                f"no spk2gender: {speakers_txt} lacks speakers {' '.join(missing[:10])}"
            )
        else:
            spk2gender = {spk: genders[reader] for spk, reader in reader_of.items()}
    else:
        result_notes.append(f"no spk2gender: {speakers_txt} not found")
    target = write_prepared(
        out,
        wav_scp=wav_scp,
        utt2spk=utt2spk,
        text=text,
        utt2dur=utt2dur,
        utt2num_samples=utt2num,
        spk2gender=spk2gender,
    )
    collect.report.check()
    return PrepResult(target, collect.report, result_notes)
