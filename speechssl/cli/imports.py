"""`speechssl import ...`: foreign checkpoints -> speechssl model dirs."""

from __future__ import annotations

import argparse

from speechssl.cli import import_hf


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import",
        help="import Hugging Face / fairseq / fairseq2 checkpoints as speechssl model dirs",
    )
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    import_hf.add_verbs(verbs)
