"""Copy weights from ``torchaudio.models`` wav2vec 2.0 / HuBERT models into ours.

Used by the parity tests (same weights, same outputs) and to start from a torchaudio
checkpoint. ``torchaudio``'s ``Wav2Vec2Model`` maps onto our front end + encoder;
``HuBERTPretrainModel`` additionally maps its mask embedding and its logit generator
(final projection + label embeddings) onto our masker and masked-prediction head.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from speechssl.errors import ConfigError
from speechssl.interop.hf.common import fuse_qkv
from speechssl.models.io import load_weights
from speechssl.models.waveform import WaveformEncoderModel

# torchaudio name (regex, after stripping the ``wav2vec2.`` prefix) -> our name
_RULES: list[tuple[str, str]] = [
    (
        r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)",
        r"frontend.extractor.conv_layers.\1.conv.\2",
    ),
    (
        r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)",
        r"frontend.extractor.conv_layers.\1.norm.\2",
    ),
    (r"encoder\.feature_projection\.layer_norm\.(weight|bias)", r"frontend.layer_norm.\1"),
    (r"encoder\.feature_projection\.projection\.(weight|bias)", r"frontend.projection.\1"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.(.+)", r"encoder.pos_conv.conv.\1"),
    (r"encoder\.transformer\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (
        r"encoder\.transformer\.layers\.(\d+)\.attention\.out_proj\.(weight|bias)",
        r"encoder.layers.\1.self_attn.out_proj.\2",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.layer_norm\.(weight|bias)",
        r"encoder.layers.\1.self_attn_layer_norm.\2",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)",
        r"encoder.layers.\1.ffn.fc1.\2",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)",
        r"encoder.layers.\1.ffn.fc2.\2",
    ),
    (
        r"encoder\.transformer\.layers\.(\d+)\.final_layer_norm\.(weight|bias)",
        r"encoder.layers.\1.final_layer_norm.\2",
    ),
    (r"mask_generator\.mask_embedding", r"masker.mask_embedding"),
    (r"logit_generator\.label_embeddings", r"head.label_embeddings"),
    (r"logit_generator\.final_proj\.(weight|bias)", r"head.final_proj.\1"),
]
_QKV = re.compile(r"encoder\.transformer\.layers\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)")


def convert_torchaudio_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchaudio wav2vec 2.0 / HuBERT state dict to ours (q, k, v fused)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for name, value in state.items():
        key = name[len("wav2vec2.") :] if name.startswith("wav2vec2.") else name
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        for pattern, repl in _RULES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise ConfigError(f"torchaudio weight {name!r} has no counterpart in speechssl")
    out.update(fuse_qkv(qkv, "torchaudio weights"))
    return out


@torch.no_grad()
def load_torchaudio_weights(model: WaveformEncoderModel, peer: nn.Module) -> None:
    """Copy ``peer``'s weights (a torchaudio ``Wav2Vec2Model`` or ``HuBERTPretrainModel``)
    into ``model``. Our parts that torchaudio lacks (e.g. the quantizer of wav2vec 2.0, or
    the mask embedding of a plain ``Wav2Vec2Model``) keep their values; everything the peer
    has must fit by name and shape."""
    converted = convert_torchaudio_state(peer.state_dict())
    own = model.state_dict()
    merged = {k: converted.get(k, v) for k, v in own.items()}
    extra = sorted(set(converted) - set(own))
    if extra:
        raise ConfigError(f"torchaudio weights {extra[:5]} do not exist in {type(model).__name__}")
    load_weights(model, merged, f"torchaudio {type(peer).__name__}")
