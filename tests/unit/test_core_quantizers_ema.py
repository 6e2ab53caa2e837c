import copy

import pytest
import torch

from speechssl.core.ema import ema_decay, ema_update
from speechssl.core.quantizers import (
    GumbelVectorQuantizer,
    RandomProjectionQuantizer,
    diversity_loss,
    gumbel_temperature,
    perplexity,
)
from speechssl.errors import ConfigError


def test_gumbel_quantizer_eval_picks_argmax_code_vectors():
    q = GumbelVectorQuantizer(12, 2, 5, 6).eval()
    x = torch.randn(3, 4, 12)
    out = q(x)
    assert out.quantized.shape == (3, 4, 6) and out.codes.shape == (3, 4, 2)
    logits = q.weight_proj(x).view(3, 4, 2, 5)
    assert torch.equal(out.codes, logits.argmax(-1))
    book = q.codevectors.view(2, 5, 3)
    expected = torch.cat([book[0][out.codes[..., 0]], book[1][out.codes[..., 1]]], dim=-1)
    assert torch.allclose(out.quantized, expected)
    assert 2 <= out.code_perplexity <= 10 and 2 <= out.prob_perplexity <= 10


def test_gumbel_quantizer_training_is_straight_through():
    q = GumbelVectorQuantizer(12, 2, 5, 6).train()
    x = torch.randn(50, 12)
    out = q(x, generator=torch.Generator().manual_seed(0))
    # forward values are exact code vectors (hard one-hot) ...
    book = q.codevectors.view(2, 5, 3)
    dist = (out.quantized[:, None, :3] - book[0]).abs().sum(-1).detach()
    assert torch.allclose(dist.min(dim=1).values, torch.zeros(50), atol=1e-6)
    # ... while gradients reach the logits through the soft sample
    out.quantized.sum().backward()
    assert q.weight_proj.weight.grad is not None and q.weight_proj.weight.grad.abs().sum() > 0


def test_temperature_schedule():
    assert gumbel_temperature(0, 2.0, 0.5, 0.999995) == 2.0
    assert gumbel_temperature(10**7, 2.0, 0.5, 0.999995) == 0.5
    q = GumbelVectorQuantizer(4, 1, 3, 3, (2.0, 0.5, 0.9))
    q.set_num_updates(3)
    assert q.current_temp == pytest.approx(2.0 * 0.9**3)


def test_perplexity_and_diversity_bounds():
    uniform = torch.full((2, 8), 1 / 8)
    assert perplexity(uniform).item() == pytest.approx(16.0)
    onehot = torch.zeros(2, 8)
    onehot[:, 0] = 1
    assert perplexity(onehot).item() == pytest.approx(2.0)
    assert diversity_loss(perplexity(uniform), 16).item() == pytest.approx(0.0, abs=1e-6)
    assert diversity_loss(perplexity(onehot), 16).item() == pytest.approx(14 / 16)
    with pytest.raises(ConfigError):
        GumbelVectorQuantizer(4, 3, 5, 8)


def test_random_projection_quantizer_is_frozen_and_deterministic():
    a = RandomProjectionQuantizer(20, 64, 8, seed=3)
    b = RandomProjectionQuantizer(20, 64, 8, seed=3)
    c = RandomProjectionQuantizer(20, 64, 8, seed=4)
    assert not list(a.parameters())  # nothing to train
    x = torch.randn(500, 20)
    la = a(x)
    assert la.dtype == torch.long and la.min() >= 0 and la.max() < 64
    assert torch.equal(la, b(x)) and not torch.equal(la, c(x))
    assert torch.equal(a(3.0 * x), la)  # cosine assignment: scale invariant
    assert la.unique().numel() > 20  # random codes spread over many classes
    a.fit_normalizer(x)
    normed = a(x)
    a.fit_normalizer(5 + 2 * x)
    assert torch.equal(a(5 + 2 * x), normed)  # normalisation undoes the affine change


def test_ema_update_formula_and_edges():
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(7.0)
    before = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    ema_update(teacher, student, 0.0)
    assert all(
        torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True)
    )
    frozen = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        student[0].weight.add_(1)
    ema_update(teacher, student, 1.0, skip=["1."])
    assert all(torch.equal(f, t) for f, t in zip(frozen, teacher.parameters(), strict=True))
    with pytest.raises(ConfigError):
        ema_update(torch.nn.Linear(4, 5), torch.nn.Linear(4, 3), 0.5)
    with pytest.raises(ConfigError):
        ema_update(teacher, student, 1.5)


def test_ema_decay_schedule():
    assert ema_decay(0, 0.999, 0.9999, 100) == pytest.approx(0.999)
    assert ema_decay(50, 0.999, 0.9999, 100) == pytest.approx(0.99945)
    assert ema_decay(500, 0.999, 0.9999, 100) == pytest.approx(0.9999)
