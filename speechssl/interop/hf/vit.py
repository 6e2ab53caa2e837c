"""The image families' ViT encoder <-> ``transformers.IJepaModel`` (``model_type`` ``ijepa``).

Every image family (SimCLR, VICReg, Barlow Twins, DINO, MAE, I-JEPA, data2vec vision,
HuBERT on images) encodes with the same pieces: a linear patch embedding, a position table
added to the patch vectors, pre-LN transformer blocks and a final LayerNorm, *without* a
CLS token. ``transformers``' ``ViTModel`` and ``Data2VecVisionModel`` always prepend a CLS
token that every patch attends to, so their patch outputs cannot equal ours;
``IJepaModel`` is the ``transformers`` ViT without a CLS token, and maps one to one:

* the patch projection (a matrix over channel-major patch vectors) is the weight of the
  conv with kernel = stride = patch size, reshaped ``[D, C*p*p] <-> [D, C, p, p]``;
* the position table is ``embeddings.position_embeddings``: our fixed 2-D sine-cosine
  table is written there as values (``learned`` positions as they are, ``none`` as zeros);
* pre-LN blocks: ``layernorm_before`` / attention (q/k/v split from our fused projection) /
  ``layernorm_after`` / GELU MLP, then ``layernorm``.

``output_hidden_states`` equal our ``extract()`` ``hidden_states`` one for one and
``last_hidden_state`` ours. Heads, projectors, decoders, predictors, EMA teachers, the DINO
centre and mask embeddings travel in the ``speechssl/`` side directory. A dir of type
``ijepa`` without our side directory (a bare export, a foreign I-JEPA checkpoint) imports
as ``ijepa_vision`` with learned positions holding the table it carries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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

#: our image families (all encode with the same ViT)
VISION_FAMILIES = (
    "simclr_vision",
    "vicreg_vision",
    "barlow_twins_vision",
    "dino_vision",
    "mae_vision",
    "ijepa_vision",
    "data2vec_vision",
    "hubert_vision",
)

PATCH_WEIGHT = "embeddings.patch_embeddings.projection.weight"
POSITIONS = "embeddings.position_embeddings"
_OUR_POSITION = "frontend.position"

RULES: Rules = [
    (r"frontend\.projection\.weight", PATCH_WEIGHT),
    (r"frontend\.projection\.bias", r"embeddings.patch_embeddings.projection.bias"),
    (r"frontend\.position", POSITIONS),
    (r"encoder\.layer_norm\.(weight|bias)", r"layernorm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layer.\1.layernorm_before.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.fc1\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (r"encoder\.layers\.(\d+)\.ffn\.fc2\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layer.\1.layernorm_after.\2"),
]  # fmt: skip
# the checkpoint names save_pretrained writes (and transformers 4.x and 5.x read); the
# generic code names the parts q/k/v, renamed to query/key/value by VisionInterop
QKV = "encoder.layer.{layer}.attention.attention.{part}.{kind}"
_PARTS = re.compile(r"(attention\.attention\.)([qkv])\.")
_PART_NAMES = {"q": "query", "k": "key", "v": "value"}


def _part_names(table: dict[str, Any]) -> dict[str, Any]:
    return {_PARTS.sub(lambda m: m[1] + _PART_NAMES[m[2]] + ".", k): v for k, v in table.items()}


def _hf_config(cfg: Any, architecture: str) -> Any:
    from transformers import IJepaConfig

    enc, patch = cfg.encoder, cfg.patch
    if not enc.layer_norm_first:
        raise ConfigError("transformers' IJepaModel has pre-LN blocks (layer_norm_first=True)")
    if enc.pos_conv_kernel or enc.layer_drop:
        raise ConfigError(
            "transformers' IJepaModel has no convolutional positions or layer drop "
            "(set pos_conv_kernel=0, layer_drop=0)"
        )
    h, w = patch.image_size
    return IJepaConfig(
        **vit_config_fields(enc),
        image_size=h if h == w else [h, w],
        patch_size=patch.patch_size,
        num_channels=patch.channels,
        architectures=[architecture],
    )


def _config_from_hf(hf: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    require(hf, "hidden_act", "gelu")
    require(hf, "qkv_bias", True)
    size = hf["image_size"]
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return {
        "patch": {
            "image_size": (h, w),
            "channels": int(hf["num_channels"]),
            "patch_size": int(hf["patch_size"]),
            "position": "learned",
        },
        "encoder": {
            **vit_encoder_from_hf(hf),
            "layer_drop": 0.0,
            "pos_conv_kernel": 0,
        },
    }


def _image_processor(model: PretrainModel) -> Any:
    """``ViTImageProcessor``: resize to the model's size, pixels / 255, no mean/std
    normalisation (our image loader feeds pixels in [0, 1])."""
    from transformers import ViTImageProcessor

    h, w = model.config.patch.image_size
    return ViTImageProcessor(
        do_resize=True,
        size={"height": h, "width": w},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=False,
    )


class VisionInterop(FamilyInterop):
    """:class:`FamilyInterop` plus the two reshapes (patch conv, position table)."""

    def to_hf_state(
        self, model: PretrainModel, pretraining: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        hf, side = super().to_hf_state(model, pretraining)
        hf = _part_names(hf)
        patch = model.config.patch
        dim = model.config.encoder.dim
        hf[PATCH_WEIGHT] = hf[PATCH_WEIGHT].reshape(dim, patch.channels, patch.patch_size, patch.patch_size).clone()  # fmt: skip
        if POSITIONS in hf:  # learned
            hf[POSITIONS] = hf[POSITIONS].unsqueeze(0).clone()
        else:
            hf[POSITIONS] = _position_table(model).unsqueeze(0).clone()
        return hf, side

    def hf_names(
        self, model: PretrainModel
    ) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
        encoder, heads = super().hf_names(model)
        return _part_names(encoder), heads

    def hf_state_in(
        self, model: PretrainModel, state: dict[str, Tensor], where: str
    ) -> dict[str, Tensor]:
        """Reshape the patch conv to our matrix; the position table becomes ours
        (``learned``) or is checked against the fixed one (``sincos`` / ``none``)."""
        out = dict(state)
        dim = model.config.encoder.dim
        for key in list(out):
            if key.endswith(PATCH_WEIGHT):
                out[key] = out[key].reshape(dim, -1)
            elif key.endswith(POSITIONS):
                table = out[key].reshape(-1, dim) if out[key].numel() % dim == 0 else out[key]
                if model.config.patch.position == "learned":
                    out[key] = table
                    continue
                ours = _position_table(model)
                if table.shape != ours.shape or not torch.allclose(
                    table.float(), ours.float(), atol=1e-5
                ):
                    raise CheckpointError(
                        f"{where}: {key} is not this model's fixed {model.config.patch.position!r} "
                        "position table (a directory without speechssl/ imports with learned "
                        "positions)"
                    )
                del out[key]
        return out


def _position_table(model: PretrainModel) -> Tensor:
    """The table our front end adds: ``[P, D]`` (zeros for ``position=none``)."""
    frontend: Any = model.frontend
    cfg = model.config.patch
    if cfg.position == "sincos":
        return frontend.fixed_position.detach().float()
    if cfg.position == "learned":
        return frontend.position.detach().float()
    return torch.zeros(cfg.num_patches, model.config.encoder.dim)


def _interop(family: str) -> VisionInterop:
    return VisionInterop(
        family=family,
        model_type="ijepa",
        encoder_class="IJepaModel",
        pretraining_class=None,
        wrapper_prefix="ijepa.",
        rules=RULES,
        qkv_template=QKV,
        hf_config=_hf_config,
        # a foreign (or bare) ijepa dir imports as our I-JEPA family
        config_from_hf=_config_from_hf if family == "ijepa_vision" else None,
        preprocessor=_image_processor,
    )


INTEROPS = tuple(_interop(f) for f in VISION_FAMILIES)

__all__ = ["INTEROPS", "VISION_FAMILIES", "VisionInterop"]
