"""Deltas and CMVN against kaldi-native-fbank / direct formulas, batched vs single."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechssl.errors import ConfigError
from speechssl.features import CmvnStats, GlobalCMVN, add_deltas, utterance_cmvn
from speechssl.features.deltas import delta_windows


def _padded(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    nf = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(nf.max()), seqs[0].shape[1]), 123.0)  # junk padding
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, nf


def test_delta_windows_match_kaldi_recursion() -> None:
    w = delta_windows(2, 2)
    np.testing.assert_allclose(w[1], [-0.2, -0.1, 0.0, 0.1, 0.2])
    np.testing.assert_allclose(w[2], [0.04, 0.04, 0.01, -0.04, -0.1, -0.04, 0.01, 0.04, 0.04])


@pytest.mark.parametrize("order,window", [(2, 2), (1, 2), (2, 1), (3, 2)])
def test_deltas_match_knf_per_utterance(order: int, window: int) -> None:
    import kaldi_native_fbank as knf

    g = torch.Generator().manual_seed(order * 10 + window)
    seqs = [torch.randn(n, 5, generator=g) for n in (1, 2, 7, 30)]
    feats, nf = _padded(seqs)
    out = add_deltas(feats, nf, order=order, window=window)
    assert out.shape == (4, 30, 5 * (order + 1))
    for i, s in enumerate(seqs):
        ref = knf.compute_deltas(knf.DeltaOptions(order=order, window=window), s.numpy())
        np.testing.assert_allclose(out[i, : len(s)].numpy(), ref, atol=1e-5)
        assert (out[i, len(s) :] == 0).all()  # junk padding neither leaks nor survives


def test_utterance_cmvn_uses_only_real_frames() -> None:
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randn(n, 3, generator=g) * 4 + 2 for n in (5, 40)]
    feats, nf = _padded(seqs)
    for norm_vars in (False, True):
        out = utterance_cmvn(feats, nf, norm_vars=norm_vars)
        for i, s in enumerate(seqs):
            x = s.double().numpy()
            ref = x - x.mean(0)
            if norm_vars:
                ref = ref / x.std(0)
            np.testing.assert_allclose(out[i, : len(s)].numpy(), ref, atol=1e-5)
            assert (out[i, len(s) :] == 0).all()


def test_global_cmvn_accumulate_merge_apply_save(tmp_path) -> None:
    import kaldi_native_fbank as knf

    g = torch.Generator().manual_seed(1)
    seqs = [torch.randn(n, 4, generator=g) * 3 - 1 for n in (10, 25, 7)]
    feats, nf = _padded(seqs)
    stats = CmvnStats.zeros(4).accumulate(feats[:2], nf[:2])
    stats = stats.merge(CmvnStats.zeros(4).accumulate(seqs[2]))
    allx = torch.cat(seqs).double()
    assert stats.count == allx.shape[0]
    mean, std = stats.mean_std()
    np.testing.assert_allclose(mean.numpy(), allx.mean(0).numpy(), atol=1e-10)
    np.testing.assert_allclose(std.numpy(), allx.std(0, unbiased=False).numpy(), atol=1e-10)
    # same stats matrix as Kaldi's compute-cmvn-stats (kaldi-native-fbank port)
    ref = np.asarray(knf.compute_cmvn_stats(allx.float().numpy()))
    np.testing.assert_allclose(stats.to_kaldi().numpy(), ref, rtol=1e-5)
    out = stats.apply(feats, nf)
    np.testing.assert_allclose(
        out[1, :25].numpy(), ((seqs[1].double() - mean) / std).numpy(), atol=1e-5
    )
    assert (out[2, 7:] == 0).all()
    stats.save(tmp_path / "cmvn.json")
    back = CmvnStats.load(tmp_path / "cmvn.json")
    torch.testing.assert_close(back.to_kaldi(), stats.to_kaldi())
    torch.testing.assert_close(CmvnStats.from_kaldi(stats.to_kaldi()).sumsq, stats.sumsq)
    mod = GlobalCMVN(back)
    torch.testing.assert_close(mod(seqs[0]), stats.apply(seqs[0]), atol=1e-5, rtol=0)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        CmvnStats.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="dim 4"):
        stats.accumulate(torch.zeros(3, 5))
    with pytest.raises(ConfigError, match="empty"):
        CmvnStats.zeros(2).mean_std()
