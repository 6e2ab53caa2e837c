"""wav2vec 2.0 <-> ``transformers.Wav2Vec2ForPreTraining`` / ``Wav2Vec2Model``.

The default export is ``Wav2Vec2ForPreTraining`` (quantizer, ``project_q``, ``project_hid``
included; ``AutoModelForPreTraining`` loads it); ``--bare`` writes ``Wav2Vec2Model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from speechssl.interop.hf.common import (
    ATTENTION_QKV,
    FamilyInterop,
    require,
    waveform_feature_extractor,
)
from speechssl.interop.hf.hubert import (
    WAVEFORM_ENCODER_RULES,
    waveform_encoder_from_hf,
    waveform_encoder_hf_fields,
)

# pretraining heads (names relative to Wav2Vec2ForPreTraining, no prefix)
PRETRAIN_RULES = [
    (r"quantizer\.weight_proj\.(weight|bias)", r"quantizer.weight_proj.\1"),
    (r"quantizer\.codevectors", r"quantizer.codevectors"),
    (r"project_q\.(weight|bias)", r"project_q.\1"),
    (r"final_proj\.(weight|bias)", r"project_hid.\1"),
]


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(
        num_codevectors_per_group=cfg.codebook_vars,
        num_codevector_groups=cfg.codebook_groups,
        contrastive_logits_temperature=cfg.logit_temp,
        num_negatives=cfg.num_negatives,
        codevector_dim=cfg.codevector_dim,
        proj_codevector_dim=cfg.final_dim,
        diversity_loss_weight=cfg.diversity_weight,
        feat_quantizer_dropout=cfg.dropout_features,
        **waveform_encoder_hf_fields(cfg, architecture),
    )


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "add_adapter", None, False)
    out = waveform_encoder_from_hf(hf, pre)
    out.update(
        codebook_vars=int(hf["num_codevectors_per_group"]),
        codebook_groups=int(hf["num_codevector_groups"]),
        vq_dim=int(hf["codevector_dim"]),
        final_dim=int(hf["proj_codevector_dim"]),
        logit_temp=float(hf["contrastive_logits_temperature"]),
        num_negatives=int(hf["num_negatives"]),
        diversity_weight=float(hf["diversity_loss_weight"]),
        dropout_features=float(hf["feat_quantizer_dropout"]),
    )
    return out


INTEROP = FamilyInterop(
    family="wav2vec2",
    model_type="wav2vec2",
    encoder_class="Wav2Vec2Model",
    pretraining_class="Wav2Vec2ForPreTraining",
    wrapper_prefix="wav2vec2.",
    rules=WAVEFORM_ENCODER_RULES,
    qkv_template=ATTENTION_QKV,
    hf_config=_hf_config,
    config_from_hf=_config_from_hf,
    preprocessor=waveform_feature_extractor,
    head_rules=PRETRAIN_RULES,
)
