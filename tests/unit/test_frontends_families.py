"""Stacked-fbank and patch front ends: frame counts, stacking layout, per-utterance
normalisation over real frames only, padding invariance, shape errors."""

import pytest
import torch
from model_fixtures import load_synth

from speechssl.errors import ConfigError
from speechssl.features.kaldi import fbank
from speechssl.frontends.fbank_stack import (
    FbankStackConfig,
    FbankStackFrontend,
    normalize_per_utterance,
    stack_frames,
)
from speechssl.frontends.vision import PatchEmbeddingConfig, PatchFrontend


def test_stack_frames_layout_and_lengths():
    feats = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    stacked, n = stack_frames(feats, torch.tensor([5, 3]), 2)
    assert stacked.shape == (2, 2, 6) and n.tolist() == [2, 1]
    assert torch.equal(stacked[0, 1], torch.cat([feats[0, 2], feats[0, 3]]))


def test_per_utterance_normalisation_uses_real_frames_only():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4) * 5 + 3
    x[1, 5:] = 1e4  # padding content
    y = normalize_per_utterance(x, torch.tensor([8, 5]))
    ref = x[1, :5]
    ref = (ref - ref.mean(0)) / torch.sqrt(ref.var(0, unbiased=True) + 1e-7)
    assert torch.allclose(y[1, :5], ref, atol=1e-5)
    assert torch.equal(y[1, 5:], torch.zeros(3, 4))


def test_fbank_front_end_counts_and_padding_invariance(synth_corpus):
    waves, lengths, _ = load_synth(synth_corpus, 2, 1.5)
    front = FbankStackFrontend(FbankStackConfig(), 32).eval()
    assert front.frame_rate == 50.0
    stacked, frames = front.features(waves, lengths)
    raw, nf = fbank(waves * 32768, lengths, front.fbank.opts)
    assert frames.tolist() == (nf // 2).tolist() == front.output_lengths(lengths).tolist()
    assert stacked.shape[-1] == 160
    normed = normalize_per_utterance(raw.float(), nf)
    assert torch.allclose(stacked[0, 3], normed[0, 6:8].reshape(-1), atol=1e-5)
    # utterance 1 alone equals utterance 1 padded in the batch, whatever the padding holds
    i = int(lengths.argmin())
    alone, _ = front.features(waves[i : i + 1, : int(lengths[i])], lengths[i : i + 1])
    noisy = waves.clone()
    noisy[i, int(lengths[i]) :] = torch.randn(noisy.shape[1] - int(lengths[i]))
    batched, _ = front.features(noisy, lengths)
    assert torch.allclose(batched[i, : alone.shape[1]], alone[0], atol=1e-5)
    out = front(noisy, lengths)
    assert out.frames.padding_mask is not None
    assert out.frames.lengths.tolist() == frames.tolist()
    assert out.features.shape == stacked.shape and float(out.feature_penalty) == 0.0
    with pytest.raises(ConfigError):
        FbankStackConfig(stride=0)


def test_patch_front_end():
    cfg = PatchEmbeddingConfig(image_size=(4, 6), channels=2, patch_size=2)
    assert cfg.grid == (2, 3) and cfg.num_patches == 6 and cfg.patch_dim == 8
    front = PatchFrontend(cfg, 16)
    out = front(torch.randn(3, 2, 4, 6))
    assert out.frames.seqs.shape == (3, 6, 16) and out.frames.padding_mask is None
    assert out.patches.shape == (3, 6, 8) and out.grid == (2, 3)
    # frames carry no position (masking comes first); add_positions tells identical
    # patches at different places apart
    same = front(torch.zeros(1, 2, 4, 6)).frames.seqs
    assert torch.allclose(same[0, 0], same[0, 1])
    placed = front.add_positions(same)[0]
    assert not torch.allclose(placed[0], placed[1])
    assert not PatchFrontend(
        PatchEmbeddingConfig(image_size=(4, 6), channels=2, patch_size=2, position="none"), 16
    ).state_dict().keys() - {"projection.weight", "projection.bias"}
    with pytest.raises(ValueError, match="images must be"):
        front(torch.randn(3, 1, 4, 6))
    with pytest.raises(ConfigError, match="divide"):
        PatchEmbeddingConfig(image_size=(5, 6), patch_size=2)
    with pytest.raises(ConfigError, match="position"):
        PatchEmbeddingConfig(position="rope")
