"""`speechssl data ...`: Kaldi data directories and corpus preparation.

Verbs come from several modules (data-dir tools, corpus synthesis, real-corpus prep); each
exposes ``add_verbs(subparsers)``. Adding a verb module is one line in :data:`VERB_MODULES`.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from speechssl.cli import data_combine, data_dir, data_prep, data_synth

VERB_MODULES: tuple[ModuleType, ...] = (
    data_dir,  # validate, fix, info
    data_synth,  # synth (bundled eSpeak NG corpus)
    data_prep,  # prepare-librispeech, prepare-librilight, ...
    data_combine,  # combine
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="Kaldi data directories: validate, fix, info, prepare")
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for module in VERB_MODULES:
        module.add_verbs(verbs)
