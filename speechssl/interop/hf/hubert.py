"""HuBERT <-> ``transformers.HubertModel``: key map and config mapping.

``transformers`` has no HuBERT pretraining class, so the export is always ``HubertModel``;
our projection and label embeddings (and the k-means model) travel in the ``speechssl/``
side directory of a default export and are absent from a ``--bare`` one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from speechssl.errors import ConfigError
from speechssl.interop.hf.common import (
    ATTENTION_QKV,
    TRANSFORMER_LAYER_RULES,
    WAVEFORM_FRONTEND_RULES,
    FamilyInterop,
    conv_fields_from_hf,
    encoder_fields_from_hf,
    hf_conv_fields,
    hf_encoder_fields,
    require,
    waveform_feature_extractor,
)

#: our name (regex) -> transformers name: the waveform encoder shared with wav2vec 2.0
WAVEFORM_ENCODER_RULES = [
    *WAVEFORM_FRONTEND_RULES,
    (r"encoder\.pos_conv\.conv\.(.+)", r"encoder.pos_conv_embed.conv.\1"),
    *TRANSFORMER_LAYER_RULES,
]


def waveform_encoder_hf_fields(cfg: Any, architecture: str) -> dict[str, Any]:
    """Config fields of the HuBERT / wav2vec 2.0 encoder (conv stack, conv positions)."""
    enc, ext = cfg.encoder, cfg.extractor
    if enc.pos_conv_kernel <= 0:
        raise ConfigError("transformers models need the convolutional position embedding")
    if enc.layer_norm_eps != 1e-5:
        raise ConfigError(
            "transformers uses one LayerNorm epsilon; keep encoder.layer_norm_eps=1e-5"
        )
    return dict(
        **hf_encoder_fields(cfg, architecture),
        **hf_conv_fields(ext),
        hidden_act="gelu",
        feat_extract_norm="group" if ext.mode == "group_norm" else "layer",
        num_conv_pos_embeddings=enc.pos_conv_kernel,
        num_conv_pos_embedding_groups=enc.pos_conv_groups,
        do_stable_layer_norm=enc.layer_norm_first,
    )


def waveform_encoder_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    """Our overrides for the HuBERT / wav2vec 2.0 encoder from a ``transformers`` config."""
    require(hf, "hidden_act", "gelu")
    require(hf, "conv_pos_batch_norm", None, False)
    out = encoder_fields_from_hf(hf)
    out["extractor"] = conv_fields_from_hf(hf, pre)
    out["encoder"].update(
        layer_norm_first=bool(hf["do_stable_layer_norm"]),
        pos_conv_kernel=int(hf["num_conv_pos_embeddings"]),
        pos_conv_groups=int(hf["num_conv_pos_embedding_groups"]),
    )
    return out


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import HubertConfig

    return HubertConfig(feat_proj_layer_norm=True, **waveform_encoder_hf_fields(cfg, architecture))


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "feat_proj_layer_norm", True)
    return waveform_encoder_from_hf(hf, pre)


INTEROP = FamilyInterop(
    family="hubert",
    model_type="hubert",
    encoder_class="HubertModel",
    pretraining_class=None,
    wrapper_prefix="hubert.",
    rules=WAVEFORM_ENCODER_RULES,
    qkv_template=ATTENTION_QKV,
    hf_config=_hf_config,
    config_from_hf=_config_from_hf,
    preprocessor=waveform_feature_extractor,
)
