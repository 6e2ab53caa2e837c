"""WavLM against the real ``transformers.WavLMModel`` through the public entry points of
:mod:`speechssl.interop.hf` (random weights, same on both sides): the export loads with
``AutoModel`` with no missing or unexpected keys, every hidden state matches ours within
1e-4 (padded batches included), the default export restores our model exactly and a bare
one (``config.json`` alone) gives the same encoder."""

import pytest
import torch
from model_fixtures import load_synth
from safetensors.torch import load_file, save_file
from transformers import AutoFeatureExtractor, AutoModel

from speechssl.errors import CheckpointError
from speechssl.interop.hf import (
    export_to_transformers,
    hf_config,
    import_from_transformers,
    import_transformers_dir,
    to_transformers_state,
)
from speechssl.models import create_model

ATOL = 1e-4
LAYER_NORM_STACK = {"mode": "layer_norm", "conv_bias": True}
VARIANTS = {
    # post-LN (Base layout); LayerNorm conv stack so padded batches are comparable
    "post_ln": {"extractor": LAYER_NORM_STACK},
    # pre-LN (Large layout), normalised waveforms (the feature extractor's do_normalize)
    "pre_ln": {
        "extractor": {**LAYER_NORM_STACK, "normalize_waveform": True},
        "encoder": {"layer_norm_first": True},
    },
    # a short max distance: the clipped outermost buckets are used too
    "short_distance": {"extractor": LAYER_NORM_STACK, "encoder": {"max_distance": 100}},
    # the Base GroupNorm stack (transformers normalises over padding: utterance by utterance)
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


def _exported(model, path, **kwargs):
    hf, info = AutoModel.from_pretrained(
        export_to_transformers(model, path, **kwargs), output_loading_info=True
    )
    assert type(hf).__name__ == "WavLMModel"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    return hf.eval()


def _hf_inputs(hf, waves, lengths):
    """The exported feature extractor on the real samples (waveform normalisation where the
    model has it) and the sample attention mask."""
    fe = AutoFeatureExtractor.from_pretrained(hf.name_or_path)
    items = [w[: int(n)].numpy() for w, n in zip(waves, lengths, strict=True)]
    inputs = fe(items, sampling_rate=16000, return_tensors="pt", padding=True,
                return_attention_mask=True)  # fmt: skip
    return inputs["input_values"], inputs["attention_mask"]


def _max_diff(model, hf, waves, lengths):
    group_norm = model.config.extractor.mode == "group_norm"
    batches = (
        [(waves[i : i + 1, : int(lengths[i])], lengths[i : i + 1]) for i in range(len(lengths))]
        if group_norm
        else [(waves, lengths)]
    )
    assert group_norm or int(lengths.min()) < waves.shape[1]  # the batch really is padded
    worst = 0.0
    for w, n in batches:
        x, sample_mask = _hf_inputs(hf, w, n)
        with torch.no_grad():
            ours = model.extract(w, n)
            theirs = hf(x, attention_mask=sample_mask, output_hidden_states=True)
        real = (
            ~ours.padding_mask
            if ours.padding_mask is not None
            else torch.ones(ours.hidden_states[0].shape[:2], dtype=torch.bool)
        )
        assert len(theirs.hidden_states) == len(ours.hidden_states) == 3
        pairs = [*zip(ours.hidden_states, theirs.hidden_states, strict=True)]
        pairs.append((ours.last_hidden_state, theirs.last_hidden_state))
        for a, b in pairs:
            assert a.shape == b.shape
            worst = max(worst, (a - b).abs()[real].max().item())
    return worst


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hidden_states_match_transformers(variant, audio, tmp_path):
    waves, lengths = audio
    model = _model(VARIANTS[variant])
    hf = _exported(model, tmp_path / "e", bare=True)
    assert hf.config.max_bucket_distance == model.config.encoder.max_distance
    diff = _max_diff(model, hf, waves, lengths)
    assert diff <= ATOL, f"max diff {diff}"
    # sensitive: the gate of the last layer alone moves the output past the tolerance
    with torch.no_grad():
        hf.encoder.layers[-1].attention.gru_rel_pos_const.add_(0.5)
    assert _max_diff(model, hf, waves, lengths) > ATOL


def test_side_weights_are_the_head_only():
    """What transformers has no place for: only the HuBERT-style head (mixing has no
    weights); every encoder weight goes to WavLMModel."""
    model = _model(VARIANTS["post_ln"])
    state, side = to_transformers_state(model)
    assert side and all(k.startswith("head.") for k in side), sorted(side)
    assert "encoder.layers.0.attention.rel_attn_embed.weight" in state
    assert not any(".rel_attn_embed." in k for k in state if not k.startswith("encoder.layers.0"))
    assert hf_config(model).num_buckets == 320


def test_default_export_restores_our_model_and_bare_gives_the_encoder(audio, tmp_path):
    waves, lengths = audio
    model = _model(VARIANTS["short_distance"])
    hf = _exported(model, tmp_path / "full")
    assert (tmp_path / "full" / "speechssl" / "heads.safetensors").is_file()
    assert _max_diff(model, hf, waves, lengths) <= ATOL
    back = import_from_transformers(tmp_path / "full")
    assert back.model_name == "wavlm_tiny" and back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # bare: the architecture comes back from config.json alone, the head starts fresh
    export_to_transformers(model, tmp_path / "bare", bare=True)
    plain = import_transformers_dir(tmp_path / "bare", num_classes=(16,))
    assert plain.hf_class == "WavLMModel" and plain.model.family == "wavlm"
    assert plain.fresh and all(k.startswith("head.") for k in plain.fresh), plain.fresh
    enc = plain.model.config.encoder
    assert (enc.num_buckets, enc.max_distance) == (320, 100)
    plain.model.eval()
    with torch.no_grad():
        a = model.extract(waves, lengths).hidden_states
        b = plain.model.extract(waves, lengths).hidden_states
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_task_class_prefix_and_unknown_weight(tmp_path):
    """A WavLM task class's weights (``wavlm.`` prefix) import like the bare model's; a
    weight with no place in our model (a CTC head) is an error naming it."""
    model = _model(VARIANTS["post_ln"])
    path = export_to_transformers(model, tmp_path / "e", bare=True)
    weights = load_file(str(path / "model.safetensors"))
    direct = import_from_transformers(path, num_classes=(16,)).state_dict()
    prefixed = {f"wavlm.{k}": v for k, v in weights.items()}
    save_file(prefixed, str(path / "model.safetensors"), metadata={"format": "pt"})
    again = import_from_transformers(path, num_classes=(16,)).state_dict()
    assert all(torch.equal(direct[k], again[k]) for k in direct if not k.startswith("head."))
    prefixed["lm_head.weight"] = torch.zeros(2, 2)
    save_file(prefixed, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lm_head\.weight"):
        import_from_transformers(path)
