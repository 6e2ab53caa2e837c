"""QUESST 2014 (English part) -> query-by-example task root (SUPERB QbE protocol).

The layout read::

    ROOT/Audio/<doc>.wav                       the search utterances
    ROOT/dev_queries/<query>.wav               ROOT/eval_queries/<query>.wav
    ROOT/language_key_utterances.lst           "<path> <language>" per search utterance
    ROOT/language_key_dev.lst                  the same for the dev queries
    ROOT/language_key_eval.lst                 ... and the eval queries
    ROOT/scoring/groundtruth_quesst14_<split>/quesst14_<split>.rttm
                                               LEXEME lines: field 2 the document,
                                               field 6 the query that occurs in it

As in SUPERB, only the lines whose language is ``nnenglish`` are kept. A list path is taken
relative to ROOT, or, if no file is there, with its first component dropped (the lists name
``<database dir>/Audio/...``). Output ``OUT/{dev,test}/queries`` (eval -> test),
``OUT/{dev,test}/docs`` (the English search utterances, the same for both) and
``OUT/{dev,test}/hits`` (``<query> <doc>``, from the ground-truth RTTM), the layout of
:mod:`speechssl.downstream.qbe`.
"""

from __future__ import annotations

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
from speechssl.utils.atomic import atomic_write_text

LANGUAGE = "nnenglish"
SPLITS = {"dev": "dev", "test": "eval"}


def _resolve(root: Path, rel: str) -> Path:
    direct = root / rel
    if direct.is_file():
        return direct
    parts = Path(rel).parts
    return root / Path(*parts[1:]) if len(parts) > 1 else direct


def _read_list(root: Path, name: str, collect: ProblemCollector) -> dict[str, tuple[str, float]]:
    """English entries of a language key list: utt -> (wav path, seconds)."""
    path = root / name
    if not path.is_file():
        raise CorpusError(str(path), "not found (a QUESST 2014 language key list)")
    out: dict[str, tuple[str, float]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            collect.bad(MalformedTranscriptError(where, "expected '<path> <language>'", where))
            continue
        if parts[1] != LANGUAGE:
            continue
        wav = _resolve(root, parts[0])
        utt = Path(parts[0]).stem
        if not wav.is_file():
            collect.bad(MissingAudioError(parts[0], "listed file has no audio", where))
            continue
        try:
            head = probe(AudioSource(path=str(wav)), utt=utt)
        except AudioError as err:
            collect.bad(err)
            continue
        out[utt] = (str(wav.resolve()), head.duration)
        collect.written()
    return out


def _read_hits(path: Path, queries: dict[str, object], docs: dict[str, object]) -> list[str]:
    if not path.is_file():
        raise CorpusError(str(path), "not found (the ground truth of the split)")
    lines = set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        f = line.split()
        if not f or f[0] != "LEXEME":
            continue
        if len(f) < 6:
            raise CorpusError(f"{path}:{lineno}", "a LEXEME line needs at least 6 fields")
        doc, query = f[1], f[5]
        if query in queries and doc in docs:  # other languages' lines are not ours
            lines.add(f"{query} {doc}")
    return sorted(lines)


def prepare_quesst14(
    corpus_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, tolerant: bool = False
) -> PrepResult:
    """Write ``out/{dev,test}/{queries,docs,hits}`` (see the module doc)."""
    root = Path(corpus_dir).resolve()
    if not root.is_dir():
        raise CorpusError(str(root), "QUESST 2014 folder not found")
    collect = ProblemCollector("quesst14", tolerant)
    docs = _read_list(root, "language_key_utterances.lst", collect)
    queries = {s: _read_list(root, f"language_key_{n}.lst", collect) for s, n in SPLITS.items()}
    collect.raise_if_any()
    notes: list[str] = []
    out_root = Path(out)
    for split, name in SPLITS.items():
        truth = root / "scoring" / f"groundtruth_quesst14_{name}" / f"quesst14_{name}.rttm"
        hits = _read_hits(truth, dict(queries[split]), dict(docs))
        for part, members in (("queries", queries[split]), ("docs", docs)):
            if not members:
                raise CorpusError(split, f"no English {part} for the {split} split")
            write_prepared(
                out_root / split / part,
                wav_scp={u: m[0] for u, m in members.items()},
                utt2spk={u: u for u in members},
                utt2dur={u: m[1] for u, m in members.items()},
            )
        atomic_write_text(out_root / split / "hits", "".join(f"{h}\n" for h in hits))
        notes.append(
            f"{split}: {len(queries[split])} queries, {len(docs)} documents, {len(hits)} hits"
        )
    collect.report.check()
    return PrepResult(out_root, collect.report, notes)
