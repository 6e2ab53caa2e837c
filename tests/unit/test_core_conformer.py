"""Conformer blocks: relative-key attention against an explicit softmax, the convolution
module (causality, padding), padding invariance, hidden-state indexing, learning."""

import pytest
import torch
import torch.nn.functional as F

from speechssl.core.conformer import (
    ConformerConvModule,
    ConformerEncoderConfig,
    RelativePositionSelfAttention,
    build_conformer_encoder,
    relative_distance_index,
)
from speechssl.errors import ConfigError


def _tiny(**kw):
    base = dict(
        dim=32,
        num_layers=3,
        num_heads=4,
        ffn_dim=64,
        depthwise_kernel=5,
        max_left_distance=4,
        max_right_distance=2,
    )
    base.update(kw)
    return ConformerEncoderConfig(**base)


def test_relative_distance_index_clips_both_sides():
    idx = relative_distance_index(4, 6, max_left=2, max_right=1, device=torch.device("cpu"))
    # row q, column k holds clamp(k - q, -2, 1) + 2
    assert idx[0].tolist() == [2, 3, 3, 3, 3, 3]
    assert idx[3].tolist() == [0, 0, 1, 2, 3, 3]


def test_relative_attention_matches_explicit_computation_with_padding():
    torch.manual_seed(0)
    attn = RelativePositionSelfAttention(16, 2, max_left=3, max_right=1).eval()
    torch.nn.init.normal_(attn.distance_embedding.weight, std=0.5)
    x = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    out = attn(x, (~pad)[:, None, None, :])

    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(2, 7, 2, 8).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    for i in range(7):
        for j in range(7):
            e = attn.distance_embedding.weight[min(max(j - i, -3), 1) + 3]
            scores[..., i, j] += (q[..., i, :] * e).sum(-1) / 8**0.5
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    ref = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(out, ref, atol=1e-5)


def test_relative_bias_changes_output_and_shift_is_invariant():
    """The bias is used (a random change of the table changes the output) and only relative
    positions matter (adding the same vector to every distance changes nothing)."""
    torch.manual_seed(0)
    attn = RelativePositionSelfAttention(16, 2, max_left=3, max_right=2).eval()
    x = torch.randn(1, 9, 16)
    ref = attn(x)
    with torch.no_grad():
        attn.distance_embedding.weight.add_(torch.randn(16 // 2))
    assert torch.allclose(attn(x), ref, atol=1e-5)
    with torch.no_grad():
        attn.distance_embedding.weight.add_(torch.randn_like(attn.distance_embedding.weight))
    assert not torch.allclose(attn(x), ref, atol=1e-3)


@pytest.mark.parametrize("causal", [True, False])
def test_conv_module_causality_and_padding(causal):
    torch.manual_seed(0)
    conv = ConformerConvModule(8, 5, causal=causal).eval()
    x = torch.randn(1, 12, 8)
    y = conv(x)
    x2 = x.clone()
    x2[:, 8:] = torch.randn(1, 4, 8)
    y2 = conv(x2)
    # causal: frames before the change are untouched; centred: only those 2+ frames away
    keep = 8 if causal else 6
    assert torch.allclose(y[:, :keep], y2[:, :keep], atol=1e-6)
    assert not torch.allclose(y[:, keep:], y2[:, keep:], atol=1e-3)
    # padding content never reaches real frames
    pad = torch.zeros(1, 12, dtype=torch.bool)
    pad[:, 8:] = True
    assert torch.allclose(conv(x, pad)[:, :8], conv(x2, pad)[:, :8], atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_padding_content_does_not_change_real_frames(causal):
    torch.manual_seed(0)
    enc = build_conformer_encoder(_tiny(causal_depthwise=causal)).eval()
    x = torch.randn(2, 10, 32)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 6:] = True
    alone = enc(x[1:, :6], output_hidden_states=True).hidden_states
    x2 = x.clone()
    x2[1, 6:] = 100 * torch.randn(4, 32)
    batched = enc(x2, pad, output_hidden_states=True).hidden_states
    for a, b in zip(alone, batched, strict=True):
        assert torch.allclose(a[0], b[1, :6], atol=1e-4)


def test_hidden_state_indexing_and_early_stop():
    torch.manual_seed(0)
    enc = build_conformer_encoder(_tiny()).eval()
    x = torch.randn(2, 6, 32)
    out = enc(x, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert torch.equal(out.hidden_states[0], x)
    h = x
    for i, layer in enumerate(enc.layers):
        h = layer(h)
        assert torch.allclose(out.hidden_states[i + 1], h, atol=1e-6)
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    two = enc(x, output_hidden_states=True, num_layers=2)
    assert len(two.hidden_states) == 3 and torch.allclose(
        two.last_hidden_state, out.hidden_states[2]
    )


def test_layer_drop_only_in_training():
    torch.manual_seed(0)
    enc = build_conformer_encoder(_tiny(layer_drop=0.9))
    x = torch.randn(1, 5, 32)
    enc.train()
    skipped = sum(torch.equal(h, x) for h in enc(x, output_hidden_states=True).hidden_states[1:])
    enc.eval()
    assert skipped > 0
    assert not any(torch.equal(h, x) for h in enc(x, output_hidden_states=True).hidden_states[1:])


def test_conformer_learns_under_sgd():
    """A small sequence-to-sequence regression (shifted, smoothed input) is fitted."""
    torch.manual_seed(0)
    enc = build_conformer_encoder(_tiny(num_layers=2))
    x = torch.randn(4, 16, 32)
    target = F.avg_pool1d(x.transpose(1, 2), 3, stride=1, padding=1).transpose(1, 2).roll(1, 1)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.mse_loss(enc(x).last_hidden_state, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_conformer_config():
    with pytest.raises(ConfigError, match="odd"):
        _tiny(depthwise_kernel=4)
    with pytest.raises(ConfigError, match="divisible"):
        _tiny(num_heads=5)
    with pytest.raises(ConfigError, match="position_encoding"):
        _tiny(position_encoding="rotary")
    with pytest.raises(ConfigError, match="activation"):
        _tiny(activation="tanhh")
