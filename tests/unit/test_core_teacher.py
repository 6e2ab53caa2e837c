"""EMA teacher (schedule, copied parts, state), data2vec target building, the regression
objective, the stacked position convolution, 2-D positions and block masking."""

import math

import pytest
import torch
import torch.nn.functional as F

from speechssl.core.masking import BlockMaskConfig, BlockMasker
from speechssl.core.objectives import RegressionObjective, feature_std, regression_loss
from speechssl.core.positions import StackedConvPositionalEmbedding, sincos_2d
from speechssl.core.teacher import (
    EMATeacher,
    average_top_k_targets,
    collect_layer_outputs,
    masked_instance_norm,
)
from speechssl.core.transformer import TransformerEncoderConfig, build_transformer_encoder
from speechssl.errors import ConfigError


def _encoder(**kw):
    cfg = dict(dim=16, num_layers=3, num_heads=2, ffn_dim=32, dropout=0.3, layer_drop=0.0)
    cfg.update(kw)
    cfg.setdefault("pos_conv_kernel", 4)
    cfg.setdefault("pos_conv_groups", 2)
    return build_transformer_encoder(TransformerEncoderConfig(**cfg))


# --------------------------------------------------------------------------- EMA teacher


def test_teacher_is_frozen_eval_copy_and_follows_the_schedule():
    torch.manual_seed(0)
    student = _encoder()
    teacher = EMATeacher(student, start=0.5, end=0.9, anneal_steps=4)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training  # never in training mode (no dropout in targets)
    t0 = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    decays = []
    for step in (1, 2, 3, 4, 5):
        decays.append(teacher.update(student, step))
    assert decays == pytest.approx([0.6, 0.7, 0.8, 0.9, 0.9])
    # teacher = s + prod(decays) * (t0 - s) for a constant student
    prod = math.prod(decays)
    s = student.state_dict()
    name = "layers.0.ffn.fc1.weight"
    expected = s[name] + prod * (t0[name] - s[name])
    assert torch.allclose(teacher.model.state_dict()[name], expected, atol=1e-6)
    assert int(teacher.num_updates) == 5 and teacher.decay == pytest.approx(0.9)


def test_teacher_copies_listed_parts_and_restores_from_state_dict():
    torch.manual_seed(0)
    student = _encoder()
    teacher = EMATeacher(
        student, start=0.99, end=0.99, anneal_steps=0, copy_prefixes=("layer_norm.", "pos_conv.")
    )
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(student, 1)
    tm, sm = teacher.model.state_dict(), student.state_dict()
    assert torch.equal(tm["layer_norm.weight"], sm["layer_norm.weight"])
    pos = [k for k in tm if k.startswith("pos_conv.")]
    assert pos and all(torch.equal(tm[k], sm[k]) for k in pos)
    assert not torch.equal(tm["layers.1.ffn.fc2.weight"], sm["layers.1.ffn.fc2.weight"])
    other = EMATeacher(_encoder(), start=0.99, end=0.99, anneal_steps=0)
    other.load_state_dict(teacher.state_dict())
    assert int(other.num_updates) == 1
    assert torch.equal(
        other.model.state_dict()["layers.2.ffn.fc1.bias"], tm["layers.2.ffn.fc1.bias"]
    )


def test_bad_teacher_settings():
    with pytest.raises(ConfigError):
        EMATeacher(_encoder(), start=1.5, end=0.9, anneal_steps=1)
    with pytest.raises(ConfigError):
        EMATeacher(_encoder(), start=0.9, end=0.9, anneal_steps=-1)


# --------------------------------------------------------------------------- targets


def test_ffn_outputs_are_the_feed_forward_before_the_residual():
    torch.manual_seed(0)
    enc = _encoder().eval()
    x = torch.randn(2, 7, 16)
    outs = collect_layer_outputs(enc, x, source="ffn")
    hidden = enc(x, output_hidden_states=True).hidden_states
    assert len(outs) == 3
    for i, layer in enumerate(enc.layers):
        # post-LN layer: the FFN reads LN1(h + attn(h)); its output is what we captured
        h = hidden[i]
        mid = layer.self_attn_layer_norm(h + layer.self_attn(h))
        assert torch.allclose(outs[i], layer.ffn(mid), atol=1e-5)
    layers = collect_layer_outputs(enc, x, source="layer")
    assert all(torch.equal(a, b) for a, b in zip(layers, hidden[1:], strict=True))
    assert not enc.layers[0].ffn._forward_hooks  # hooks removed


def test_masked_instance_norm_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 4) * 3 + 5
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[1, 6:] = True
    y = masked_instance_norm(x, pad)
    ref = F.instance_norm(x[1:, :6].transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(y[1, :6], ref[0], atol=1e-5)
    assert torch.equal(y[1, 6:], torch.zeros(3, 4))
    assert torch.allclose(
        y[0], F.instance_norm(x[:1].transpose(1, 2)).transpose(1, 2)[0], atol=1e-5
    )


def test_average_top_k_targets():
    torch.manual_seed(0)
    outs = [torch.randn(2, 5, 4) * (i + 1) + i for i in range(4)]
    y = average_top_k_targets(outs, 2, layer_norm="instance", final_norm="none")
    inorm = lambda t: F.instance_norm(t.transpose(1, 2)).transpose(1, 2)  # noqa: E731
    assert torch.allclose(y, (inorm(outs[2]) + inorm(outs[3])) / 2, atol=1e-5)
    z = average_top_k_targets(outs, 10, layer_norm="none", final_norm="layer")
    assert torch.allclose(z, F.layer_norm(sum(outs) / 4, (4,)), atol=1e-5)
    with pytest.raises(ConfigError):
        average_top_k_targets(outs, 2, layer_norm="batch")


# --------------------------------------------------------------------------- regression


def test_regression_loss_values():
    pred = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    target = torch.zeros(2, 4)
    # squared error per position summed over D=4, scaled by 1/sqrt(4), mean over positions
    assert regression_loss(pred, target).item() == pytest.approx(((1 + 4) + 9) / 2 / 2)
    # smooth L1 with beta 1: 0.5 x^2 below 1, |x| - 0.5 above
    assert regression_loss(pred, target, beta=1.0, scale=1.0).item() == pytest.approx(
        ((0.5 + 1.5) + 2.5) / 2
    )
    assert regression_loss(pred[:0], target[:0]).item() == 0.0
    with pytest.raises(ConfigError):
        regression_loss(pred, target, beta=-1.0)


def test_regression_objective_uses_masked_positions_only_and_is_order_invariant():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 4:] = True
    rec = RegressionObjective(beta=0.5)(pred, target, mask)
    pred2 = pred.clone()
    pred2[~mask] = 1e3  # unmasked predictions do not matter
    assert RegressionObjective(beta=0.5)(pred2, target, mask).total.item() == pytest.approx(
        rec.total.item()
    )
    perm = torch.randperm(5)
    a = regression_loss(pred[mask][perm], target[mask][perm], beta=0.5)
    assert a.item() == pytest.approx(rec.total.item())
    assert int(rec.sample_size) == 5 and set(rec.terms) == {"regression"}


@pytest.mark.parametrize("beta", [0.0, 0.25])
def test_regression_falls_under_sgd_and_targets_get_no_gradient(beta):
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    target = (x @ torch.randn(12, 6) * 0.5).requires_grad_(True)
    head = torch.nn.Linear(12, 6)
    opt = torch.optim.SGD(head.parameters(), lr=0.3)
    losses = []
    for _ in range(80):
        loss = regression_loss(head(x), target, beta=beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert target.grad is None
    assert feature_std(head(x)) > 0.1


# --------------------------------------------------------------------------- positions, masks


def test_stacked_position_conv_keeps_length_and_is_padding_aware():
    torch.manual_seed(0)
    pos = StackedConvPositionalEmbedding(8, depth=3, kernel_size=4, groups=2)
    x = torch.randn(2, 10, 8)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    x[1, 7:] = 0.0  # the encoder zeroes padding before its position module
    y = pos(x, pad)
    assert y.shape == x.shape
    alone = pos(x[1:, :7])
    assert torch.allclose(y[1, :7], alone[0], atol=1e-5)
    leaky = StackedConvPositionalEmbedding(8, depth=3, kernel_size=4, groups=2, padding_aware=False)
    leaky.load_state_dict(pos.state_dict())
    assert not torch.allclose(leaky(x, pad)[1, :7], alone[0], atol=1e-4)


def test_sincos_2d_rows_and_columns():
    emb = sincos_2d((3, 4), 8)
    assert emb.shape == (12, 8)
    # patches in the same row share the row half; in the same column the column half
    assert torch.equal(emb[4, :4], emb[7, :4]) and not torch.equal(emb[0, :4], emb[4, :4])
    assert torch.equal(emb[1, 4:], emb[9, 4:]) and not torch.equal(emb[1, 4:], emb[2, 4:])
    with pytest.raises(ConfigError):
        sincos_2d((2, 2), 6)


def test_block_masker_masks_exact_count_with_embedding():
    torch.manual_seed(0)
    masker = BlockMasker(5, BlockMaskConfig(mask_prob=0.5, block_size=(2, 2)))
    x = torch.randn(3, 16, 5)
    y, mask = masker(x, (4, 4), generator=torch.Generator().manual_seed(0))
    assert mask.sum(1).tolist() == [8, 8, 8]
    assert torch.equal(y[mask], masker.mask_embedding.expand(24, 5))
    assert torch.equal(y[~mask], x[~mask])
    with pytest.raises(ValueError):
        masker(x, (3, 5))
    with pytest.raises(ConfigError):
        BlockMaskConfig(block_size=(0, 2))
