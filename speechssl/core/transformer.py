"""Transformer encoder blocks shared by every family (modality-free: ``[N, S, D]`` in and out).

* attention runs on ``torch.nn.functional.scaled_dot_product_attention`` with a boolean
  key-padding mask (``None`` when nothing is padded, so the fused flash kernel is usable);
* post-LN (BERT / wav2vec 2.0 base) or pre-LN (``layer_norm_first``, the large models);
* convolutional relative position embedding (weight-normalised grouped conv, wav2vec 2.0);
* layer drop; every layer's hidden state on request.

Hidden-state indexing (:class:`EncoderOutput`) matches ``transformers`` 5.x
``output_hidden_states``: ``hidden_states[0]`` is the input of the first layer (after the
positional convolution, and after the input LayerNorm for post-LN models),
``hidden_states[i]`` is the raw output of layer ``i``; the final LayerNorm of pre-LN models
is applied only to ``last_hidden_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.errors import ConfigError


@dataclass(kw_only=True)
class TransformerEncoderConfig:
    """Shape and regularisation of a transformer encoder with conv position embedding."""

    dim: int = 768
    """Model (embedding) dimension."""
    num_layers: int = 12
    """Number of transformer layers."""
    num_heads: int = 12
    """Attention heads per layer (``dim`` must be divisible by it)."""
    ffn_dim: int = 3072
    """Hidden size of the feed-forward block."""
    dropout: float = 0.1
    """Dropout on attention/FFN outputs and on the encoder input."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    activation_dropout: float = 0.0
    """Dropout after the FFN activation."""
    layer_norm_first: bool = False
    """Pre-LN layers (True, large models) or post-LN layers (False, base models)."""
    layer_drop: float = 0.05
    """Probability of skipping each layer during training."""
    pos_conv_kernel: int = 128
    """Kernel size of the convolutional position embedding (0 disables it)."""
    pos_conv_groups: int = 16
    """Groups of the convolutional position embedding."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    def __post_init__(self) -> None:
        check_encoder_shape("encoder", self.dim, self.num_heads, self.layer_drop)
        if self.pos_conv_kernel > 0 and self.dim % self.pos_conv_groups != 0:
            raise ConfigError(
                f"encoder dim {self.dim} is not divisible by pos_conv_groups {self.pos_conv_groups}"
            )


def check_encoder_shape(what: str, dim: int, num_heads: int, layer_drop: float) -> None:
    """Config checks every encoder shares: heads divide the dim, layer drop in [0, 1)."""
    if dim % num_heads != 0:
        raise ConfigError(f"{what} dim {dim} is not divisible by num_heads {num_heads}")
    if not 0.0 <= layer_drop < 1.0:
        raise ConfigError(f"layer_drop must be in [0, 1), got {layer_drop}")


def layers_to_run(num_layers: int | None, total: int) -> int:
    """How many of ``total`` layers an encoder call runs (``num_layers``, default all)."""
    if num_layers is not None and not 0 <= num_layers <= total:
        raise ValueError(f"num_layers must be in [0, {total}], got {num_layers}")
    return total if num_layers is None else num_layers


def run_layer_stack(
    layers: Iterable[nn.Module],
    x: Tensor,
    stop: int,
    apply: Callable[[nn.Module, Tensor], Tensor],
    *,
    layer_drop: float,
    training: bool,
    output_hidden_states: bool,
) -> tuple[Tensor, list[Tensor] | None]:
    """Run the first ``stop`` layers on ``x`` via ``apply(layer, x)``, skipping each with
    probability ``layer_drop`` while training (one CPU draw per layer, so the draws do not
    depend on the device); with ``output_hidden_states`` also the input and every layer's
    output."""
    hidden: list[Tensor] | None = [x] if output_hidden_states else None
    for index, layer in enumerate(layers):
        if index >= stop:
            break
        skip = training and layer_drop > 0 and float(torch.rand((), device="cpu")) < layer_drop
        if not skip:
            x = apply(layer, x)
        if hidden is not None:
            hidden.append(x)
    return x, hidden


class ConvPositionalEmbedding(nn.Module):
    """Grouped 1-D convolution over time with weight normalisation, then GELU.

    The weight is parametrised as ``g * v / ||v||`` with the norm taken over all but the
    kernel axis (``dim=2``), as in wav2vec 2.0; an even kernel drops the last output frame
    so the output has the input's length.
    """

    def __init__(self, dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """``[N, S, D]`` -> ``[N, S, D]``."""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection on SDPA."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x [N, S, D]``; ``attn_mask`` bool broadcastable to ``[N, H, S, S]``, True = attend."""
        n, s, _ = x.shape
        qkv = self.qkv(x).view(n, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(n, s, self.dim))


#: activation functions by config name (``swish`` is SiLU, the conformer's choice)
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "swish": F.silu,
    "silu": F.silu,
    "relu": F.relu,
}


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The activation called ``name`` (a ConfigError lists the known ones)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


class FeedForward(nn.Module):
    """``fc2(dropout(act(fc1(x))))`` with ``act`` GELU unless ``activation`` names another."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        activation_dropout: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.activation_dropout = nn.Dropout(activation_dropout)
        self.activation = activation_function(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(self.activation(self.fc1(x))))


class TransformerLayer(nn.Module):
    """One encoder layer: self-attention and feed-forward, each with a residual.

    post-LN: ``x = LN1(x + drop(attn(x))); x = LN2(x + drop(ffn(x)))``;
    pre-LN:  ``x = x + drop(attn(LN1(x))); x = x + drop(ffn(LN2(x)))``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        *,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm_first = layer_norm_first

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self.dropout(self.ffn(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self.dropout(self.ffn(x)))


@dataclass
class EncoderOutput:
    """Result of :class:`TransformerEncoder`.

    Attributes:
        last_hidden_state: ``[N, S, D]`` encoder output (after the final LayerNorm of
            pre-LN models).
        hidden_states: if requested, ``num_layers + 1`` tensors ``[N, S, D]``; index 0 is the
            first layer's input, index ``i`` the raw output of layer ``i`` (a layer skipped
            by layer drop repeats its input).
    """

    last_hidden_state: Tensor
    hidden_states: list[Tensor] | None = None


def attention_mask_from_padding(padding_mask: Tensor | None) -> Tensor | None:
    """``[N, S]`` padding mask (True = pad) -> SDPA boolean mask ``[N, 1, 1, S]`` (True =
    attend), or ``None`` when nothing is padded (lets SDPA pick the flash kernel)."""
    if padding_mask is None or not bool(padding_mask.any()):
        return None
    return (~padding_mask)[:, None, None, :]


class TransformerEncoder(nn.Module):
    """Conv position embedding + a stack of :class:`TransformerLayer` s.

    Built by :func:`build_transformer_encoder` (or from parts, for a custom layer type: any
    module with ``forward(x, attn_mask)`` works as a layer).
    """

    def __init__(
        self,
        dim: int,
        layers: list[nn.Module],
        pos_conv: nn.Module | None,
        *,
        layer_norm_first: bool,
        layer_drop: float = 0.0,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.pos_conv = pos_conv
        self.layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.layers = nn.ModuleList(layers)
        self.layer_norm_first = layer_norm_first
        self.layer_drop = layer_drop
        self.dropout = nn.Dropout(dropout)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> EncoderOutput:
        """Encode ``x`` (``[N, S, D]``); ``padding_mask`` ``[N, S]`` True at padding.

        ``num_layers`` stops after that many layers (no final LayerNorm then).
        """
        stop = layers_to_run(num_layers, len(self.layers))
        if padding_mask is not None:
            # padded frames must not leak into real ones through the position convolution
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if self.pos_conv is not None:
            if getattr(self.pos_conv, "accepts_padding_mask", False):
                # a deep position module re-masks padding between its layers
                x = x + self.pos_conv(x, padding_mask)
            else:
                x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        attn_mask = attention_mask_from_padding(padding_mask)

        x, hidden = run_layer_stack(
            self.layers,
            x,
            stop,
            lambda layer, h: layer(h, attn_mask),
            layer_drop=self.layer_drop,
            training=self.training,
            output_hidden_states=output_hidden_states,
        )
        if self.layer_norm_first and stop == len(self.layers):
            x = self.layer_norm(x)
        return EncoderOutput(last_hidden_state=x, hidden_states=hidden)


def build_transformer_encoder(config: TransformerEncoderConfig) -> TransformerEncoder:
    """Standard encoder from a config (the factory habit: parts first, then the whole)."""
    c = config
    layers: list[nn.Module] = [
        TransformerLayer(
            c.dim,
            c.num_heads,
            c.ffn_dim,
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            activation_dropout=c.activation_dropout,
            layer_norm_first=c.layer_norm_first,
            layer_norm_eps=c.layer_norm_eps,
        )
        for _ in range(c.num_layers)
    ]
    pos_conv = (
        ConvPositionalEmbedding(c.dim, c.pos_conv_kernel, c.pos_conv_groups)
        if c.pos_conv_kernel > 0
        else None
    )
    encoder = TransformerEncoder(
        c.dim,
        layers,
        pos_conv,
        layer_norm_first=c.layer_norm_first,
        layer_drop=c.layer_drop,
        dropout=c.dropout,
        layer_norm_eps=c.layer_norm_eps,
    )
    init_bert_params(encoder)
    return encoder


def init_bert_params(module: nn.Module) -> None:
    """BERT-style initialisation used by fairseq's wav2vec 2.0/HuBERT encoders: linear
    weights ``N(0, 0.02)``, zero biases; the position convolution gets
    ``N(0, sqrt(4 / (kernel * dim)))`` before weight normalisation."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, ConvPositionalEmbedding):
            conv = sub.conv
            kernel = conv.kernel_size[0]
            std = (4.0 / (kernel * conv.in_channels)) ** 0.5
            with torch.no_grad():
                weight = torch.empty_like(conv.weight).normal_(mean=0.0, std=std)
                # assigning through the parametrisation re-derives g and v from the weight
                conv.weight = weight
                nn.init.zeros_(conv.bias)
