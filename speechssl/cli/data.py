"""`speechssl data ...`: Kaldi data directories and corpus preparation.

Verbs come from several modules (data-dir tools, corpus synthesis, real-corpus prep); each
exposes ``add_verbs(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib

VERB_MODULES = [
    "speechssl.cli.data_dir",  # validate, fix, info
    "speechssl.cli.data_synth",  # synth (bundled eSpeak NG corpus)
    "speechssl.cli.data_prep",  # prepare-librispeech, prepare-librilight, ...
    "speechssl.cli.data_combine",  # combine
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="Kaldi data directories: validate, fix, info, prepare")
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERB_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        mod.add_verbs(verbs)
