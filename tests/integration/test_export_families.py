"""Export of w2v-BERT and data2vec audio to ``transformers``: the exported directory loads
with ``AutoModel`` without missing or unexpected keys and reproduces every hidden state of
ours (<= 1e-4) on bundled-corpus audio; the import restores the pretraining model exactly;
settings ``transformers`` cannot express are refused."""

import pytest
import torch
from model_fixtures import load_synth
from safetensors.torch import load_file
from transformers import AutoFeatureExtractor, AutoModel

from speechssl.errors import CheckpointError, ConfigError
from speechssl.interop.hf import (
    export_to_transformers,
    hf_config_for,
    import_from_transformers,
    import_transformers_dir,
)
from speechssl.models import create_model, model_config

TOL = 1e-4


@pytest.fixture(scope="module")
def audio(synth_corpus):
    """Three bundled-corpus utterances (different lengths), right-padded."""
    return load_synth(synth_corpus, 3, 2.0)


def _randomized(name, **overrides):
    """A model whose every weight is perturbed well away from its initialisation, so a
    wrong mapping or a different computation cannot hide behind near-zero weights."""
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _hf_hidden(hf, model, waves, lengths):
    with torch.no_grad():
        if model.family in ("w2v_bert", "best_rq"):  # stacked fbank features in
            feats, frames = model.frontend.features(waves, lengths)
            mask = (torch.arange(feats.shape[1]) < frames[:, None]).long()
            return hf(input_features=feats, attention_mask=mask, output_hidden_states=True)
        mask = (torch.arange(waves.shape[1]) < lengths[:, None]).long()
        return hf(waves, attention_mask=mask, output_hidden_states=True)


def _max_diff(ours, theirs):
    valid = (
        ~ours.padding_mask
        if ours.padding_mask is not None
        else torch.ones(ours.hidden_states[0].shape[:2], dtype=torch.bool)
    )
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    diffs = [
        float((a - b)[valid].abs().max())
        for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True)
    ]
    diffs.append(float((ours.last_hidden_state - theirs.last_hidden_state)[valid].abs().max()))
    return max(diffs)


CASES = [
    ("w2v_bert_tiny", {}, "Wav2Vec2BertModel"),
    ("best_rq_tiny", {}, "Wav2Vec2BertModel"),  # w2v-BERT's encoder and parameter names
    # transformers lets padding leak through the stacked position convs: compare padded
    # batches with our padding-aware variant switched off (single utterances always agree)
    ("data2vec_audio_tiny", {"padding_aware_positions": False}, "Data2VecAudioModel"),
]


@pytest.mark.parametrize(("name", "overrides", "hf_class"), CASES)
def test_export_loads_without_missing_keys_and_matches_hidden_states(
    name, overrides, hf_class, audio, tmp_path
):
    waves, lengths, _ = audio
    model = _randomized(name, **overrides)
    out = export_to_transformers(model, tmp_path / "export")
    hf, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(hf).__name__ == hf_class
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    hf.eval()
    for batch in ((waves[:1, : int(lengths[0])], lengths[:1]), (waves, lengths)):
        with torch.no_grad():
            ours = model.extract(*batch)
        theirs = _hf_hidden(hf, model, *batch)
        diff = _max_diff(ours, theirs)
        print(f"{name}: batch of {batch[0].shape[0]}, max |ours - transformers| = {diff:.2e}")
        assert diff <= TOL
    # the check is sensitive: perturbing one transformers weight breaks it
    with torch.no_grad():
        next(p for n, p in hf.named_parameters() if "layers.1." in n and p.dim() == 2).add_(0.05)
    with torch.no_grad():
        ours = model.extract(waves, lengths)
    assert _max_diff(ours, _hf_hidden(hf, model, waves, lengths)) > TOL


def test_data2vec_padding_aware_positions_differ_only_on_padded_batches(audio, tmp_path):
    waves, lengths, _ = audio
    model = _randomized("data2vec_audio_tiny")  # padding_aware_positions=True (default)
    hf = AutoModel.from_pretrained(export_to_transformers(model, tmp_path / "e")).eval()
    single = (waves[:1, : int(lengths[0])], lengths[:1])
    with torch.no_grad():
        ours = model.extract(*single)
    assert _max_diff(ours, _hf_hidden(hf, model, *single)) <= TOL
    # ours: the padded utterance is the same as alone; transformers': it changed
    short = int(lengths.argmin())
    alone = (waves[short : short + 1, : int(lengths[short])], lengths[short : short + 1])
    with torch.no_grad():
        ours_alone = model.extract(*alone).hidden_states[-1][0]
        ours_batch = model.extract(waves, lengths).hidden_states[-1][short, : ours_alone.shape[0]]
        theirs_batch = _hf_hidden(hf, model, waves, lengths).hidden_states[-1][
            short, : ours_alone.shape[0]
        ]
    assert torch.allclose(ours_alone, ours_batch, atol=TOL)
    assert not torch.allclose(ours_alone, theirs_batch, atol=TOL)


def test_w2v_bert_front_end_matches_the_exported_feature_extractor(audio, tmp_path):
    """Our stacked fbank = SeamlessM4TFeatureExtractor's input_features (saved with the
    export) up to float32-vs-float64 rounding of the fbank."""
    waves, lengths, _ = audio
    model = create_model("w2v_bert_tiny").eval()
    extractor = AutoFeatureExtractor.from_pretrained(export_to_transformers(model, tmp_path / "e"))
    ref = extractor(
        [waves[i, : int(lengths[i])].numpy() for i in range(3)],
        sampling_rate=16000,
        return_tensors="pt",
        padding=True,
    )
    feats, frames = model.frontend.features(waves, lengths)
    assert torch.equal(ref["attention_mask"].sum(1), frames)
    valid = torch.arange(feats.shape[1]) < frames[:, None]
    diff = (ref["input_features"][:, : feats.shape[1]] - feats)[valid].abs()
    assert float(diff.max()) < 2e-3 and float(diff.mean()) < 1e-5


@pytest.mark.parametrize("name", ["w2v_bert_tiny", "data2vec_audio_tiny"])
def test_import_restores_the_pretraining_model(name, tmp_path):
    model = _randomized(name)
    model.after_optimizer_step(7)
    path = export_to_transformers(model, tmp_path / "e")
    back = import_from_transformers(path)
    assert back.model_name == name and back.config == model.config
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    with pytest.raises(CheckpointError, match="exists"):
        export_to_transformers(model, path)
    # without the side directory it is a plain transformers checkpoint: the encoder
    # weights load, the heads start fresh and are named
    (path / "speechssl" / "model.json").unlink()
    plain = import_transformers_dir(path)
    assert plain.fresh and all(k not in plain.fresh for k in ours if k.startswith("encoder."))
    for key, value in plain.model.state_dict().items():
        if key.startswith("encoder.layers."):
            assert torch.equal(value, ours[key]), key


def test_best_rq_bare_export_and_side_dir(audio, tmp_path):
    """BEST-RQ --bare is a plain Wav2Vec2BertModel with our hidden states; the default
    export keeps the random quantizers and classifiers in the side dir and restores the
    BEST-RQ model exactly (same targets); without the side dir it is a w2v-BERT encoder."""
    waves, lengths, _ = audio
    model = _randomized("best_rq_tiny", num_codebooks=2)
    bare = export_to_transformers(model, tmp_path / "bare", bare=True)
    assert not (bare / "speechssl").exists()
    hf, info = AutoModel.from_pretrained(bare, output_loading_info=True)
    assert type(hf).__name__ == "Wav2Vec2BertModel"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        ours = model.extract(waves, lengths)
    assert _max_diff(ours, _hf_hidden(hf.eval(), model, waves, lengths)) <= TOL
    full = export_to_transformers(model, tmp_path / "full")
    side = load_file(str(full / "speechssl" / "heads.safetensors"))
    for g in range(2):
        for buf in ("projection", "codebook", "mean", "std"):
            assert f"quantizers.{g}.{buf}" in side
    with pytest.raises(ConfigError, match="k-means"):
        export_to_transformers(model, tmp_path / "km", kmeans_dir=tmp_path)
    back = import_from_transformers(full)
    assert back.model_name == "best_rq_tiny" and back.config == model.config
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stacked, frames = model.frontend.features(waves, lengths)
    assert torch.equal(model.targets(stacked, frames), back.targets(stacked, frames))
    plain = import_transformers_dir(bare)
    assert plain.model.family == "w2v_bert" and plain.hf_class == "Wav2Vec2BertModel"
    own = plain.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in a.items() if k.startswith("encoder."))


def test_unsupported_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="causal"):
        export_to_transformers(
            create_model("w2v_bert_tiny", encoder={"causal_depthwise": False}), tmp_path / "a"
        )
    with pytest.raises(ConfigError, match="layer_norm"):
        export_to_transformers(
            create_model("data2vec_audio_tiny", extractor={"mode": "group_norm"}), tmp_path / "b"
        )
    # the image families export as IJepaModel now (test_export_vision.py); the speaker
    # models have no transformers class
    with pytest.raises(ConfigError, match="no transformers class has its encoder"):
        export_to_transformers(create_model("speaker_dino_tiny"), tmp_path / "d")
    assert not any(tmp_path.iterdir())


def test_base_presets_are_the_published_architectures():
    """The exported configs of the base presets equal transformers' defaults, which describe
    facebook/w2v-bert-2.0, facebook/data2vec-audio-base and microsoft/wavlm-base."""
    from transformers import Data2VecAudioConfig, Wav2Vec2BertConfig, WavLMConfig

    keys = {
        "w2v_bert": (
            Wav2Vec2BertConfig(),
            "hidden_size num_hidden_layers num_attention_heads intermediate_size "
            "feature_projection_input_dim hidden_act position_embeddings_type "
            "left_max_position_embeddings right_max_position_embeddings "
            "conv_depthwise_kernel_size layer_norm_eps",
        ),
        "data2vec_audio": (
            Data2VecAudioConfig(),
            "hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act "
            "conv_dim conv_kernel conv_stride conv_bias num_conv_pos_embeddings "
            "conv_pos_kernel_size num_conv_pos_embedding_groups layer_norm_eps",
        ),
        # microsoft/wavlm-base
        "wavlm": (
            WavLMConfig(),
            "hidden_size num_hidden_layers num_attention_heads intermediate_size hidden_act "
            "conv_dim conv_kernel conv_stride conv_bias feat_extract_norm do_stable_layer_norm "
            "num_conv_pos_embeddings num_conv_pos_embedding_groups num_buckets "
            "max_bucket_distance layer_norm_eps",
        ),
    }
    for family, (reference, names) in keys.items():
        ours = hf_config_for(family, model_config(f"{family}_base"))
        for key in names.split():
            assert (
                list(getattr(ours, key)) == list(getattr(reference, key))
                if isinstance(getattr(reference, key), (list, tuple))
                else getattr(ours, key) == getattr(reference, key)
            ), (family, key)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data2vec_audio_base", "w2v_bert_base"])
def test_base_export_parity(name, audio, tmp_path):
    """Full-size export (95M / 600M parameters)."""
    waves, lengths, _ = audio
    torch.manual_seed(0)
    model = (
        create_model(name, padding_aware_positions=False)
        if "data2vec" in name
        else create_model(name)
    )
    model.eval()
    hf, info = AutoModel.from_pretrained(
        export_to_transformers(model, tmp_path / "e"), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        ours = model.extract(waves, lengths)
    diff = _max_diff(ours, _hf_hidden(hf.eval(), model, waves, lengths))
    print(f"{name}: max |ours - transformers| = {diff:.2e}")
    assert diff <= TOL


def test_feature_dump_loads_family_exports(audio, tmp_path):
    """``features dump --kind model --checkpoint EXPORT`` routes these exports here and gets
    the same hidden layer as the model itself."""
    from speechssl.downstream.upstreams import ModelLayerExtractor, load_any_model

    waves, lengths, ids = audio
    model = _randomized("w2v_bert_tiny")
    path = export_to_transformers(model, tmp_path / "e")
    loaded = load_any_model(path)
    assert loaded.model_name == "w2v_bert_tiny"
    extractor = ModelLayerExtractor(loaded, 2, str(path), torch.device("cpu"))
    feats, frames = extractor(waves, lengths, ids)
    with torch.no_grad():
        ref = model.extract(waves, lengths)
    assert frames.tolist() == (~ref.padding_mask).sum(1).tolist()
    real = ~ref.padding_mask.unsqueeze(-1)  # padding frames come back as zeros
    assert torch.allclose(feats * real, ref.hidden_states[2] * real, atol=1e-5)
    with pytest.raises(ConfigError, match="image model"):
        ModelLayerExtractor(create_model("hubert_vision_tiny"), 1, "x", torch.device("cpu"))


def test_generic_transformers_entry_points_dispatch_here(tmp_path):
    """``speechssl.interop.hf.export_to_transformers`` / ``import_from_transformers``
    dispatch these families by ``model.family``."""

    model = _randomized("data2vec_audio_tiny")
    path = export_to_transformers(model, tmp_path / "e")
    assert (path / "speechssl" / "heads.safetensors").is_file()
    back = import_from_transformers(path)
    assert back.model_name == "data2vec_audio_tiny"
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), back.state_dict().values(), strict=True)
    )
    with pytest.raises(ConfigError, match="k-means"):
        export_to_transformers(model, tmp_path / "f", kmeans_dir=tmp_path)
