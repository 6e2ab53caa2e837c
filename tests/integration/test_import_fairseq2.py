"""`speechssl import fairseq2`: state dicts in fairseq2's layout (see tests/fairseq_fixtures.py
for where each name comes from) -> speechssl model dirs.

wav2vec 2.0: the fairseq-layout weights of test_import_fairseq renamed as fairseq2's own
converter does, imported, and compared with torchaudio's model built from the fairseq
weights (<= 1e-4). w2v-BERT: our model's weights written under fairseq2's ``W2VBertModel``
names and imported back: the same tensors, the same hidden states."""

from __future__ import annotations

import pytest
import torch
from fairseq_fixtures import (
    fairseq2_w2v_bert_state,
    fairseq2_wav2vec2_state,
    fairseq_arch,
    fairseq_state,
)
from model_fixtures import load_synth
from test_import_fairseq import LARGE_STYLE, _compare, _torchaudio_peer

from speechssl.cli.main import main
from speechssl.errors import CheckpointError
from speechssl.interop.fairseq2 import import_fairseq2
from speechssl.models import create_model
from speechssl.models.io import load_model_dir, read_model_description


@pytest.fixture(scope="module")
def audio(synth_corpus):
    waves, lengths, _ = load_synth(synth_corpus, 2, 1.0)
    return waves[:, : int(lengths.min())].contiguous()


@pytest.mark.parametrize("style", ["base", "large"])
def test_wav2vec2_matches_torchaudio(style, tmp_path, audio, capsys):
    torch.manual_seed(0)
    arch = fairseq_arch(**(LARGE_STYLE if style == "large" else {}))
    sd = fairseq_state("wav2vec2", arch)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": fairseq2_wav2vec2_state(sd, arch["layer_norm_first"])}, ckpt)
    out = tmp_path / "m"
    assert main(["import", "fairseq2", str(ckpt), str(out), "--num-heads", "4"]) == 0
    assert "conv strides [5, 2, 2, 2, 2, 2, 2]" in capsys.readouterr().out
    model = load_model_dir(out)
    cfg = model.config
    assert (cfg.encoder.num_layers, cfg.encoder.dim, cfg.encoder.num_heads) == (2, 48, 4)
    assert cfg.encoder.layer_norm_first == (style == "large")
    assert (cfg.codebook_groups, cfg.codebook_vars, cfg.final_dim) == (2, 16, 24)
    assert int(model.num_updates) == 777
    assert read_model_description(out)["extra"]["imported_from"]["source"] == "fairseq2"
    ta_waves = audio
    if style == "large":  # the LayerNorm extractor's convention: normalised waveforms
        mean, var = audio.mean(1, keepdim=True), audio.var(1, unbiased=False, keepdim=True)
        ta_waves = (audio - mean) / torch.sqrt(var + 1e-7)
    _compare(model, _torchaudio_peer(arch, sd), audio, ta_waves)


@pytest.mark.parametrize("groups", [1, 2])
def test_w2v_bert_round_trip(groups, tmp_path, audio):
    torch.manual_seed(1)
    ours = create_model("w2v_bert_tiny", codebook_groups=groups, num_target_codebooks=groups)
    ours.after_optimizer_step(55)
    ckpt = tmp_path / "w2vbert.pt"
    torch.save({"model": fairseq2_w2v_bert_state(ours.state_dict(), groups)}, ckpt)
    model, report = import_fairseq2(ckpt)
    assert model.family == "w2v_bert" and report.family == "w2v_bert"
    shape = ("dim", "num_layers", "num_heads", "ffn_dim", "depthwise_kernel",
             "max_left_distance", "max_right_distance", "activation", "causal_depthwise")  # fmt: skip
    for field in shape:
        assert getattr(model.config.encoder, field) == getattr(ours.config.encoder, field)
    assert model.config.num_mlm_layers == ours.config.num_mlm_layers
    theirs = model.state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    ours.eval(), model.eval()
    with torch.no_grad():
        a, b = ours.extract(audio), model.extract(audio)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)


def test_asr_checkpoint_drops_ctc_layer_and_bad_names_are_refused(tmp_path):
    torch.manual_seed(2)
    arch = fairseq_arch()
    sd = fairseq2_wav2vec2_state(fairseq_state("wav2vec2", arch), pre_ln=False)
    asr = {k: v for k, v in sd.items() if not k.startswith(("quantizer.", "final_target_proj."))}
    asr["final_proj.weight"] = torch.randn(30, 48)  # CTC vocabulary x model dim
    asr["final_proj.bias"] = torch.randn(30)
    torch.save({"model": asr}, tmp_path / "asr.pt")
    _, report = import_fairseq2(tmp_path / "asr.pt", num_heads=4)
    assert report.finetuned and report.dropped == ["final_proj.weight", "final_proj.bias"]
    assert "quantizer.codevectors" in report.initialised
    torch.save({"model": {**sd, "encoder.layers.0.self_attn.sdpa.u_bias": torch.zeros(4)}},
               tmp_path / "bad.pt")  # fmt: skip
    with pytest.raises(CheckpointError, match=r"self_attn\.sdpa\.u_bias"):
        import_fairseq2(tmp_path / "bad.pt", num_heads=4)
