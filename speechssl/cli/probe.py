"""`speechssl probe`: downstream probing tools around the `speechssl-probe` Hydra app:
cache an upstream's layers, prepare the bundled corpus's probing data, tabulate results."""

from __future__ import annotations

import argparse
import json


def _cache(args: argparse.Namespace) -> int:
    from speechssl.downstream.cache import cache_layers
    from speechssl.downstream.upstreams import load_upstream

    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    upstream = load_upstream(args.upstream, device)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    results = cache_layers(
        args.data, args.out, upstream, layers, dtype=args.dtype, nshard=args.nshard,
        batch_seconds=args.batch_seconds, tolerant=args.tolerant,
    )  # fmt: skip
    summary = {
        "out": args.out,
        "upstream": upstream.identity(),
        "layers": layers if layers is not None else list(range(upstream.num_layers)),
        "written": sum(r.written for r in results),
        "skipped": sum(len(r.skipped) for r in results),
        "frames": sum(r.frames for r in results),
    }
    print(json.dumps(summary))
    return 0


def _prepare_synth(args: argparse.Namespace) -> int:
    from speechssl.downstream.prep_synth import prepare_synth_probing

    tasks = tuple(t for t in args.tasks.split(",") if t)
    counts = prepare_synth_probing(args.corpus, args.out, seed=args.seed, tasks=tasks)
    print(json.dumps(counts))
    return 0


def _superb(args: argparse.Namespace) -> int:
    import logging
    import sys

    from speechssl.downstream.superb import parse_tasks, run_superb
    from speechssl.errors import ConfigError
    from speechssl.train.cli import LOG_FORMAT

    task_data: dict[str, str] = {}
    for item in args.task_data:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise ConfigError(f"--task-data {item}: expected TASK=DIR")
        task_data[task] = path
    tasks = parse_tasks(args.tasks)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout, force=True)
    run_superb(
        args.upstream, args.data, args.out, tasks, args.overrides, task_data=task_data,
        label=args.label, note=args.note, config_dir=args.config_dir,
    )  # fmt: skip
    return 0


def _report(args: argparse.Namespace) -> int:
    from speechssl.downstream.report import write_report
    from speechssl.downstream.superb import expand_run_dirs

    runs: list[tuple[str | None, str]] = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        runs.append((label, path) if sep else (None, item))
    _, table = write_report(expand_run_dirs(runs), args.out, note=args.note)
    print(table, end="")
    return 0


def _folds(args: argparse.Namespace) -> int:
    from speechssl.downstream.tasks_superb3 import (
        fold_markdown,
        fold_summary,
        write_fold_summary,
    )

    summary = fold_summary(args.runs)
    if args.out:
        write_fold_summary(summary, args.out)
    print(fold_markdown(summary), end="")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "probe",
        help="downstream probing: cache layers, bundled-corpus task data, result tables "
        "(train probes with speechssl-probe)",
    )
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    cache = verbs.add_parser(
        "cache",
        help="compute a frozen upstream's hidden states once and store them (float16)",
        description="Write the hidden states (all, or --layers) of every utterance of a data "
        "dir to a feature store that speechssl-probe trains heads from. The store records "
        "the upstream's identity (weights SHA-256); a cache of another upstream is refused, "
        "and a rerun completes only unfinished shards.",
    )
    cache.add_argument(
        "--upstream",
        required=True,
        help="fbank, mfcc, a model dir, a training exp dir or a transformers dir",
    )
    cache.add_argument("--data", required=True, help="Kaldi data dir")
    cache.add_argument("--out", required=True, help="cache dir to write")
    cache.add_argument(
        "--layers", default=None, help="comma-separated hidden states (default: all)"
    )
    cache.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    cache.add_argument("--nshard", type=int, default=1, help="shards to split the store into")
    cache.add_argument(
        "--batch-seconds", type=float, default=100.0, help="padded audio per upstream forward"
    )
    cache.add_argument(
        "--tolerant", action="store_true", help="skip and record unreadable utterances"
    )
    cache.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    cache.set_defaults(func=_cache)

    prep = verbs.add_parser(
        "prepare-synth",
        help="probing task data (PR, ASR, KS, SID, ASV, IC, QbE, SD) from a bundled SYNTHETIC corpus",
        description="Turn a corpus from 'speechssl data synth' into task roots OUT/<task>/"
        "{train,dev,test}: pr (utt2phones from ali.phones), sid (utt2spk, split by utterance "
        "within speakers), ks (utt2keyword plus generated _silence_ noise clips), asr (text, "
        "chars.txt), asv (the corpus's speaker-disjoint splits, dev/test trials of every "
        "utterance pair), ic (spoken commands with action|object|location slots in utt2intent, "
        "synthesized with the corpus speakers' voices), qbe (synthesized spoken word queries), "
        "sd (two-speaker mixtures with RTTM). ER and SF have no synthetic stand-in (no "
        "emotions, no slot-annotated queries): prepare them from IEMOCAP / Audio SNIPS with "
        "'speechssl data prepare-iemocap' / 'prepare-snips'.",
    )
    prep.add_argument("--corpus", required=True, help="synth corpus root (train/ dev/ test/)")
    prep.add_argument("--out", required=True, help="where the task roots go")
    prep.add_argument(
        "--tasks",
        default="pr,sid,ks",
        help="comma-separated subset of pr,asr,ks,sid,asv,ic,qbe,sd (ic: synthesized spoken "
        "commands with intent slots; qbe: synthesized spoken word queries; sd: two-speaker "
        "mixtures)",
    )
    prep.add_argument("--seed", type=int, default=0, help="seed of the splits and noise clips")
    prep.set_defaults(func=_prepare_synth)

    superb = verbs.add_parser(
        "superb",
        help="run the SUPERB task set for one upstream, task after task (resumable), "
        "then the report",
        description="Run speechssl-probe on every task of --tasks in order for one upstream: "
        "task roots DATA/<task> (as 'speechssl probe prepare-synth' writes them, or "
        "--task-data), experiment dirs OUT/<task>, layer caches OUT/cache shared by tasks "
        "run on the same task root, OUT/superb.json the run's state, OUT/report the table "
        "(probe.json, probe.md, probe_layers.png). A rerun skips finished tasks and resumes "
        "an interrupted one from its checkpoints. Trailing KEY=VALUE arguments are "
        "speechssl-probe overrides for every task (e.g. preset=synth), TASK:KEY=VALUE for one "
        "task (e.g. sd:trainer.max_steps=40). Guide: docs/probing.md.",
        epilog="example: speechssl probe superb --upstream exp/hubert/iter2/train "
        "--data data/probe --out exp/superb/iter2 preset=synth",
    )
    superb.add_argument("--upstream", required=True, help="fbank, mfcc or a model dir")
    superb.add_argument("--data", required=True, help="dir of the task roots DATA/<task>")
    superb.add_argument("--out", required=True, help="output dir (OUT/<task>, OUT/report)")
    superb.add_argument(
        "--tasks",
        default="bundled",
        help="comma-separated tasks in run order; 'bundled' = pr,ks,qbe,sid,ic,sd (the tasks "
        "of the bundled corpus), 'superb' = pr,asr,ks,qbe,sid,asv,sd,ic,er,sf "
        "(default: bundled)",
    )
    superb.add_argument(
        "--task-data",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="a task's root elsewhere than DATA/<task> (repeatable)",
    )
    superb.add_argument("--label", default="", help="upstream name in the table")
    superb.add_argument("--note", default="", help="a line printed under the table")
    superb.add_argument("--config-dir", default=None, help="user speechssl-probe config dir")
    superb.add_argument(
        "overrides",
        nargs="*",
        metavar="[TASK:]KEY=VALUE",
        help="speechssl-probe overrides (after the options)",
    )
    superb.set_defaults(func=_superb)

    report = verbs.add_parser(
        "report",
        help="SUPERB-like table (JSON + Markdown + PNG) over speechssl-probe runs",
        description="Read each run's results.json and write OUT/probe.json (rows upstream, "
        "task, metric, direction, value = test metric of the lr picked on dev, the pick, "
        "the learned layer weights), OUT/probe.md (upstreams x tasks, then what was picked "
        "on dev) and OUT/probe_layers.png (layer weights, upstreams x tasks); the table is "
        "also printed. An output dir of 'speechssl probe superb' stands for all its "
        "finished tasks.",
    )
    report.add_argument(
        "runs",
        nargs="+",
        metavar="[UPSTREAM=]DIR",
        help="probe exp dirs or superb output dirs, optionally labelled",
    )
    report.add_argument("--out", required=True, help="dir for probe.json and probe.md")
    report.add_argument("--note", default="", help="a line printed under the table")
    report.set_defaults(func=_report)

    folds = verbs.add_parser(
        "folds",
        help="per-fold and mean test metric of one upstream's fold runs (ER's 5 sessions)",
        description="Read the results.json of speechssl-probe runs of one task and upstream "
        "on the fold roots OUT/fold<k> of 'speechssl data prepare-iemocap' and print each "
        "fold's test metric, their mean (SUPERB's ER number) and std; --out also writes them "
        "as JSON.",
    )
    folds.add_argument("runs", nargs="+", metavar="EXP_DIR", help="one probe exp dir per fold")
    folds.add_argument("--out", default="", help="JSON file to write the summary to")
    folds.set_defaults(func=_folds)
