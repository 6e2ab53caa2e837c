"""The shared half of the Hugging Face ``transformers`` interop: the export directory layout
and its writer/reader, the config fields every wav2vec 2.0-style ``transformers`` config
shares, the weight-name rules of the waveform front end and the transformer layers, q/k/v
splitting/fusing, and :class:`FamilyInterop`, the description each family module
(:mod:`.hubert`, :mod:`.wav2vec2`, :mod:`.w2v_bert`, :mod:`.data2vec`) fills in.

An export directory::

    config.json                  the transformers config (``architectures`` set)
    model.safetensors            the transformers class's weights
    preprocessor_config.json     the feature extractor (sample rate, normalisation, fbank)
    README.md                    model card (written by ``speechssl export hf``)
    speechssl/model.json         our registry name + full config + export info (not --bare)
    speechssl/heads.safetensors  our weights the transformers class has no place for
    speechssl/kmeans/            copy of the k-means model the labels came from (if given)
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from speechssl.errors import CheckpointError
from speechssl.models.base import PretrainModel
from speechssl.models.io import state_dict_for_saving
from speechssl.utils.atomic import atomic_dir

#: side directory of an export: what ``transformers`` has no place for
SIDECAR = "speechssl"
HEADS_NAME = "heads.safetensors"
DESCRIPTION_NAME = "model.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"

Rules = list[tuple[str, str]]

# our name (regex) -> transformers name: the waveform conv front end and mask embedding
WAVEFORM_FRONTEND_RULES: Rules = [
    (r"frontend\.extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"frontend\.extractor\.conv_layers\.(\d+)\.norm\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"frontend\.layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"frontend\.projection\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"masker\.mask_embedding", r"masked_spec_embed"),
]  # fmt: skip

# our name (regex) -> transformers name: the encoder LayerNorm and the transformer layers
# (apart from the fused q/k/v projection)
TRANSFORMER_LAYER_RULES: Rules = [
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.attention.out_proj.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]  # fmt: skip

_OUR_QKV = re.compile(r"encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)")
#: transformers' separate q/k/v projections of the wav2vec 2.0-style attention
ATTENTION_QKV = "encoder.layers.{layer}.attention.{part}_proj.{kind}"

# transformers checkpoints written before weight-norm parametrizations use these names
_LEGACY_WEIGHT_NORM = (
    ("conv.weight_g", "conv.parametrizations.weight.original0"),
    ("conv.weight_v", "conv.parametrizations.weight.original1"),
)


@dataclass(frozen=True)
class FamilyInterop:
    """How one model family maps to ``transformers`` (one instance per family module).

    Attributes:
        family: our family name (``hubert``).
        model_type: the ``transformers`` ``model_type`` (``hubert``).
        encoder_class: the bare encoder class ``AutoModel`` loads (``HubertModel``).
        pretraining_class: the class that keeps the pretraining heads, if ``transformers``
            has one (``Wav2Vec2ForPreTraining``), else None.
        wrapper_prefix: the name prefix of the encoder inside the other ``transformers``
            classes of the family (``hubert.`` in ``HubertForCTC``).
        rules: our encoder weight names (regex) -> ``transformers`` names.
        qkv_template: ``transformers`` name of a separate q/k/v projection.
        head_rules: pretraining heads (names relative to ``pretraining_class``).
        hf_config: ``(model config, transformers class name) -> transformers config``.
        config_from_hf: ``(transformers config dict, preprocessor config dict) ->``
            our config overrides; every architecture field comes from there. None for a
            family that shares another's ``model_type`` and only exports (BEST-RQ): a
            foreign dir of that type imports as the other family.
        preprocessor: the feature extractor an export carries.
    """

    family: str
    model_type: str
    encoder_class: str
    pretraining_class: str | None
    wrapper_prefix: str
    rules: Rules
    qkv_template: str
    hf_config: Callable[[Any, str], Any]
    config_from_hf: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None
    preprocessor: Callable[[PretrainModel], Any]
    head_rules: Rules = field(default_factory=list)

    def hf_class(self, pretraining: bool) -> str:
        if pretraining and self.pretraining_class is not None:
            return self.pretraining_class
        return self.encoder_class

    def encoder_prefix(self, pretraining: bool) -> str:
        return self.wrapper_prefix if pretraining and self.pretraining_class else ""

    def to_hf_state(
        self, model: PretrainModel, pretraining: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Split our state dict into ``(transformers weights, side weights)``."""
        prefix = self.encoder_prefix(pretraining)
        heads = self.head_rules if pretraining and self.pretraining_class else []
        hf: dict[str, Tensor] = {}
        side: dict[str, Tensor] = {}
        for name, value in state_dict_for_saving(model).items():
            m = _OUR_QKV.fullmatch(name)
            if m:
                for part, chunk in split_qkv(value):
                    hf[prefix + self.qkv_template.format(layer=m[1], part=part, kind=m[2])] = chunk
                continue
            mapped = map_name(name, self.rules)
            if mapped is not None:
                hf[prefix + mapped] = value
                continue
            mapped = map_name(name, heads)
            if mapped is not None:
                hf[mapped] = value
            else:
                side[name] = value
        return hf, side

    def hf_state_in(
        self, model: PretrainModel, state: dict[str, Tensor], where: str
    ) -> dict[str, Tensor]:
        """``transformers`` weights as the name map expects them; a family whose values
        are laid out differently from ours (SSAST's patch kernel) rearranges them here."""
        return state

    def hf_names(
        self, model: PretrainModel
    ) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
        """``(encoder map, head map)``: ``transformers`` name (no wrapper prefix) ->
        ``(our name, q/k/v part or "")`` for every weight of ``model`` that has one."""
        encoder: dict[str, tuple[str, str]] = {}
        heads: dict[str, tuple[str, str]] = {}
        for name in model.state_dict():
            m = _OUR_QKV.fullmatch(name)
            if m:
                for part in "qkv":
                    hf = self.qkv_template.format(layer=m[1], part=part, kind=m[2])
                    encoder[hf] = (name, part)
                continue
            mapped = map_name(name, self.rules)
            if mapped is not None:
                encoder[mapped] = (name, "")
                continue
            mapped = map_name(name, self.head_rules)
            if mapped is not None:
                heads[mapped] = (name, "")
        return encoder, heads


def map_name(name: str, rules: Rules) -> str | None:
    for pattern, repl in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def hf_encoder_fields(cfg: Any, architecture: str) -> dict[str, Any]:
    """``transformers`` config fields of the encoder sizes, dropouts and fine-tuning
    SpecAugment (``mask_time_prob=0.05``) that every wav2vec 2.0-style config shares."""
    enc = cfg.encoder
    return dict(
        hidden_size=enc.dim,
        num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads,
        intermediate_size=enc.ffn_dim,
        hidden_dropout=enc.dropout,
        activation_dropout=enc.activation_dropout,
        attention_dropout=enc.attention_dropout,
        feat_proj_dropout=cfg.dropout_input,
        final_dropout=0.0,
        layerdrop=enc.layer_drop,
        layer_norm_eps=enc.layer_norm_eps,
        apply_spec_augment=True,
        mask_time_prob=0.05,
        mask_time_length=cfg.mask.mask_length,
        mask_time_min_masks=cfg.mask.min_masks,
        architectures=[architecture],
    )


def vit_config_fields(enc: Any) -> dict[str, Any]:
    """The encoder fields of a ``transformers`` ViT-style config (ViT, I-JEPA, AST: BERT's
    names, GELU, q/k/v biases) from our pre-LN encoder config."""
    return dict(
        hidden_size=enc.dim,
        num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads,
        intermediate_size=enc.ffn_dim,
        hidden_act="gelu",
        hidden_dropout_prob=enc.dropout,
        attention_probs_dropout_prob=enc.attention_dropout,
        layer_norm_eps=enc.layer_norm_eps,
        qkv_bias=True,
    )


def vit_encoder_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`vit_config_fields`: our ``encoder`` overrides (pre-LN)."""
    return {
        "dim": int(hf["hidden_size"]),
        "num_layers": int(hf["num_hidden_layers"]),
        "num_heads": int(hf["num_attention_heads"]),
        "ffn_dim": int(hf["intermediate_size"]),
        "dropout": float(hf["hidden_dropout_prob"]),
        "attention_dropout": float(hf["attention_probs_dropout_prob"]),
        "layer_norm_eps": float(hf["layer_norm_eps"]),
        "layer_norm_first": True,
    }


def encoder_fields_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`hf_encoder_fields`: our overrides (``encoder``, ``mask``,
    ``dropout_input``) from a ``transformers`` config dict."""
    return {
        "encoder": {
            "dim": int(hf["hidden_size"]),
            "num_layers": int(hf["num_hidden_layers"]),
            "num_heads": int(hf["num_attention_heads"]),
            "ffn_dim": int(hf["intermediate_size"]),
            "dropout": float(hf["hidden_dropout"]),
            "activation_dropout": float(hf["activation_dropout"]),
            "attention_dropout": float(hf["attention_dropout"]),
            "layer_drop": float(hf["layerdrop"]),
            "layer_norm_eps": float(hf["layer_norm_eps"]),
        },
        "mask": {
            "mask_length": int(hf["mask_time_length"]),
            "min_masks": int(hf["mask_time_min_masks"]),
        },
        "dropout_input": float(hf["feat_proj_dropout"]),
    }


def hf_conv_fields(ext: Any) -> dict[str, Any]:
    """``transformers`` config fields of a waveform conv stack (``ConvExtractorConfig``)."""
    return dict(
        feat_extract_activation="gelu",
        conv_dim=[c for c, _, _ in ext.conv_layers],
        conv_kernel=[k for _, k, _ in ext.conv_layers],
        conv_stride=[s for _, _, s in ext.conv_layers],
        conv_bias=ext.conv_bias,
    )


def conv_fields_from_hf(hf: Mapping[str, Any], preprocessor: Mapping[str, Any]) -> dict[str, Any]:
    """Our ``extractor`` overrides from a ``transformers`` waveform config (conv layout,
    norm, bias) and its feature extractor (waveform normalisation)."""
    require(hf, "feat_extract_activation", "gelu")
    layers = tuple(
        (int(c), int(k), int(s))
        for c, k, s in zip(hf["conv_dim"], hf["conv_kernel"], hf["conv_stride"], strict=True)
    )
    norm = hf.get("feat_extract_norm", "layer")
    if norm not in ("group", "layer"):
        raise CheckpointError(f"transformers feat_extract_norm={norm!r} is not group or layer")
    return {
        "conv_layers": layers,
        "mode": "group_norm" if norm == "group" else "layer_norm",
        "conv_bias": bool(hf["conv_bias"]),
        "normalize_waveform": bool(preprocessor.get("do_normalize", False)),
    }


def require(hf: Mapping[str, Any], key: str, *allowed: Any) -> None:
    """A ``transformers`` setting we have no equivalent for is an error naming it."""
    if hf.get(key) not in allowed:
        shown = " or ".join(repr(a) for a in allowed)
        raise CheckpointError(
            f"transformers config {key}={hf.get(key)!r} has no speechssl equivalent "
            f"(supported: {shown})"
        )


def waveform_feature_extractor(model: PretrainModel) -> Any:
    """The ``Wav2Vec2FeatureExtractor`` of a waveform model: its sample rate, waveform
    normalisation, and attention masks where the conv stack is padding-safe (LayerNorm)."""
    from transformers import Wav2Vec2FeatureExtractor

    ext = model.config.extractor
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=model.sample_rate,
        padding_value=0.0,
        do_normalize=bool(ext.normalize_waveform),
        return_attention_mask=ext.mode == "layer_norm",
    )


def split_qkv(value: Tensor) -> Iterator[tuple[str, Tensor]]:
    """Our fused ``[3 * D, ...]`` q/k/v projection as ``("q", q), ("k", k), ("v", v)``
    (cloned: safetensors refuses views sharing storage)."""
    for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
        yield part, chunk.clone()


def fuse_qkv(qkv: dict[tuple[str, str], dict[str, Tensor]], where: str) -> dict[str, Tensor]:
    """Separate q/k/v projections by ``(layer, weight|bias)`` -> our fused
    ``encoder.layers.<layer>.self_attn.qkv.<kind>`` weights."""
    out: dict[str, Tensor] = {}
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{where}: layer {layer} lacks some of q/k/v {kind}")
        out[f"encoder.layers.{layer}.self_attn.qkv.{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def write_export_dir(
    target: Path,
    *,
    config: Any,
    hf_state: dict[str, Tensor],
    preprocessor: Any,
    side: dict[str, Tensor] | None,
    description: dict[str, Any] | None,
    overwrite: bool,
    kmeans_dir: Path | None = None,
    card: str | None = None,
) -> Path:
    """Write an export directory (``transformers`` config, ``model.safetensors``,
    preprocessor config, the side directory with our extra weights, description and
    optionally a k-means model copy unless ``description`` is None, and the model card),
    built under a temporary name and renamed."""
    try:
        with atomic_dir(target, overwrite=overwrite) as tmp:
            config.save_pretrained(tmp)
            save_file(hf_state, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
            preprocessor.save_pretrained(tmp)
            if description is not None:
                side_dir = tmp / SIDECAR
                side_dir.mkdir()
                save_file(side or {}, str(side_dir / HEADS_NAME), metadata={"format": "pt"})
                (side_dir / DESCRIPTION_NAME).write_text(
                    json.dumps(description, indent=2, sort_keys=True) + "\n"
                )
                if kmeans_dir is not None:
                    shutil.copytree(kmeans_dir, side_dir / "kmeans")
            if card is not None:
                (tmp / "README.md").write_text(card, encoding="utf-8")
    except FileExistsError:
        raise CheckpointError(
            f"{target}: exists (pass --overwrite / overwrite=True to replace it)"
        ) from None
    return target


def load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """The weights of a ``transformers`` dir (single or sharded safetensors), legacy
    weight-norm names renamed; NaN/inf values are refused."""
    single = path / HF_WEIGHTS
    if single.is_file():
        state = load_safetensors(single)
    elif (path / HF_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((path / HF_INDEX).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{path / HF_INDEX}: not a safetensors index ({exc})") from None
        state = {}
        for shard in shards:
            state.update(load_safetensors(path / shard))
    else:
        found = "pytorch_model.bin" if (path / "pytorch_model.bin").is_file() else "no weights"
        raise CheckpointError(
            f"{path}: no {HF_WEIGHTS} ({found}); only safetensors weights are read "
            "(re-save with save_pretrained(..., safe_serialization=True))"
        )
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: weight {name!r} contains NaN or inf")
        key = name
        for old, new in _LEGACY_WEIGHT_NORM:
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data
