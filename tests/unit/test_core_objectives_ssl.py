"""The joint-embedding and reconstruction objectives of the common core (SimCLR's NT-Xent,
VICReg, Barlow Twins, DINO, MAE, SSAST, JEPA): parity with lightly's losses (a test-only
peer) or with the published formula written out in float64, the invariances that fit each
loss, and that each falls under SGD."""

from __future__ import annotations

import math

import pytest
import torch

from speechssl.core.objectives import (
    BarlowTwinsObjective,
    DINOObjective,
    JEPAObjective,
    MAEObjective,
    NTXentObjective,
    SSASTObjective,
    VICRegObjective,
    barlow_twins_loss,
    dino_center,
    dino_loss,
    jepa_loss,
    mae_loss,
    normalize_patches,
    nt_xent_accuracy,
    nt_xent_loss,
    patch_discrimination_loss,
    teacher_temperature,
    vicreg_loss,
)
from speechssl.errors import ConfigError

lightly_loss = pytest.importorskip("lightly.loss")


def _views(n: int = 16, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g)
    return base + 0.3 * torch.randn(n, d, generator=g), base + 0.3 * torch.randn(n, d, generator=g)


# --------------------------------------------------------------------------- parity with lightly


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_lightly(temperature):
    a, b = _views()
    ours = nt_xent_loss(a, b, temperature)
    peer = lightly_loss.NTXentLoss(temperature=temperature)(a, b)
    assert ours.item() == pytest.approx(peer.item(), rel=1e-5)
    assert NTXentObjective(temperature)(a, b).total.item() == pytest.approx(peer.item(), rel=1e-5)


def test_vicreg_matches_lightly():
    a, b = _views(n=32, d=8)
    rec = vicreg_loss(a, b)
    peer = lightly_loss.VICRegLoss()(a, b)
    assert rec.total.item() == pytest.approx(peer.item(), rel=1e-5)
    assert set(rec.terms) == {"invariance", "variance", "covariance"}
    assert rec.weights == {"invariance": 25.0, "variance": 25.0, "covariance": 1.0}
    # collapsed embeddings: the variance hinge is at its maximum (std ~ sqrt(eps))
    flat = torch.ones(8, 4)
    assert vicreg_loss(flat, flat).terms["variance"].item() == pytest.approx(1 - 1e-2, rel=1e-4)


def test_barlow_twins_matches_lightly():
    a, b = _views(n=32, d=8)
    rec = barlow_twins_loss(a, b)
    peer = lightly_loss.BarlowTwinsLoss()(a, b)
    assert rec.total.item() == pytest.approx(peer.item(), rel=1e-5)
    assert BarlowTwinsObjective()(a, b).total.item() == pytest.approx(peer.item(), rel=1e-5)


def test_dino_matches_lightly_including_the_centre():
    torch.manual_seed(0)
    k = 20
    ours = DINOObjective(k)
    peer = lightly_loss.DINOLoss(output_dim=k)
    for _ in range(3):  # the centre moves the same way over several steps
        teacher = [torch.randn(6, k), torch.randn(6, k)]
        student = [*(t + 0.5 * torch.randn_like(t) for t in teacher), torch.randn(6, k)]
        rec = ours(torch.stack(student), torch.stack(teacher))
        ref = peer(teacher, student)
        assert rec.total.item() == pytest.approx(ref.item(), rel=1e-5)
        assert torch.allclose(ours.center, peer.center.view(-1), atol=1e-6)


# --------------------------------------------------------------------------- float64 formulas


def test_mae_loss_matches_the_formula_in_float64():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 10, 12, generator=g, dtype=torch.float64)
    target = torch.randn(3, 10, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 10, generator=g) < 0.6
    for norm_pix in (False, True):
        t = target
        if norm_pix:  # MAE: (x - mean) / (var + 1e-6) ** 0.5, unbiased var over the patch
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((pred - t) ** 2).mean(-1)
        ref = (per_patch * mask).sum() / mask.sum()
        ours = mae_loss(pred, target, mask, norm_pix=norm_pix)
        assert ours.dtype == torch.float64
        assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    normed = normalize_patches(target)
    assert torch.allclose(normed.mean(-1), torch.zeros(3, 10, dtype=torch.float64), atol=1e-12)


def test_mae_counts_only_masked_patches():
    pred, target = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    changed = pred.clone()
    changed[~mask] = 100.0  # visible patches may be anything
    assert mae_loss(changed, target, mask).item() == pytest.approx(
        mae_loss(pred, target, mask).item()
    )
    nothing = mae_loss(pred.requires_grad_(), target, torch.zeros(2, 8, dtype=torch.bool))
    assert nothing.item() == 0.0
    nothing.backward()


@pytest.mark.parametrize("kind", ["smooth_l1", "l2"])
def test_jepa_loss_matches_the_formula_in_float64(kind):
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(9, 16, generator=g, dtype=torch.float64)
    target = 3.0 * torch.randn(9, 16, generator=g, dtype=torch.float64) + 1.0
    mu = target.mean(-1, keepdim=True)
    t = (target - mu) / torch.sqrt(((target - mu) ** 2).mean(-1, keepdim=True) + 1e-6)
    diff = (pred - t).abs()
    if kind == "l2":
        ref = (diff**2).mean()
    else:
        ref = torch.where(diff < 1.0, 0.5 * diff**2, diff - 0.5).mean()
    assert jepa_loss(pred, target, kind=kind).item() == pytest.approx(ref.item(), rel=1e-12)


def test_patch_discrimination_matches_the_formula_in_float64():
    g = torch.Generator().manual_seed(3)
    n, p, d = 2, 9, 5
    pred = torch.randn(n, p, d, generator=g, dtype=torch.float64)
    target = torch.randn(n, p, d, generator=g, dtype=torch.float64)
    mask = torch.zeros(n, p, dtype=torch.bool)
    mask[0, [1, 4, 7]] = True
    mask[1, [0, 2, 8]] = True
    loss, acc = patch_discrimination_loss(pred, target, mask)
    total, correct = 0.0, 0
    for i in range(n):
        idx = mask[i].nonzero().view(-1).tolist()
        for a in idx:
            scores = [float(pred[i, a] @ target[i, b]) for b in idx]
            total += -(scores[idx.index(a)] - math.log(sum(math.exp(s) for s in scores)))
            correct += int(max(range(len(idx)), key=lambda j: scores[j]) == idx.index(a))
    assert loss.item() == pytest.approx(total / 6, rel=1e-12)
    assert acc.item() == pytest.approx(correct / 6)
    uneven = mask.clone()
    uneven[0, 0] = True  # 4 masked patches in item 0, 3 in item 1
    with pytest.raises(ValueError, match="same number of masked patches"):
        patch_discrimination_loss(pred, target, uneven)


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b: nt_xent_loss(a, b),
        lambda a, b: vicreg_loss(a, b).total,
        lambda a, b: barlow_twins_loss(a, b).total,
    ],
    ids=["nt_xent", "vicreg", "barlow_twins"],
)
def test_two_view_losses_invariant_to_batch_order_and_view_swap(loss):
    a, b = _views(n=12, d=6, seed=5)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    base = loss(a, b).item()
    assert loss(a[perm], b[perm]).item() == pytest.approx(base, rel=1e-5)
    assert loss(b, a).item() == pytest.approx(base, rel=1e-5)


def test_nt_xent_is_scale_invariant_and_pairs_matter():
    a, b = _views(n=10, d=6, seed=6)
    assert nt_xent_loss(3.0 * a, 0.5 * b).item() == pytest.approx(
        nt_xent_loss(a, b).item(), rel=1e-5
    )
    shuffled = b[torch.roll(torch.arange(10), 1)]  # wrong partners: a worse loss
    assert nt_xent_loss(a, shuffled).item() > nt_xent_loss(a, b).item() + 0.5
    assert nt_xent_accuracy(a, b).item() > nt_xent_accuracy(a, shuffled).item()


def test_dino_invariant_to_batch_order_and_ignores_same_view_pairs():
    g = torch.Generator().manual_seed(7)
    s, t, c = (
        torch.randn(3, 8, 10, generator=g),
        torch.randn(2, 8, 10, generator=g),
        torch.randn(10, generator=g),
    )
    perm = torch.randperm(8, generator=g)
    base = dino_loss(s, t, c).item()
    assert dino_loss(s[:, perm], t[:, perm], c).item() == pytest.approx(base, rel=1e-5)
    same_view = s.clone()
    same_view[0] = t[0] * 7.0  # student view 0 is only compared with teacher view 1
    changed = dino_loss(same_view, t, c).item()
    s2 = same_view.clone()
    s2[0] = -5.0 * t[0]
    partial = dino_loss(s2, t, c).item()
    assert changed != pytest.approx(base)  # view 0 still meets teacher view 1
    assert partial != pytest.approx(changed)
    with pytest.raises(ValueError, match="at least two views"):
        dino_loss(s[:1], t[:1], c)
    # the centre is a running mean of the teacher logits
    assert torch.allclose(dino_center(torch.zeros(10), t, 0.9), 0.1 * t.mean(dim=(0, 1)))
    assert teacher_temperature(0, 0.04, 0.07, 10) == 0.04
    assert teacher_temperature(5, 0.04, 0.07, 10) == pytest.approx(0.055)
    assert teacher_temperature(50, 0.04, 0.07, 10) == 0.07


def test_jepa_and_mae_invariant_to_position_order():
    g = torch.Generator().manual_seed(8)
    pred, target = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    mask = torch.rand(2, 6, generator=g) < 0.5
    mask[:, 0] = True
    perm = torch.randperm(6, generator=g)
    jepa = JEPAObjective()
    assert jepa(pred[:, perm], target[:, perm], mask[:, perm]).total.item() == pytest.approx(
        jepa(pred, target, mask).total.item(), rel=1e-5
    )
    mae = MAEObjective(norm_pix=True)
    assert mae(pred[:, perm], target[:, perm], mask[:, perm]).total.item() == pytest.approx(
        mae(pred, target, mask).total.item(), rel=1e-5
    )


def test_bad_coefficients_are_refused():
    for make in (
        lambda: NTXentObjective(0.0),
        lambda: VICRegObjective(variance_weight=-1.0),
        lambda: DINOObjective(8, teacher_temp=0.0),
        lambda: JEPAObjective(kind="l1"),
        lambda: SSASTObjective(reconstruction_weight=-1.0),
    ):
        with pytest.raises(ConfigError):
            make()


# --------------------------------------------------------------------------- falls under SGD


def _two_view_data(n: int = 64, d: int = 10, seed: int = 0):
    """Items on a low-dimensional structure, seen twice with independent noise."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, 4, generator=g)
    mix = torch.randn(4, d, generator=g)
    x = latent @ mix
    return x + 0.2 * torch.randn(n, d, generator=g), x + 0.2 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize(
    "objective",
    [NTXentObjective(0.5), VICRegObjective(), BarlowTwinsObjective()],
    ids=["nt_xent", "vicreg", "barlow_twins"],
)
def test_two_view_losses_fall_under_sgd(objective):
    torch.manual_seed(0)
    va, vb = _two_view_data()
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    opt = torch.optim.SGD(
        net.parameters(), lr=0.05 if isinstance(objective, VICRegObjective) else 0.2
    )
    losses = []
    for _ in range(60):
        rec = objective(net(va), net(vb))
        opt.zero_grad()
        rec.total.backward()
        opt.step()
        losses.append(rec.total.item())
    assert all(math.isfinite(v) for v in losses)
    if isinstance(objective, NTXentObjective):  # bounded below by the 2N - 2 negatives
        assert losses[-1] < losses[0] - 0.4, losses[::10]
        assert nt_xent_accuracy(net(va), net(vb)).item() > 0.5
    else:
        assert losses[-1] < 0.7 * losses[0], losses[::10]


def test_dino_falls_under_sgd_with_an_ema_teacher():
    from speechssl.core.teacher import EMATeacher

    torch.manual_seed(0)
    va, vb = _two_view_data(n=48)
    student = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    teacher = EMATeacher(student, start=0.9, end=0.9, anneal_steps=0)
    objective = DINOObjective(16)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    losses = []
    for step in range(80):
        s = torch.stack([student(va), student(vb)])
        t = torch.stack([teacher(va), teacher(vb)])
        rec = objective(s, t, step)
        opt.zero_grad()
        rec.total.backward()
        opt.step()
        teacher.update(student, step + 1)
        losses.append(rec.total.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert float(objective.center.abs().sum()) > 0  # the centre moved with the teacher


def test_reconstruction_and_latent_losses_fall_under_sgd():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(4, 16, 6, generator=g)
    mask = torch.rand(4, 16, generator=g).argsort(dim=1) < 8  # 8 hidden patches per item
    # the input carries the hidden content through an unknown mixing (a linear net can undo it)
    context = target @ torch.randn(6, 6, generator=g) + 0.1 * torch.randn(4, 16, 6, generator=g)
    for loss_fn, lr in (
        (lambda p: MAEObjective()(p, target, mask).total, 0.05),
        (lambda p: MAEObjective(norm_pix=True)(p, target, mask).total, 0.05),
        (lambda p: JEPAObjective()(p, target, mask).total, 0.05),
        (lambda p: SSASTObjective()(p, p, target, mask)[0].total, 0.002),  # 10 x MSE + dot products
    ):
        torch.manual_seed(0)
        net = torch.nn.Linear(6, 6)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        losses = []
        for _ in range(60):
            loss = loss_fn(net(context))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], losses[::10]
