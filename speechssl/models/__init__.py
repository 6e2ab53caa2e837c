"""Model families (HuBERT, wav2vec 2.0, w2v-BERT, data2vec): a front end plus core parts.

Create models by registry name: ``create_model("hubert_tiny", **overrides)``; see
:mod:`speechssl.models.registry`.
"""

# every family registers its presets on import (a new family is one more name here)
from speechssl.models import (  # noqa: F401
    best_rq,
    data2vec,
    distilhubert,
    hubert,
    speech_ssl,
    vision,
    vision_ssl,
    w2v_bert,
    wav2vec2,
    wavlm,
)
from speechssl.models.registry import (
    apply_overrides,
    create_model,
    get_spec,
    list_models,
    model_config,
    register_model,
)

__all__ = [
    "apply_overrides",
    "create_model",
    "get_spec",
    "list_models",
    "model_config",
    "register_model",
]
