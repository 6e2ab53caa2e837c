"""WavLM's gated relative position bias and utterance mixing, BEST-RQ's frozen targets.

The bucket function is checked against ``transformers``' own; the mixing's energy ratios,
segment bounds, determinism and noise clips on real audio files; BEST-RQ's targets against
the quantizer applied by hand, and their survival through a saved model dir."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from audio_fixtures import make_data_dir
from model_fixtures import load_synth
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

from speechssl.core.gated_relative import relative_position_bucket
from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError, DataDirError
from speechssl.models import create_model, model_config
from speechssl.models.io import load_model_dir, save_model_dir
from speechssl.models.wavlm import UtteranceMixConfig, mix_utterances


@pytest.mark.parametrize(("buckets", "distance"), [(320, 800), (320, 100), (64, 50)])
def test_buckets_match_transformers(buckets: int, distance: int) -> None:
    peer = WavLMAttention(16, 2, num_buckets=buckets, max_distance=distance)
    rel = torch.arange(-1200, 1201)[None, :]
    want = peer._relative_positions_bucket(rel)
    got = relative_position_bucket(rel, buckets, distance)
    assert torch.equal(got, want)
    assert int(got.min()) == 0 and int(got.max()) == buckets - 1


def test_bias_is_shared_and_gated_per_layer() -> None:
    """One table for every layer (the gate is each layer's own): zeroing the table makes
    the gates irrelevant, and a layer's gate reacts to its input."""
    torch.manual_seed(0)
    model = create_model("wavlm_tiny", num_classes=(8,)).eval()
    enc = model.encoder
    assert sum("relative_bias" in k for k, _ in enc.named_parameters()) == 1
    x = torch.randn(2, 30, 128)
    with torch.no_grad():
        before = enc(x).last_hidden_state
        enc.layers[1].self_attn.gate_const.fill_(3.0)
        after = enc(x).last_hidden_state
        assert not torch.allclose(before, after)
        enc.relative_bias.embedding.weight.zero_()
        zero_a = enc(x).last_hidden_state
        enc.layers[1].self_attn.gate_const.fill_(1.0)
        zero_b = enc(x).last_hidden_state
    assert torch.equal(zero_a, zero_b)
    gate = enc.layers[0].self_attn.gate(x)
    assert gate.shape == (2, 4, 30, 1) and not torch.allclose(gate[0], gate[1])


def _batch(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([16000, 12000, 8000][:n])
    waves = torch.zeros(n, 16000)
    for i, length in enumerate(lengths.tolist()):
        waves[i, :length] = 0.1 * (i + 1) * torch.randn(length, generator=gen)
    return waves, lengths


def test_mixing_sets_the_drawn_energy_ratio_within_bounds() -> None:
    waves, lengths = _batch()
    cfg = UtteranceMixConfig(mix_prob=1.0, speech_db=(-5.0, 5.0), max_mix_fraction=0.5)
    mixed, events = mix_utterances(waves, lengths, cfg, generator=torch.Generator().manual_seed(0))
    assert [e.index for e in events] == [0, 1, 2]
    for e in events:
        n = int(lengths[e.index])
        assert e.kind == "speech" and e.source != e.index
        assert 1 <= e.length <= math.ceil(0.5 * n) and e.start + e.length <= n
        assert e.source_start + e.length <= int(lengths[e.source])
        assert -5.0 <= e.ratio_db <= 5.0
        added = (mixed[e.index] - waves[e.index])[e.start : e.start + e.length].double()
        segment = waves[e.source, e.source_start : e.source_start + e.length].double()
        scale = (added / segment)[segment.abs() > 1e-3]
        assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-3)  # a scaled copy
        power = waves[e.index, :n].double().pow(2).mean() / added.pow(2).mean()
        assert 10 * math.log10(float(power)) == pytest.approx(e.ratio_db, abs=1e-3)
        # outside the segment and in the padding nothing changed
        outside = torch.ones(mixed.shape[1], dtype=torch.bool)
        outside[e.start : e.start + e.length] = False
        assert torch.equal(mixed[e.index][outside], waves[e.index][outside])


def test_mixing_is_seeded_and_respects_its_probability() -> None:
    waves, lengths = _batch()
    cfg = UtteranceMixConfig(mix_prob=0.5)
    a = mix_utterances(waves, lengths, cfg, generator=torch.Generator().manual_seed(7))
    b = mix_utterances(waves, lengths, cfg, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    counts = [
        len(mix_utterances(waves, lengths, cfg, generator=torch.Generator().manual_seed(s))[1])
        for s in range(60)
    ]
    assert 0.35 < sum(counts) / (3 * 60) < 0.65
    none, events = mix_utterances(waves, lengths, UtteranceMixConfig(mix_prob=0.0))
    assert events == [] and torch.equal(none, waves)
    # a batch of one has nothing to mix in without noise clips
    single, events = mix_utterances(waves[:1], lengths[:1], UtteranceMixConfig(mix_prob=1.0))
    assert events == [] and torch.equal(single, waves[:1])


def test_noise_clips_from_a_noise_data_dir(tmp_path: Path) -> None:
    noise_dir = make_data_dir(tmp_path / "noise", speakers=1, utts_per_speaker=2, seconds=0.4)
    waves, lengths = _batch(1)
    cfg = {"mixing": {"mix_prob": 1.0, "noise_ratio": 1.0, "noise_dir": str(noise_dir)}}
    model = create_model("wavlm_tiny", num_classes=(8,), **cfg)
    mixed, events = model.mixer(waves, lengths, torch.Generator().manual_seed(0))
    assert [e.kind for e in events] == ["noise"] and events[0].length <= 6400
    assert -5.0 <= events[0].ratio_db <= 20.0 and not torch.equal(mixed, waves)
    missing = create_model(
        "wavlm_tiny", num_classes=(8,), mixing={"noise_dir": str(tmp_path / "nope")}
    )
    with pytest.raises(DataDirError, match="nope"):
        missing.mixer(waves, lengths)


def test_bad_mixing_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="mix_prob"):
        model_config("wavlm_tiny", mixing={"mix_prob": 1.5})
    with pytest.raises(ConfigError, match="speech_db"):
        model_config("wavlm_tiny", mixing={"speech_db": (5.0, -5.0)})
    with pytest.raises(ConfigError, match="max_mix_fraction"):
        model_config("wavlm_tiny", mixing={"max_mix_fraction": 0.0})
    with pytest.raises(ConfigError, match="num_buckets"):
        model_config("wavlm_tiny", encoder={"num_buckets": 30})


def test_wavlm_mixes_only_in_training_and_keeps_primary_targets(synth_corpus: Path) -> None:
    waves, lengths, ids = load_synth(synth_corpus, 3, 1.2)
    torch.manual_seed(0)
    model = create_model("wavlm_tiny", num_classes=(8,), mixing={"mix_prob": 1.0})
    per_utt = model.output_lengths(lengths)
    frames = int(per_utt.max())
    labels = torch.randint(0, 8, (3, frames), generator=torch.Generator().manual_seed(0))
    for i, n in enumerate(per_utt.tolist()):
        labels[i, n:] = -100
    batch = AudioBatch(waves, lengths, {"km": labels}, {"km": 50.0}, ids)
    mask = torch.zeros(3, frames, dtype=torch.bool)
    mask[:, 5:25] = True
    model.eval()
    clean = model(batch, mask=mask)
    assert float(clean.metrics["mixed_fraction"]) == 0.0
    model.train()
    torch.manual_seed(3)
    noisy = model(batch, mask=mask)
    torch.manual_seed(3)
    again = model(batch, mask=mask)
    assert float(noisy.metrics["mixed_fraction"]) == 1.0
    assert torch.equal(noisy.loss.total, again.loss.total)  # seeded: exact on a rerun
    assert batch.waveforms is waves  # the caller's batch is not modified


def test_best_rq_targets_come_from_the_frozen_quantizer(synth_corpus: Path, tmp_path: Path) -> None:
    waves, lengths, ids = load_synth(synth_corpus, 2, 1.2)
    torch.manual_seed(0)
    model = create_model("best_rq_tiny", num_codebooks=2)
    assert all(not p.requires_grad for p in model.quantizers.buffers())
    assert not any("quantizers" in k for k, _ in model.named_parameters())
    stacked, nframes = model.frontend.features(waves, lengths)
    targets = model.targets(stacked, nframes)
    q = model.quantizers[1]
    z = torch.nn.functional.normalize(stacked @ q.projection, dim=-1)
    by_hand = (z @ q.codebook.t()).argmax(-1)
    real = torch.arange(stacked.shape[1])[None, :] < nframes[:, None]
    assert torch.equal(targets[..., 1][real], by_hand[real])
    assert bool((targets[~real] == -100).all()) and bool((~real).any())
    assert q.codebook.shape == (8192, 16)
    assert torch.allclose(q.codebook.norm(dim=-1), torch.ones(8192))
    assert not torch.equal(model.quantizers[0].codebook, q.codebook)  # seeds 0 and 1
    out = model(AudioBatch(waves, lengths, utt_ids=ids))
    assert torch.isfinite(out.loss.total) and set(out.loss.terms) == {"masked"}
    # saved with the weights: a model dir extracts exactly the same targets
    path = save_model_dir(model, tmp_path / "m")
    loaded = load_model_dir(path)
    assert torch.equal(loaded.targets(stacked, nframes), targets)


def test_wavlm_base_is_transformers_default_architecture() -> None:
    """``wavlm_base`` has the architecture of ``transformers``' ``WavLMConfig`` defaults
    (microsoft/wavlm-base's), compared field by field without building the model."""
    from transformers import WavLMConfig

    hf = WavLMConfig()
    cfg = model_config("wavlm_base")
    enc, ext = cfg.encoder, cfg.extractor
    assert (enc.dim, enc.num_layers, enc.num_heads, enc.ffn_dim) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.intermediate_size
    )  # fmt: skip
    assert [c for c, _, _ in ext.conv_layers] == list(hf.conv_dim)
    assert [k for _, k, _ in ext.conv_layers] == list(hf.conv_kernel)
    assert [s for _, _, s in ext.conv_layers] == list(hf.conv_stride)
    assert ext.conv_bias == hf.conv_bias and ext.mode == "group_norm"
    assert hf.feat_extract_norm == "group" and not hf.do_stable_layer_norm
    assert not enc.layer_norm_first
    assert (enc.pos_conv_kernel, enc.pos_conv_groups) == (
        hf.num_conv_pos_embeddings, hf.num_conv_pos_embedding_groups
    )  # fmt: skip
    assert (enc.num_buckets, enc.max_distance) == (hf.num_buckets, hf.max_bucket_distance)
    large = model_config("wavlm_large")
    assert large.encoder.layer_norm_first and large.extractor.mode == "layer_norm"
    assert (large.encoder.dim, large.encoder.num_layers) == (1024, 24)
    assert model_config("wavlm_base_plus") == cfg
