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
from typing import Any

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.prep.common import (
    CorpusError,
    CorpusProblems,
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


# --------------------------------------------------------------------------------------
# phone labels (SUPERB PR) from a pronunciation lexicon

_STRESS = re.compile(r"(?<=[A-Za-z])[012]$")


class MissingLexiconError(CorpusError):
    """The pronunciation lexicon the phone labels need is missing or unusable."""

    kind = "no-lexicon"


class OOVError(CorpusError):
    """A transcript word is not in the pronunciation lexicon."""

    kind = "oov"


def read_lexicon(
    path: str | os.PathLike[str], *, strip_stress: bool = False
) -> tuple[dict[str, list[str]], int]:
    """Read a lexicon in LibriSpeech's format, ``WORD PH1 PH2 ...`` (tab or spaces).

    Returns ``(word -> phones, number of alternative pronunciations ignored)``: the first
    pronunciation of a word is used, as Kaldi's ``lexicon.txt`` lists the preferred one
    first. ``strip_stress`` maps ``AH0``/``AH1``/``AH2`` to ``AH``.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingLexiconError(
            str(p),
            "pronunciation lexicon not found; phone labels need one in LibriSpeech's format "
            "'WORD PH1 PH2 ...' (e.g. librispeech-lexicon.txt from openslr.org/11), "
            "given with --lexicon",
        )
    lexicon: dict[str, list[str]] = {}
    alternatives = 0
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise MissingLexiconError(
                    parts[0], "lexicon line has a word but no phones", f"{p}:{lineno}"
                )
            phones = [_STRESS.sub("", ph) for ph in parts[1:]] if strip_stress else parts[1:]
            if parts[0] in lexicon:
                alternatives += 1
                continue
            lexicon[parts[0]] = phones
    if not lexicon:
        raise MissingLexiconError(str(p), "lexicon is empty")
    return lexicon, alternatives


def prepare_librispeech_phones(
    corpus_dir: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    lexicon: str | os.PathLike[str],
    *,
    strip_stress: bool = False,
    skip_oov: bool = False,
    tolerant: bool = False,
    per_chapter_speakers: bool = False,
) -> PrepResult:
    """:func:`prepare_librispeech` plus ``utt2phones`` (SUPERB PR targets) from ``lexicon``.

    Each transcript word is looked up in the lexicon (exactly as written, LibriSpeech's
    upper case) and the phones are concatenated. A word missing from the lexicon is an
    :class:`OOVError` naming the utterance and the word, all of them raised together; with
    ``skip_oov`` those utterances are left out of the data dir and reported as skipped.
    """
    import tempfile

    from speechssl.data.kaldi_dir import KaldiDataDir

    lex_path = Path(lexicon)
    words_to_phones, alternatives = read_lexicon(lex_path, strip_stress=strip_stress)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        base = prepare_librispeech(
            corpus_dir,
            split,
            Path(tmp) / "dir",
            tolerant=tolerant,
            per_chapter_speakers=per_chapter_speakers,
        )
        kd = KaldiDataDir(base.out)
        text = kd.text or {}
        report = base.report
        phones: dict[str, str] = {}
        problems: list[OOVError] = []
        for utt, words in text.items():
            oov = [w for w in words.split() if w not in words_to_phones]
            if oov:
                problems.append(
                    OOVError(utt, f"words not in the lexicon {lex_path.name}: {' '.join(oov)}")
                )
                continue
            phones[utt] = " ".join(ph for w in words.split() for ph in words_to_phones[w])
        if problems and not skip_oov:
            raise CorpusProblems(
                f"librispeech {split} phones",
                list(problems),
                remedy="add the words to the lexicon or use --skip-oov",
            )
        for err in problems:
            # the utterance was counted as written by the base pass; move it to skipped
            report.loaded -= 1
            report.seen -= 1
            report.add_skipped(err)
        keep = set(phones)

        def subset(table: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if table is None else {u: v for u, v in table.items() if u in keep}

        utt2spk = subset(kd.utt2spk) or {}
        spk2gender = kd.spk2gender
        if spk2gender is not None:
            kept_spk = set(utt2spk.values())
            spk2gender = {s: g for s, g in spk2gender.items() if s in kept_spk}
        write_prepared(
            target,
            wav_scp=subset(kd.wav_scp) or {},
            utt2spk=utt2spk,
            text=subset(text),
            utt2dur=subset(kd.utt2dur),
            utt2num_samples=subset(kd.utt2num_samples),
            spk2gender=spk2gender,
            extra={"utt2phones": phones},
        )
    report.check()
    notes = list(base.notes)
    if alternatives:
        notes.append(f"{alternatives} alternative pronunciations in the lexicon ignored")
    return PrepResult(target, report, notes)


def write_phone_inventory(
    lexicon: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    strip_stress: bool = False,
) -> int:
    """Write every phone of ``lexicon`` (all pronunciations), one symbol per line, sorted
    (the PR task's ``phones.txt``: the full phone set, not only the training set's).
    Returns the number of phones."""
    from speechssl.utils.atomic import atomic_write_text

    p = Path(lexicon)
    read_lexicon(p, strip_stress=strip_stress)  # the same checks and errors
    phones: set[str] = set()
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            for ph in line.split()[1:]:
                phones.add(_STRESS.sub("", ph) if strip_stress else ph)
    atomic_write_text(path, "".join(f"{ph}\n" for ph in sorted(phones)))
    return len(phones)
