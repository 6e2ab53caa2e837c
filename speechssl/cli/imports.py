"""`speechssl import ...`: foreign checkpoints -> speechssl model dirs."""

from __future__ import annotations

import argparse

from speechssl.cli import import_fairseq, import_hf

GROUP = "import"  # the module cannot be called import.py (a keyword)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        GROUP,
        help="import Hugging Face / fairseq / fairseq2 checkpoints as speechssl model dirs",
    )
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    import_hf.add_verbs(verbs)
    import_fairseq.add_verbs(verbs)
