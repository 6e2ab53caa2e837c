"""What the corpus preparers share: named layout errors, skip accounting, atomic output."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from speechssl.data.audio import SkipReport
from speechssl.data.kaldi_dir import Segment, write_data_dir
from speechssl.data.validate import ValidateOptions, validate_data_dir
from speechssl.errors import DataDirError, ItemError
from speechssl.utils.atomic import atomic_dir


class CorpusError(DataDirError):
    """The corpus on disk does not have the expected layout."""

    kind = "corpus"


class MissingAudioError(CorpusError):
    """A transcript line or metadata file has no audio file."""

    kind = "no-audio"


class MissingTranscriptError(CorpusError):
    """An audio file has no transcript line."""

    kind = "no-transcript"


class MalformedTranscriptError(CorpusError):
    """A transcript line cannot be parsed."""

    kind = "bad-transcript"


class MissingMetadataError(CorpusError):
    """An audio file has no metadata file."""

    kind = "no-metadata"


class BadMetadataError(CorpusError):
    """A metadata file cannot be parsed."""

    kind = "bad-metadata"


class CorpusProblems(CorpusError):
    """Strict preparation found problems; ``problems`` holds every one of them."""

    def __init__(
        self,
        item: str,
        problems: list[ItemError],
        remedy: str = "fix the corpus or use --tolerant",
    ) -> None:
        self.problems = problems
        first = "; ".join(str(p) for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__(item, f"{len(problems)} problems, e.g. {first}{more}; {remedy}")


@dataclass
class PrepResult:
    """What a preparer wrote and skipped."""

    out: Path
    report: SkipReport
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"skipped {item}: {msg}" for item, _, msg in self.report.skipped]
        out += [f"note: {n}" for n in self.notes]
        out.append(f"{self.report.summary()} -> {self.out}")
        return out


class ProblemCollector:
    """Strict: gather every problem and raise them together. Tolerant: skip and count."""

    def __init__(self, what: str, tolerant: bool) -> None:
        self.what = what
        self.tolerant = tolerant
        self.report = SkipReport(what=what)
        self.problems: list[ItemError] = []

    def written(self) -> None:
        self.report.add_loaded()

    def bad(self, err: ItemError) -> None:
        if self.tolerant:
            self.report.add_skipped(err)
        else:
            self.report.seen += 1
            self.problems.append(err)

    def raise_if_any(self) -> None:
        if self.problems:
            raise CorpusProblems(self.what, self.problems)


def find_dir(candidates: list[Path], what: str) -> Path:
    for cand in candidates:
        if cand.is_dir():
            return cand
    looked = ", ".join(str(c) for c in candidates)
    raise CorpusError(what, f"not found; looked for {looked}")


def write_prepared(
    out: str | os.PathLike[str],
    *,
    wav_scp: Mapping[str, str],
    utt2spk: Mapping[str, str],
    text: Mapping[str, str] | None = None,
    segments: Mapping[str, Segment] | None = None,
    utt2dur: Mapping[str, float] | None = None,
    utt2num_samples: Mapping[str, int] | None = None,
    reco2dur: Mapping[str, float] | None = None,
    spk2gender: Mapping[str, str] | None = None,
    extra: Mapping[str, Mapping[str, str]] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write the data dir under a temporary name, validate it, rename it onto ``out``.

    ``extra``: more keyed tables by file name (label files such as ``utt2phones``);
    ``files``: other files by name and full text (e.g. a ``trials`` list).

    An existing ``out`` is replaced only if it looks like a data dir (has ``wav.scp``) or is
    empty, so a mistyped ``--out`` never wipes unrelated files.
    """
    target = Path(out)
    if target.exists():
        if not target.is_dir():
            raise CorpusError(str(target), "--out exists and is not a directory")
        if any(target.iterdir()) and not (target / "wav.scp").is_file():
            raise CorpusError(
                str(target),
                "--out exists, is not empty and is not a data dir; refusing to replace it",
            )
    if not utt2spk:
        raise CorpusError(str(target), "nothing to write: no utterance was prepared")
    with atomic_dir(target, overwrite=True) as tmp:
        write_data_dir(
            tmp,
            wav_scp=wav_scp,
            utt2spk=utt2spk,
            text=text,
            segments=segments,
            utt2dur=utt2dur,
            utt2num_samples=utt2num_samples,
            reco2dur=reco2dur,
            spk2gender=spk2gender,
            extra=extra,
        )
        for name, content in (files or {}).items():
            (tmp / name).write_text(content, encoding="utf-8")
        # headers were read while preparing; the text-level checks make sure the tables agree
        report = validate_data_dir(tmp, ValidateOptions(level="fast"))
        if not report.ok:
            raise CorpusError(
                str(target), "prepared dir failed validation: " + "; ".join(report.lines(3)[:5])
            )
    return target
