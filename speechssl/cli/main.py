"""`speechssl <group> <verb>`: one subcommand group per pipeline stage.

Each group lives in ``speechssl.cli.<group>`` and exposes ``add_parser(subparsers)``, which
registers its verbs with ``set_defaults(func=...)``; ``func(args)`` returns the exit code.
Group modules import heavy libraries (torch, ...) inside their functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from speechssl import __version__
from speechssl.errors import SpeechSSLError

# group name -> module under speechssl.cli (kept in pipeline order for --help)
GROUPS: dict[str, str] = {
    "data": "speechssl.cli.data",
    "features": "speechssl.cli.features",
    "kmeans": "speechssl.cli.kmeans",
    "model": "speechssl.cli.model",
    "train": "speechssl.cli.train",
    "downstream": "speechssl.cli.downstream",
    "export": "speechssl.cli.export",
    "recipe": "speechssl.cli.recipe",
}


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
    for module in GROUPS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # group not present in this build
                continue
            raise
        mod.add_parser(sub)
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
