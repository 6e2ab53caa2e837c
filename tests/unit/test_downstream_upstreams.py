"""Probing upstreams: transformers dirs (AutoModel), speechssl model dirs and the Kaldi
baselines give every hidden state with each utterance's own frame count."""

from __future__ import annotations

import pytest
import torch

from speechssl.downstream.upstreams import (
    BaselineUpstream,
    SpeechSSLUpstream,
    TransformersUpstream,
    load_upstream,
)
from speechssl.errors import CheckpointError, ConfigError


def _waves(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = 0.1 * torch.randn(n, generator=g)
    return waves, torch.tensor(lengths)


def _hf_hubert(tmp_path, norm: str):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2),
        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer", layerdrop=0.1,
    )  # fmt: skip
    model = HubertModel(cfg).eval()
    model.save_pretrained(tmp_path / f"hf_{norm}")
    return model, tmp_path / f"hf_{norm}"


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_transformers_upstream_equals_transformers_per_utterance(tmp_path, norm):
    model, path = _hf_hubert(tmp_path, norm)
    up = load_upstream(str(path))
    assert isinstance(up, TransformersUpstream)
    assert up.num_layers == 4 and up.dim == 32 and up.frame_rate == 400.0
    lengths = [1600, 1210, 873]
    waves, lens = _waves(lengths)
    out = up(waves, lens)
    assert len(out.hidden_states) == 4
    for i, n in enumerate(lengths):
        with torch.no_grad():
            ref = model(waves[i : i + 1, :n], output_hidden_states=True).hidden_states
        f = int(out.frames[i])
        assert f == ref[0].shape[1]
        for k in range(4):
            got = out.hidden_states[k][i]
            assert torch.allclose(got[:f], ref[k][0], atol=1e-4), (norm, i, k)
            assert not got[f:].any()  # padding frames are zero
    assert up.identity()["weights_sha256"]


def test_speechssl_upstream_frame_counts_and_layers(tmp_path):
    from speechssl.models import create_model
    from speechssl.models.io import save_model_dir

    torch.manual_seed(0)
    model = create_model("hubert_tiny", **{"encoder.num_layers": 2}).eval()
    save_model_dir(model, tmp_path / "m")
    up = load_upstream(str(tmp_path / "m"))
    assert isinstance(up, SpeechSSLUpstream) and up.num_layers == 3
    lengths = [16000, 12345, 4000]
    waves, lens = _waves(lengths)
    out = up(waves, lens)
    assert out.frames.tolist() == model.output_lengths(lens).tolist()
    for i, n in enumerate(lengths):  # padded batch == each utterance alone
        with torch.no_grad():
            ref = model.extract(waves[i : i + 1, :n]).hidden_states
        f = int(out.frames[i])
        for k in range(3):
            assert torch.allclose(out.hidden_states[k][i, :f], ref[k][0], atol=1e-4)
    picked = up(waves, lens, [1])
    assert len(picked.hidden_states) == 1
    assert torch.equal(picked.hidden_states[0], out.hidden_states[1])
    with pytest.raises(ConfigError, match="out of range"):
        up(waves, lens, [3])


def test_baselines_and_errors(tmp_path):
    waves, lens = _waves([16000, 8000])
    for name, dim in (("fbank", 240), ("mfcc", 39)):
        up = load_upstream(name)
        assert isinstance(up, BaselineUpstream) and up.dim == dim and up.frame_rate == 100.0
        out = up(waves, lens)
        assert out.frames.tolist() == [98, 48]
        assert out.hidden_states[0].shape == (2, 98, dim)
    with pytest.raises(ConfigError, match="no such directory"):
        load_upstream(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a model dir"):
        load_upstream(str(tmp_path / "empty"))


def test_wav2vec2_bert_upstream_equals_transformers_per_utterance(tmp_path):
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    torch.manual_seed(0)
    cfg = Wav2Vec2BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        output_hidden_size=32, conv_depthwise_kernel_size=5, feature_projection_input_dim=160,
    )  # fmt: skip
    model = Wav2Vec2BertModel(cfg).eval()
    path = tmp_path / "w2vbert"
    model.save_pretrained(path)
    fe = SeamlessM4TFeatureExtractor()
    fe.save_pretrained(path)
    up = load_upstream(str(path))
    assert up.num_layers == 3 and up.frame_rate == 50.0
    lengths = [16000, 9000]
    waves, lens = _waves(lengths)
    out = up(waves, lens)
    for i, n in enumerate(lengths):
        inputs = fe([waves[i, :n].numpy()], sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            ref = model(input_features=inputs["input_features"], output_hidden_states=True)
        f = int(out.frames[i])
        assert f == ref.hidden_states[0].shape[1]
        for k in range(3):
            assert torch.allclose(
                out.hidden_states[k][i, :f], ref.hidden_states[k][0], atol=1e-3
            ), (i, k)
    (path / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"preprocessor_config\.json"):
        load_upstream(str(path))
