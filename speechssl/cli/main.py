"""`speechssl <group> <verb>`: one subcommand group per pipeline stage.

Each group is a module ``speechssl/cli/<group>.py`` with ``add_parser(subparsers)``, which
adds the group's parser and its verbs with ``set_defaults(func=...)``; ``func(args)`` returns
the exit code and raises :class:`~speechssl.errors.SpeechSSLError` for bad input (reported
here as one line, exit 1). Group modules import only argparse-level modules at the top and
import heavy libraries (torch, ...) inside their functions, so ``speechssl --help`` stays fast.

Registering a new group is one line: write ``speechssl/cli/<group>.py`` and add the module to
:data:`GROUPS` below (the order of ``GROUPS`` is the order in ``--help``); its test goes in
``tests/unit/test_cli_main.py``'s parametrised help check automatically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from speechssl import __version__
from speechssl.cli import data, export, features, imports, kmeans, probe, recipe, train
from speechssl.errors import SpeechSSLError

# the command groups, in pipeline order (= the order of `speechssl --help`)
GROUPS: tuple[ModuleType, ...] = (data, features, kmeans, train, probe, imports, export, recipe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speechssl",
        description="Self-supervised speech representation learning toolkit.",
    )
    parser.add_argument("--version", action="version", version=f"speechssl {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="group", metavar="GROUP")
    for module in GROUPS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    func = getattr(args, "func", None)
    if func is None:
        # a group without a verb prints that group's help
        if args.group is not None and getattr(args, "_group_parser", None) is not None:
            args._group_parser.print_help()
        else:
            parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except SpeechSSLError as exc:
        print(f"speechssl {args.group}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
