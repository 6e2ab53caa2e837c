"""``speechssl data validate``: every check of Kaldi's ``validate_data_dir.sh``, and audio.

Text checks (every level), as in Kaldi: each table ends lines with ``\\n`` (no blank lines,
no CR; beyond Kaldi, no UTF-8 byte order mark), keys are ``LC_ALL=C`` sorted and unique,
lines have the right number of fields; ``utt2spk`` and ``spk2utt`` exist, agree, and
``utt2spk`` is sorted by speaker too; every per-utterance file holds the same utterances as
``utt2spk``; ``segments`` lines are
``utt reco start end`` with ``0 <= start < end``, their recordings are exactly those of
``wav.scp`` (and of ``reco2dur`` / ``reco2file_and_channel``); ``text`` is UTF-8 without CR,
unusual whitespace, control characters or the reserved symbols ``<s> </s> <eps> #0 #1 ...``;
``wav.scp`` has no ``~`` paths; ``utt2dur`` / ``reco2dur`` are positive,
``utt2num_samples`` / ``utt2num_frames`` positive integers, ``spk2gender`` is ``m``/``f``,
``utt2warp`` / ``spk2warp`` in (0.5, 1.5), ``reco2file_and_channel`` channels ``A``/``B``;
speaker files cover exactly the speakers of ``spk2utt``. Beyond Kaldi: ``utt2dur`` agrees
with ``segments`` and ``reco2dur``, segments end inside ``reco2dur``, shell-command
entries need ``--allow-pipes``.

Audio checks (default level, headers only; sampled on big dirs, parallel with ``nj``): each
recording exists, decodes, is not empty or truncated, its sample rate (against the expected
one, or mixed rates), channel count, and duration against ``reco2dur`` / ``utt2dur`` /
``utt2num_samples`` and the segments cut from it. ``strict`` decodes every recording
fully and also finds NaN/inf samples and all-zero recordings or segments.

Memory stays bounded on million-utterance dirs: tables are streamed, key lists are compared
through digests of the sorted keys (a merge of the two files runs only when they differ),
``utt2spk``/``spk2utt`` agreement through an order-free hash of the pairs.

Layout: :mod:`.report` (options, problems, the report), :mod:`.scan` (the streaming table
scanner and key-set comparison every rule uses), :mod:`.rules` (one ``check_*`` function
per table or rule, run in :data:`~speechssl.data.validate.rules.RULES` order) and
:mod:`.audio` (the audio rules, in worker processes). Every problem names the file, the
line (when there is one) and the key.
"""

from __future__ import annotations

from pathlib import Path

from speechssl.data.tables import iter_rows
from speechssl.data.validate.report import (
    ERROR,
    LEVELS,
    WARNING,
    Problem,
    ValidateOptions,
    ValidationReport,
)
from speechssl.data.validate.rules import RULES
from speechssl.data.validate.scan import DirCheck, TableScan, merge_join
from speechssl.errors import DataDirError


def validate_data_dir(path: str | Path, opts: ValidateOptions | None = None) -> ValidationReport:
    """Validate a data dir; returns the report (``report.ok`` is false on any error)."""
    opts = opts or ValidateOptions()
    ddir = Path(path)
    if not ddir.is_dir():
        raise DataDirError(str(ddir), "data directory does not exist")
    check = DirCheck(ddir, opts, ValidationReport(str(ddir), keep_per_code=opts.keep_per_code))
    for rule in RULES:
        rule(check)
    return check.report


__all__ = [
    "ERROR",
    "LEVELS",
    "RULES",
    "WARNING",
    "DirCheck",
    "Problem",
    "TableScan",
    "ValidateOptions",
    "ValidationReport",
    "iter_rows",
    "merge_join",
    "validate_data_dir",
]
