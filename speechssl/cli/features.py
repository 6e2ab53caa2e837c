"""`speechssl features dump`: Kaldi features (or, later, model layers) into a feature store."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("features", help="feature extraction: dump features of a data dir")
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    dump = verbs.add_parser(
        "dump",
        help="write features of a data dir to a sharded feature store",
        description=(
            "Compute features of every utterance of a Kaldi data dir and write them to a "
            "sharded, memory-mappable feature store (speechssl.features.store). Shards are "
            "contiguous ranges of the sorted utterance list; a rerun skips complete shards "
            "and redoes partial ones; a store made with different settings, or from a data dir "
            "whose utterances changed since, is refused (--overwrite redoes it). Each shard is "
            "locked while it is written (a second writer of it is refused, naming the holder). "
            "Kaldi options use Kaldi's names (e.g. --num-mel-bins 80 --snip-edges=false)."
        ),
    )
    dump.add_argument("--data", required=True, help="Kaldi data directory")
    dump.add_argument("--kind", required=True, help="extractor: fbank, mfcc, spectrogram, ...")
    dump.add_argument("--out", required=True, help="output feature store directory")
    dump.add_argument("--nshard", type=int, default=None, help="split into N shards")
    dump.add_argument("--rank", type=int, default=None, help="write only this shard")
    dump.add_argument("--nj", type=int, default=None, help="N shards by N local processes")
    dump.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    dump.add_argument("--tolerant", action="store_true", help="skip and record bad utterances")
    dump.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    dump.add_argument("--batch-seconds", type=float, default=200.0, help="padded audio per batch")
    dump.add_argument("--allow-pipes", action="store_true", help="allow 'cmd |' wav.scp entries")
    dump.add_argument(
        "--overwrite",
        action="store_true",
        help="redo the store: replace one made with other settings or utterances, and "
        "rewrite complete shards",
    )
    dump.add_argument(
        "--channels",
        default="error",
        metavar="POLICY",
        help="multi-channel audio: error (default), select:N (channel N, 0-based) or mean",
    )
    from speechssl.features.flags import add_kaldi_arguments

    kaldi = dump.add_argument_group("Kaldi feature options (fbank, mfcc, spectrogram)")
    extractor_options = add_kaldi_arguments(kaldi)
    model = dump.add_argument_group("--kind model options")
    extractor_options += [
        model.add_argument("--checkpoint", default=None, help="trained model checkpoint").dest,
        model.add_argument("--layer", type=int, default=None, help="hidden layer to dump").dest,
    ]
    # the extractor gets exactly the options of these two groups (its factory refuses the
    # ones that do not apply to its kind)
    dump.set_defaults(func=run_dump, extractor_options=tuple(extractor_options))


def run_dump(args: argparse.Namespace) -> int:
    from speechssl.errors import ConfigError
    from speechssl.features.dump import (
        DumpOptions,
        ExtractorRequest,
        dump_features,
        dump_features_parallel,
    )
    from speechssl.utils.device import resolve_device

    if args.nj is not None and (args.nshard is not None or args.rank is not None):
        raise ConfigError("use either --nshard/--rank or --nj, not both")
    nshard = args.nj or args.nshard or 1
    opts = DumpOptions(
        nshard=nshard,
        dtype=args.dtype,
        tolerant=args.tolerant,
        batch_seconds=args.batch_seconds,
        allow_pipes=args.allow_pipes,
        channels=args.channels,
        overwrite=args.overwrite,
    )
    options: dict[str, Any] = {name: getattr(args, name) for name in args.extractor_options}
    request = ExtractorRequest(
        kind=args.kind, options=options, device=str(resolve_device(args.device))
    )
    if args.nj is not None:
        results = dump_features_parallel(args.data, args.out, request, opts, args.nj)
    else:
        ranks = None if args.rank is None else [args.rank]
        results = dump_features(args.data, args.out, request, opts, ranks)
    inputs = sum(r.inputs for r in results)
    written = sum(r.written for r in results)
    skipped = [s for r in results for s in r.skipped]
    for s in skipped[:20]:
        print(f"skipped {s['utt']}: {s['reason']}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more (see the shards' done.json)", file=sys.stderr)
    summary = {
        "out": args.out,
        "shards": {r.rank: r.status for r in results},
        "inputs": inputs,
        "written": written,
        "skipped": len(skipped),
        "frames": sum(r.frames for r in results),
    }
    print(json.dumps(summary))
    return 0
