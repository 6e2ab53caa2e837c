"""`speechssl import hf`: a ``transformers`` model dir or hub id -> a speechssl model dir."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_source(src: str, revision: str | None = None) -> tuple[Path, str | None]:
    """``(local dir, hub id or None)``: a local dir as it is; a hub id from the local HF
    cache, or downloaded (config, preprocessor and safetensors files only) when online."""
    from speechssl.errors import CheckpointError, HubError

    path = Path(src)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{src}: not a directory (give a transformers model dir)")
        return path, None
    if not _HUB_ID.fullmatch(src):
        raise CheckpointError(f"{src}: no such directory, and not a hub id (ORG/NAME)")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors"]
    try:
        return Path(
            snapshot_download(
                src, revision=revision, allow_patterns=patterns, local_files_only=True
            )
        ), src
    except LocalEntryNotFoundError:  # not (completely) in the cache: try a download
        pass
    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"{src}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
            "(download it once online, or give a local directory)"
        )
    try:
        return Path(snapshot_download(src, revision=revision, allow_patterns=patterns)), src
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise HubError(f"{src}: download failed ({type(exc).__name__}: {line})") from None


def _import_hf(args: argparse.Namespace) -> int:
    from speechssl.errors import CheckpointError
    from speechssl.interop.hf import import_transformers_dir
    from speechssl.models.io import save_model_dir

    if Path(args.out).exists() and not args.overwrite:
        raise CheckpointError(f"{args.out}: exists (pass --overwrite to replace it)")
    root, hub_id = resolve_source(args.src, args.revision)
    result = import_transformers_dir(root)
    model = result.model
    origin: dict[str, Any] = {
        "kind": "transformers",
        "class": result.hf_class,
        "architecture": result.architecture,
        "preset": model.model_name,
        "preset_matches": result.exact_preset,
        "initialised": result.fresh,
    }
    if hub_id:
        origin["hub_id"] = hub_id
        if args.revision:
            origin["revision"] = args.revision
    else:
        origin["source"] = Path(args.src).resolve().name
    save_model_dir(model, args.out, overwrite=args.overwrite, extra={"imported_from": origin})
    base = "" if result.exact_preset else ", all fields from config.json"
    print(
        f"imported {args.src} ({result.hf_class}; {result.architecture}) -> {args.out} "
        f"(preset {model.model_name}{base})"
    )
    if result.fresh:
        shown = ", ".join(result.fresh[:6]) + (" ..." if len(result.fresh) > 6 else "")
        print(f"initialised {len(result.fresh)} weights the source has no counterpart for: {shown}")
    return 0


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    hf = verbs.add_parser(
        "hf",
        help="transformers HuBERT / wav2vec 2.0 / data2vec audio / w2v-BERT / WavLM / I-JEPA ViT -> model dir",
        description="Import a Hugging Face transformers model (Hubert*, Wav2Vec2*, "
        "Data2VecAudio*, Wav2Vec2Bert*, WavLM*, IJepa* -- the image families' ViT) as a speechssl model dir. SRC is a local directory "
        "or a hub id, read from the local HF cache (downloaded when online). Every "
        "architecture field comes from its config.json; our own exports are restored exactly "
        "from their speechssl/ side dir. Weights transformers has no place for (e.g. HuBERT's "
        "label embeddings) are initialised and listed; missing or unexpected transformers "
        "weights are errors. Continue pretraining with speechssl-train model.init_from=OUT.",
    )
    hf.add_argument("src", help="transformers model dir or hub id (ORG/NAME)")
    hf.add_argument("out", help="speechssl model dir to write")
    hf.add_argument("--revision", default=None, help="hub revision (hub ids only)")
    hf.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    hf.set_defaults(func=_import_hf)
