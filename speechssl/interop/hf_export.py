"""Pieces shared by the ``transformers`` exporters (:mod:`speechssl.interop.transformers` for
HuBERT / wav2vec 2.0, :mod:`speechssl.interop.transformers_families` for w2v-BERT / data2vec
audio) and the torchaudio importer: the export directory layout and writer, the config
fields every wav2vec 2.0-style ``transformers`` config shares, the weight-name rules of the
waveform front end and the post-LN/pre-LN transformer layers, and q/k/v splitting/fusing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from speechssl.errors import CheckpointError
from speechssl.models.base import PretrainModel
from speechssl.utils.atomic import atomic_dir

#: side directory of an export: what ``transformers`` has no place for
SIDECAR = "speechssl"
HEADS_NAME = "heads.safetensors"
DESCRIPTION_NAME = "model.json"

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


def hf_conv_fields(ext: Any) -> dict[str, Any]:
    """``transformers`` config fields of a waveform conv stack (``ConvExtractorConfig``)."""
    return dict(
        feat_extract_activation="gelu",
        conv_dim=[c for c, _, _ in ext.conv_layers],
        conv_kernel=[k for _, k, _ in ext.conv_layers],
        conv_stride=[s for _, _, s in ext.conv_layers],
        conv_bias=ext.conv_bias,
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
    side: dict[str, Tensor],
    description: dict[str, Any],
    overwrite: bool,
    kmeans_dir: Path | None = None,
) -> Path:
    """Write an export directory (``transformers`` config, ``model.safetensors``,
    preprocessor config, and the side directory with our extra weights, description and
    optionally a k-means model copy), built under a temporary name and renamed."""
    try:
        with atomic_dir(target, overwrite=overwrite) as tmp:
            config.save_pretrained(tmp)
            save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            preprocessor.save_pretrained(tmp)
            side_dir = tmp / SIDECAR
            side_dir.mkdir()
            save_file(side, str(side_dir / HEADS_NAME), metadata={"format": "pt"})
            (side_dir / DESCRIPTION_NAME).write_text(
                json.dumps(description, indent=2, sort_keys=True) + "\n"
            )
            if kmeans_dir is not None:
                shutil.copytree(kmeans_dir, side_dir / "kmeans")
    except FileExistsError:
        raise CheckpointError(f"{target}: exists (pass overwrite=True to replace it)") from None
    return target
