"""WavLM <-> ``transformers.WavLMModel`` (``model_type`` ``wavlm``): key map and config mapping.

WavLM is HuBERT's waveform encoder (:mod:`.hubert`'s names) plus the gated relative
position bias: our shared bias table (``encoder.relative_bias.embedding``) is
``transformers``' ``encoder.layers.0.attention.rel_attn_embed`` (only the first layer holds
it there too), each layer's gate (``self_attn.gate_proj``, ``self_attn.gate_const``) is
``attention.gru_rel_pos_linear`` / ``attention.gru_rel_pos_const``. ``transformers`` has no
WavLM pretraining class, so both exports are ``WavLMModel``; the HuBERT-style head (and the
k-means model) travel in the ``speechssl/`` side directory of a default export. Utterance
mixing has no weights (its settings are in ``speechssl/model.json``). Hidden states agree
one for one with our ``extract()``, with HuBERT's caveat for the padding-aware GroupNorm of
base conv stacks (padded batches differ there; single utterances agree).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from speechssl.interop.hf.common import (
    ATTENTION_QKV,
    FamilyInterop,
    Rules,
    require,
    waveform_feature_extractor,
)
from speechssl.interop.hf.hubert import (
    WAVEFORM_ENCODER_RULES,
    waveform_encoder_from_hf,
    waveform_encoder_hf_fields,
)

RULES: Rules = [
    *WAVEFORM_ENCODER_RULES,
    (r"encoder\.relative_bias\.embedding\.weight", r"encoder.layers.0.attention.rel_attn_embed.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.gate_proj\.(weight|bias)", r"encoder.layers.\1.attention.gru_rel_pos_linear.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.gate_const", r"encoder.layers.\1.attention.gru_rel_pos_const"),
]  # fmt: skip


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import WavLMConfig

    return WavLMConfig(
        num_buckets=cfg.encoder.num_buckets,
        max_bucket_distance=cfg.encoder.max_distance,
        **waveform_encoder_hf_fields(cfg, architecture),
    )


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "add_adapter", None, False)
    out = waveform_encoder_from_hf(hf, pre)
    out["encoder"].update(
        num_buckets=int(hf["num_buckets"]), max_distance=int(hf["max_bucket_distance"])
    )
    return out


INTEROP = FamilyInterop(
    family="wavlm",
    model_type="wavlm",
    encoder_class="WavLMModel",
    pretraining_class=None,
    wrapper_prefix="wavlm.",
    rules=RULES,
    qkv_template=ATTENTION_QKV,
    hf_config=_hf_config,
    config_from_hf=_config_from_hf,
    preprocessor=waveform_feature_extractor,
)
