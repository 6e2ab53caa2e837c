"""SSAST <-> ``transformers.ASTModel`` (``model_type`` ``audio-spectrogram-transformer``).

The architectures match when our model has AST's two leading tokens (``cls_tokens=2``: CLS
and distillation), a pre-LN encoder, and non-overlapping square patches
(``frequency_stride = time_stride = patch_size``). Three values are rearranged, not just
renamed:

* the patch embedding: ours is a linear map of a patch flattened (time, frequency); AST's is
  a ``Conv2d`` over the (frequency, time) spectrogram image, so the kernel is transposed;
* the patch order: our grid runs time-major (``t * F + f``), AST's frequency-major
  (``f * T + t``), so the patch positions are permuted (hidden states of the same segment
  are equal after the same permutation);
* positions: AST learns one vector per token, CLS tokens included. Our fixed sine-cosine
  (or learned) patch positions are written there, with zeros at the two CLS positions; on
  import a CLS position is added to its token (the sum is all the encoder sees), and our
  own export restores the sine-cosine config from ``speechssl/model.json`` after checking
  the positions are those.

The masking embedding and the discriminative/reconstruction heads go to the side directory.
The feature extractor written beside is ``ASTFeatureExtractor`` with our bin count, segment
length and ``do_normalize=False``; it is *not* our spectrogram (its fbank uses a Hanning
window and no per-utterance normalisation), so feed the model our
:meth:`~speechssl.models.speech_ssl.SSASTModel.spectrogram` for identical outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.hf.common import (
    FamilyInterop,
    Rules,
    require,
    vit_config_fields,
    vit_encoder_from_hf,
)
from speechssl.models.base import PretrainModel

_PATCH_WEIGHT = "embeddings.patch_embeddings.projection.weight"
_POSITIONS = "embeddings.position_embeddings"
_CLS = "embeddings.cls_token"
_DISTILLATION = "embeddings.distillation_token"
#: our two leading tokens as one tensor (split into AST's two on the way out)
_BOTH_CLS = "embeddings.cls_tokens"

RULES: Rules = [
    (r"frontend\.projection\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"frontend\.position", _POSITIONS),
    (r"cls_tokens", _BOTH_CLS),
    (r"encoder\.layer_norm\.(weight|bias)", r"layernorm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"layers.\1.attention.o_proj.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"layers.\1.layernorm_before.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"layers.\1.layernorm_after.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.fc1\.(weight|bias)", r"layers.\1.mlp.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.fc2\.(weight|bias)", r"layers.\1.mlp.fc2.\2"),
]  # fmt: skip


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import ASTConfig

    enc = cfg.encoder
    if cfg.cls_tokens != 2:
        raise ConfigError(
            f"transformers' ASTModel has 2 leading tokens (CLS, distillation); this SSAST has "
            f"cls_tokens={cfg.cls_tokens} (train with +model.overrides.cls_tokens=2, as the ssast_tiny preset does)"
        )
    if not enc.layer_norm_first:
        raise ConfigError("transformers' ASTModel encoder is pre-LN (encoder.layer_norm_first=true)")  # fmt: skip
    return ASTConfig(
        **vit_config_fields(enc),
        patch_size=cfg.patch_size,
        frequency_stride=cfg.patch_size,
        time_stride=cfg.patch_size,
        max_length=cfg.segment_frames,
        num_mel_bins=cfg.num_mel_bins,
        architectures=[architecture],
    )


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "hidden_act", "gelu")
    require(hf, "qkv_bias", True)
    p = int(hf["patch_size"])
    if int(hf["frequency_stride"]) != p or int(hf["time_stride"]) != p:
        raise CheckpointError(
            f"AST strides {hf['frequency_stride']}x{hf['time_stride']} overlap patches of "
            f"{p}: speechssl's SSAST cuts non-overlapping patches (stride = patch_size)"
        )
    return {
        "encoder": {
            **vit_encoder_from_hf(hf),
        },
        "num_mel_bins": int(hf["num_mel_bins"]),
        "segment_frames": int(hf["max_length"]),
        "patch_size": p,
        "cls_tokens": 2,
        "position": "learned",  # AST's positions are learned vectors
    }


def _feature_extractor(model: PretrainModel) -> Any:
    from transformers import ASTFeatureExtractor

    cfg = model.config
    return ASTFeatureExtractor(
        num_mel_bins=cfg.num_mel_bins, max_length=cfg.segment_frames, do_normalize=False,
        sampling_rate=16000,
    )  # fmt: skip


def _grid(model: PretrainModel) -> tuple[int, int]:
    front: Any = model.frontend
    gt, gf = front.grid
    return int(gt), int(gf)


def _time_major_to_ast(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[T*F, D]`` rows in our order (time-major) -> AST's (frequency-major)."""
    gt, gf = grid
    return x.reshape(gt, gf, -1).transpose(0, 1).reshape(gt * gf, -1)


def _ast_to_time_major(x: Tensor, grid: tuple[int, int]) -> Tensor:
    gt, gf = grid
    return x.reshape(gf, gt, -1).transpose(0, 1).reshape(gt * gf, -1)


def our_patch_positions(model: PretrainModel) -> Tensor:
    """The patch positions our model adds, ``[P, D]`` in our (time-major) order."""
    front: Any = model.frontend
    if front.position is not None:
        return front.position.detach()
    if model.config.position == "sincos":
        return front.fixed_position.detach()
    return torch.zeros(front.config.num_patches, model.config.encoder.dim)


@dataclass(frozen=True)
class SSASTInterop(FamilyInterop):
    """:class:`FamilyInterop` with the three value rearrangements of the module docstring."""

    def to_hf_state(
        self, model: PretrainModel, pretraining: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        hf, side = super().to_hf_state(model, pretraining)
        grid = _grid(model)
        w = hf[_PATCH_WEIGHT]
        p = model.config.patch_size
        # ours [D, t * p + f] -> the conv's [D, 1, f, t]
        hf[_PATCH_WEIGHT] = w.reshape(w.shape[0], p, p).transpose(1, 2).unsqueeze(1).contiguous()
        cls = hf.pop(_BOTH_CLS)
        hf[_CLS] = cls[0].reshape(1, 1, -1).clone()
        hf[_DISTILLATION] = cls[1].reshape(1, 1, -1).clone()
        hf.pop(_POSITIONS, None)
        patches = _time_major_to_ast(our_patch_positions(model), grid)
        lead = torch.zeros(2, patches.shape[1], dtype=patches.dtype)
        hf[_POSITIONS] = torch.cat([lead, patches]).unsqueeze(0).contiguous()
        return hf, side

    def hf_state_in(self, model: PretrainModel, state: dict[str, Tensor], where: str) -> dict[str, Tensor]:  # fmt: skip
        """AST's weights (prefixed or not) rearranged to our layout and names."""
        prefix = self.wrapper_prefix if any(k.startswith(self.wrapper_prefix) for k in state) else ""  # fmt: skip
        names = (_PATCH_WEIGHT, _POSITIONS, _CLS, _DISTILLATION)
        lacking = [n for n in names if prefix + n not in state]
        if lacking:
            raise CheckpointError(f"{where}: AST weight(s) missing: {', '.join(lacking)}")
        out = dict(state)
        w, pos, cls, dist = (out.pop(prefix + n) for n in names)
        p = model.config.patch_size
        if tuple(w.shape[1:]) != (1, p, p):
            raise CheckpointError(f"{where}: {_PATCH_WEIGHT} is {tuple(w.shape)}, not [D, 1, {p}, {p}]")  # fmt: skip
        out[prefix + _PATCH_WEIGHT] = (
            w[:, 0].transpose(1, 2).reshape(w.shape[0], p * p).contiguous()
        )
        pos = pos.reshape(pos.shape[-2], pos.shape[-1])
        lead = torch.stack([cls.reshape(-1), dist.reshape(-1)])
        out[prefix + _BOTH_CLS] = (lead + pos[:2].to(lead.dtype)).contiguous()
        patches = _ast_to_time_major(pos[2:], _grid(model))
        front: Any = model.frontend
        if front.position is not None:
            out[prefix + _POSITIONS] = patches.contiguous()
        else:
            want = our_patch_positions(model).to(patches.dtype)
            if want.shape != patches.shape or not torch.allclose(patches, want, atol=1e-6):
                raise CheckpointError(
                    f"{where}: the patch position embeddings are not the "
                    f"{model.config.position!r} positions speechssl/model.json names"
                )
        return out


INTEROP = SSASTInterop(
    family="ssast",
    model_type="audio-spectrogram-transformer",
    encoder_class="ASTModel",
    pretraining_class=None,
    wrapper_prefix="audio_spectrogram_transformer.",
    rules=RULES,
    qkv_template="layers.{layer}.attention.{part}_proj.{kind}",
    hf_config=_hf_config,
    config_from_hf=_config_from_hf,
    preprocessor=_feature_extractor,
)
