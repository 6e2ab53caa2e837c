"""fairseq HuBERT / wav2vec 2.0 checkpoints -> speechssl models (no fairseq needed).

A fairseq checkpoint is a ``torch.save`` pickle ``{"model": state_dict, "args": Namespace |
None, "cfg": dict | DictConfig | None, "task_state": {...}, ...}``; it is read with the
restricted unpickler of :mod:`speechssl.interop.safe_pickle`. The architecture comes from
the checkpoint's config: ``cfg.model`` (fairseq >= 0.10, Hydra layout) or ``args`` (older
argparse layout); for a fine-tuned checkpoint (``w2v_encoder.w2v_model.`` keys) from the
pretraining config it embeds (``w2v_args``). Every weight is mapped by name onto our model:

=============================================  ==========================================
fairseq (``HubertModel`` / ``Wav2Vec2Model``)   speechssl
=============================================  ==========================================
``feature_extractor.conv_layers.i.0.*``        ``frontend.extractor.conv_layers.i.conv.*``
``feature_extractor.conv_layers.0.2.*``        ``...conv_layers.0.norm.*`` (GroupNorm)
``feature_extractor.conv_layers.i.2.1.*``      ``...conv_layers.i.norm.*`` (LayerNorm)
``layer_norm.*`` / ``post_extract_proj.*``     ``frontend.layer_norm.*`` / ``frontend.projection.*``
``mask_emb``                                   ``masker.mask_embedding``
``encoder.pos_conv.0.{weight_g,weight_v,bias}``  ``encoder.pos_conv.conv.*`` (weight norm)
``encoder.layers.N.self_attn.{q,k,v}_proj``    ``encoder.layers.N.self_attn.qkv`` (fused)
``encoder.layers.N.{fc1,fc2}``                 ``encoder.layers.N.ffn.{fc1,fc2}``
``quantizer.vars`` / ``quantizer.weight_proj``  ``quantizer.codevectors`` / ``.weight_proj``
``final_proj`` / ``label_embs_concat``         ``head.final_proj`` / ``head.label_embeddings``
=============================================  ==========================================

A weight that fits nowhere, or one of ours the checkpoint should have but lacks, is a
:class:`~speechssl.errors.CheckpointError` naming it; NaN/inf weights are refused. Two
cases are explicit rather than errors, and the :class:`ImportReport` lists them: a
fine-tuned checkpoint's CTC output layer (``w2v_encoder.proj``) has no place in a
pretraining model and is left out, and the pretraining heads fine-tuning removed
(quantizer, projections, label embeddings) start freshly initialised.

HuBERT label embeddings: fairseq indexes them by its label ``Dictionary`` (4 special
symbols ``<s> <pad> </s> <unk>``, then the units as written in ``dict.km.txt``); we keep
the rows of units ``0 .. k-1`` in that order, so our label ``u`` scores against the row
fairseq used for symbol ``"u"``.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.safe_pickle import load_foreign_checkpoint, to_plain
from speechssl.models.base import PretrainModel
from speechssl.models.registry import apply_overrides, family_spec, get_spec, name_for_config

FINETUNED_PREFIX = "w2v_encoder.w2v_model."
CTC_PREFIX = "w2v_encoder.proj."
#: fairseq's default ``Dictionary`` specials, in index order
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
DEFAULT_CONV_LAYERS = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"


@dataclass
class ImportReport:
    """What an import did, beyond the one-to-one weights.

    Attributes:
        source: ``fairseq`` or ``fairseq2``.
        checkpoint: the file read.
        family: our model family.
        name: the model's name (a preset whose shape it has, else the family).
        finetuned: the checkpoint was a fine-tuned (CTC) one.
        initialised: our parameters the checkpoint does not have (freshly initialised).
        dropped: checkpoint weights that have no place in a pretraining model.
        notes: other facts worth knowing (label dictionary, update count, ...).
    """

    source: str
    checkpoint: str
    family: str
    name: str = ""
    finetuned: bool = False
    initialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_extra(self) -> dict[str, Any]:
        """What goes into ``model.json`` ``extra.imported_from``."""
        out = dataclasses.asdict(self)
        out["checkpoint"] = Path(self.checkpoint).name  # no absolute local paths
        return out


# ----------------------------------------------------------------------------- reading


def parse_conv_layers(text: Any, where: str) -> tuple[tuple[int, int, int], ...]:
    """fairseq's ``conv_feature_layers`` string (a Python list expression such as
    ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``), evaluated by a tiny literal evaluator
    (lists, tuples, ints, ``+`` and ``*`` only)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element {ast.dump(node)[:40]}")

    if isinstance(text, list | tuple):
        layers = text
    else:
        try:
            layers = ev(ast.parse(str(text), mode="eval"))
        except (SyntaxError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{where}: conv_feature_layers {text!r}: {exc}") from None
    try:
        out = tuple((int(c), int(k), int(s)) for c, k, s in layers)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{where}: conv_feature_layers {text!r} is not a list of (dim, kernel, stride)"
        ) from None
    if not out:
        raise CheckpointError(f"{where}: conv_feature_layers is empty")
    return out


@dataclass
class FairseqCheckpoint:
    """The parts of a fairseq checkpoint an import reads (plain data)."""

    path: Path
    family: str
    model_cfg: dict[str, Any]
    task_cfg: dict[str, Any]
    criterion_cfg: dict[str, Any]
    state: dict[str, Tensor]
    finetuned: bool
    dictionaries: list[list[str]] | None
    num_updates: int | None


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _family_of(model_cfg: dict[str, Any], state: dict[str, Tensor], where: str) -> str:
    name = str(model_cfg.get("_name") or model_cfg.get("arch") or "")
    if name.startswith("hubert"):
        return "hubert"
    if name.startswith("wav2vec2"):
        return "wav2vec2"
    if not name or name in ("None",):
        if "label_embs_concat" in state:
            return "hubert"
        if "quantizer.vars" in state:
            return "wav2vec2"
    raise CheckpointError(
        f"{where}: model {name or '(unnamed)'!r} is not a fairseq HuBERT or wav2vec 2.0 model "
        "(speechssl imports those two fairseq families)"
    )


def read_fairseq_checkpoint(path: str | os.PathLike[str]) -> FairseqCheckpoint:
    """Load and take apart a fairseq checkpoint (restricted unpickling)."""
    p = Path(path)
    raw = to_plain(load_foreign_checkpoint(p))
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{p}: not a fairseq checkpoint (no 'model' state dict)")
    state = {str(k): v for k, v in raw["model"].items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{p}: model entry {not_tensors[0]!r} is not a tensor")
    cfg = raw.get("cfg")
    args = raw.get("args")
    if isinstance(cfg, dict) and cfg.get("model") is not None:
        model_cfg = _as_dict(cfg.get("model"))
        task_cfg = _as_dict(cfg.get("task"))
        criterion_cfg = _as_dict(cfg.get("criterion"))
    elif isinstance(args, dict):
        model_cfg = task_cfg = criterion_cfg = args
    else:
        raise CheckpointError(f"{p}: has neither 'cfg' nor 'args' (no model configuration)")
    finetuned = any(k.startswith("w2v_encoder.") for k in state)
    if finetuned:
        w2v_args = model_cfg.get("w2v_args")
        if not isinstance(w2v_args, dict):
            raise CheckpointError(
                f"{p}: fine-tuned checkpoint without its pretraining config (w2v_args); "
                f"import the pretrained checkpoint it names ({model_cfg.get('w2v_path')!r})"
            )
        if isinstance(w2v_args.get("model"), dict):
            model_cfg = w2v_args["model"]
            task_cfg = _as_dict(w2v_args.get("task"))
            criterion_cfg = _as_dict(w2v_args.get("criterion"))
        else:
            model_cfg = task_cfg = criterion_cfg = w2v_args
    family = _family_of(model_cfg, state, str(p))
    dictionaries = None
    task_state = _as_dict(raw.get("task_state"))
    if isinstance(task_state.get("dictionaries"), list):
        dictionaries = []
        for d in task_state["dictionaries"]:
            symbols = d.get("symbols") if isinstance(d, dict) else None
            if not isinstance(symbols, list):
                raise CheckpointError(f"{p}: task_state dictionary without a symbol list")
            dictionaries.append([str(s) for s in symbols])
    num_updates = None
    history = raw.get("optimizer_history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        value = history[-1].get("num_updates")
        num_updates = int(value) if isinstance(value, int | float) else None
    return FairseqCheckpoint(
        p, family, model_cfg, task_cfg, criterion_cfg, state, finetuned, dictionaries, num_updates
    )


# ----------------------------------------------------------------------------- config


def _get(cfg: dict[str, Any], key: str, default: Any) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


#: fairseq options that change the network or its objective in ways speechssl does not
#: implement: (key, value speechssl supports)
UNSUPPORTED: tuple[tuple[str, Any], ...] = (
    ("layer_type", "transformer"),
    ("activation_fn", "gelu"),
    ("quantize_input", False),
    ("target_glu", False),
    ("same_quantizer", False),
    ("quantizer_depth", 1),
    ("pos_conv_depth", 1),
    ("negatives_from_everywhere", False),
    ("cross_sample_negatives", 0),
    ("codebook_negatives", 0),
    ("skip_masked", False),
    ("skip_nomask", False),
)


#: wav2vec 2.0 only: targets are quantized (speechssl's wav2vec 2.0 always quantizes them)
WAV2VEC2_REQUIRED: tuple[tuple[str, Any], ...] = (("quantize_targets", True),)


def _check_supported(cfg: dict[str, Any], where: str, family: str) -> None:
    rules = UNSUPPORTED + (WAV2VEC2_REQUIRED if family == "wav2vec2" else ())
    for key, supported in rules:
        value = cfg.get(key)
        if value is not None and value != supported:
            raise CheckpointError(
                f"{where}: fairseq option {key}={value!r} is not supported by speechssl "
                f"(only {key}={supported!r})"
            )


def fairseq_config_overrides(
    ckpt: FairseqCheckpoint, num_classes: tuple[int, ...]
) -> dict[str, Any]:
    """Our config fields (nested overrides of the family's config) from fairseq's."""
    m, where = ckpt.model_cfg, str(ckpt.path)
    _check_supported(m, where, ckpt.family)
    dim = int(_get(m, "encoder_embed_dim", 768))
    final_dim = int(_get(m, "final_dim", 0)) or dim
    mode = str(_get(m, "extractor_mode", "default"))
    if mode not in ("default", "layer_norm"):
        raise CheckpointError(f"{where}: extractor_mode {mode!r} is not default or layer_norm")
    overrides: dict[str, Any] = {
        "extractor": {
            "conv_layers": parse_conv_layers(
                _get(m, "conv_feature_layers", DEFAULT_CONV_LAYERS), where
            ),
            "mode": "group_norm" if mode == "default" else "layer_norm",
            "conv_bias": bool(_get(m, "conv_bias", False)),
            "normalize_waveform": bool(_get(ckpt.task_cfg, "normalize", False)),
            "feature_grad_mult": float(_get(m, "feature_grad_mult", 1.0)),
        },
        "encoder": {
            "dim": dim,
            "num_layers": int(_get(m, "encoder_layers", 12)),
            "num_heads": int(_get(m, "encoder_attention_heads", 12)),
            "ffn_dim": int(_get(m, "encoder_ffn_embed_dim", 3072)),
            "dropout": float(_get(m, "dropout", 0.1)),
            "attention_dropout": float(_get(m, "attention_dropout", 0.1)),
            "activation_dropout": float(_get(m, "activation_dropout", 0.0)),
            "layer_norm_first": bool(_get(m, "layer_norm_first", False)),
            "layer_drop": float(_get(m, "encoder_layerdrop", 0.0)),
            "pos_conv_kernel": int(_get(m, "conv_pos", 128)),
            "pos_conv_groups": int(_get(m, "conv_pos_groups", 16)),
        },
        "mask": {
            "mask_prob": float(_get(m, "mask_prob", 0.65)),
            "mask_length": int(_get(m, "mask_length", 10)),
            "channel_prob": float(_get(m, "mask_channel_prob", 0.0)),
            "channel_length": int(_get(m, "mask_channel_length", 10)),
            "require_same_masks": bool(_get(m, "require_same_masks", True)),
        },
        "dropout_input": float(_get(m, "dropout_input", 0.0)),
        "final_dim": final_dim,
        "logit_temp": float(_get(m, "logit_temp", 0.1)),
    }
    weights = _get(ckpt.criterion_cfg, "loss_weights", None)
    if ckpt.family == "wav2vec2":
        latent_dim = int(_get(m, "latent_dim", 0))
        overrides.update(
            dropout_features=float(_get(m, "dropout_features", 0.0)),
            num_negatives=int(_get(m, "num_negatives", 100)),
            codebook_groups=int(_get(m, "latent_groups", 2)),
            codebook_vars=int(_get(m, "latent_vars", 320)),
            vq_dim=latent_dim if latent_dim > 0 else final_dim,
            gumbel_temp=tuple(float(t) for t in _get(m, "latent_temp", (2.0, 0.5, 0.999995))),
        )
        if isinstance(weights, list | tuple) and len(weights) >= 1:
            overrides["diversity_weight"] = float(weights[0])
            overrides["feature_penalty_weight"] = float(weights[1]) if len(weights) > 1 else 0.0
    else:
        overrides.update(
            num_classes=num_classes,
            head_kind="cosine",
            masked_weight=float(_get(ckpt.criterion_cfg, "pred_masked_weight", 1.0)),
            unmasked_weight=float(_get(ckpt.criterion_cfg, "pred_nomask_weight", 0.0)),
        )
        if isinstance(weights, list | tuple):
            overrides["feature_penalty_weight"] = float(weights[0]) if weights else 0.0
    return overrides


# ----------------------------------------------------------------------------- weights

_RULES: list[tuple[str, str]] = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"frontend.extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)", r"frontend.extractor.conv_layers.0.norm.\1"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"frontend.extractor.conv_layers.\1.norm.\2"),
    (r"layer_norm\.(weight|bias)", r"frontend.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"frontend.projection.\1"),
    (r"mask_emb", r"masker.mask_embedding"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.pos_conv.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.pos_conv.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc([12])\.(weight|bias)", r"encoder.layers.\1.ffn.fc\2.\3"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]  # fmt: skip
_WAV2VEC2_RULES: list[tuple[str, str]] = [
    (r"quantizer\.vars", r"quantizer.codevectors"),
    (r"quantizer\.weight_proj\.(weight|bias)", r"quantizer.weight_proj.\1"),
    (r"project_q\.(weight|bias)", r"project_q.\1"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
]
_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def fuse_qkv_parts(
    parts: dict[tuple[str, str], dict[str, Tensor]], prefix: str, where: str
) -> dict[str, Tensor]:
    """Separate q/k/v projections, by ``(layer, weight|bias)`` -> our fused
    ``<prefix>.<layer>.self_attn.qkv.<kind>`` (q, k, v stacked in that order)."""
    out: dict[str, Tensor] = {}
    for (layer, kind), qkv in sorted(parts.items()):
        if set(qkv) != {"q", "k", "v"}:
            lacking = sorted({"q", "k", "v"} - set(qkv))
            raise CheckpointError(f"{where}: layer {layer} lacks the {'/'.join(lacking)} {kind}")
        out[f"{prefix}.{layer}.self_attn.qkv.{kind}"] = torch.cat(
            [qkv["q"], qkv["k"], qkv["v"]], dim=0
        )
    return out


def check_finite(state: dict[str, Tensor], where: str) -> None:
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: weight {name!r} holds NaN or inf values")


def _label_rows(
    ckpt: FairseqCheckpoint, rows: int, report: ImportReport
) -> tuple[list[int], tuple[int, ...]]:
    """Rows of ``label_embs_concat`` to keep, in our label order, and k per stream."""
    where = str(ckpt.path)
    if ckpt.dictionaries is None:
        k = rows - len(FAIRSEQ_SPECIALS)
        if k < 2:
            raise CheckpointError(f"{where}: label_embs_concat has {rows} rows; too few for units")
        report.notes.append(
            f"no label dictionary in task_state: took fairseq's default layout (4 special "
            f"symbols, then units 0..{k - 1} in order) for the {rows} label embedding rows"
        )
        return list(range(len(FAIRSEQ_SPECIALS), rows)), (k,)
    keep: list[int] = []
    ks: list[int] = []
    offset = 0
    for i, symbols in enumerate(ckpt.dictionaries):
        units = [s for s in symbols if s not in FAIRSEQ_SPECIALS and not s.startswith("madeupword")]
        if sorted(units, key=lambda s: int(s) if s.isdigit() else -1) != [
            str(u) for u in range(len(units))
        ]:
            raise CheckpointError(
                f"{where}: label dictionary {i} holds {units[:5]}...; expected the units "
                f"0..{len(units) - 1} (k-means labels)"
            )
        index = {s: j for j, s in enumerate(symbols)}
        keep.extend(offset + index[str(u)] for u in range(len(units)))
        ks.append(len(units))
        offset += len(symbols)
    if offset != rows:
        raise CheckpointError(
            f"{where}: label_embs_concat has {rows} rows but the label dictionaries {offset}"
        )
    report.notes.append(
        f"label embeddings: kept the rows of units 0..k-1 (k = {list(ks)}) from the "
        f"checkpoint's label dictionaries, dropped their special-symbol rows"
    )
    return keep, tuple(ks)


def convert_fairseq_state(
    ckpt: FairseqCheckpoint, report: ImportReport, label_rows: list[int], num_streams: int
) -> dict[str, Tensor]:
    """fairseq weights -> our names (see the module's table); unknown names are errors."""
    where = str(ckpt.path)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    rules = _RULES + (_WAV2VEC2_RULES if ckpt.family == "wav2vec2" else [])
    for name, value in ckpt.state.items():
        if ckpt.finetuned:
            if name.startswith(CTC_PREFIX):
                report.dropped.append(name)
                continue
            if not name.startswith(FINETUNED_PREFIX):
                raise CheckpointError(f"{where}: weight {name!r} has no counterpart in speechssl")
            key = name[len(FINETUNED_PREFIX) :]
        else:
            key = name
        value = value.float() if value.is_floating_point() else value
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if ckpt.family == "hubert" and key == "label_embs_concat":
            out["head.label_embeddings"] = value[label_rows]
            continue
        if ckpt.family == "hubert" and key.startswith("final_proj."):
            untied = bool(_get(ckpt.model_cfg, "untie_final_proj", False))
            # a tied projection is shared by every stream; ours is one slice per stream
            out[f"head.{key}"] = value if untied else torch.cat([value] * num_streams, dim=0)
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise CheckpointError(f"{where}: weight {name!r} has no counterpart in speechssl")
    out.update(fuse_qkv_parts(qkv, "encoder.layers", where))
    return out


#: our parameters a fine-tuned checkpoint does not have (fairseq's
#: ``remove_pretraining_modules``), which start fresh
PRETRAINING_ONLY = (r"quantizer\..*", r"project_q\..*", r"final_proj\..*", r"head\..*")
#: state we keep when the checkpoint has no counterpart (set from the checkpoint otherwise)
OWN_STATE = ("num_updates",)


def fill_model(
    model: PretrainModel,
    weights: dict[str, Tensor],
    report: ImportReport,
    where: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Load ``weights`` into ``model``: every name must exist with the right shape;
    names of ours that are absent are an error unless they match ``optional`` (then they
    keep their fresh values and are listed in ``report.initialised``)."""
    own = model.state_dict()
    unexpected = sorted(set(weights) - set(own))
    if unexpected:
        raise CheckpointError(
            f"{where}: weights {unexpected[:5]} do not exist in the {report.name} model"
        )
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(weights)
        if weights[k].shape != own[k].shape
    ]
    if wrong:
        raise CheckpointError(f"{where}: shape mismatch (checkpoint vs config): {wrong[:3]}")
    missing = sorted(set(own) - set(weights))
    lacking = [
        k for k in missing if k not in OWN_STATE and not any(re.fullmatch(p, k) for p in optional)
    ]
    if lacking:
        raise CheckpointError(f"{where}: the checkpoint lacks weights {lacking[:5]}")
    report.initialised.extend(k for k in missing if k not in OWN_STATE)
    check_finite(weights, where)
    merged = {k: weights.get(k, v) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)


def build_model(family: str, overrides: dict[str, Any]) -> PretrainModel:
    """A fresh model of ``family`` with the full config ``overrides`` (named by its shape)."""
    spec = family_spec(family)
    config = apply_overrides(spec.make_config(), overrides, family)
    name = name_for_config(family, config)
    model = get_spec(name).build(config)
    model.model_name, model.family = name, family
    return model


def import_fairseq(path: str | os.PathLike[str]) -> tuple[PretrainModel, ImportReport]:
    """A fairseq HuBERT / wav2vec 2.0 checkpoint (pretrained or fine-tuned) as our model."""
    ckpt = read_fairseq_checkpoint(path)
    where = str(ckpt.path)
    report = ImportReport("fairseq", where, ckpt.family, finetuned=ckpt.finetuned)
    label_rows: list[int] = []
    num_classes: tuple[int, ...] = (100,)
    if ckpt.family == "hubert":
        rows_t = ckpt.state.get("label_embs_concat")
        if rows_t is not None:
            label_rows, num_classes = _label_rows(ckpt, int(rows_t.shape[0]), report)
        elif ckpt.dictionaries:
            num_classes = tuple(
                len([s for s in d if s not in FAIRSEQ_SPECIALS]) for d in ckpt.dictionaries
            )
        if "label_rate" in ckpt.model_cfg:
            report.notes.append(f"fairseq label_rate: {ckpt.model_cfg['label_rate']} Hz")
    try:
        model = build_model(ckpt.family, fairseq_config_overrides(ckpt, num_classes))
    except ConfigError as exc:
        raise CheckpointError(f"{where}: its configuration does not make a model ({exc})") from None
    report.name = model.model_name
    weights = convert_fairseq_state(ckpt, report, label_rows, len(num_classes))
    fill_model(model, weights, report, where, PRETRAINING_ONLY if ckpt.finetuned else ())
    if ckpt.family == "wav2vec2" and ckpt.num_updates is not None and not ckpt.finetuned:
        model.after_optimizer_step(ckpt.num_updates)
        report.notes.append(
            f"Gumbel temperature continues from update {ckpt.num_updates} of the checkpoint"
        )
    return model, report


def import_fairseq_to_dir(
    path: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False
) -> ImportReport:
    """:func:`import_fairseq` and save the model dir ``out`` (atomically)."""
    from speechssl.models.io import save_model_dir

    model, report = import_fairseq(path)
    save_model_dir(model, out, overwrite=overwrite, extra={"imported_from": report.as_extra()})
    return report


__all__ = [
    "FairseqCheckpoint",
    "ImportReport",
    "build_model",
    "convert_fairseq_state",
    "fill_model",
    "import_fairseq",
    "import_fairseq_to_dir",
    "parse_conv_layers",
    "read_fairseq_checkpoint",
]
