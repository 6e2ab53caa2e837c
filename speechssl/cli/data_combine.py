"""`speechssl data combine`: several Kaldi data dirs into one."""

from __future__ import annotations

import argparse


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "combine",
        help="combine data dirs into one (e.g. LibriSpeech train-960 from its three splits)",
        description=(
            "Concatenate the tables every input has (spk2utt is rebuilt from utt2spk); a "
            "table only some inputs have is left out with a note. A key found in two inputs "
            "is an error naming it (a speaker line with the same value is fine). OUT is "
            "written under a temporary name and renamed when complete. Validate the result "
            "with `speechssl data validate`."
        ),
    )
    p.add_argument("--out", required=True, metavar="OUT", help="combined data dir to write")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="data dirs to combine, in order")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_combine)


def _combine(args: argparse.Namespace) -> int:
    from speechssl.data.combine import combine_data_dirs

    result = combine_data_dirs(args.dirs, args.out, overwrite=args.overwrite)
    for line in result.lines():
        print(line)
    return 0
