import math

import pytest
import torch
import torch.nn.functional as F

from speechssl.core.transformer import (
    ConvPositionalEmbedding,
    SelfAttention,
    TransformerEncoderConfig,
    build_transformer_encoder,
)
from speechssl.errors import ConfigError


def _encoder(**kw):
    cfg = dict(
        dim=32,
        num_layers=3,
        num_heads=4,
        ffn_dim=64,
        dropout=0.1,
        attention_dropout=0.1,
        layer_drop=0.0,
        pos_conv_kernel=8,
        pos_conv_groups=4,
    )
    cfg.update(kw)
    return build_transformer_encoder(TransformerEncoderConfig(**cfg))


def test_attention_matches_explicit_softmax_with_padding():
    attn = SelfAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 5:] = False
    out = attn(x, keep[:, None, None, :])
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(2, 7, 4, 4).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    ref = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(2, 7, 16)
    assert torch.allclose(out, attn.out_proj(ref), atol=1e-6)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_padding_content_does_not_change_real_frames(layer_norm_first):
    enc = _encoder(layer_norm_first=layer_norm_first).eval()
    x = torch.randn(1, 12, 32)
    alone = enc(x).last_hidden_state
    padded = torch.cat([x, 100 * torch.randn(1, 5, 32)], dim=1)
    pad = torch.zeros(1, 17, dtype=torch.bool)
    pad[0, 12:] = True
    out = enc(padded, pad).last_hidden_state
    assert torch.allclose(out[:, :12], alone, atol=1e-5)


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_hidden_state_indexing(layer_norm_first):
    enc = _encoder(layer_norm_first=layer_norm_first).eval()
    x = torch.randn(2, 9, 32)
    seen = []
    hooks = [
        layer.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for layer in enc.layers
    ]
    out = enc(x, output_hidden_states=True)
    for h in hooks:
        h.remove()
    assert len(out.hidden_states) == 4
    for i in range(3):  # hidden_states[i] is the input of layer i
        assert torch.equal(out.hidden_states[i], seen[i])
    if layer_norm_first:
        assert torch.allclose(enc.layer_norm(out.hidden_states[-1]), out.last_hidden_state)
    else:
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    early = enc(x, output_hidden_states=True, num_layers=2)
    assert len(early.hidden_states) == 3
    assert torch.allclose(early.hidden_states[2], out.hidden_states[2])


def test_layer_drop_skips_layers_in_training_only():
    enc = _encoder(layer_drop=0.999999, dropout=0.0, attention_dropout=0.0)
    x = torch.randn(2, 9, 32)
    enc.train()
    out = enc(x, output_hidden_states=True)
    assert all(torch.equal(h, out.hidden_states[0]) for h in out.hidden_states)
    enc.eval()
    out = enc(x, output_hidden_states=True)
    assert not torch.equal(out.hidden_states[1], out.hidden_states[0])


@pytest.mark.parametrize("kernel", [8, 7])
def test_conv_position_embedding_is_weight_normed_and_keeps_length(kernel):
    pos = ConvPositionalEmbedding(16, kernel, 4)
    assert hasattr(pos.conv, "parametrizations")
    g = pos.conv.parametrizations.weight.original0
    assert g.shape == (1, 1, kernel)
    y = pos(torch.randn(3, 11, 16))
    assert y.shape == (3, 11, 16)
    # the effective weight is g * v / ||v|| with the norm over all but the kernel axis
    v = pos.conv.parametrizations.weight.original1
    w = g * v / v.norm(dim=(0, 1), keepdim=True)
    assert torch.allclose(pos.conv.weight, w, atol=1e-6)


def test_encoder_learns_under_sgd():
    torch.manual_seed(0)
    enc = _encoder(dropout=0.0, attention_dropout=0.0)
    x = torch.randn(4, 10, 32)
    target = torch.roll(x, 1, dims=1)  # copy the previous frame: needs attention/position
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(enc(x).last_hidden_state, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_encoder_config():
    with pytest.raises(ConfigError):
        TransformerEncoderConfig(dim=30, num_heads=4)
    with pytest.raises(ConfigError):
        TransformerEncoderConfig(dim=32, num_heads=4, pos_conv_groups=3)
