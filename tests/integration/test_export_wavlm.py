"""WavLM against the real ``transformers.WavLMModel`` (random weights, same on both sides):
the weight maps of :mod:`speechssl.interop.hf_wavlm` leave no missing or unexpected keys,
every hidden state matches ours within 1e-4 (padded batches included), and the way back
restores our model exactly."""

import pytest
import torch
from model_fixtures import load_synth
from transformers import WavLMModel

from speechssl.errors import CheckpointError
from speechssl.interop.hf_wavlm import (
    from_wavlm_state,
    hf_wavlm_config,
    to_wavlm_state,
    wavlm_overrides,
)
from speechssl.models import create_model

ATOL = 1e-4
LAYER_NORM_STACK = {"mode": "layer_norm", "conv_bias": True}
VARIANTS = {
    # post-LN (Base layout); LayerNorm conv stack so padded batches are comparable
    "post_ln": {"extractor": LAYER_NORM_STACK},
    # pre-LN (Large layout)
    "pre_ln": {"extractor": LAYER_NORM_STACK, "encoder": {"layer_norm_first": True}},
    # a short max distance: the clipped outermost buckets are used too
    "short_distance": {"extractor": LAYER_NORM_STACK, "encoder": {"max_distance": 100}},
    # the Base GroupNorm stack (compared utterance by utterance, see hf_wavlm)
    "group_norm": {},
}


@pytest.fixture(scope="module")
def audio(synth_corpus):
    # > 1.6 s: distances past 80 frames reach the logarithmic buckets
    waves, lengths, _ = load_synth(synth_corpus, 3, 3.0)
    return waves, lengths


def _model(overrides):
    torch.manual_seed(0)
    model = create_model("wavlm_tiny", num_classes=(16,), **overrides).eval()
    with torch.no_grad():  # move every gate constant off its initial 1 so the map is tested
        for layer in model.encoder.layers:
            layer.self_attn.gate_const.uniform_(0.5, 1.5)
    return model


def _hf(model):
    hf = WavLMModel(hf_wavlm_config(model)).eval()
    state, side = to_wavlm_state(model)
    result = hf.load_state_dict(state, strict=False)
    assert not result.missing_keys, result.missing_keys
    assert not result.unexpected_keys, result.unexpected_keys
    # what transformers has no place for: only the HuBERT-style head
    assert side and all(k.startswith("head.") for k in side), sorted(side)
    return hf, side


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hidden_states_match_transformers(variant, audio):
    waves, lengths = audio
    model = _model(VARIANTS[variant])
    hf, _ = _hf(model)
    group_norm = model.config.extractor.mode == "group_norm"
    batches = (
        [(waves[i : i + 1, : int(lengths[i])], lengths[i : i + 1]) for i in range(len(lengths))]
        if group_norm
        else [(waves, lengths)]
    )
    assert group_norm or int(lengths.min()) < waves.shape[1]  # the batch really is padded
    for w, n in batches:
        sample_mask = (torch.arange(w.shape[1])[None, :] < n[:, None]).long()
        with torch.no_grad():
            ours = model.extract(w, n)
            theirs = hf(w, attention_mask=sample_mask, output_hidden_states=True)
        real = (
            ~ours.padding_mask
            if ours.padding_mask is not None
            else torch.ones(ours.hidden_states[0].shape[:2], dtype=torch.bool)
        )
        assert len(theirs.hidden_states) == len(ours.hidden_states) == 3
        for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states, strict=True)):
            assert a.shape == b.shape, i
            diff = (a - b).abs()[real].max().item()
            assert diff <= ATOL, f"hidden state {i}: max diff {diff}"
        last = (ours.last_hidden_state - theirs.last_hidden_state).abs()[real].max().item()
        assert last <= ATOL


def test_import_restores_our_model(audio):
    waves, lengths = audio
    model = _model(VARIANTS["post_ln"])
    hf, side = _hf(model)
    weights = from_wavlm_state(hf.state_dict())
    weights.update(side)
    # the architecture comes back from the transformers config alone
    name, arch = wavlm_overrides(hf.config.to_dict())
    # the head is ours (side weights): its size is given like num_classes
    restored = create_model(name, num_classes=(16,), final_dim=64, **arch).eval()
    restored.load_state_dict(weights, strict=True)
    with torch.no_grad():
        a = model.extract(waves, lengths).hidden_states
        b = restored.extract(waves, lengths).hidden_states
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_task_class_prefix_and_unknown_weight():
    model = _model(VARIANTS["post_ln"])
    state, _ = to_wavlm_state(model)
    prefixed = {f"wavlm.{k}": v for k, v in state.items()}
    assert from_wavlm_state(prefixed).keys() == from_wavlm_state(state).keys()
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        from_wavlm_state({**state, "lm_head.weight": torch.zeros(2, 2)})
