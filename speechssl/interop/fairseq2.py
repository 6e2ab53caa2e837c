"""fairseq2 wav2vec 2.0 / w2v-BERT checkpoints -> speechssl models (no fairseq2 needed).

fairseq2 saves ``{"model": state_dict, ...}`` with ``torch.save``; it is read with the
restricted unpickler (:mod:`speechssl.interop.safe_pickle`). The names are those of
fairseq2's ``Wav2Vec2Model`` (``fairseq2/models/wav2vec2``; its own fairseq converter,
``convert_wav2vec2_checkpoint``, documents the correspondence with fairseq) and
``W2VBertModel`` (``fairseq2/models/w2vbert``: a ``w2v2_model`` with a conformer encoder plus
``final_bert_proj``):

===============================================================  =================================
fairseq2                                                         speechssl
===============================================================  =================================
``encoder_frontend.feature_extractor.layers.i.conv.*``           ``frontend.extractor.conv_layers.i.conv.*``
``...layers.0.group_norm.*`` / ``...layers.i.layer_norm.*``      ``...conv_layers.i.norm.*``
``encoder_frontend.post_extract_layer_norm`` / ``model_dim_proj``  ``frontend.layer_norm`` / ``frontend.projection``
``encoder_frontend.pos_encoder.conv.{weight_g,weight_v,bias}``   ``encoder.pos_conv.conv.*`` (weight norm)
``encoder_frontend.layer_norm`` (post-LN) / ``encoder.layer_norm``  ``encoder.layer_norm``
``masker.temporal_mask_embed``                                   ``masker.mask_embedding``
``encoder.layers.N.self_attn.{q,k,v}_proj`` / ``output_proj``     ``...self_attn.qkv`` (fused) / ``out_proj``
``encoder.layers.N.ffn.{inner,output}_proj`` / ``ffn_layer_norm``  ``...ffn.{fc1,fc2}`` / ``final_layer_norm``
conformer: ``ffn{1,2}.*``, ``conv_layer_norm``, ``conv.*``,       ``ffn{1,2}.*``, ``conv_module.*``,
``self_attn.sdpa.rel_k_embed``, ``layer_norm``                    ``self_attn.distance_embedding``, ``final_layer_norm``
``quantizer.entries`` / ``entry_proj`` / ``num_updates``          ``quantizer.codevectors`` / ``weight_proj`` / ``num_updates``
``final_target_proj`` / ``final_proj`` / ``final_bert_proj``      ``project_q`` / ``final_proj`` / ``mlm_head.classifiers.*``
===============================================================  =================================

fairseq2 keeps the architecture in its asset cards, not in the checkpoint, so it is read
from the weights: dims, layers, FFN size, conv stack channels and kernels, pre/post layer
norm, quantizer sizes (and, for w2v-BERT, heads from the relative-position table). What the
weights cannot tell is taken from fairseq2's / fairseq's conventions and listed in the
report's notes: conv strides by kernel (10 -> 5, 3 -> 2, 2 -> 2), wav2vec 2.0 attention
heads (``dim / 64``, or ``num_heads=``), w2v-BERT's relative-position window (64 left, 8
right) and its MLM layer count. A fine-tuned wav2vec 2.0 ASR checkpoint's CTC layer
(``final_proj`` without a quantizer) is left out and the pretraining heads start fresh.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.fairseq import (
    ImportReport,
    build_model,
    fill_model,
    fuse_qkv_parts,
)
from speechssl.interop.safe_pickle import load_foreign_checkpoint, to_plain
from speechssl.models.base import PretrainModel

FAMILIES = ("wav2vec2", "w2v_bert")
W2V2_PREFIX = "w2v2_model."
#: stride of a conv layer by its kernel in fairseq's (and fairseq2's) wav2vec 2.0 stacks
STRIDE_BY_KERNEL = {10: 5, 3: 2, 2: 2}
#: fairseq2's Shaw relative-position window of w2v-BERT 2.0 (``conformer_shaw``)
REL_WINDOW = (64, 8)

_FE = r"encoder_frontend\.feature_extractor\.layers"
_COMMON: list[tuple[str, str]] = [
    (r"encoder_frontend\.post_extract_layer_norm\.(weight|bias)", r"frontend.layer_norm.\1"),
    (r"encoder_frontend\.model_dim_proj\.(weight|bias)", r"frontend.projection.\1"),
    (r"masker\.temporal_mask_embed", r"masker.mask_embedding"),
    (r"encoder\.layers\.(\d+)\.self_attn\.output_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"quantizer\.entries", r"quantizer.codevectors"),
    (r"quantizer\.entry_proj\.(weight|bias)", r"quantizer.weight_proj.\1"),
    (r"final_target_proj\.(weight|bias)", r"project_q.\1"),
    (r"final_proj\.(weight|bias)", r"final_proj.\1"),
]  # fmt: skip
_WAV2VEC2: list[tuple[str, str]] = [
    (_FE + r"\.(\d+)\.conv\.(weight|bias)", r"frontend.extractor.conv_layers.\1.conv.\2"),
    (_FE + r"\.0\.group_norm\.(weight|bias)", r"frontend.extractor.conv_layers.0.norm.\1"),
    (_FE + r"\.(\d+)\.layer_norm\.(weight|bias)", r"frontend.extractor.conv_layers.\1.norm.\2"),
    (r"encoder_frontend\.pos_encoder\.conv\.bias", r"encoder.pos_conv.conv.bias"),
    (r"encoder_frontend\.pos_encoder\.conv\.weight_g", r"encoder.pos_conv.conv.parametrizations.weight.original0"),
    (r"encoder_frontend\.pos_encoder\.conv\.weight_v", r"encoder.pos_conv.conv.parametrizations.weight.original1"),
    (r"encoder_frontend\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.ffn\.inner_proj\.(weight|bias)", r"encoder.layers.\1.ffn.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.output_proj\.(weight|bias)", r"encoder.layers.\1.ffn.fc2.\2"),
    (r"encoder\.layers\.(\d+)\.ffn_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]  # fmt: skip
_CONFORMER: list[tuple[str, str]] = [
    (r"encoder\.layers\.(\d+)\.(ffn[12])_layer_norm\.(weight|bias)", r"encoder.layers.\1.\2_layer_norm.\3"),
    (r"encoder\.layers\.(\d+)\.(ffn[12])\.inner_proj\.(weight|bias)", r"encoder.layers.\1.\2.fc1.\3"),
    (r"encoder\.layers\.(\d+)\.(ffn[12])\.output_proj\.(weight|bias)", r"encoder.layers.\1.\2.fc2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.sdpa\.rel_k_embed\.weight", r"encoder.layers.\1.self_attn.distance_embedding.weight"),
    (r"encoder\.layers\.(\d+)\.conv_layer_norm\.(weight|bias)", r"encoder.layers.\1.conv_module.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.conv\.(pointwise_conv1|depthwise_conv|pointwise_conv2)\.weight", r"encoder.layers.\1.conv_module.\2.weight"),
    (r"encoder\.layers\.(\d+)\.conv\.layer_norm\.(weight|bias)", r"encoder.layers.\1.conv_module.depthwise_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]  # fmt: skip
_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")


def read_fairseq2_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The ``model`` state dict of a fairseq2 checkpoint (restricted unpickling)."""
    p = Path(path)
    raw = to_plain(load_foreign_checkpoint(p))
    state = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not a fairseq2 checkpoint (no 'model' state dict)")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{p}: model entry {bad[0]!r} is not a tensor")
    out = {str(k): v for k, v in state.items()}
    if any(k.startswith("module.") for k in out):  # saved from a DDP-wrapped model
        out = {k.removeprefix("module."): v for k, v in out.items()}
    return out


def detect_family(state: dict[str, Tensor], where: str) -> str:
    if any(k.startswith(W2V2_PREFIX) for k in state) or "final_bert_proj.weight" in state:
        return "w2v_bert"
    if any(k.startswith("encoder_frontend.feature_extractor.") for k in state):
        return "wav2vec2"
    raise CheckpointError(
        f"{where}: not a fairseq2 wav2vec 2.0 or w2v-BERT state dict (no "
        "encoder_frontend.feature_extractor.* or w2v2_model.* weights)"
    )


def _need(state: dict[str, Tensor], key: str, where: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{where}: the checkpoint lacks {key!r}")
    return state[key]


def _num_layers(state: dict[str, Tensor]) -> int:
    idx = [int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def _quantizer_fields(state: dict[str, Tensor], where: str) -> dict[str, Any]:
    entries = _need(state, "quantizer.entries", where)  # [1, G*V, vq_dim/G]
    vq_dim = int(_need(state, "final_target_proj.weight", where).shape[1])
    groups = vq_dim // int(entries.shape[2])
    return {
        "codebook_groups": groups,
        "codebook_vars": int(entries.shape[1]) // groups,
        "vq_dim": vq_dim,
        "final_dim": int(_need(state, "final_proj.weight", where).shape[0]),
    }


def wav2vec2_overrides(
    state: dict[str, Tensor], where: str, num_heads: int | None, report: ImportReport
) -> dict[str, Any]:
    """Our wav2vec 2.0 config fields from the shapes of a fairseq2 state dict."""
    convs = []
    i = 0
    while f"encoder_frontend.feature_extractor.layers.{i}.conv.weight" in state:
        w = state[f"encoder_frontend.feature_extractor.layers.{i}.conv.weight"]
        kernel = int(w.shape[2])
        if kernel not in STRIDE_BY_KERNEL:
            raise CheckpointError(
                f"{where}: conv layer {i} has kernel {kernel}; its stride is not in the "
                f"weights and only fairseq's kernels {sorted(STRIDE_BY_KERNEL)} are known"
            )
        convs.append((int(w.shape[0]), kernel, STRIDE_BY_KERNEL[kernel]))
        i += 1
    if not convs:
        raise CheckpointError(f"{where}: no feature extractor conv layers")
    layer_norm_mode = "encoder_frontend.feature_extractor.layers.0.layer_norm.weight" in state
    dim = int(_need(state, "encoder_frontend.model_dim_proj.weight", where).shape[0])
    pos_v = _need(state, "encoder_frontend.pos_encoder.conv.weight_v", where)
    heads = num_heads or max(dim // 64, 1)
    report.notes.append(
        f"conv strides {[s for _, _, s in convs]} from fairseq's kernel/stride convention"
    )
    if num_heads is None:
        report.notes.append(f"{heads} attention heads (dim {dim} / 64, fairseq2's convention)")
    overrides: dict[str, Any] = {
        "extractor": {
            "conv_layers": tuple(convs),
            "mode": "layer_norm" if layer_norm_mode else "group_norm",
            "conv_bias": "encoder_frontend.feature_extractor.layers.0.conv.bias" in state,
            "normalize_waveform": layer_norm_mode,
        },
        "encoder": {
            "dim": dim,
            "num_layers": _num_layers(state),
            "num_heads": heads,
            "ffn_dim": int(_need(state, "encoder.layers.0.ffn.inner_proj.weight", where).shape[0]),
            "layer_norm_first": "encoder.layer_norm.weight" in state,
            "pos_conv_kernel": int(pos_v.shape[2]),
            "pos_conv_groups": dim // int(pos_v.shape[1]),
        },
    }
    if layer_norm_mode:
        report.notes.append("waveform normalisation on (the LayerNorm extractor's convention)")
    if "quantizer.entries" in state:
        overrides.update(_quantizer_fields(state, where))
    return overrides


def w2v_bert_overrides(
    state: dict[str, Tensor], where: str, report: ImportReport
) -> dict[str, Any]:
    """Our w2v-BERT config fields from the shapes of a fairseq2 ``W2VBertModel``."""
    from speechssl.models.registry import model_config

    proj = _need(state, "encoder_frontend.model_dim_proj.weight", where)
    dim, feat_dim = int(proj.shape[0]), int(proj.shape[1])
    base = model_config("w2v_bert_base")
    if feat_dim % base.frontend.stride:
        raise CheckpointError(f"{where}: front end input dim {feat_dim} is not a stacked fbank")
    rel = _need(state, "encoder.layers.0.self_attn.sdpa.rel_k_embed.weight", where)
    if int(rel.shape[0]) != sum(REL_WINDOW) + 1:
        raise CheckpointError(
            f"{where}: relative-position table of {int(rel.shape[0])} rows; only fairseq2's "
            f"window ({REL_WINDOW[0]} left, {REL_WINDOW[1]} right) is known"
        )
    num_layers = _num_layers(state)
    mlm_layers = base.num_mlm_layers if base.num_mlm_layers < num_layers else num_layers // 2
    report.notes.append(
        f"{mlm_layers} of {num_layers} layers form the MLM module (not in the weights; "
        "fairseq2's num_bert_encoder_layers convention)"
    )
    overrides: dict[str, Any] = {
        "frontend": {"num_mel_bins": feat_dim // base.frontend.stride},
        "encoder": {
            "dim": dim,
            "num_layers": num_layers,
            "num_heads": dim // int(rel.shape[1]),
            "ffn_dim": int(_need(state, "encoder.layers.0.ffn1.inner_proj.weight", where).shape[0]),
            "depthwise_kernel": int(
                _need(state, "encoder.layers.0.conv.depthwise_conv.weight", where).shape[2]
            ),
            "max_left_distance": REL_WINDOW[0],
            "max_right_distance": REL_WINDOW[1],
        },
        "num_mlm_layers": mlm_layers,
    }
    quant = _quantizer_fields(state, where)
    overrides.update(quant)
    bert = state.get("final_bert_proj.weight")
    if bert is not None:
        overrides["num_target_codebooks"] = int(bert.shape[0]) // quant["codebook_vars"]
    return overrides


def convert_fairseq2_state(
    state: dict[str, Tensor], family: str, report: ImportReport, num_targets: int
) -> dict[str, Tensor]:
    """fairseq2 names -> ours (see the module's table); unknown names are errors."""
    where = report.checkpoint
    rules = _COMMON + (_WAV2VEC2 if family == "wav2vec2" else _CONFORMER)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    asr = family == "wav2vec2" and "quantizer.entries" not in state
    for name, value in state.items():
        value = value.float() if value.is_floating_point() else value
        key = name.removeprefix(W2V2_PREFIX) if family == "w2v_bert" else name
        if key == "quantizer.num_updates":
            out["num_updates"] = value.long().reshape(())
            continue
        if asr and key.startswith("final_proj."):
            report.dropped.append(name)  # the CTC output layer of an ASR model
            continue
        if key == "final_bert_proj.weight" or key == "final_bert_proj.bias":
            kind = key.rsplit(".", 1)[1]
            # fairseq2 views the logits as [..., V, G]: row v*G + g belongs to codebook g
            for g in range(num_targets):
                out[f"mlm_head.classifiers.{g}.{kind}"] = value[g::num_targets]
            continue
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise CheckpointError(f"{where}: weight {name!r} has no counterpart in speechssl")
    out.update(fuse_qkv_parts(qkv, "encoder.layers", where))
    return out


def import_fairseq2(
    path: str | os.PathLike[str], *, family: str = "auto", num_heads: int | None = None
) -> tuple[PretrainModel, ImportReport]:
    """A fairseq2 wav2vec 2.0 / w2v-BERT checkpoint as our model."""
    where = str(path)
    state = read_fairseq2_state(path)
    if family == "auto":
        family = detect_family(state, where)
    elif family not in FAMILIES:
        raise ConfigError(f"fairseq2 import: family must be auto or one of {FAMILIES}")
    if family == "w2v_bert":
        state = {k.removeprefix(W2V2_PREFIX): v for k, v in state.items()}
    report = ImportReport("fairseq2", where, family)
    report.finetuned = family == "wav2vec2" and "quantizer.entries" not in state
    if family == "wav2vec2":
        overrides = wav2vec2_overrides(state, where, num_heads, report)
    else:
        if num_heads is not None:
            raise ConfigError("num_heads: w2v-BERT's heads come from its weights")
        overrides = w2v_bert_overrides(state, where, report)
    try:
        model = build_model(family, overrides)
    except ConfigError as exc:
        raise CheckpointError(
            f"{where}: the weights do not make a {family} model ({exc})"
        ) from None
    report.name = model.model_name
    weights = convert_fairseq2_state(
        state, family, report, int(getattr(model.config, "num_target_codebooks", 1))
    )
    optional = (r"quantizer\..*", r"project_q\..*", r"final_proj\..*") if report.finetuned else ()
    fill_model(model, weights, report, where, optional)
    if "num_updates" in weights:
        model.after_optimizer_step(int(weights["num_updates"]))
    return model, report


def import_fairseq2_to_dir(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    family: str = "auto",
    num_heads: int | None = None,
    overwrite: bool = False,
) -> ImportReport:
    """:func:`import_fairseq2` and save the model dir ``out`` (atomically)."""
    from speechssl.models.io import save_model_dir

    model, report = import_fairseq2(path, family=family, num_heads=num_heads)
    save_model_dir(model, out, overwrite=overwrite, extra={"imported_from": report.as_extra()})
    return report


__all__ = [
    "convert_fairseq2_state",
    "detect_family",
    "import_fairseq2",
    "import_fairseq2_to_dir",
    "read_fairseq2_state",
]
