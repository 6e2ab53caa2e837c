"""`speechssl export hf`: a speechssl model dir -> a Hugging Face ``transformers`` model dir
with a model card, optionally pushed to the hub."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _export_hf(args: argparse.Namespace) -> int:
    from speechssl.errors import CheckpointError, ConfigError
    from speechssl.interop.hf import describe_architecture, export_to_transformers, interop_for
    from speechssl.interop.hub import collect_card_facts, list_upload, push_folder, render_card
    from speechssl.models.io import CONFIG_NAME, load_model_dir, read_model_description

    src, out = Path(args.model_dir), Path(args.out)
    if args.dry_run and not args.push:
        raise ConfigError("--dry-run lists what --push REPO_ID would upload; give --push too")
    for flag in ("private", "revision", "create_pr", "commit_message"):
        if getattr(args, flag) not in (None, False) and not args.push:
            raise ConfigError(f"--{flag.replace('_', '-')} only applies with --push REPO_ID")
    if args.create_pr and args.revision:
        raise ConfigError(
            "--create-pr opens a pull request against the default branch; drop --revision"
        )
    if not (src / CONFIG_NAME).is_file() and (src / "final" / CONFIG_NAME).is_file():
        raise CheckpointError(f"{src}: a training experiment; export its model dir {src / 'final'}")
    desc = read_model_description(src)
    model = load_model_dir(src)
    fam = interop_for(model.family)
    kmeans = _kmeans_dir(args, desc, model.family)
    hf_class = fam.hf_class(not args.bare)
    facts = collect_card_facts(
        src,
        desc,
        architecture=describe_architecture(model.family, model.config),
        hf_class=hf_class,
        bare=args.bare,
        summary_dir=args.summary,
        license=args.license,
        repo_id=args.push,
        base_model=args.base_model,
        datasets=args.dataset,
    )
    card = render_card(facts, args.push or out.name)
    export_to_transformers(
        model, out, bare=args.bare, kmeans_dir=kmeans, overwrite=args.overwrite, card=card
    )
    files = list_upload(out)
    print(f"wrote {out} ({hf_class}{', bare' if args.bare else ''}; {len(files)} files)")
    if facts.synthetic:
        print("note: trained on the bundled SYNTHETIC corpus; the model card says so")
    if not args.push:
        return 0
    if args.dry_run:
        target = f"{args.push}" + (f"@{args.revision}" if args.revision else "")
        print(f"dry run: would upload to {target}{' (pull request)' if args.create_pr else ''}:")
        for path, size in files:
            print(f"  {path}\t{size}")
        return 0
    url = push_folder(
        out,
        args.push,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
    )
    print(f"pushed {out} to {url}")
    return 0


def _kmeans_dir(args: argparse.Namespace, desc: dict, family: str) -> Path | None:
    """``--kmeans``, else the k-means model the training labels name (HuBERT, WavLM; not
    bare)."""
    from speechssl.interop.hf import KMEANS_FAMILIES

    if args.kmeans is not None:
        return Path(args.kmeans)
    if args.bare or family not in KMEANS_FAMILIES:
        return None
    labels = ((desc.get("extra") or {}).get("training") or {}).get("labels") or []
    found: list[str] = []
    for lab in labels:
        km = lab.get("kmeans")  # the label dir's record: {"path", "sha256", ...}
        path = km.get("path") if isinstance(km, dict) else km
        if path:
            found.append(str(path))
    if len(found) == 1 and Path(found[0]).is_dir():
        return Path(found[0])
    if found:
        print(
            f"note: k-means model(s) {found} of the training labels not copied "
            "(not found or several streams); pass --kmeans DIR",
            file=sys.stderr,
        )
    return None


def add_verbs(verbs: argparse._SubParsersAction) -> None:
    hf = verbs.add_parser(
        "hf",
        help="write a model dir as a transformers model dir with a model card (and push it)",
        description="Export a speechssl model dir (e.g. EXP/final, or one from `speechssl "
        "import`) as a Hugging Face transformers model dir: config.json, model.safetensors, "
        "preprocessor_config.json, README.md (model card), and unless --bare a speechssl/ "
        "side dir with what continued pretraining needs (full config, heads, k-means). "
        "Written atomically; OUT must not exist unless --overwrite. SSAST exports as "
        "ASTModel; the speaker-embedding families (speaker_dino, speaker_vicreg) have no "
        "transformers class and are refused (their model dir is the format).",
    )
    hf.add_argument("model_dir", help="speechssl model dir (model.json + model.safetensors)")
    hf.add_argument("out", help="export directory to write")
    hf.add_argument(
        "--bare",
        action="store_true",
        help="only the bare encoder class AutoModel loads (HubertModel, Wav2Vec2Model, "
        "WavLMModel, Wav2Vec2BertModel for w2v-BERT and BEST-RQ, IJepaModel for the image "
        "families' ViT, ...), no speechssl/ side dir",
    )
    hf.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    hf.add_argument(
        "--kmeans",
        default=None,
        help="k-means model dir to copy into speechssl/kmeans (default: the one the "
        "training labels name, if it exists)",
    )
    hf.add_argument(
        "--summary",
        default=None,
        help="a recipe's summary/ dir: its results.json (unit quality, pretraining) and "
        "probe.json tables go into the model card",
    )
    hf.add_argument("--license", default="other", help="license id in the card (default: other)")
    hf.add_argument("--base-model", default=None, help="hub id this model was continued from")
    hf.add_argument(
        "--dataset",
        action="append",
        default=[],
        help="hub dataset id the model was trained on (repeatable)",
    )
    hf.add_argument("--push", metavar="REPO_ID", default=None, help="upload OUT to this hub repo")
    hf.add_argument("--private", action="store_true", help="create the repo private (--push)")
    hf.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    hf.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    hf.add_argument("--commit-message", default=None, help="commit message of the push")
    hf.add_argument(
        "--dry-run",
        action="store_true",
        help="write OUT and list what --push would upload, without contacting the hub",
    )
    hf.set_defaults(func=_export_hf)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export", help="export model dirs to Hugging Face transformers (model card, hub push)"
    )
    parser.set_defaults(_group_parser=parser)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    add_verbs(verbs)
