"""`speechssl train ...`: tools around `speechssl-train` runs (the training itself is the
Hydra app `speechssl-train`)."""

from __future__ import annotations

import argparse


def _plot(args: argparse.Namespace) -> int:
    from speechssl.train.plot import plot_log

    out = plot_log(args.exp, args.out)
    print(out)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="pretraining runs: plot curves (train with speechssl-train)"
    )
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    plot = verbs.add_parser(
        "plot",
        help="turn an experiment's log.jsonl into PNG curves",
        description="Plot loss terms, accuracies, code perplexity, lr, grad norm, loss scale, "
        "throughput and padding of a speechssl-train run.",
    )
    plot.add_argument("exp", help="experiment dir (trainer.exp_dir) or its log.jsonl")
    plot.add_argument("--out", default=None, help="PNG to write (default: EXP/curves.png)")
    plot.set_defaults(func=_plot)
