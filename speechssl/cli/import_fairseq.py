"""`speechssl import fairseq|fairseq2 CKPT OUT`: fairseq / fairseq2 checkpoints -> model dirs."""

from __future__ import annotations

import argparse
from typing import Any

_SAFETY = (
    "The checkpoint is a pickle; it is read with a restricted unpickler that allows only "
    "tensors, containers and configuration data (fairseq/omegaconf classes become inert "
    "stand-ins) and refuses anything else, naming it; no code from the checkpoint runs."
)


def _print_report(report: Any, out: str) -> None:
    print(
        f"{out}: {report.name} ({report.family}) imported from {report.source} {report.checkpoint}"
    )
    if report.initialised:
        print(f"  freshly initialised (not in the checkpoint): {', '.join(report.initialised)}")
    if report.dropped:
        print(f"  left out (no place in a pretraining model): {', '.join(report.dropped)}")
    for note in report.notes:
        print(f"  note: {note}")


def _run_fairseq(args: argparse.Namespace) -> int:
    from speechssl.interop.fairseq import import_fairseq_to_dir

    _print_report(import_fairseq_to_dir(args.ckpt, args.out, overwrite=args.overwrite), args.out)
    return 0


def _run_fairseq2(args: argparse.Namespace) -> int:
    from speechssl.interop.fairseq2 import import_fairseq2_to_dir

    report = import_fairseq2_to_dir(
        args.ckpt, args.out, family=args.family, num_heads=args.num_heads, overwrite=args.overwrite
    )
    _print_report(report, args.out)
    return 0


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    fs = verbs.add_parser(
        "fairseq",
        help="fairseq HuBERT / wav2vec 2.0 checkpoint (.pt) -> speechssl model dir",
        description="Convert a fairseq HuBERT or wav2vec 2.0 checkpoint, pretrained or CTC "
        "fine-tuned (w2v_encoder.w2v_model.*), with the old args or the new cfg layout, into "
        "a speechssl model dir (model.json + model.safetensors). The architecture comes from "
        "the checkpoint's config. Unknown or missing weights are errors; a fine-tuned "
        "checkpoint's CTC layer is left out and its removed pretraining heads start fresh "
        "(both listed). " + _SAFETY,
    )
    fs.add_argument("ckpt", help="fairseq checkpoint file (torch.save pickle)")
    fs.add_argument("out", help="speechssl model dir to write")
    fs.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    fs.set_defaults(func=_run_fairseq)
    f2 = verbs.add_parser(
        "fairseq2",
        help="fairseq2 wav2vec 2.0 / w2v-BERT checkpoint -> speechssl model dir",
        description="Convert a fairseq2 wav2vec 2.0 or w2v-BERT 2.0 checkpoint "
        "({'model': state_dict, ...}; fairseq2's names: encoder_frontend.*, encoder.layers.N."
        "self_attn.{q,k,v,output}_proj, ...) into a speechssl model dir. fairseq2 keeps the "
        "architecture outside the checkpoint, so it is read from the weights' shapes "
        "(dims, layers, FFN, conv channels and kernels, quantizer) plus fairseq2's conventions "
        "for what the weights do not hold (conv strides, wav2vec 2.0 heads, ...; each is "
        "listed in the output). " + _SAFETY,
    )
    f2.add_argument("ckpt", help="fairseq2 checkpoint file (torch.save pickle)")
    f2.add_argument("out", help="speechssl model dir to write")
    f2.add_argument(
        "--family",
        choices=["auto", "wav2vec2", "w2v_bert"],
        default="auto",
        help="model family (default: recognised from the weight names)",
    )
    f2.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="wav2vec 2.0 attention heads (not in the weights; default: dim / 64)",
    )
    f2.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    f2.set_defaults(func=_run_fairseq2)
