"""``speechssl data validate | fix | info``: check, repair and describe a Kaldi data dir."""

from __future__ import annotations

import argparse
import json
import sys


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "validate",
        help="check a data dir (Kaldi's validate_data_dir.sh checks, plus the audio)",
        description=(
            "Check a Kaldi data dir. Every problem is printed as 'severity: file:line: key: "
            "reason [kind]'; the exit status is 1 if there is any error (warnings alone: 0). "
            "A UTF-8 byte order mark at the start of a line is reported as [bom] ('speechssl "
            "data fix' strips it)."
        ),
    )
    p.add_argument("dir", help="data directory")
    level = p.add_mutually_exclusive_group()
    level.add_argument(
        "--fast", dest="level", action="store_const", const="fast", help="text files only"
    )
    level.add_argument(
        "--strict",
        dest="level",
        action="store_const",
        const="strict",
        help="decode all audio (NaN/inf, all-zero, truncation); default: headers only",
    )
    p.set_defaults(level="default")
    p.add_argument("--nj", type=int, default=1, help="processes for the audio checks")
    p.add_argument(
        "--audio-sample",
        type=int,
        default=None,
        metavar="N",
        help="check the audio of N random recordings (default 10000; --strict: all; 0: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the audio sample")
    p.add_argument(
        "--sample-rate", type=int, default=None, help="expected sample rate (others are errors)"
    )
    p.add_argument("--allow-pipes", action="store_true", help="accept 'cmd |' wav.scp entries")
    p.add_argument("--require-text", action="store_true", help="a missing text file is an error")
    p.add_argument(
        "--no-spk-sort",
        dest="spk_sort",
        action="store_false",
        help="utt2spk not sorted by speaker is a warning, not an error",
    )
    p.add_argument("--non-print", action="store_true", help="allow control characters in text")
    p.add_argument(
        "--max-per-kind",
        type=int,
        default=20,
        metavar="N",
        help="print at most N problems of each kind per file (0: all); all are counted",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_validate)

    p = verbs.add_parser(
        "fix",
        help="sort, drop utterances missing from any file, regenerate spk2utt (backs up first)",
        description=(
            "Make a data dir consistent, like Kaldi's fix_data_dir.sh: sort every table, drop "
            "malformed and repeated lines, keep only utterances present in every "
            "per-utterance file and the recordings/speakers they use, regenerate spk2utt; a "
            "UTF-8 byte order mark at the start of a line is stripped. Originals are copied "
            "to DIR/.backup/ (then .backup.1/, ...); audio is never touched. A fix that would "
            "drop more than half of the utterances (e.g. a wav.scp that is not text) is "
            "refused with exit 1 and changes nothing, unless --force."
        ),
    )
    p.add_argument("dir", help="data directory")
    p.add_argument(
        "--utt-extra-files",
        default="",
        metavar="'F1 F2'",
        help="more per-utterance tables to filter (space-separated file names)",
    )
    p.add_argument("--no-backup", dest="backup", action="store_false", help="keep no backup")
    p.add_argument(
        "--force",
        action="store_true",
        help="apply the fix even if it drops more than half (50%%) of the utterances",
    )
    p.set_defaults(func=_fix)

    p = verbs.add_parser(
        "info",
        help="counts, hours, duration histogram, sample rates, speakers",
        description="Describe a data dir: counts, total hours, duration histogram, sample "
        "rates and channels (from a sample of headers), speakers, utterances per speaker.",
    )
    p.add_argument("dir", help="data directory")
    p.add_argument(
        "--audio-sample",
        type=int,
        default=1000,
        metavar="N",
        help="read the headers of N random recordings for rates/channels (0: all)",
    )
    p.add_argument("--allow-pipes", action="store_true", help="run 'cmd |' wav.scp entries")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)


def _validate(args: argparse.Namespace) -> int:
    from speechssl.data.validate import ValidateOptions, validate_data_dir

    opts = ValidateOptions(
        level=args.level,
        nj=args.nj,
        audio_sample=args.audio_sample,
        seed=args.seed,
        sample_rate=args.sample_rate,
        allow_pipes=args.allow_pipes,
        require_text=args.require_text,
        spk_sort=args.spk_sort,
        non_print=args.non_print,
        keep_per_code=max(args.max_per_kind, 0) if args.max_per_kind > 0 else 0,
    )
    report = validate_data_dir(args.dir, opts)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for line in report.lines(args.max_per_kind):
            print(line)
        for note in report.notes:
            print(f"note: {note}")
        print(report.summary())
    return 0 if report.ok else 1


def _fix(args: argparse.Namespace) -> int:
    from speechssl.data.fix import fix_data_dir

    report = fix_data_dir(
        args.dir, utt_extra_files=args.utt_extra_files.split(), backup=args.backup, force=args.force
    )
    for line in report.lines():
        print(line)
    return 0


def _info(args: argparse.Namespace) -> int:
    from speechssl.data.info import data_dir_info

    info = data_dir_info(args.dir, audio_sample=args.audio_sample, allow_pipes=args.allow_pipes)
    if args.json:
        json.dump(info.to_json(), sys.stdout, indent=1)
        print()
    else:
        print(info.format())
    return 0
