"""Export to real ``transformers`` classes: loads with no missing/unexpected keys, every
hidden state matches ours (<= 1e-4), and pretraining continues from an export."""

import json

import pytest
import torch
from model_fixtures import load_synth, make_batch
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from speechssl.errors import CheckpointError
from speechssl.interop.hf import (
    export_to_transformers,
    import_from_transformers,
)
from speechssl.models import create_model, get_spec, list_models
from speechssl.models.io import save_model_dir

ATOL = 1e-4
# HuBERT, wav2vec 2.0 and WavLM (w2v-BERT, BEST-RQ and data2vec audio:
# tests/integration/test_export_families.py; WavLM's bias map: test_export_wavlm.py)
FAMILIES = ("hubert", "wav2vec2", "wavlm")
# the bare transformers class of each family here
BARE_CLASS = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}
# families with k-means label heads (their size is given like num_classes)
LABELLED = ("hubert", "wavlm")
EXPORTABLE = [
    n for n in list_models() if get_spec(n).family in FAMILIES and get_spec(n).size == "tiny"
]
PRE_LN = {
    "extractor": {"mode": "layer_norm", "conv_bias": True, "normalize_waveform": True},
    "encoder": {"layer_norm_first": True},
}


def _variants():
    for name in EXPORTABLE:
        yield pytest.param(name, {}, id=f"{name}-post_ln")
        yield pytest.param(name, PRE_LN, id=f"{name}-pre_ln")


def _overrides(name, extra):
    return {**extra, **({"num_classes": (32,)} if get_spec(name).family in LABELLED else {})}


@pytest.fixture(scope="module")
def audio(synth_corpus):
    return load_synth(synth_corpus, 3, 1.2)


def _load(path, pretraining):
    cls = AutoModelForPreTraining if pretraining else AutoModel
    hf, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    return hf.eval()


def _hf_inputs(path, waves, lengths):
    """Run the exported feature extractor (normalisation, attention mask) on real audio."""
    fe = AutoFeatureExtractor.from_pretrained(path)
    items = [w[: int(n)].numpy() for w, n in zip(waves, lengths, strict=True)]
    return fe(items, sampling_rate=16000, return_tensors="pt", padding=True)


def _check_hidden(ours, hf, path, waves, lengths):
    group_norm = ours.config.extractor.mode == "group_norm"
    # transformers' GroupNorm extractor is not padding aware: compare utterance by utterance
    batches = (
        [(waves[i : i + 1, : int(lengths[i])], lengths[i : i + 1]) for i in range(len(lengths))]
        if group_norm
        else [(waves, lengths)]
    )
    for w, n in batches:
        inputs = _hf_inputs(path, w, n)
        with torch.no_grad():
            ext = ours.extract(w, n)
            out = hf(**inputs, output_hidden_states=True)
        real = (
            (~ext.padding_mask)
            if ext.padding_mask is not None
            else torch.ones(ext.hidden_states[0].shape[:2], dtype=torch.bool)
        )
        assert len(out.hidden_states) == len(ext.hidden_states)
        for i, (a, b) in enumerate(zip(ext.hidden_states, out.hidden_states, strict=True)):
            err = (a - b)[real].abs().max().item()
            assert err <= ATOL, f"hidden state {i}: {err}"
        last = out.last_hidden_state if hasattr(out, "last_hidden_state") else None
        if last is not None:
            assert (ext.last_hidden_state - last)[real].abs().max().item() <= ATOL
    return out


@pytest.mark.parametrize(("name", "extra"), list(_variants()))
def test_export_loads_cleanly_and_matches_hidden_states(name, extra, tmp_path, audio):
    torch.manual_seed(0)
    ours = create_model(name, **_overrides(name, extra)).eval()
    waves, lengths, _ = audio
    kinds = [True, False] if get_spec(name).family == "wav2vec2" else [False]
    for pretraining in kinds:
        path = export_to_transformers(
            ours, tmp_path / f"export-{pretraining}", pretraining=pretraining
        )
        hf = _load(path, pretraining)
        expected = "Wav2Vec2ForPreTraining" if pretraining else BARE_CLASS[get_spec(name).family]
        assert type(hf).__name__ == expected
        _check_hidden(ours, hf, path, waves, lengths)
        if pretraining:
            # quantizer and projections came along: same projected states and quantized
            # targets (evaluation mode: argmax codes)
            w = waves[:1, : int(lengths[0])]
            inputs = _hf_inputs(path, w, lengths[:1])
            with torch.no_grad():
                out = hf(**inputs)
                res = ours.encode(w, lengths[:1], apply_mask=False)
                pred = ours.final_proj(res.encoder.last_hidden_state)
                q = ours.project_q(ours.quantizer(res.front.features).quantized)
            assert (pred - out.projected_states).abs().max() <= ATOL
            assert (q - out.projected_quantized_states).abs().max() <= ATOL


@pytest.mark.parametrize("name", EXPORTABLE)
def test_pretraining_continues_from_an_export(name, tmp_path, synth_corpus):
    torch.manual_seed(0)
    ours = create_model(name, **_overrides(name, {}))
    batch = make_batch(synth_corpus, 2, 1.0, codebook_size=32)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-3)
    for step in range(2):  # move away from the initialisation and anneal the temperature
        loss = ours(batch).loss.total
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.after_optimizer_step(step + 1000)
    km = tmp_path / "km"
    km.mkdir()
    (km / "model.json").write_text('{"k": 32}\n')
    path = export_to_transformers(ours, tmp_path / "export", kmeans_dir=km)
    desc = json.loads((path / "speechssl" / "model.json").read_text())
    assert desc["name"] == name and desc["export"]["kmeans"]["copy"] == "speechssl/kmeans"
    assert (path / "speechssl" / "kmeans" / "model.json").read_text() == '{"k": 32}\n'
    back = import_from_transformers(path)
    for (k, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    ours.eval(), back.eval()
    with torch.no_grad():
        a = ours(batch, generator=torch.Generator().manual_seed(5))
        b = back(batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.loss.total, b.loss.total)
    for key in a.loss.terms:
        assert torch.equal(a.loss.terms[key], b.loss.terms[key])
    if hasattr(back, "quantizer"):
        assert back.quantizer.current_temp == ours.quantizer.current_temp < 2.0
    back.train()
    back(batch).loss.total.backward()  # and it trains
    with pytest.raises(CheckpointError):
        export_to_transformers(ours, path)


@pytest.mark.parametrize("name", EXPORTABLE)
def test_import_plain_transformers_checkpoint(name, tmp_path, audio):
    """A transformers directory without our side files (e.g. a published checkpoint):
    the architecture comes from config.json, the encoder weights load, heads start fresh."""
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2ForPreTraining,
        WavLMConfig,
        WavLMModel,
    )

    torch.manual_seed(0)
    common = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 4, 4),
        conv_stride=(5, 4, 2),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
    )
    family = get_spec(name).family
    if family == "hubert":
        hf = HubertModel(HubertConfig(**common)).eval()
        overrides = {"num_classes": (50,)}
    elif family == "wavlm":
        hf = WavLMModel(WavLMConfig(**common)).eval()
        overrides = {"num_classes": (50,)}
    else:
        hf = Wav2Vec2ForPreTraining(
            Wav2Vec2Config(
                codevector_dim=32, proj_codevector_dim=24, num_codevectors_per_group=16, **common
            )
        ).eval()
        overrides = {}
    hf.save_pretrained(tmp_path / "hf")
    ours = import_from_transformers(tmp_path / "hf", **overrides).eval()
    assert ours.encoder.num_layers == 2 and ours.frame_rate == 16000 / 40
    w = audio[0][:1, :16000]
    with torch.no_grad():
        ext = ours.extract(w)
        out = hf(w, output_hidden_states=True)
    for a, b in zip(ext.hidden_states, out.hidden_states, strict=True):
        assert (a - b).abs().max() <= ATOL
    save_model_dir(ours, tmp_path / "ours")  # and it is a first-class speechssl model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hubert_base", "wav2vec2_base", "wavlm_base"])
def test_base_export_parity(name, tmp_path, audio):
    torch.manual_seed(0)
    ours = create_model(name).eval()
    path = export_to_transformers(ours, tmp_path / "export")
    hf = _load(path, get_spec(name).family == "wav2vec2")
    waves, lengths, _ = audio
    _check_hidden(ours, hf, path, waves[:2], lengths[:2])
