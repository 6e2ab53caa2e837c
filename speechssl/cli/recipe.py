"""`speechssl recipe summary`: the last stage of a recipe (results tables and checks)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("recipe", help="recipe helpers: summary tables of a finished run")
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    p = verbs.add_parser(
        "summary",
        help="results tables: unit quality per iteration and pretraining results",
        description="Read unit-quality reports (speechssl kmeans report) and pretraining "
        "experiments (speechssl-train), print the results as Markdown tables and write "
        "OUT/results.md and OUT/results.json. Exit status 1 if an --expect-higher check fails "
        "(the tables are written and printed first).",
    )
    p.add_argument("--out", required=True, help="directory for results.md and results.json")
    p.add_argument(
        "--units",
        action="append",
        default=[],
        metavar="NAME=REPORTDIR",
        help="a unit-quality row (repeat, in order: first = baseline units)",
    )
    p.add_argument(
        "--train",
        action="append",
        default=[],
        metavar="NAME=EXPDIR",
        help="a pretraining row (repeat)",
    )
    p.add_argument(
        "--expect-higher",
        action="append",
        default=[],
        metavar="METRIC",
        help="the last --units row must beat the first on METRIC (pnmi, phone_purity, "
        "cluster_purity, perplexity); repeatable",
    )
    p.set_defaults(func=cmd_summary)


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    from speechssl.errors import ConfigError

    out = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {value!r}: expected NAME=DIR")
        out.append((name, path))
    return out


def cmd_summary(args: argparse.Namespace) -> int:
    from speechssl.recipe.summary import write_summary

    summary = write_summary(
        args.out,
        units=_pairs(args.units, "--units"),
        trains=_pairs(args.train, "--train"),
        expect_higher=args.expect_higher,
    )
    sys.stdout.write(summary.markdown)
    sys.stdout.flush()
    for message in summary.failed:
        print(f"speechssl recipe summary: check failed: {message}", file=sys.stderr)
    return 1 if summary.failed else 0
