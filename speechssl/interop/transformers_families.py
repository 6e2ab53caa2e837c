"""Export w2v-BERT and data2vec audio to Hugging Face ``transformers`` (and back).

* ``w2v_bert`` -> ``transformers.Wav2Vec2BertModel`` (``model_type`` ``wav2vec2-bert``): the
  front end's LayerNorm + projection become ``feature_projection``, the conformer stack
  ``encoder``; the exported model takes the *stacked fbank features* that
  ``SeamlessM4TFeatureExtractor`` (saved as the preprocessor) computes from waveforms, i.e.
  what :meth:`speechssl.frontends.fbank_stack.FbankStackFrontend.features` returns.
* ``data2vec_audio`` -> ``transformers.Data2VecAudioModel`` (``data2vec-audio``): conv
  stack, projection, the 5-layer position convolution and the post-LN encoder.

An export directory is a regular ``transformers`` model directory plus a ``speechssl/``
side directory (the same layout as the HuBERT / wav2vec 2.0 exports)::

    config.json, model.safetensors, preprocessor_config.json
    speechssl/model.json         registry name + full config + export info
    speechssl/heads.safetensors  our weights ``transformers`` has no place for (w2v-BERT:
                                 quantizer, contrastive projections, MLM classifier, update
                                 counter; data2vec: regression head and the EMA teacher)

so ``AutoModel.from_pretrained(dir)`` loads the encoder (no missing or unexpected keys) and
:func:`import_family_from_transformers` restores the full pretraining model.

Settings ``transformers`` cannot express are refused with a :class:`ConfigError` (a centred
depthwise conv, a pre-LN data2vec encoder, a GroupNorm data2vec extractor). One setting is
mapped to the nearest equivalent: ``padding_aware_positions`` of data2vec (``transformers``
lets padding leak through the 5 position convolutions, so *padded* batches differ near the
end of shorter utterances; single utterances and unpadded batches are identical).
The ``transformers`` configs get fine-tuning SpecAugment defaults (``mask_time_prob=0.05``);
our pretraining masking stays in ``speechssl/model.json``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.hf_export import (
    DESCRIPTION_NAME,
    HEADS_NAME,
    SIDECAR,
    TRANSFORMER_LAYER_RULES,
    WAVEFORM_FRONTEND_RULES,
    Rules,
    fuse_qkv,
    hf_conv_fields,
    hf_encoder_fields,
    split_qkv,
    waveform_feature_extractor,
    write_export_dir,
)
from speechssl.models.base import PretrainModel
from speechssl.models.io import (
    build_from_description,
    load_weights,
    model_description,
    state_dict_for_saving,
)

FAMILIES = ("w2v_bert", "data2vec_audio")

_W2V_BERT_RULES: Rules = [
    (r"frontend\.layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"frontend\.projection\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"masker\.mask_embedding", r"masked_spec_embed"),
    (r"encoder\.layers\.(\d+)\.(ffn[12])\.fc1\.(weight|bias)", r"encoder.layers.\1.\2.intermediate_dense.\3"),
    (r"encoder\.layers\.(\d+)\.(ffn[12])\.fc2\.(weight|bias)", r"encoder.layers.\1.\2.output_dense.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.linear_out.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.distance_embedding\.weight", r"encoder.layers.\1.self_attn.distance_embedding.weight"),
    (r"encoder\.layers\.(\d+)\.((?:ffn1_|ffn2_|self_attn_|final_)layer_norm)\.(weight|bias)", r"encoder.layers.\1.\2.\3"),
    (r"encoder\.layers\.(\d+)\.conv_module\.(.+)", r"encoder.layers.\1.conv_module.\2"),
]  # fmt: skip
_W2V_BERT_QKV = (
    re.compile(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)"),
    "encoder.layers.{layer}.self_attn.linear_{part}.{kind}",
)

_DATA2VEC_RULES: Rules = [
    *WAVEFORM_FRONTEND_RULES,
    (r"encoder\.pos_conv\.layers\.(\d+)\.conv\.(weight|bias)", r"encoder.pos_conv_embed.layers.\1.conv.\2"),
    *TRANSFORMER_LAYER_RULES,
]  # fmt: skip
_DATA2VEC_QKV = (
    re.compile(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)"),
    "encoder.layers.{layer}.attention.{part}_proj.{kind}",
)

_RULES = {
    "w2v_bert": (_W2V_BERT_RULES, _W2V_BERT_QKV),
    "data2vec_audio": (_DATA2VEC_RULES, _DATA2VEC_QKV),
}
_HF_CLASS = {"w2v_bert": "Wav2Vec2BertModel", "data2vec_audio": "Data2VecAudioModel"}


def _family(model: PretrainModel) -> str:
    if model.family not in FAMILIES:
        raise ConfigError(
            f"this exporter handles {FAMILIES}, not {model.family or type(model).__name__!r} "
            "(HuBERT and wav2vec 2.0 have their own exporter)"
        )
    return model.family


def hf_config(model: PretrainModel) -> Any:
    """The ``transformers`` config matching ``model``'s encoder architecture."""
    return hf_config_for(_family(model), model.config)


def hf_config_for(family: str, cfg: Any) -> Any:
    """The ``transformers`` config of a ``family`` model with config ``cfg`` (no weights
    needed, so the published presets can be compared without building them)."""
    if family not in FAMILIES:
        raise ConfigError(f"this exporter handles {FAMILIES}, not {family!r}")
    enc = cfg.encoder
    common = hf_encoder_fields(cfg, _HF_CLASS[family])
    if family == "w2v_bert":
        from transformers import Wav2Vec2BertConfig

        if not enc.causal_depthwise:
            raise ConfigError(
                "transformers' Wav2Vec2Bert has a causal depthwise convolution; "
                "export needs encoder.causal_depthwise=True"
            )
        return Wav2Vec2BertConfig(
            feature_projection_input_dim=cfg.frontend.feature_dim,
            hidden_act=enc.activation,
            position_embeddings_type=(
                "relative_key" if enc.position_encoding == "relative_key" else None
            ),
            left_max_position_embeddings=enc.max_left_distance,
            right_max_position_embeddings=enc.max_right_distance,
            conv_depthwise_kernel_size=enc.depthwise_kernel,
            conformer_conv_dropout=enc.conv_dropout,
            add_adapter=False,
            use_intermediate_ffn_before_adapter=False,
            **common,
        )
    from transformers import Data2VecAudioConfig

    ext = cfg.extractor
    if ext.mode != "layer_norm":
        raise ConfigError(
            "transformers' Data2VecAudio has a LayerNorm conv extractor (mode=layer_norm)"
        )
    if enc.layer_norm_first:
        raise ConfigError("transformers' Data2VecAudio encoder is post-LN (layer_norm_first=False)")
    return Data2VecAudioConfig(
        hidden_act="gelu",
        **hf_conv_fields(ext),
        num_conv_pos_embeddings=cfg.pos_conv_depth,
        conv_pos_kernel_size=enc.pos_conv_kernel,
        num_conv_pos_embedding_groups=enc.pos_conv_groups,
        **common,
    )


def to_transformers_state(model: PretrainModel) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split our state dict into ``(transformers weights, side weights)``."""
    rules, (qkv_pattern, qkv_template) = _RULES[_family(model)]
    hf: dict[str, Tensor] = {}
    side: dict[str, Tensor] = {}
    for name, value in state_dict_for_saving(model).items():
        m = qkv_pattern.fullmatch(name)
        if m:
            for part, chunk in split_qkv(value):
                hf[qkv_template.format(layer=m.group(1), part=part, kind=m.group(2))] = chunk
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, name):
                hf[re.sub(pattern, repl, name)] = value
                break
        else:
            side[name] = value
    return hf, side


def _preprocessor(model: PretrainModel) -> Any:
    if model.family == "w2v_bert":
        from transformers import SeamlessM4TFeatureExtractor

        fc = model.config.frontend
        return SeamlessM4TFeatureExtractor(
            feature_size=fc.num_mel_bins,
            sampling_rate=fc.sample_rate,
            num_mel_bins=fc.num_mel_bins,
            padding_value=0.0,
            stride=fc.stride,
        )
    # data2vec audio: its extractor is always LayerNorm'd, so attention masks are returned
    return waveform_feature_extractor(model)


def export_family_to_transformers(
    model: PretrainModel, out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a w2v-BERT or data2vec audio model as a ``transformers`` model directory (see
    the module docstring); built under a temporary name and renamed."""
    family = _family(model)
    config = hf_config(model)
    hf_state, side = to_transformers_state(model)
    desc = model_description(model)
    desc["export"] = {"transformers_class": _HF_CLASS[family]}
    return write_export_dir(
        Path(out_dir),
        config=config,
        hf_state=hf_state,
        preprocessor=_preprocessor(model),
        side=side,
        description=desc,
        overwrite=overwrite,
    )


def export_w2v_bert(
    model: PretrainModel, out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Export a ``w2v_bert_*`` model to ``transformers.Wav2Vec2BertModel``."""
    if model.family != "w2v_bert":
        raise ConfigError(f"export_w2v_bert needs a w2v_bert model, got {model.family!r}")
    return export_family_to_transformers(model, out_dir, overwrite=overwrite)


def export_data2vec_audio(
    model: PretrainModel, out_dir: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Export a ``data2vec_audio_*`` model to ``transformers.Data2VecAudioModel``."""
    if model.family != "data2vec_audio":
        raise ConfigError(
            f"export_data2vec_audio needs a data2vec_audio model, got {model.family!r}"
        )
    return export_family_to_transformers(model, out_dir, overwrite=overwrite)


def is_family_export(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is an export of one of this module's families (by its side
    description), so loaders can route it here."""
    desc_path = Path(path) / SIDECAR / DESCRIPTION_NAME
    if not desc_path.is_file():
        return False
    try:
        return json.loads(desc_path.read_text()).get("family") in FAMILIES
    except (json.JSONDecodeError, AttributeError):
        return False


def import_family_from_transformers(path: str | os.PathLike[str]) -> PretrainModel:
    """Restore the pretraining model from an export written by
    :func:`export_family_to_transformers` (weights from ``model.safetensors``, everything else
    from ``speechssl/``); any weight that does not fit is a :class:`CheckpointError`."""
    root = Path(path)
    desc_path = root / SIDECAR / DESCRIPTION_NAME
    weights_path = root / "model.safetensors"
    if not desc_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{root}: not a speechssl export (needs {SIDECAR}/{DESCRIPTION_NAME} and model.safetensors)"
        )
    try:
        desc = json.loads(desc_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{desc_path}: not valid JSON ({exc})") from None
    model = build_from_description(desc)
    _family(model)
    # the name map of this architecture, inverted: transformers name -> ours
    rules, (qkv_pattern, qkv_template) = _RULES[model.family]
    inverse: dict[str, str] = {}
    for name in model.state_dict():
        for pattern, repl in rules:
            if not qkv_pattern.fullmatch(name) and re.fullmatch(pattern, name):
                inverse[re.sub(pattern, repl, name)] = name
                break
    hf_qkv = _template_regex(qkv_template)
    weights: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, value in load_file(str(weights_path)).items():
        m = hf_qkv.fullmatch(name)
        if m:
            qkv.setdefault((m["layer"], m["kind"]), {})[m["part"]] = value
        elif name in inverse:
            weights[inverse[name]] = value
        else:
            raise CheckpointError(
                f"{weights_path}: weight {name!r} has no counterpart in {model.model_name}"
            )
    weights.update(fuse_qkv(qkv, str(weights_path)))
    heads = root / SIDECAR / HEADS_NAME
    if heads.is_file():
        weights.update(load_file(str(heads)))
    load_weights(model, weights, str(root))
    return model


def _template_regex(template: str) -> re.Pattern[str]:
    """``"a.{layer}.{part}_proj.{kind}"`` -> a regex with named groups layer, part, kind."""
    pattern = re.escape(template)
    for field, group in (
        ("layer", r"(?P<layer>\d+)"),
        ("part", r"(?P<part>[qkv])"),
        ("kind", r"(?P<kind>weight|bias)"),
    ):
        pattern = pattern.replace(re.escape("{" + field + "}"), group)
    return re.compile(pattern)


__all__ = [
    "FAMILIES",
    "export_data2vec_audio",
    "export_family_to_transformers",
    "export_w2v_bert",
    "hf_config",
    "hf_config_for",
    "import_family_from_transformers",
    "is_family_export",
    "to_transformers_state",
]
