"""w2v-BERT <-> ``transformers.Wav2Vec2BertModel`` (``model_type`` ``wav2vec2-bert``).

The front end's LayerNorm + projection become ``feature_projection``, the conformer stack
``encoder``. The exported model takes the *stacked fbank features* that
``SeamlessM4TFeatureExtractor`` (saved as the preprocessor) computes from waveforms, i.e.
what :meth:`speechssl.frontends.fbank_stack.FbankStackFrontend.features` returns. Our
quantizer, contrastive projections, MLM classifier and update counter have no place in
``transformers`` and travel in the side directory.

Frame counts: an utterance of ``F`` fbank frames gives ``F // 2`` stacked frames here and in
``transformers``; ``SeamlessM4TFeatureExtractor`` pads an odd ``F`` to even first, so its
tensor has one more (half-padding) frame, which its ``attention_mask`` marks as padding
(12,960 samples: 79 fbank frames, 40 stacked frames of which 39 are real, our 39). Feed
the exported model that ``attention_mask`` and the real frames are identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.hf.common import (
    FamilyInterop,
    Rules,
    encoder_fields_from_hf,
    hf_encoder_fields,
    require,
)
from speechssl.models.base import PretrainModel

RULES: Rules = [
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
QKV = "encoder.layers.{layer}.self_attn.linear_{part}.{kind}"


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import Wav2Vec2BertConfig

    enc = cfg.encoder
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
        **hf_encoder_fields(cfg, architecture),
    )


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "add_adapter", None, False)
    require(hf, "use_intermediate_ffn_before_adapter", None, False)
    require(hf, "position_embeddings_type", "relative_key", None)
    out = encoder_fields_from_hf(hf)
    out["encoder"].update(
        activation=str(hf["hidden_act"]),
        position_encoding="relative_key" if hf["position_embeddings_type"] else "none",
        max_left_distance=int(hf["left_max_position_embeddings"]),
        max_right_distance=int(hf["right_max_position_embeddings"]),
        depthwise_kernel=int(hf["conv_depthwise_kernel_size"]),
        causal_depthwise=True,
        conv_dropout=float(hf["conformer_conv_dropout"]),
    )
    # transformers has no MLM module (a pretraining-only split of the stack): take w2v-BERT
    # 2.0's proportion, the top 2/3 of the layers (24 -> 16, as the base preset)
    layers = int(hf["num_hidden_layers"])
    if layers < 2:
        raise CheckpointError("w2v-BERT needs at least 2 layers (contrastive + MLM modules)")
    out["num_mlm_layers"] = min(layers - 1, max(1, round(layers * 2 / 3)))
    mel = int(pre.get("num_mel_bins", 80))
    stride = int(pre.get("stride", 2))
    if mel * stride != int(hf["feature_projection_input_dim"]):
        raise CheckpointError(
            f"feature_projection_input_dim={hf['feature_projection_input_dim']} is not "
            f"num_mel_bins {mel} x stride {stride} of the preprocessor config"
        )
    out["frontend"] = {
        "num_mel_bins": mel,
        "stride": stride,
        "sample_rate": int(pre.get("sampling_rate", 16000)),
        "normalize": "utterance",
    }
    return out


def _preprocessor(model: PretrainModel) -> Any:
    from transformers import SeamlessM4TFeatureExtractor

    fc = model.config.frontend
    return SeamlessM4TFeatureExtractor(
        feature_size=fc.num_mel_bins,
        sampling_rate=fc.sample_rate,
        num_mel_bins=fc.num_mel_bins,
        padding_value=0.0,
        stride=fc.stride,
    )


INTEROP = FamilyInterop(
    family="w2v_bert",
    model_type="wav2vec2-bert",
    encoder_class="Wav2Vec2BertModel",
    pretraining_class=None,
    wrapper_prefix="wav2vec2_bert.",
    rules=RULES,
    qkv_template=QKV,
    hf_config=_hf_config,
    config_from_hf=_config_from_hf,
    preprocessor=_preprocessor,
)
