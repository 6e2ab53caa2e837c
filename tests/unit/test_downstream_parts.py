"""Probing parts: the featurizer (s3prl semantics), heads, PER against jiwer, batching."""

from __future__ import annotations

import json

import pytest
import torch

from speechssl.downstream.featurizer import Featurizer
from speechssl.downstream.heads import LinearCTCHead, MeanPoolClassifier
from speechssl.downstream.tasks import PhoneRecognition, get_task, plan_batches
from speechssl.errors import ConfigError


def test_featurizer_starts_uniform_and_learns(tmp_path):
    stacked = torch.randn(2, 5, 3, 4)
    f = Featurizer([0, 1, 2])
    assert torch.allclose(f(stacked), stacked.mean(dim=2), atol=1e-6)  # zero init = average
    with torch.no_grad():
        f.weights.copy_(torch.tensor([0.0, 100.0, 0.0]))
    assert torch.allclose(f(stacked), stacked[:, :, 1], atol=1e-5)
    normed = Featurizer([0, 1, 2], layer_norm=True)(stacked)
    ref = torch.nn.functional.layer_norm(stacked, (4,)).mean(dim=2)
    assert torch.allclose(normed, ref, atol=1e-5)
    picked = Featurizer([2], layer=2)
    assert picked.weights is None and torch.equal(picked(stacked[:, :, 2:]), stacked[:, :, 2])
    with pytest.raises(ConfigError, match="not among"):
        Featurizer([0, 1], layer=5)
    f.save_weights(tmp_path / "w.json", tmp_path / "w.png", "t")
    saved = json.loads((tmp_path / "w.json").read_text())
    assert saved["layers"] == [0, 1, 2] and saved["weights"][1] > 0.99
    assert (tmp_path / "w.png").stat().st_size > 1000


def test_heads_ignore_padding():
    torch.manual_seed(0)
    clf = MeanPoolClassifier(4, 3, proj_dim=8)
    x = torch.randn(1, 6, 4)
    padded = torch.cat([x, 100 * torch.ones(1, 4, 4)], dim=1)
    assert torch.allclose(clf(x, torch.tensor([6])), clf(padded, torch.tensor([6])), atol=1e-5)
    ctc = LinearCTCHead(4, 5, proj_dim=8)
    lp, _ = ctc(x, torch.tensor([6]))
    assert lp.shape == (1, 6, 5) and torch.allclose(lp.exp().sum(-1), torch.ones(1, 6))


def test_per_matches_jiwer():
    import jiwer

    spec = get_task("pr")
    assert isinstance(spec, PhoneRecognition)
    refs = [[1, 2, 3, 4], [2, 2, 5]]
    # hand-built log probs whose greedy path is: 1 2 blank 2 4 | 2 5 5
    paths = [[1, 2, 0, 2, 4], [2, 5, 5, 0, 0]]
    lp = torch.full((2, 5, 6), -10.0)
    for i, p in enumerate(paths):
        for t, k in enumerate(p):
            lp[i, t, k] = 0.0
    frames = torch.tensor([5, 3])
    hyps = spec.greedy(lp, frames)
    assert hyps == [[1, 2, 2, 4], [2, 5]]
    sums, weight = spec.score((lp, frames), refs, frames)
    words = [" ".join(f"p{t}" for t in s) for s in refs]
    ref_per = jiwer.wer(words, [" ".join(f"p{t}" for t in s) for s in hyps])
    assert sums["per"] / weight == pytest.approx(ref_per)


def test_plan_batches_bounds_padding():
    lengths = {f"u{i}": n for i, n in enumerate([10, 200, 15, 190, 12, 400])}
    batches = plan_batches(lengths, max_frames=400, max_utts=3)
    assert sorted(u for b in batches for u in b) == sorted(lengths)
    for b in batches:
        assert max(lengths[u] for u in b) * len(b) <= 400 and len(b) <= 3
    with pytest.raises(ConfigError, match="no such probing task"):
        get_task("asr_typo")
