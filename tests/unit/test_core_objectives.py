"""Objectives: shapes, invariances, and that each loss falls under SGD on real features."""

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import load_synth, log_mel, random_projection_labels

from speechssl.core.objectives import (
    ContrastiveObjective,
    MaskedPredictionHead,
    MaskedPredictionObjective,
    contrastive_accuracy,
    cosine_logits,
    info_nce_logits,
    info_nce_loss,
    masked_accuracy,
    masked_prediction_loss,
    sample_distractors,
)
from speechssl.core.quantizers import GumbelVectorQuantizer, diversity_loss


@pytest.fixture(scope="module")
def real_frames(synth_corpus):
    """Log-mel frames of a few bundled-corpus utterances with BEST-RQ labels:
    ``(x [N, F, 40], labels, valid)``."""
    waves, lengths, _ = load_synth(synth_corpus, 4, 1.5)
    mel, frames = log_mel(waves, lengths)
    labels = random_projection_labels(waves, lengths, codebook_size=16)
    valid = torch.arange(mel.shape[1]) < frames.unsqueeze(1)
    mel = (mel - mel[valid].mean(0)) / mel[valid].std(0)
    return mel.masked_fill(~valid.unsqueeze(-1), 0.0), labels, valid


def test_cosine_logits_shape_and_values():
    pred, emb = torch.randn(5, 7, 8), torch.randn(11, 8)
    logits = cosine_logits(pred, emb, 0.1)
    assert logits.shape == (5, 7, 11) and logits.dtype == torch.float32
    ref = F.cosine_similarity(pred.unsqueeze(-2), emb, dim=-1) / 0.1
    assert torch.allclose(logits, ref, atol=1e-5)
    assert logits.abs().max() <= 10.0 + 1e-4


def test_masked_prediction_loss_terms_match_cross_entropy():
    logits = torch.randn(2, 6, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 6))
    targets[1, 4:] = -100
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 1:3] = True
    rec = masked_prediction_loss(logits, targets, mask, masked_weight=1.0, unmasked_weight=0.5)
    m = mask & (targets != -100)
    u = ~mask & (targets != -100)
    ce_m = F.cross_entropy(logits[m], targets[m])
    ce_u = F.cross_entropy(logits[u], targets[u])
    assert torch.allclose(rec.terms["masked"], ce_m) and torch.allclose(rec.terms["unmasked"], ce_u)
    assert torch.allclose(rec.total, ce_m + 0.5 * ce_u)
    assert int(rec.sample_size) == int(m.sum())
    # weight 0: the unmasked term is logged but sends no gradient
    rec0 = masked_prediction_loss(logits, targets, mask, unmasked_weight=0.0)
    rec0.total.backward()
    assert logits.grad[u].abs().sum() == 0 and logits.grad[m].abs().sum() > 0


def test_masked_prediction_ignores_padding_content():
    logits = torch.randn(2, 6, 5)
    targets = torch.randint(0, 5, (2, 6))
    targets[0, 3:] = -100
    mask = torch.rand(2, 6) > 0.5
    a = masked_prediction_loss(logits, targets, mask, unmasked_weight=1.0)
    changed = logits.clone()
    changed[0, 3:] = 1e4 * torch.randn(3, 5)
    b = masked_prediction_loss(changed, targets, mask, unmasked_weight=1.0)
    assert torch.equal(a.total, b.total)
    acc = masked_accuracy(logits, targets, mask)
    assert set(acc) == {"acc_masked", "acc_unmasked"}


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_masked_prediction_loss_falls_under_sgd(real_frames, kind):
    torch.manual_seed(0)
    x, labels, _ = real_frames
    targets = labels[:, : x.shape[1]]
    mask = torch.rand(targets.shape) < 0.5
    head = MaskedPredictionHead(40, [16], final_dim=16, kind=kind)
    objective = MaskedPredictionObjective(masked_weight=1.0, unmasked_weight=0.0)
    opt = torch.optim.SGD(head.parameters(), lr=0.5 if kind == "cosine" else 0.2)
    losses, accs = [], []
    for _ in range(40):
        (logits,) = head(x)
        rec = objective({"rpq": logits}, {"rpq": targets}, mask)
        opt.zero_grad()
        rec.total.backward()
        opt.step()
        losses.append(rec.total.item())
        accs.append(masked_accuracy(logits, targets, mask)["acc_masked"].item())
    assert losses[-1] < 0.7 * losses[0]
    assert accs[-1] > accs[0] + 0.2
    assert set(rec.terms) == {"rpq", "rpq/masked", "rpq/unmasked"}


def test_several_label_streams_are_summed():
    head = MaskedPredictionHead(8, [5, 7], final_dim=4)
    x = torch.randn(2, 6, 8)
    la, lb = head(x)
    assert la.shape == (2, 6, 5) and lb.shape == (2, 6, 7)
    ta, tb = torch.randint(0, 5, (2, 6)), torch.randint(0, 7, (2, 6))
    mask = torch.rand(2, 6) > 0.5
    obj = MaskedPredictionObjective()
    rec = obj({"a": la, "b": lb}, {"a": ta, "b": tb}, mask)
    ra = masked_prediction_loss(la, ta, mask)
    rb = masked_prediction_loss(lb, tb, mask)
    assert torch.allclose(rec.total, ra.total + rb.total)
    assert {"a/masked", "b/masked", "a/unmasked", "b/unmasked"} <= set(rec.terms)


def test_sample_distractors_same_group_never_self():
    sizes = torch.tensor([5, 1, 9, 2])
    idx, valid = sample_distractors(sizes, 30, generator=torch.Generator().manual_seed(0))
    assert idx.shape == (17, 30)
    group = torch.repeat_interleave(torch.arange(4), sizes)
    own = torch.arange(17).unsqueeze(1)
    assert (group[idx] == group.unsqueeze(1)).all()
    assert not ((idx == own) & valid).any()
    assert not valid[5].any() and valid[0].all()
    # uniform over the other members: every other member of group 2 is drawn
    assert set(idx[6].tolist()) == set(range(6, 15)) - {6}


def test_info_nce_excludes_identical_and_invalid_distractors():
    pred = torch.randn(3, 4)
    pos = torch.randn(3, 4)
    neg = torch.randn(3, 2, 4)
    neg[0, 1] = pos[0]
    valid = torch.ones(3, 2, dtype=torch.bool)
    valid[2] = False
    logits = info_nce_logits(pred, pos, neg, temperature=0.5, valid=valid)
    assert logits.shape == (3, 3)
    assert torch.isinf(logits[0, 2]) and torch.isinf(logits[2, 1:]).all()
    assert torch.allclose(logits[1, 0], F.cosine_similarity(pred[1], pos[1], dim=0) / 0.5)
    loss, _ = info_nce_loss(pred, pos, neg, temperature=0.5, valid=valid)
    assert torch.isfinite(loss)


def test_info_nce_invariant_to_distractor_order():
    pred, pos, neg = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 10, 8)
    a, _ = info_nce_loss(pred, pos, neg)
    b, _ = info_nce_loss(pred, pos, neg[:, torch.randperm(10)])
    assert torch.allclose(a, b, atol=1e-6)


def test_contrastive_accuracy_ties_are_wrong():
    assert contrastive_accuracy(
        torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    ).item() == pytest.approx(1 / 3)


def test_info_nce_falls_under_sgd(real_frames):
    torch.manual_seed(0)
    x, _, valid = real_frames
    frames = x[valid]  # [M, 40] real frames of 4 utterances
    sizes = valid.sum(dim=1)
    context = torch.nn.Linear(40, 16)
    target_proj = torch.nn.Linear(40, 16)
    objective = ContrastiveObjective(
        temperature=0.1, diversity_weight=0.0, feature_penalty_weight=0.0
    )
    opt = torch.optim.SGD([*context.parameters(), *target_proj.parameters()], lr=0.5)
    noisy = frames + 0.5 * torch.randn_like(frames)
    losses, accs = [], []
    for step in range(40):
        idx, ok = sample_distractors(sizes, 10, generator=torch.Generator().manual_seed(step))
        targets = target_proj(frames)
        rec, logits = objective(context(noisy), targets, targets[idx], ok)
        opt.zero_grad()
        rec.total.backward()
        opt.step()
        losses.append(rec.total.item())
        accs.append(contrastive_accuracy(logits).item())
    assert losses[-1] < 0.5 * losses[0]
    # chance is 1/11; silent frames make some distractors near-duplicates of the positive
    assert accs[-1] > 2 / 11 and accs[-1] > accs[0] + 0.1


def test_diversity_loss_falls_under_sgd(real_frames):
    torch.manual_seed(0)
    x, _, valid = real_frames
    q = GumbelVectorQuantizer(40, 2, 16, 8)
    with torch.no_grad():  # start nearly collapsed: every frame prefers entry 0 of each group
        q.weight_proj.weight.mul_(0.1)
        q.weight_proj.bias.view(2, 16)[:, 0] = 5.0
    opt = torch.optim.SGD(q.parameters(), lr=2.0)
    first = None
    for _ in range(60):
        out = q(x[valid])
        loss = diversity_loss(out.prob_perplexity, out.num_codes)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0.8
    assert loss.item() < 0.65 * first
    assert out.code_perplexity > 8
