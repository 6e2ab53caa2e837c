"""Conformer encoder blocks (modality-free: ``[N, S, D]`` in and out), as in w2v-BERT.

A layer (Gulati et al., 2020) is ``x + 1/2 FFN(x)`` -> ``x + MHSA(x)`` -> ``x + Conv(x)`` ->
``x + 1/2 FFN(x)`` -> LayerNorm, each sub-block pre-normalised ("macaron" feed-forward
halves around attention and convolution). The parts follow the w2v-BERT 2.0 layout that
``transformers.Wav2Vec2BertModel`` implements, so weights map one to one:

* feed-forward halves with a configurable activation (swish in w2v-BERT);
* self-attention with Shaw-style *relative key* position bias: a learned embedding per
  clipped distance ``key - query`` in ``[-max_left, max_right]`` (64 and 8 in w2v-BERT
  2.0), scored against the query and added to the attention logits; the bias is passed
  to ``scaled_dot_product_attention`` as its additive mask (with padding folded in);
* the convolution module: LayerNorm, pointwise conv to ``2D`` + GLU, depthwise conv
  (causal, i.e. left-padded, in w2v-BERT 2.0; centred otherwise), LayerNorm, activation,
  pointwise conv; padded frames are zeroed before the depthwise conv so padding never
  reaches a real frame.

Hidden-state indexing is the one of :class:`~speechssl.core.transformer.EncoderOutput`:
``hidden_states[0]`` is the first layer's input (padding zeroed, after input dropout),
``hidden_states[i]`` the output of layer ``i``; there is no encoder-level final LayerNorm
(every conformer layer ends with its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.transformer import (
    EncoderOutput,
    FeedForward,
    SelfAttention,
    activation_function,
    check_encoder_shape,
    init_bert_params,
    layers_to_run,
    run_layer_stack,
)
from speechssl.errors import ConfigError

POSITION_ENCODINGS = ("relative_key", "none")


@dataclass(kw_only=True)
class ConformerEncoderConfig:
    """Shape and regularisation of a conformer encoder."""

    dim: int = 1024
    """Model dimension."""
    num_layers: int = 24
    """Number of conformer layers."""
    num_heads: int = 16
    """Attention heads per layer (``dim`` must be divisible by it)."""
    ffn_dim: int = 4096
    """Hidden size of each feed-forward half."""
    activation: str = "swish"
    """Activation of the feed-forward halves and the convolution module."""
    depthwise_kernel: int = 31
    """Kernel of the depthwise convolution (odd)."""
    causal_depthwise: bool = True
    """Left-pad the depthwise convolution (w2v-BERT 2.0; what ``transformers`` implements)
    instead of centring it (the original conformer)."""
    position_encoding: str = "relative_key"
    """``relative_key`` (learned bias per clipped relative distance) or ``none``."""
    max_left_distance: int = 64
    """Relative distances to the left are clipped at this many frames."""
    max_right_distance: int = 8
    """Relative distances to the right are clipped at this many frames."""
    dropout: float = 0.0
    """Dropout on the encoder input and after the feed-forward halves."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities and on the attention output."""
    activation_dropout: float = 0.0
    """Dropout after the feed-forward activation."""
    conv_dropout: float = 0.0
    """Dropout at the end of the convolution module."""
    layer_drop: float = 0.0
    """Probability of skipping each layer during training."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    def __post_init__(self) -> None:
        check_encoder_shape("conformer", self.dim, self.num_heads, self.layer_drop)
        if self.depthwise_kernel < 1 or self.depthwise_kernel % 2 == 0:
            raise ConfigError(
                f"conformer depthwise_kernel must be odd and >= 1, got {self.depthwise_kernel}"
            )
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ConfigError(
                f"conformer position_encoding must be one of {POSITION_ENCODINGS}, "
                f"got {self.position_encoding!r}"
            )
        if self.max_left_distance < 0 or self.max_right_distance < 0:
            raise ConfigError("conformer relative distances must be >= 0")
        activation_function(self.activation)


def relative_distance_index(
    query_len: int, key_len: int, max_left: int, max_right: int, device: torch.device
) -> Tensor:
    """``[Q, K]`` long: ``clamp(k - q, -max_left, max_right) + max_left``, the row of the
    distance embedding each (query, key) pair uses."""
    q = torch.arange(query_len, device=device).unsqueeze(1)
    k = torch.arange(key_len, device=device).unsqueeze(0)
    return (k - q).clamp(-max_left, max_right) + max_left


def relative_key_bias(query: Tensor, distance_embedding: Tensor, index: Tensor) -> Tensor:
    """Shaw-style position bias ``b[n, h, q, k] = <query[n, h, q], E[index[q, k]]> / sqrt(d)``.

    Args:
        query: ``[N, H, Q, d]`` projected queries.
        distance_embedding: ``[P, d]`` one vector per clipped distance.
        index: ``[Q, K]`` rows of ``distance_embedding`` (:func:`relative_distance_index`).

    Returns:
        ``[N, H, Q, K]`` bias in the query's dtype. Scored against the ``P`` distances
        first and then gathered, so memory is that of the attention matrix, not
        ``Q x K x d``.
    """
    scores = query @ distance_embedding.to(query.dtype).t()  # [N, H, Q, P]
    n, h, q, _ = scores.shape
    gathered = scores.gather(-1, index.unsqueeze(0).unsqueeze(0).expand(n, h, q, -1))
    return gathered * (query.shape[-1] ** -0.5)


class RelativePositionSelfAttention(SelfAttention):
    """:class:`~speechssl.core.transformer.SelfAttention` plus a relative key bias.

    The bias and the key-padding mask become one additive float mask for
    ``scaled_dot_product_attention``; padded keys get the dtype's most negative value
    rather than ``-inf``, so a sequence with no real frame gives zeros, never NaN.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        *,
        max_left: int = 64,
        max_right: int = 8,
    ) -> None:
        super().__init__(dim, num_heads, dropout)
        self.max_left = max_left
        self.max_right = max_right
        self.distance_embedding = nn.Embedding(max_left + max_right + 1, self.head_dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """``x [N, S, D]``; ``attn_mask`` bool ``[N, 1, 1, S]`` (True = attend) or None."""
        n, s, _ = x.shape
        qkv = self.qkv(x).view(n, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        index = relative_distance_index(s, s, self.max_left, self.max_right, x.device)
        bias = relative_key_bias(q, self.distance_embedding.weight, index)
        if attn_mask is not None:
            bias = bias.masked_fill(~attn_mask, torch.finfo(bias.dtype).min)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(n, s, self.dim))


class ConformerConvModule(nn.Module):
    """LayerNorm -> pointwise conv (2D) -> GLU -> depthwise conv -> LayerNorm -> activation
    -> pointwise conv -> dropout, over ``[N, S, D]``; no conv biases (as in w2v-BERT 2.0)."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        *,
        causal: bool = True,
        activation: str = "swish",
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, 1, bias=False)
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        self.depthwise_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.pointwise_conv2 = nn.Conv1d(dim, dim, 1, bias=False)
        self.activation = activation_function(activation)
        self.dropout = nn.Dropout(dropout)
        self.kernel_size = kernel_size
        self.causal = causal

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``x [N, S, D]``, ``padding_mask [N, S]`` (True = pad) -> ``[N, S, D]``."""
        y = self.layer_norm(x)
        if padding_mask is not None:
            y = y.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        y = F.glu(self.pointwise_conv1(y.transpose(1, 2)), dim=1)
        k = self.kernel_size
        pad = (k - 1, 0) if self.causal else (k // 2, k // 2)
        y = self.depthwise_conv(F.pad(y, pad))
        y = self.depthwise_layer_norm(y.transpose(1, 2)).transpose(1, 2)
        y = self.pointwise_conv2(self.activation(y))
        return self.dropout(y).transpose(1, 2)


class ConformerLayer(nn.Module):
    """One conformer layer (see the module docstring for the order of its sub-blocks)."""

    def __init__(self, config: ConformerEncoderConfig) -> None:
        super().__init__()
        c = config
        eps = c.layer_norm_eps
        self.ffn1_layer_norm = nn.LayerNorm(c.dim, eps=eps)
        self.ffn1 = FeedForward(c.dim, c.ffn_dim, c.activation_dropout, c.activation)
        self.self_attn_layer_norm = nn.LayerNorm(c.dim, eps=eps)
        self.self_attn: SelfAttention
        if c.position_encoding == "relative_key":
            self.self_attn = RelativePositionSelfAttention(
                c.dim,
                c.num_heads,
                c.attention_dropout,
                max_left=c.max_left_distance,
                max_right=c.max_right_distance,
            )
        else:
            self.self_attn = SelfAttention(c.dim, c.num_heads, c.attention_dropout)
        self.conv_module = ConformerConvModule(
            c.dim,
            c.depthwise_kernel,
            causal=c.causal_depthwise,
            activation=c.activation,
            dropout=c.conv_dropout,
            layer_norm_eps=eps,
        )
        self.ffn2_layer_norm = nn.LayerNorm(c.dim, eps=eps)
        self.ffn2 = FeedForward(c.dim, c.ffn_dim, c.activation_dropout, c.activation)
        self.final_layer_norm = nn.LayerNorm(c.dim, eps=eps)
        self.dropout = nn.Dropout(c.dropout)
        self.attention_output_dropout = nn.Dropout(c.attention_dropout)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        x = x + 0.5 * self.dropout(self.ffn1(self.ffn1_layer_norm(x)))
        x = x + self.attention_output_dropout(
            self.self_attn(self.self_attn_layer_norm(x), attn_mask)
        )
        x = x + self.conv_module(x, padding_mask)
        x = x + 0.5 * self.dropout(self.ffn2(self.ffn2_layer_norm(x)))
        return self.final_layer_norm(x)


class ConformerEncoder(nn.Module):
    """A stack of :class:`ConformerLayer` s; same interface and output as
    :class:`~speechssl.core.transformer.TransformerEncoder`."""

    def __init__(self, config: ConformerEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.layers = nn.ModuleList(ConformerLayer(config) for _ in range(config.num_layers))
        self.layer_drop = config.layer_drop
        self.dropout = nn.Dropout(config.dropout)

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
        """Encode ``x [N, S, D]``; ``padding_mask [N, S]`` True at padding; ``num_layers``
        stops after that many layers."""
        stop = layers_to_run(num_layers, len(self.layers))
        if padding_mask is not None and not bool(padding_mask.any()):
            padding_mask = None
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            attn_mask = (~padding_mask)[:, None, None, :]
        x = self.dropout(x)
        x, hidden = run_layer_stack(
            self.layers,
            x,
            stop,
            lambda layer, h: layer(h, attn_mask, padding_mask),
            layer_drop=self.layer_drop,
            training=self.training,
            output_hidden_states=output_hidden_states,
        )
        return EncoderOutput(last_hidden_state=x, hidden_states=hidden)


def build_conformer_encoder(config: ConformerEncoderConfig) -> ConformerEncoder:
    """Conformer encoder with BERT-style initialisation of its linear layers (``N(0,
    0.02)``, zero bias), Kaiming-normal convolutions and ``N(0, 0.02)`` distance embeddings."""
    encoder = ConformerEncoder(config)
    init_bert_params(encoder)
    for sub in encoder.modules():
        if isinstance(sub, nn.Conv1d):
            nn.init.kaiming_normal_(sub.weight)
        elif isinstance(sub, RelativePositionSelfAttention):
            nn.init.normal_(sub.distance_embedding.weight, mean=0.0, std=0.02)
    return encoder


__all__ = [
    "ConformerConvModule",
    "ConformerEncoder",
    "ConformerEncoderConfig",
    "ConformerLayer",
    "RelativePositionSelfAttention",
    "build_conformer_encoder",
    "relative_distance_index",
    "relative_key_bias",
]
