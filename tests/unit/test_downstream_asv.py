"""SUPERB ASV head: x-vector shapes, AM-softmax formula, trials reading and cosine scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechssl.downstream.asv import (
    AMSoftmaxLoss,
    Trial,
    XVectorHead,
    read_trials,
    score_trials,
    statistics_pooling,
    write_trials,
)
from speechssl.downstream.metrics import equal_error_rate
from speechssl.errors import ConfigError, DataDirError, LabelError


def test_xvector_shapes_min_frames_and_padding_invariance():
    head = XVectorHead(24, proj_dim=16, embed_dim=8)
    assert head.min_frames == 15  # 4 + 4 + 6 frames lost without padding, + 1
    assert [c.out_channels for c in head.convs] == [512, 512, 512, 512, 1500]
    assert head.embed.in_features == 3000
    head.eval()
    feats = torch.randn(3, 40, 24)
    lengths = torch.tensor([40, 22, 15])
    emb = head(feats, lengths)
    assert emb.shape == (3, 8)
    alone = head(feats[1:2, :22], lengths[1:2])
    assert torch.allclose(emb[1], alone[0], atol=1e-5)
    with pytest.raises(
        ConfigError, match=r"at least 15 frames per utterance; batch items \[1\] have \[14\]"
    ):
        head(feats[:2], torch.tensor([40, 14]))


def test_xvector_training_batch_statistics_ignore_padding():
    torch.manual_seed(0)
    head = XVectorHead(6, proj_dim=8, embed_dim=4, layers=((3, 1, 8), (1, 1, 8)))
    head.train()
    feats = torch.randn(2, 12, 6)
    lengths = torch.tensor([12, 7])
    a = head(feats, lengths)
    padded = feats.clone()
    padded[1, 7:] = 1e3  # garbage in the padding
    b = head(padded, lengths)
    assert torch.allclose(a, b, atol=1e-5)


def test_statistics_pooling_matches_numpy():
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = statistics_pooling(x, mask, eps=0.0)
    ref1 = np.concatenate([x[1, :, :4].numpy().mean(-1), x[1, :, :4].numpy().std(-1)])
    assert np.allclose(out[1].numpy(), ref1)


def test_am_softmax_matches_published_formula_in_float64():
    torch.manual_seed(0)
    n, d, c, s, m = 5, 7, 4, 30.0, 0.4
    loss_fn = AMSoftmaxLoss(d, c, s=s, m=m).double()
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    got = loss_fn(x, y).item()
    w = loss_fn.weight.detach().numpy()
    xs = x.numpy()
    total = 0.0
    for i in range(n):
        cos = [
            float(xs[i] @ w[j] / (np.linalg.norm(xs[i]) * np.linalg.norm(w[j]))) for j in range(c)
        ]
        num = math.exp(s * (cos[int(y[i])] - m))
        den = num + sum(math.exp(s * cos[j]) for j in range(c) if j != int(y[i]))
        total += -math.log(num / den)
    assert got == pytest.approx(total / n, rel=1e-12)
    assert loss_fn.s == 30.0 and AMSoftmaxLoss(3, 2).m == 0.4  # SUPERB defaults


def test_head_and_am_softmax_learn_to_separate_speakers():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        head = XVectorHead(10, proj_dim=16, embed_dim=8, layers=((3, 1, 16), (1, 1, 16)))
        loss_fn = AMSoftmaxLoss(8, 3)
        centers = torch.randn(3, 10) * 2
        labels = torch.arange(3).repeat(4)
        feats = centers[labels][:, None, :] + torch.randn(12, 20, 10)
        lengths = torch.full((12,), 20)
        opt = torch.optim.Adam([*head.parameters(), *loss_fn.parameters()], lr=5e-3)
        first = last = 0.0
        for step in range(40):
            loss = loss_fn(head(feats, lengths), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            first = loss.item() if step == 0 else first
            last = loss.item()
    finally:
        torch.set_num_threads(before)
    assert last < 0.5 * first


def test_score_trials_cosine_on_hand_made_embeddings():
    emb = {
        "a1": torch.tensor([1.0, 0.0], dtype=torch.float64),
        "a2": torch.tensor([2.0, 0.1], dtype=torch.float64),
        "b1": torch.tensor([0.0, 3.0], dtype=torch.float64),
        "c1": torch.tensor([-1.0, 0.0], dtype=torch.float64),
    }
    trials = [
        Trial("a1", "a2", True),
        Trial("a1", "b1", False),
        Trial("a1", "c1", False),
        Trial("a2", "a1", True),
    ]
    scores, labels = score_trials(emb, trials)
    cos_a = 2.0 / math.hypot(2.0, 0.1)
    assert scores == pytest.approx([cos_a, 0.0, -1.0, cos_a], abs=1e-12)
    assert labels.tolist() == [1, 0, 0, 1]
    assert equal_error_rate(scores, labels)[0] == 0.0
    with pytest.raises(LabelError, match=r"zz: no embedding for trial utterances \['zz'\]"):
        score_trials(emb, [Trial("a1", "zz", True)])


def test_read_and_write_kaldi_trials(tmp_path):
    path = tmp_path / "trials"
    write_trials(path, [Trial("u1", "u2", True), Trial("u1", "u3", False)])
    assert path.read_text() == "u1 u2 target\nu1 u3 nontarget\n"
    assert read_trials(path, {"u1", "u2", "u3"}) == [
        Trial("u1", "u2", True),
        Trial("u1", "u3", False),
    ]
    with pytest.raises(DataDirError, match=r"u3 \(.*trials:2\): trial names an utterance not in"):
        read_trials(path, {"u1", "u2"})
    path.write_text("u1 u2 target\nu1 u3 nontaget\n")
    with pytest.raises(DataDirError, match=r"trials:2\): label 'nontaget' is not 'target'"):
        read_trials(path)
    path.write_text("u1 u2\n")
    with pytest.raises(DataDirError, match="trials:1"):
        read_trials(path)
    with pytest.raises(DataDirError, match="trials file not found"):
        read_trials(tmp_path / "nope")
