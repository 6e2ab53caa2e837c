"""Transformer encoder with WavLM's gated relative position bias (Chen et al., 2022).

The semantics are those of ``transformers``' ``WavLMModel``, so weights map one to one:

* **Buckets.** The signed distance ``key - query`` falls into one of ``num_buckets`` (320)
  T5-style buckets: half for positive distances, half for the rest; within a half the
  first ``num_buckets / 4`` distances get a bucket each, larger ones share
  logarithmically spaced buckets up to ``max_distance`` (800 frames), beyond which all
  share the last bucket (:func:`relative_position_bucket`).
* **One table for all layers.** A learned ``[num_buckets, num_heads]`` table (WavLM keeps
  it in layer 0) gives the bias ``b[h, q, k]``; it is computed once per forward pass and
  every layer uses it.
* **Per-layer gate.** Each layer gates the shared bias per head and query from its own
  attention input ``x`` (the layer input for post-LN layers, the LayerNorm'd input for
  pre-LN ones): ``(a, b) = sigmoid(sum_4(Linear_{d_head -> 8}(x_h)))`` (the 8 outputs
  summed in two groups of 4), ``gate = a * (b * c_h - 1) + 2`` with a learned per-head
  ``c_h`` (initialised to 1), and the attention logits get ``gate[n, h, q] * b[h, q, k]``
  added (after the ``1/sqrt(d_head)`` scaling), as a float mask of
  ``scaled_dot_product_attention`` with padded keys at ``-inf``.

Everything else (post-LN / pre-LN layers, the convolutional position embedding, layer
drop, hidden-state indexing) is :mod:`speechssl.core.transformer`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.core.transformer import (
    ConvPositionalEmbedding,
    EncoderOutput,
    SelfAttention,
    TransformerEncoder,
    TransformerEncoderConfig,
    TransformerLayer,
    init_bert_params,
    layers_to_run,
    run_layer_stack,
)
from speechssl.errors import ConfigError


@dataclass(kw_only=True)
class GatedRelativeEncoderConfig(TransformerEncoderConfig):
    """A transformer encoder with conv position embedding plus WavLM's gated relative
    position bias."""

    num_buckets: int = 320
    """Relative-distance buckets of the shared bias table."""
    max_distance: int = 800
    """Distance (frames) beyond which all distances share the outermost bucket."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_buckets < 4 or self.num_buckets % 4:
            raise ConfigError(
                f"num_buckets must be a multiple of 4 and >= 4, got {self.num_buckets}"
            )
        if self.max_distance <= self.num_buckets // 4:
            raise ConfigError(
                f"max_distance must exceed num_buckets / 4 = {self.num_buckets // 4}, "
                f"got {self.max_distance}"
            )


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5-style bucket of each signed distance ``key - query`` (long tensor in, long out,
    values in ``[0, num_buckets)``)."""
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    distance = relative.abs()
    exact = half // 2
    # log-spaced buckets between `exact` and `max_distance`; clamp(min=1) only avoids log(0)
    # on entries the `where` below discards
    scaled = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    large = (exact + scaled * (half - exact)).long().clamp(max=half - 1)
    return buckets + torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """The shared bias table: ``[num_buckets, num_heads]`` -> bias ``[H, Q, K]``."""

    def __init__(self, num_heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, length: int) -> Tensor:
        """Bias ``[H, S, S]`` of a sequence of ``length`` frames."""
        pos = torch.arange(length, device=self.embedding.weight.device)
        bucket = relative_position_bucket(
            pos[None, :] - pos[:, None], self.num_buckets, self.max_distance
        )
        return self.embedding(bucket).permute(2, 0, 1)


class GatedRelativeSelfAttention(SelfAttention):
    """:class:`SelfAttention` plus the per-layer gate of the shared relative bias."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__(dim, num_heads, dropout)
        self.gate_proj = nn.Linear(self.head_dim, 8)
        self.gate_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))

    def gate(self, x: Tensor) -> Tensor:
        """``[N, H, S, 1]`` gate of the bias from the attention input ``x [N, S, D]``."""
        n, s, _ = x.shape
        heads = x.view(n, s, self.num_heads, self.head_dim).transpose(1, 2)
        proj = self.gate_proj(heads).view(n, self.num_heads, s, 2, 4).sum(-1)
        a, b = torch.sigmoid(proj).chunk(2, dim=-1)
        return a * (b * self.gate_const - 1.0) + 2.0

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, position_bias: Tensor | None = None
    ) -> Tensor:
        """``x [N, S, D]``; ``attn_mask`` bool ``[N, 1, 1, S]`` (True = attend) or None;
        ``position_bias`` ``[H, S, S]`` (the shared table's output) or None (plain
        attention)."""
        if position_bias is None:
            return super().forward(x, attn_mask)
        n, s, _ = x.shape
        bias = self.gate(x) * position_bias.unsqueeze(0).to(x.dtype)
        if attn_mask is not None:
            bias = bias.masked_fill(~attn_mask, float("-inf"))
        qkv = self.qkv(x).view(n, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # under autocast q is in the low precision; a float mask must match it
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(n, s, self.dim))


class GatedRelativeTransformerLayer(TransformerLayer):
    """:class:`TransformerLayer` whose attention adds the gated shared bias."""

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
        super().__init__(
            dim,
            num_heads,
            ffn_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            layer_norm_first=layer_norm_first,
            layer_norm_eps=layer_norm_eps,
        )
        self.self_attn = GatedRelativeSelfAttention(dim, num_heads, attention_dropout)

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, position_bias: Tensor | None = None
    ) -> Tensor:
        attn = self.self_attn
        if self.layer_norm_first:
            x = x + self.dropout(attn(self.self_attn_layer_norm(x), attn_mask, position_bias))
            return x + self.dropout(self.ffn(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.dropout(attn(x, attn_mask, position_bias)))
        return self.final_layer_norm(x + self.dropout(self.ffn(x)))


class GatedRelativeTransformerEncoder(TransformerEncoder):
    """:class:`TransformerEncoder` with the shared relative bias table; each layer gates it."""

    def __init__(
        self,
        dim: int,
        layers: list[nn.Module],
        pos_conv: nn.Module | None,
        relative_bias: RelativePositionBias,
        *,
        layer_norm_first: bool,
        layer_drop: float = 0.0,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__(
            dim,
            layers,
            pos_conv,
            layer_norm_first=layer_norm_first,
            layer_drop=layer_drop,
            dropout=dropout,
            layer_norm_eps=layer_norm_eps,
        )
        self.relative_bias = relative_bias

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
        num_layers: int | None = None,
    ) -> EncoderOutput:
        """As :meth:`TransformerEncoder.forward`; the bias is computed once for all layers."""
        stop = layers_to_run(num_layers, len(self.layers))
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        attn_mask = (
            (~padding_mask)[:, None, None, :]
            if padding_mask is not None and bool(padding_mask.any())
            else None
        )
        bias = self.relative_bias(x.shape[1])
        x, hidden = run_layer_stack(
            self.layers,
            x,
            stop,
            lambda layer, h: layer(h, attn_mask, bias),
            layer_drop=self.layer_drop,
            training=self.training,
            output_hidden_states=output_hidden_states,
        )
        if self.layer_norm_first and stop == len(self.layers):
            x = self.layer_norm(x)
        return EncoderOutput(last_hidden_state=x, hidden_states=hidden)


def build_gated_relative_encoder(
    config: GatedRelativeEncoderConfig,
) -> GatedRelativeTransformerEncoder:
    """Encoder from a config: layers, position convolution and bias table, then the whole;
    BERT initialisation, the gates' constants at 1."""
    c = config
    layers: list[nn.Module] = [
        GatedRelativeTransformerLayer(
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
    encoder = GatedRelativeTransformerEncoder(
        c.dim,
        layers,
        pos_conv,
        RelativePositionBias(c.num_heads, c.num_buckets, c.max_distance),
        layer_norm_first=c.layer_norm_first,
        layer_drop=c.layer_drop,
        dropout=c.dropout,
        layer_norm_eps=c.layer_norm_eps,
    )
    init_bert_params(encoder)
    return encoder


__all__ = [
    "GatedRelativeEncoderConfig",
    "GatedRelativeSelfAttention",
    "GatedRelativeTransformerEncoder",
    "GatedRelativeTransformerLayer",
    "RelativePositionBias",
    "build_gated_relative_encoder",
    "relative_position_bucket",
]
