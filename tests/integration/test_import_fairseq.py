"""`speechssl import fairseq`: checkpoints written in fairseq's layout (see
tests/fairseq_fixtures.py for where each name comes from) -> speechssl model dirs.

Parity peer: torchaudio's own fairseq converter (``torchaudio.models.wav2vec2.utils.
import_fairseq._convert_state_dict``, the key map behind ``import_fairseq_model``) applied
to the same fairseq state dict, loaded into ``torchaudio.models.wav2vec2_model``; our
imported model must give the same hidden states (<= 1e-4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchaudio
from fairseq_fixtures import (
    SMALL_CONV,
    FakeFairseqModules,
    fairseq_arch,
    fairseq_state,
    finetuned_state,
    write_fairseq_checkpoint,
)
from model_fixtures import load_synth
from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

from speechssl.cli.main import main
from speechssl.errors import CheckpointError
from speechssl.interop.fairseq import import_fairseq
from speechssl.interop.safe_pickle import ForeignObject, load_foreign_checkpoint
from speechssl.models.io import load_model_dir, read_model_description

ATOL = 1e-4
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def audio(synth_corpus):
    waves, lengths, _ = load_synth(synth_corpus, 2, 1.0)
    n = int(lengths.min())  # one length: fairseq's GroupNorm sees no padding then
    return waves[:, :n].contiguous()


def _torchaudio_peer(arch: dict, fairseq_sd: dict) -> torch.nn.Module:
    convs = [list(c) for c in SMALL_CONV]
    ta = torchaudio.models.wav2vec2_model(
        extractor_mode="layer_norm" if arch["extractor_mode"] == "layer_norm" else "group_norm",
        extractor_conv_layer_config=convs,
        extractor_conv_bias=arch["conv_bias"],
        encoder_embed_dim=arch["encoder_embed_dim"],
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=arch["conv_pos"],
        encoder_pos_conv_groups=arch["conv_pos_groups"],
        encoder_num_layers=arch["encoder_layers"],
        encoder_num_heads=arch["encoder_attention_heads"],
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=arch["encoder_ffn_embed_dim"],
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=arch["layer_norm_first"],
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    converted = {
        k: v for k, v in _convert_state_dict(fairseq_sd).items() if k != "label_embs_concat"
    }
    ta.load_state_dict(converted, strict=True)
    return ta.eval()


def _compare(ours, ta, waves, ta_waves=None) -> None:
    ours.eval()
    ta_waves = waves if ta_waves is None else ta_waves
    with torch.no_grad():
        ext = ours.extract(waves)
        ta_layers, _ = ta.extract_features(ta_waves)
        ta_out, _ = ta(ta_waves)
    assert len(ext.hidden_states) == len(ta_layers) + 1
    for i, (a, b) in enumerate(zip(ext.hidden_states[1:], ta_layers, strict=True)):
        err = (a - b).abs().max().item()
        assert err <= ATOL, f"layer {i + 1}: max abs diff {err}"
    err = (ext.last_hidden_state - ta_out).abs().max().item()
    assert err <= ATOL, f"last hidden state: max abs diff {err}"


LARGE_STYLE = {"extractor_mode": "layer_norm", "conv_bias": True, "layer_norm_first": True}


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
@pytest.mark.parametrize("layout", ["cfg", "args"])
@pytest.mark.parametrize("style", ["base", "large"])
def test_pretrained_import_matches_torchaudio(family, layout, style, tmp_path, audio):
    torch.manual_seed(0)
    arch = fairseq_arch(**(LARGE_STYLE if style == "large" else {}))
    sd = fairseq_state(family, arch, label_rows=4 + 20)
    ckpt = tmp_path / "checkpoint_best.pt"
    task = {"_name": "hubert_pretraining", "normalize": style == "large"}
    write_fairseq_checkpoint(ckpt, family, arch, sd, layout=layout, task=task)
    out = tmp_path / "model"
    assert main(["import", "fairseq", str(ckpt), str(out)]) == 0
    model = load_model_dir(out)
    desc = read_model_description(out)
    assert desc["name"] == family  # a 2-layer model of no preset's shape: named by family
    cfg = model.config
    assert (cfg.encoder.num_layers, cfg.encoder.dim, cfg.encoder.num_heads) == (2, 48, 4)
    assert cfg.encoder.ffn_dim == 96 and cfg.encoder.layer_drop == 0.05
    assert cfg.extractor.conv_layers == SMALL_CONV
    assert cfg.extractor.normalize_waveform == (style == "large")
    assert cfg.encoder.layer_norm_first == (style == "large")
    assert desc["extra"]["imported_from"]["checkpoint"] == "checkpoint_best.pt"
    peer = _torchaudio_peer(arch, sd)
    ta_waves = audio
    if style == "large":
        # task.normalize: the waveform is normalised before the model (torchaudio's model
        # does not do it itself); eps as speechssl/transformers (1e-7; fairseq's
        # F.layer_norm uses 1e-5, see speechssl.frontends.speech.normalize_waveforms)
        mean, var = audio.mean(1, keepdim=True), audio.var(1, unbiased=False, keepdim=True)
        ta_waves = (audio - mean) / torch.sqrt(var + 1e-7)
    _compare(model, peer, audio, ta_waves)
    if family == "hubert":
        assert cfg.num_classes == (20,)
        assert torch.equal(model.head.label_embeddings, sd["label_embs_concat"][4:])
        assert torch.equal(model.head.final_proj.weight, sd["final_proj.weight"])
    else:
        assert torch.equal(model.quantizer.codevectors, sd["quantizer.vars"])
        assert cfg.codebook_vars == 16 and cfg.feature_penalty_weight == 10.0
        assert int(model.num_updates) == 1234  # the Gumbel temperature continues


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
@pytest.mark.parametrize("layout", ["cfg", "cfg_dict", "args"])
def test_finetuned_import_keeps_the_encoder_and_reports(family, layout, tmp_path, audio, capsys):
    torch.manual_seed(1)
    arch = fairseq_arch()
    sd = fairseq_state(family, arch, label_rows=4 + 20)
    ckpt = tmp_path / "ft.pt"
    write_fairseq_checkpoint(ckpt, family, arch, finetuned_state(sd), layout=layout, finetuned=True)
    out = tmp_path / "model"
    assert main(["import", "fairseq", str(ckpt), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "w2v_encoder.proj.weight" in printed and "freshly initialised" in printed
    model = load_model_dir(out)
    report = read_model_description(out)["extra"]["imported_from"]
    assert report["finetuned"] and report["dropped"] == [
        "w2v_encoder.proj.weight",
        "w2v_encoder.proj.bias",
    ]
    head = "head.label_embeddings" if family == "hubert" else "quantizer.codevectors"
    assert head in report["initialised"]
    _compare(model, _torchaudio_peer(arch, sd), audio)


def test_label_dictionary_orders_the_embedding_rows(tmp_path, monkeypatch):
    fake = FakeFairseqModules(monkeypatch)
    torch.manual_seed(2)
    arch = fairseq_arch()
    units = [str(u) for u in (2, 0, 1, 4, 3)]  # dict.km.txt in a non-sorted order
    sd = fairseq_state("hubert", arch, label_rows=4 + len(units))
    ckpt = tmp_path / "c.pt"
    write_fairseq_checkpoint(
        ckpt, "hubert", arch, sd, task_state={"dictionaries": [fake.Dictionary(units)]}
    )
    monkeypatch.undo()  # fairseq is "uninstalled" again before reading
    raw = load_foreign_checkpoint(ckpt)
    d = raw["task_state"]["dictionaries"][0]
    assert isinstance(d, ForeignObject) and d.foreign_name == "fairseq.data.dictionary.Dictionary"
    model, report = import_fairseq(ckpt)
    rows = sd["label_embs_concat"]
    for unit in range(5):
        assert torch.equal(model.head.label_embeddings[unit], rows[4 + units.index(str(unit))])
    assert model.config.num_classes == (5,)
    assert any("dictionaries" in n for n in report.notes)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_would_run_a_command_is_refused(zip_format, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    ckpt = tmp_path / "evil.pt"
    sd = fairseq_state("wav2vec2", fairseq_arch())
    torch.save(
        {"model": sd, "args": None, "cfg": {"model": {}}, "extra_state": _RunsACommand(marker)},
        ckpt,
        _use_new_zipfile_serialization=zip_format,
    )
    assert main(["import", "fairseq", str(ckpt), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refuses to unpickle the global" in err
    assert "system" in err  # names the global (posix.system / nt.system)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_bad_weights_are_named(tmp_path):
    arch = fairseq_arch()
    sd = fairseq_state("wav2vec2", arch)
    cases = {
        "extra": ({**sd, "encoder.layers.0.self_attn.rel_bias": torch.zeros(3)}, "rel_bias"),
        "missing": ({k: v for k, v in sd.items() if k != "encoder.layers.1.fc2.weight"},
                    "encoder.layers.1.ffn.fc2.weight"),
        "nan": ({**sd, "mask_emb": torch.full_like(sd["mask_emb"], float("nan"))}, "mask_emb"),
        "shape": ({**sd, "project_q.bias": torch.zeros(5)}, "project_q.bias"),
    }  # fmt: skip
    for what, (state, name) in cases.items():
        ckpt = tmp_path / f"{what}.pt"
        write_fairseq_checkpoint(ckpt, "wav2vec2", arch, state)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            import_fairseq(ckpt)


@pytest.mark.parametrize(
    ("option", "value"), [("layer_type", "conformer"), ("quantize_targets", False)]
)
def test_unsupported_fairseq_options_are_refused(option, value, tmp_path):
    arch = fairseq_arch(**{option: value})
    ckpt = tmp_path / "c.pt"
    write_fairseq_checkpoint(ckpt, "wav2vec2", arch, fairseq_state("wav2vec2", fairseq_arch()))
    with pytest.raises(CheckpointError, match=f"{option}={value!r} is not supported"):
        import_fairseq(ckpt)


def test_import_command_line(tmp_path, capsys):
    torch.manual_seed(3)
    arch = fairseq_arch()
    ckpt = tmp_path / "c.pt"
    write_fairseq_checkpoint(ckpt, "hubert", arch, fairseq_state("hubert", arch, 24))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "speechssl.cli.main", "import", "fairseq", str(ckpt)]
    res = subprocess.run([*cmd, str(tmp_path / "m")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "hubert (hubert) imported from fairseq" in res.stdout
    # an existing OUT is refused (one line, exit 1) unless --overwrite
    assert main(["import", "fairseq", str(ckpt), str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and err.count("\n") == 1
    assert main(["import", "fairseq", str(ckpt), str(tmp_path / "m"), "--overwrite"]) == 0
