"""WavLM <-> ``transformers.WavLMModel``: config mapping and weight-name maps.

The three functions have the roles of the other families' helpers: :func:`hf_wavlm_config`
(our config -> ``WavLMConfig``), :func:`to_wavlm_state` (our state dict -> ``WavLMModel``'s
plus the side weights ``transformers`` has no place for: HuBERT-style head, mixing has no
weights) and :func:`from_wavlm_state` (``WavLMModel``'s -> ours). :func:`wavlm_overrides`
turns a ``transformers`` config back into overrides of a ``wavlm`` preset.

Beyond HuBERT's names: the shared bias table (``encoder.relative_bias.embedding``) is
``transformers``' ``encoder.layers.0.attention.rel_attn_embed``; each layer's gate
(``self_attn.gate_proj``, ``self_attn.gate_const``) is ``attention.gru_rel_pos_linear`` /
``attention.gru_rel_pos_const``. Hidden states agree one for one with our ``extract()``
(same caveat as HuBERT for the padding-aware GroupNorm of base conv stacks: padded batches
match with the LayerNorm stack; a GroupNorm stack matches on unpadded batches).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.hf_export import (
    TRANSFORMER_LAYER_RULES,
    WAVEFORM_FRONTEND_RULES,
    Rules,
    fuse_qkv,
    hf_conv_fields,
    hf_encoder_fields,
    split_qkv,
)
from speechssl.models.base import PretrainModel
from speechssl.models.io import state_dict_for_saving

FAMILY = "wavlm"
HF_CLASS = "WavLMModel"

# our name (regex) -> transformers name
_RULES: Rules = [
    *WAVEFORM_FRONTEND_RULES,
    (r"encoder\.pos_conv\.conv\.(.+)", r"encoder.pos_conv_embed.conv.\1"),
    *TRANSFORMER_LAYER_RULES,
    (r"encoder\.relative_bias\.embedding\.weight", r"encoder.layers.0.attention.rel_attn_embed.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.gate_proj\.(weight|bias)", r"encoder.layers.\1.attention.gru_rel_pos_linear.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.gate_const", r"encoder.layers.\1.attention.gru_rel_pos_const"),
]  # fmt: skip
_OUR_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)")
_HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)")


# transformers name -> ours
_INVERSE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(theirs), ours)
    for theirs, ours in [
        (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"frontend.extractor.conv_layers.\1.conv.\2"),
        (r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", r"frontend.extractor.conv_layers.\1.norm.\2"),
        (r"feature_projection\.layer_norm\.(weight|bias)", r"frontend.layer_norm.\1"),
        (r"feature_projection\.projection\.(weight|bias)", r"frontend.projection.\1"),
        (r"masked_spec_embed", r"masker.mask_embedding"),
        (r"encoder\.pos_conv_embed\.conv\.(.+)", r"encoder.pos_conv.conv.\1"),
        (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
        (r"encoder\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.out_proj.\2"),
        (r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
        (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)", r"encoder.layers.\1.ffn.fc1.\2"),
        (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)", r"encoder.layers.\1.ffn.fc2.\2"),
        (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
        (r"encoder\.layers\.0\.attention\.rel_attn_embed\.weight", r"encoder.relative_bias.embedding.weight"),
        (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(weight|bias)", r"encoder.layers.\1.self_attn.gate_proj.\2"),
        (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const", r"encoder.layers.\1.self_attn.gate_const"),
    ]
]  # fmt: skip


def _check(model: PretrainModel) -> None:
    if model.family != FAMILY:
        raise ConfigError(
            f"hf_wavlm handles wavlm models, not {model.family or type(model).__name__!r}"
        )


def hf_wavlm_config(model: PretrainModel) -> Any:
    """The ``transformers.WavLMConfig`` of ``model``'s architecture."""
    from transformers import WavLMConfig

    _check(model)
    cfg = model.config
    enc, ext = cfg.encoder, cfg.extractor
    if enc.pos_conv_kernel <= 0:
        raise ConfigError(
            "WavLMModel needs the convolutional position embedding (pos_conv_kernel > 0)"
        )
    if enc.layer_norm_eps != 1e-5:
        raise ConfigError("WavLMModel uses one LayerNorm epsilon; keep encoder.layer_norm_eps=1e-5")
    return WavLMConfig(
        **hf_encoder_fields(cfg, HF_CLASS),
        **hf_conv_fields(ext),
        hidden_act="gelu",
        feat_extract_norm="group" if ext.mode == "group_norm" else "layer",
        num_conv_pos_embeddings=enc.pos_conv_kernel,
        num_conv_pos_embedding_groups=enc.pos_conv_groups,
        do_stable_layer_norm=enc.layer_norm_first,
        num_buckets=enc.num_buckets,
        max_bucket_distance=enc.max_distance,
    )


def to_wavlm_state(model: PretrainModel) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split our state dict into ``(WavLMModel weights, side weights)``."""
    _check(model)
    hf: dict[str, Tensor] = {}
    side: dict[str, Tensor] = {}
    for name, value in state_dict_for_saving(model).items():
        m = _OUR_QKV.fullmatch(name)
        if m:
            for part, chunk in split_qkv(value):
                hf[f"encoder.layers.{m.group(1)}.attention.{part}_proj.{m.group(2)}"] = chunk
            continue
        for pattern, repl in _RULES:
            if re.fullmatch(pattern, name):
                hf[re.sub(pattern, repl, name)] = value
                break
        else:
            side[name] = value
    return hf, side


def from_wavlm_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a ``WavLMModel`` state dict (with or without the ``wavlm.`` prefix of the
    task classes; old ``weight_g``/``weight_v`` weight-norm names accepted) to ours. A
    weight with no place in our model is a :class:`CheckpointError` naming it."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, value in state.items():
        key = name.removeprefix("wavlm.")
        key = key.replace(
            "pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0"
        ).replace(
            "pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1"
        )
        m = _HF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _INVERSE:
            if pattern.fullmatch(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            raise CheckpointError(
                f"transformers weight {name!r} has no counterpart in speechssl wavlm"
            )
    out.update(fuse_qkv(qkv, "transformers wavlm weights"))
    return out


def wavlm_overrides(hf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(preset, overrides)`` reproducing a ``transformers`` WavLM ``config.json``'s
    architecture on a ``wavlm`` preset."""
    if hf.get("model_type") != "wavlm":
        raise CheckpointError(f"transformers model_type {hf.get('model_type')!r} is not 'wavlm'")
    layers = tuple(
        (int(c), int(k), int(s))
        for c, k, s in zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)
    )
    group = hf.get("feat_extract_norm", "group") == "group"
    return "wavlm_base", {
        "extractor": {
            "conv_layers": layers,
            "mode": "group_norm" if group else "layer_norm",
            "conv_bias": bool(hf.get("conv_bias", False)),
        },
        "encoder": {
            "dim": hf["hidden_size"],
            "num_layers": hf["num_hidden_layers"],
            "num_heads": hf["num_attention_heads"],
            "ffn_dim": hf["intermediate_size"],
            "layer_norm_first": bool(hf.get("do_stable_layer_norm", False)),
            "pos_conv_kernel": hf["num_conv_pos_embeddings"],
            "pos_conv_groups": hf["num_conv_pos_embedding_groups"],
            "num_buckets": hf.get("num_buckets", 320),
            "max_distance": hf.get("max_bucket_distance", 800),
        },
    }


__all__ = ["from_wavlm_state", "hf_wavlm_config", "to_wavlm_state", "wavlm_overrides"]
