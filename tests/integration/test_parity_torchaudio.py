"""Parity with torchaudio: the same (randomly initialised) weights copied into our models
give the same hidden states and, for HuBERT, the same logits for the same mask (fp32,
<= 1e-5). Small configs cover both layer-norm orders and padded batches; the published
Base architectures are compared too."""

import pytest
import torch
import torchaudio
from model_fixtures import load_synth

from speechssl.interop.torchaudio import load_torchaudio_weights
from speechssl.models import create_model

ATOL = 1e-5

SMALL_CONV = ((64, 10, 5), (64, 3, 2), (64, 3, 2), (64, 2, 2))


def _small_overrides(pre_ln: bool) -> dict:
    return {
        "extractor": {
            "conv_layers": SMALL_CONV,
            "mode": "layer_norm" if pre_ln else "group_norm",
            "conv_bias": pre_ln,
            "normalize_waveform": False,
            "padding_aware_norm": False,  # torchaudio's GroupNorm sees padding too
        },
        "encoder": {
            "dim": 96,
            "num_layers": 3,
            "num_heads": 4,
            "ffn_dim": 160,
            "pos_conv_kernel": 16,
            "pos_conv_groups": 4,
            "layer_norm_first": pre_ln,
        },
    }


def _ta_kwargs(cfg) -> dict:
    e, x = cfg.encoder, cfg.extractor
    return dict(
        extractor_mode=x.mode,
        extractor_conv_layer_config=[list(layer) for layer in x.conv_layers],
        extractor_conv_bias=x.conv_bias,
        encoder_embed_dim=e.dim,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=e.pos_conv_kernel,
        encoder_pos_conv_groups=e.pos_conv_groups,
        encoder_num_layers=e.num_layers,
        encoder_num_heads=e.num_heads,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=e.ffn_dim,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=e.layer_norm_first,
        encoder_layer_drop=0.0,
    )


def _ta_hubert(cfg):
    return torchaudio.models.hubert_pretrain_model(
        **_ta_kwargs(cfg),
        mask_prob=cfg.mask.mask_prob,
        mask_selection="static",
        mask_other=0.0,
        mask_length=cfg.mask.mask_length,
        no_mask_overlap=False,
        mask_min_space=1,
        mask_channel_prob=0.0,
        mask_channel_selection="static",
        mask_channel_other=0.0,
        mask_channel_length=10,
        no_mask_channel_overlap=False,
        mask_channel_min_space=1,
        skip_masked=False,
        skip_nomask=False,
        num_classes=cfg.num_classes[0],
        final_dim=cfg.final_dim,
        feature_grad_mult=None,
    )


@pytest.fixture(scope="module")
def audio(synth_corpus):
    """Three bundled-corpus utterances of different lengths (a padded batch)."""
    return load_synth(synth_corpus, 3, 1.2)


def _compare_hidden(ours, ta_w2v, waves, lengths):
    ours.eval(), ta_w2v.eval()
    with torch.no_grad():
        ext = ours.extract(waves, lengths)
        ta_layers, ta_lengths = ta_w2v.extract_features(waves, lengths)
        ta_out, _ = ta_w2v(waves, lengths)
    frames = (~ext.padding_mask).sum(1) if ext.padding_mask is not None else None
    if frames is not None:
        assert torch.equal(frames, ta_lengths)
    assert len(ext.hidden_states) == len(ta_layers) + 1
    for i, (a, b) in enumerate(zip(ext.hidden_states[1:], ta_layers, strict=True)):
        err = (a - b).abs().max().item()
        assert err <= ATOL, f"layer {i + 1}: max abs diff {err}"
    err = (ext.last_hidden_state - ta_out).abs().max().item()
    assert err <= ATOL, f"last hidden state: max abs diff {err}"


def _ta_layout(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Our ``[M, C]`` logits in torchaudio's ``[M, 1 + C]`` layout (positive first, the
    positive's own column -inf among the candidates)."""
    pos = logits.gather(1, labels.unsqueeze(1))
    negs = logits.scatter(1, labels.unsqueeze(1), float("-inf"))
    return torch.cat([pos, negs], dim=1)


def _compare_hubert_logits(ours, ta, waves, lengths, labels, seed=7):
    ours.eval(), ta.eval()
    with torch.no_grad():
        torch.manual_seed(seed)
        ta_m, ta_u, ta_pen = ta(waves, labels, lengths)
        # regenerate torchaudio's mask: same RNG state, same call (forward draws nothing
        # else in eval mode before masking)
        torch.manual_seed(seed)
        feats, frame_lengths = ta.wav2vec2.feature_extractor(waves, lengths)
        padding = torch.arange(feats.shape[1]) >= frame_lengths.unsqueeze(1)
        dummy = torch.zeros(feats.shape[0], feats.shape[1], ours.encoder.dim)
        _, mask = ta.mask_generator(dummy, padding)
        (logits,), pen = ours.logits(waves, lengths, mask)
    real = ~padding
    mask_m, mask_u = mask & real, ~mask & real
    ours_m = _ta_layout(logits[mask_m], labels[mask_m])
    ours_u = _ta_layout(logits[mask_u], labels[mask_u])
    for a, b in ((ours_m, ta_m), (ours_u, ta_u)):
        assert a.shape == b.shape
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        fin = torch.isfinite(b)
        err = (a[fin] - b[fin]).abs().max().item()
        assert err <= ATOL, f"logits: max abs diff {err}"
    return pen, ta_pen


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
def test_hubert_small_parity_padded(pre_ln, audio):
    torch.manual_seed(0)
    ours = create_model("hubert_tiny", **_small_overrides(pre_ln))
    ta = _ta_hubert(ours.config)
    load_torchaudio_weights(ours, ta)
    waves, lengths, _ = audio
    _compare_hidden(ours, ta.wav2vec2, waves, lengths)
    s = int(ours.output_lengths(lengths).max())
    labels = torch.randint(0, ours.config.num_classes[0], (3, s))
    _compare_hubert_logits(ours, ta, waves, lengths, labels)


def test_hubert_small_feature_penalty_matches_unpadded(audio):
    torch.manual_seed(0)
    ours = create_model("hubert_tiny", **_small_overrides(False))
    ta = _ta_hubert(ours.config)
    load_torchaudio_weights(ours, ta)
    waves, lengths, _ = audio
    n = int(lengths.min())
    waves, lengths = waves[:, :n], torch.full((3,), n)
    s = int(ours.output_lengths(lengths).max())
    labels = torch.randint(0, ours.config.num_classes[0], (3, s))
    pen, ta_pen = _compare_hubert_logits(ours, ta, waves, lengths, labels)
    assert abs(pen.item() - ta_pen.item()) <= ATOL * max(1.0, abs(ta_pen.item()))


@pytest.mark.parametrize("pre_ln", [False, True], ids=["post_ln", "pre_ln"])
def test_wav2vec2_small_encoder_parity_padded(pre_ln, audio):
    torch.manual_seed(0)
    ours = create_model("wav2vec2_tiny", **_small_overrides(pre_ln))
    ta = torchaudio.models.wav2vec2_model(**_ta_kwargs(ours.config), aux_num_out=None)
    load_torchaudio_weights(ours, ta)
    waves, lengths, _ = audio
    _compare_hidden(ours, ta, waves, lengths)


@pytest.mark.slow
def test_hubert_base_architecture_parity(audio):
    """The published HuBERT Base (torchaudio ``hubert_pretrain_base``) vs ``hubert_base``."""
    torch.manual_seed(0)
    ta = torchaudio.models.hubert_pretrain_base(num_classes=100)
    ours = create_model("hubert_base", extractor={"padding_aware_norm": False})
    load_torchaudio_weights(ours, ta)
    waves, lengths, _ = audio
    waves, lengths = waves[:2, :12000], torch.tensor([12000, 9000])
    _compare_hidden(ours, ta.wav2vec2, waves, lengths)
    s = int(ours.output_lengths(lengths).max())
    labels = torch.randint(0, 100, (2, s))
    _compare_hubert_logits(ours, ta, waves, lengths, labels)


@pytest.mark.slow
def test_wav2vec2_base_architecture_parity(audio):
    """The published wav2vec 2.0 Base (torchaudio ``wav2vec2_base``) vs ``wav2vec2_base``."""
    torch.manual_seed(0)
    ta = torchaudio.models.wav2vec2_base()
    ours = create_model("wav2vec2_base", extractor={"padding_aware_norm": False})
    load_torchaudio_weights(ours, ta)
    waves, _, _ = audio
    _compare_hidden(ours, ta, waves[:2, :12000], torch.tensor([12000, 9000]))
