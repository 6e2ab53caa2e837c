"""data2vec audio <-> ``transformers.Data2VecAudioModel`` (``model_type`` ``data2vec-audio``).

Conv stack, projection, the stacked position convolutions and the post-LN encoder map one
to one; the regression head and the EMA teacher travel in the side directory. Settings
``transformers`` cannot express are refused (a pre-LN encoder, a GroupNorm extractor).
``padding_aware_positions`` is mapped to the nearest equivalent: ``transformers`` lets
padding leak through the position convolutions, so *padded* batches differ near the end of
shorter utterances; single utterances and unpadded batches are identical.
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
    Rules,
    conv_fields_from_hf,
    encoder_fields_from_hf,
    hf_conv_fields,
    hf_encoder_fields,
    require,
    waveform_feature_extractor,
)

RULES: Rules = [
    *WAVEFORM_FRONTEND_RULES,
    (r"encoder\.pos_conv\.layers\.(\d+)\.conv\.(weight|bias)", r"encoder.pos_conv_embed.layers.\1.conv.\2"),
    *TRANSFORMER_LAYER_RULES,
]  # fmt: skip


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import Data2VecAudioConfig

    enc, ext = cfg.encoder, cfg.extractor
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
        **hf_encoder_fields(cfg, architecture),
    )


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "hidden_act", "gelu")
    require(hf, "add_adapter", None, False)
    out = encoder_fields_from_hf(hf)
    # Data2VecAudio's conv stack is always LayerNorm'd (the config has no norm switch)
    out["extractor"] = {**conv_fields_from_hf({**hf, "feat_extract_norm": "layer"}, pre)}
    out["encoder"].update(
        layer_norm_first=False,
        pos_conv_kernel=int(hf["conv_pos_kernel_size"]),
        pos_conv_groups=int(hf["num_conv_pos_embedding_groups"]),
    )
    out["pos_conv_depth"] = int(hf["num_conv_pos_embeddings"])
    # an imported model computes what its transformers original computes (padding included)
    out["padding_aware_positions"] = False
    return out


INTEROP = FamilyInterop(
    family="data2vec_audio",
    model_type="data2vec-audio",
    encoder_class="Data2VecAudioModel",
    pretraining_class=None,
    wrapper_prefix="data2vec_audio.",
    rules=RULES,
    qkv_template=ATTENTION_QKV,
    hf_config=_hf_config,
    config_from_hf=_config_from_hf,
    preprocessor=waveform_feature_extractor,
)
