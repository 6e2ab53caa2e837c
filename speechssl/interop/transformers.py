"""Export to and import from Hugging Face ``transformers`` (HuBERT, wav2vec 2.0).

An export directory is a regular ``transformers`` model directory plus a ``speechssl/``
side directory, so ``AutoModel.from_pretrained(dir)`` works and pretraining can continue
from it::

    config.json                  HubertConfig / Wav2Vec2Config (architectures set)
    model.safetensors            weights of HubertModel, Wav2Vec2Model or Wav2Vec2ForPreTraining
    preprocessor_config.json     Wav2Vec2FeatureExtractor (sampling rate, normalisation)
    speechssl/model.json         our registry name + full config, export kind, k-means reference
    speechssl/heads.safetensors  our weights the transformers class lacks (HuBERT's projection
                                 and label embeddings; wav2vec 2.0's quantizer when exporting
                                 the bare encoder; the update counter behind the Gumbel
                                 temperature)
    speechssl/kmeans/            copy of the k-means model the labels came from (if given)

Which class: HuBERT -> ``HubertModel`` (transformers has no HuBERT pretraining class);
wav2vec 2.0 -> ``Wav2Vec2ForPreTraining`` (quantizer, ``project_q``, ``project_hid``
included; load it with ``AutoModelForPreTraining``) or, with ``pretraining=False``,
``Wav2Vec2Model`` (``AutoModel``).

Hidden states: ``transformers``' ``output_hidden_states`` equal our ``extract()``
``hidden_states`` one for one. Two settings have no ``transformers`` equivalent and are
mapped to the nearest one: the padding-aware first-layer GroupNorm (``transformers``
normalises over padding too, so padded batches of base models differ there; single
utterances and unpadded batches are identical) and waveform normalisation (moved to the
feature extractor's ``do_normalize``). The ``transformers`` config gets fine-tuning
SpecAugment defaults (``mask_time_prob=0.05``); our pretraining masking is in
``speechssl/model.json``.
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
from speechssl.models.registry import apply_overrides, get_spec

FAMILIES = ("hubert", "wav2vec2")

# our name (regex) -> transformers name, for the encoder part shared by both families
_ENCODER_RULES: list[tuple[str, str]] = [
    *WAVEFORM_FRONTEND_RULES,
    (r"encoder\.pos_conv\.conv\.(.+)", r"encoder.pos_conv_embed.conv.\1"),
    *TRANSFORMER_LAYER_RULES,
]
# wav2vec 2.0 pretraining heads (names relative to Wav2Vec2ForPreTraining, no prefix)
_W2V_PRETRAIN_RULES: list[tuple[str, str]] = [
    (r"quantizer\.weight_proj\.(weight|bias)", r"quantizer.weight_proj.\1"),
    (r"quantizer\.codevectors", r"quantizer.codevectors"),
    (r"project_q\.(weight|bias)", r"project_q.\1"),
    (r"final_proj\.(weight|bias)", r"project_hid.\1"),
]
_OUR_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)")
_HF_QKV = re.compile(r"encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)")


def _family(model: PretrainModel) -> str:
    if model.family not in FAMILIES:
        raise ConfigError(
            f"export to transformers supports {FAMILIES}, not {model.family or type(model).__name__!r}"
        )
    return model.family


def _hf_kind(family: str, pretraining: bool) -> tuple[str, str]:
    """``(transformers class name, weight prefix of the encoder)``."""
    if family == "wav2vec2" and pretraining:
        return "Wav2Vec2ForPreTraining", "wav2vec2."
    return ("HubertModel" if family == "hubert" else "Wav2Vec2Model"), ""


def hf_config(model: PretrainModel, pretraining: bool = True) -> Any:
    """The ``transformers`` config matching ``model``'s architecture."""
    from transformers import HubertConfig, Wav2Vec2Config

    family = _family(model)
    cfg = model.config
    enc, ext = cfg.encoder, cfg.extractor
    if enc.pos_conv_kernel <= 0:
        raise ConfigError("transformers models need the convolutional position embedding")
    if enc.layer_norm_eps != 1e-5:
        raise ConfigError(
            "transformers uses one LayerNorm epsilon; keep encoder.layer_norm_eps=1e-5"
        )
    common: dict[str, Any] = dict(
        **hf_encoder_fields(cfg, _hf_kind(family, pretraining)[0]),
        **hf_conv_fields(ext),
        hidden_act="gelu",
        feat_extract_norm="group" if ext.mode == "group_norm" else "layer",
        num_conv_pos_embeddings=enc.pos_conv_kernel,
        num_conv_pos_embedding_groups=enc.pos_conv_groups,
        do_stable_layer_norm=enc.layer_norm_first,
    )
    if family == "hubert":
        return HubertConfig(feat_proj_layer_norm=True, **common)
    return Wav2Vec2Config(
        num_codevectors_per_group=cfg.codebook_vars,
        num_codevector_groups=cfg.codebook_groups,
        contrastive_logits_temperature=cfg.logit_temp,
        num_negatives=cfg.num_negatives,
        codevector_dim=cfg.codevector_dim,
        proj_codevector_dim=cfg.final_dim,
        diversity_loss_weight=cfg.diversity_weight,
        feat_quantizer_dropout=cfg.dropout_features,
        **common,
    )


def to_transformers_state(
    model: PretrainModel, pretraining: bool = True
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split our state dict into ``(transformers weights, side weights)``."""
    family = _family(model)
    _, prefix = _hf_kind(family, pretraining)
    head_rules = _W2V_PRETRAIN_RULES if (family == "wav2vec2" and pretraining) else []
    hf: dict[str, Tensor] = {}
    side: dict[str, Tensor] = {}
    for name, value in state_dict_for_saving(model).items():
        m = _OUR_QKV.fullmatch(name)
        if m:
            for part, chunk in split_qkv(value):
                hf[f"{prefix}encoder.layers.{m.group(1)}.attention.{part}_proj.{m.group(2)}"] = (
                    chunk
                )
            continue
        for pattern, repl in _ENCODER_RULES:
            if re.fullmatch(pattern, name):
                hf[prefix + re.sub(pattern, repl, name)] = value
                break
        else:
            for pattern, repl in head_rules:
                if re.fullmatch(pattern, name):
                    hf[re.sub(pattern, repl, name)] = value
                    break
            else:
                side[name] = value
    return hf, side


def from_transformers_state(state: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Rename a ``transformers`` HuBERT / wav2vec 2.0 state dict (any of the exported
    classes, with or without the ``hubert.``/``wav2vec2.`` prefix, old ``weight_g``/``weight_v``
    weight-norm names accepted) to ours. Weights we have no place for are an error."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, value in state.items():
        key = name
        for pre in ("wav2vec2.", "hubert."):
            if key.startswith(pre):
                key = key[len(pre) :]
        key = key.replace(
            "pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0"
        )
        key = key.replace(
            "pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1"
        )
        m = _HF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        ours = _invert(key, family)
        if ours is None:
            raise CheckpointError(
                f"transformers weight {name!r} has no counterpart in speechssl {family}"
            )
        out[ours] = value
    out.update(fuse_qkv(qkv, f"transformers {family} weights"))
    return out


_INVERSE: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)"),
        r"frontend.extractor.conv_layers.\1.conv.\2",
    ),
    (
        re.compile(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)"),
        r"frontend.extractor.conv_layers.\1.norm.\2",
    ),
    (re.compile(r"feature_projection\.layer_norm\.(weight|bias)"), r"frontend.layer_norm.\1"),
    (re.compile(r"feature_projection\.projection\.(weight|bias)"), r"frontend.projection.\1"),
    (re.compile(r"masked_spec_embed"), r"masker.mask_embedding"),
    (re.compile(r"encoder\.pos_conv_embed\.conv\.(.+)"), r"encoder.pos_conv.conv.\1"),
    (re.compile(r"encoder\.layer_norm\.(weight|bias)"), r"encoder.layer_norm.\1"),
    (
        re.compile(r"encoder\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)"),
        r"encoder.layers.\1.self_attn.out_proj.\2",
    ),
    (
        re.compile(r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)"),
        r"encoder.layers.\1.self_attn_layer_norm.\2",
    ),
    (
        re.compile(r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)"),
        r"encoder.layers.\1.ffn.fc1.\2",
    ),
    (
        re.compile(r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)"),
        r"encoder.layers.\1.ffn.fc2.\2",
    ),
    (
        re.compile(r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)"),
        r"encoder.layers.\1.final_layer_norm.\2",
    ),
    (re.compile(r"quantizer\.weight_proj\.(weight|bias)"), r"quantizer.weight_proj.\1"),
    (re.compile(r"quantizer\.codevectors"), r"quantizer.codevectors"),
    (re.compile(r"project_q\.(weight|bias)"), r"project_q.\1"),
    (re.compile(r"project_hid\.(weight|bias)"), r"final_proj.\1"),
]


def _invert(key: str, family: str) -> str | None:
    for pattern, repl in _INVERSE:
        if pattern.fullmatch(key):
            if family == "hubert" and key.startswith(("quantizer.", "project_q.", "project_hid.")):
                return None
            return pattern.sub(repl, key)
    return None


def export_to_transformers(
    model: PretrainModel,
    out_dir: str | os.PathLike[str],
    *,
    pretraining: bool = True,
    kmeans_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a ``transformers`` model directory (see the module docstring).

    Args:
        model: a HuBERT or wav2vec 2.0 model made by ``create_model``/``load_model_dir``.
        out_dir: target directory (built under a temporary name, then renamed).
        pretraining: wav2vec 2.0 only: export ``Wav2Vec2ForPreTraining`` (True) or the bare
            ``Wav2Vec2Model`` (False; the quantizer then goes to the side weights).
        kmeans_dir: the k-means model the training labels came from; copied to
            ``speechssl/kmeans`` and referenced in ``speechssl/model.json``.
        overwrite: replace an existing ``out_dir``.

    w2v-BERT and data2vec audio models are handed to
    :func:`speechssl.interop.transformers_families.export_family_to_transformers`.
    """
    from speechssl.interop import transformers_families

    if model.family in transformers_families.FAMILIES:
        if kmeans_dir is not None:
            raise ConfigError(f"{model.family} models are not trained on k-means labels")
        return transformers_families.export_family_to_transformers(
            model, out_dir, overwrite=overwrite
        )
    family = _family(model)
    config = hf_config(model, pretraining)
    hf_state, side = to_transformers_state(model, pretraining)
    desc = model_description(model)
    hf_class, _ = _hf_kind(family, pretraining)
    desc["export"] = {"transformers_class": hf_class, "pretraining": pretraining}
    if kmeans_dir is not None:
        km = Path(kmeans_dir)
        if not km.is_dir():
            raise ConfigError(f"k-means model directory {km} does not exist")
        desc["export"]["kmeans"] = {"source": str(km.resolve()), "copy": f"{SIDECAR}/kmeans"}
    return write_export_dir(
        Path(out_dir),
        config=config,
        hf_state=hf_state,
        preprocessor=waveform_feature_extractor(model),
        side=side,
        description=desc,
        overwrite=overwrite,
        kmeans_dir=None if kmeans_dir is None else Path(kmeans_dir),
    )


def _read_hf_weights(path: Path) -> dict[str, Tensor]:
    single = path / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, Tensor] = {}
        for shard in shards:
            out.update(load_file(str(path / shard)))
        return out
    raise CheckpointError(f"{path}: no model.safetensors (export with safetensors weights)")


def _config_from_hf(hf: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Registry preset + overrides reproducing a ``transformers`` config's architecture."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(f"transformers model_type {family!r} is not one of {FAMILIES}")
    layers = tuple(
        (int(c), int(k), int(s))
        for c, k, s in zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)
    )
    overrides: dict[str, Any] = {
        "extractor": {
            "conv_layers": layers,
            "mode": "group_norm"
            if hf.get("feat_extract_norm", "group") == "group"
            else "layer_norm",
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
        },
    }
    if family == "wav2vec2":
        overrides.update(
            codebook_vars=hf.get("num_codevectors_per_group", 320),
            codebook_groups=hf.get("num_codevector_groups", 2),
            vq_dim=hf.get("codevector_dim", 256),
            final_dim=hf.get("proj_codevector_dim", 256),
        )
    return f"{family}_base", overrides


def import_from_transformers(path: str | os.PathLike[str], **overrides: Any) -> PretrainModel:
    """Load an export (or any ``transformers`` HuBERT / wav2vec 2.0 directory) as our model.

    With the ``speechssl/`` side directory the model is restored exactly (config, heads,
    Gumbel temperature), ready to continue pretraining. Without it (a checkpoint from
    elsewhere) the architecture comes from ``config.json`` on top of the family's base
    preset, ``overrides`` apply (e.g. ``num_classes=(500,)``), and the parts
    ``transformers`` does not have (HuBERT's head; a bare encoder's quantizer) start fresh.
    """
    from speechssl.interop import transformers_families

    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{root}: not a transformers model directory (no config.json)")
    if transformers_families.is_family_export(root):  # w2v-BERT / data2vec audio exports
        if overrides:
            raise ConfigError("overrides are not supported for w2v-BERT / data2vec exports")
        return transformers_families.import_family_from_transformers(root)
    hf_cfg = json.loads(cfg_path.read_text())
    desc_path = root / SIDECAR / DESCRIPTION_NAME
    side: dict[str, Tensor] = {}
    if desc_path.is_file():
        desc = json.loads(desc_path.read_text())
        if overrides:
            spec = get_spec(desc["name"])
            cfg = apply_overrides(spec.make_config(), desc.get("config") or {}, desc["name"])
            cfg = apply_overrides(cfg, overrides, desc["name"])
            model = spec.build(cfg)
            model.model_name, model.family = spec.name, spec.family
        else:
            model = build_from_description(desc)
        heads = root / SIDECAR / HEADS_NAME
        if heads.is_file():
            side = load_file(str(heads))
        complete = True
    else:
        name, arch = _config_from_hf(hf_cfg)
        spec = get_spec(name)
        cfg = apply_overrides(apply_overrides(spec.make_config(), arch, name), overrides, name)
        model = spec.build(cfg)
        model.model_name, model.family = spec.name, spec.family
        complete = False
    weights = from_transformers_state(_read_hf_weights(root), model.family)
    weights.update(side)
    own = model.state_dict()
    if complete:
        load_weights(model, weights, str(root))
    else:
        unexpected = sorted(set(weights) - set(own))
        if unexpected:
            raise CheckpointError(f"{root}: weights {unexpected[:5]} do not fit {model.model_name}")
        merged = {k: weights.get(k, v) for k, v in own.items()}
        load_weights(model, merged, str(root))
    return model
