"""`speechssl import hf`: randomly initialised ``transformers`` models of every family, saved
with ``save_pretrained``, become speechssl model dirs whose ``extract`` reproduces the
``transformers`` hidden states (<= 1e-4, padded batches included), and ``export hf`` of the
imported model writes the original tensors back exactly. Bad checkpoints are named errors;
a hub id is read from the local Hugging Face cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_fixtures import load_synth
from safetensors.torch import load_file, save_file

from speechssl.cli.main import main
from speechssl.models.io import load_model_dir

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4
CONV = dict(conv_dim=(32, 32, 32), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 2), conv_bias=True)
SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
# non-default dropouts and layer drop: they must come across too
REGULARISATION = dict(hidden_dropout=0.07, attention_dropout=0.03, activation_dropout=0.02,
                      feat_proj_dropout=0.04, layerdrop=0.06)  # fmt: skip


def _hf_model(kind: str):
    import transformers as tr

    if kind == "hubert":
        cfg = tr.HubertConfig(**SIZES, **CONV, **REGULARISATION, feat_extract_norm="layer",
                              do_stable_layer_norm=True, num_conv_pos_embeddings=8,
                              num_conv_pos_embedding_groups=4)  # fmt: skip
        return tr.HubertModel(cfg), tr.Wav2Vec2FeatureExtractor(do_normalize=True)
    if kind == "wav2vec2":
        cfg = tr.Wav2Vec2Config(**SIZES, **CONV, **REGULARISATION, feat_extract_norm="layer",
                                num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
                                codevector_dim=32, proj_codevector_dim=24,
                                num_codevectors_per_group=16, num_codevector_groups=2)  # fmt: skip
        return tr.Wav2Vec2ForPreTraining(cfg), tr.Wav2Vec2FeatureExtractor(do_normalize=False)
    if kind == "data2vec_audio":
        cfg = tr.Data2VecAudioConfig(**SIZES, **CONV, **REGULARISATION, num_conv_pos_embeddings=3,
                                     conv_pos_kernel_size=5, num_conv_pos_embedding_groups=4)  # fmt: skip
        return tr.Data2VecAudioModel(cfg), tr.Wav2Vec2FeatureExtractor(do_normalize=True)
    if kind == "wavlm":
        # non-default bias buckets and distance: they must come across too
        cfg = tr.WavLMConfig(**SIZES, **CONV, **REGULARISATION, feat_extract_norm="layer",
                             do_stable_layer_norm=True, num_conv_pos_embeddings=8,
                             num_conv_pos_embedding_groups=4, num_buckets=64,
                             max_bucket_distance=40)  # fmt: skip
        return tr.WavLMModel(cfg), tr.Wav2Vec2FeatureExtractor(do_normalize=True)
    cfg = tr.Wav2Vec2BertConfig(**SIZES, **REGULARISATION, feature_projection_input_dim=160,
                                conv_depthwise_kernel_size=5, left_max_position_embeddings=16,
                                right_max_position_embeddings=4, conformer_conv_dropout=0.01,
                                add_adapter=False)  # fmt: skip
    return tr.Wav2Vec2BertModel(cfg), tr.SeamlessM4TFeatureExtractor()


def _saved(kind: str, path: Path):
    """A transformers model with every weight moved well away from its initialisation (so
    a wrong mapping cannot hide behind zeros and ones), saved with save_pretrained."""
    torch.manual_seed(0)
    hf, fe = _hf_model(kind)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path)
    fe.save_pretrained(path)
    return hf.eval()


@pytest.fixture(scope="module")
def audio(synth_corpus):
    return load_synth(synth_corpus, 3, 1.5)


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "data2vec_audio", "w2v_bert", "wavlm"])
def test_import_matches_transformers_and_exports_back_exactly(kind, tmp_path, audio, capsys):
    src, out = tmp_path / "hf", tmp_path / "ours"
    hf = _saved(kind, src)
    assert main(["import", "hf", str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 layers x 64" in printed
    ours = load_model_dir(out).eval()
    enc = ours.config.encoder
    assert (enc.num_layers, enc.dim, enc.num_heads, enc.ffn_dim) == (2, 64, 4, 96)
    assert (enc.dropout, enc.attention_dropout, enc.activation_dropout, enc.layer_drop) == (
        0.07, 0.03, 0.02, 0.06,
    )  # fmt: skip
    assert ours.config.dropout_input == 0.04
    if kind == "wavlm":
        assert (enc.num_buckets, enc.max_distance) == (64, 40)
    extra = json.loads((out / "model.json").read_text())["extra"]["imported_from"]
    assert extra["class"] == type(hf).__name__ and extra["source"] == "hf"
    assert extra["preset_matches"] is False  # no preset is 2 x 64: said so, not hidden
    waves, lengths, _ = audio  # three utterances of different lengths: a padded batch
    with torch.no_grad():
        ext = ours.extract(waves, lengths)
        if kind == "w2v_bert":
            feats, frames = ours.frontend.features(waves, lengths)
            mask = (torch.arange(feats.shape[1]) < frames[:, None]).long()
            theirs = hf(input_features=feats, attention_mask=mask, output_hidden_states=True)
        else:
            if ours.config.extractor.normalize_waveform:  # the feature extractor's do_normalize
                from transformers import AutoFeatureExtractor

                fe = AutoFeatureExtractor.from_pretrained(src)
                items = [w[: int(n)].numpy() for w, n in zip(waves, lengths, strict=True)]
                inputs = fe(
                    items,
                    sampling_rate=16000,
                    return_tensors="pt",
                    padding=True,
                    return_attention_mask=True,
                )
                x, mask = inputs["input_values"], inputs["attention_mask"]
            else:
                x, mask = waves, (torch.arange(waves.shape[1]) < lengths[:, None]).long()
            model = hf.wav2vec2 if kind == "wav2vec2" else hf
            theirs = model(x, attention_mask=mask, output_hidden_states=True)
    assert ext.padding_mask is not None and bool(ext.padding_mask.any())
    valid = ~ext.padding_mask
    assert len(ext.hidden_states) == len(theirs.hidden_states) == 3
    for i, (a, b) in enumerate(zip(ext.hidden_states, theirs.hidden_states, strict=True)):
        err = float((a - b)[valid].abs().max())
        assert err <= TOL, f"hidden state {i}: {err}"
    # and back: the export holds exactly the tensors transformers saved
    bare = tmp_path / "back"
    flags = [] if kind == "wav2vec2" else ["--bare"]  # wav2vec2: the ForPreTraining class
    assert main(["export", "hf", str(out), str(bare), *flags]) == 0
    want, got = (
        load_file(str(src / "model.safetensors")),
        load_file(str(bare / "model.safetensors")),
    )
    assert sorted(want) == sorted(got)
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_bad_checkpoints_are_named_errors(tmp_path, capsys):
    src = tmp_path / "hf"
    _saved("hubert", src)
    weights = load_file(str(src / "model.safetensors"))

    def run(state: dict) -> str:
        save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
        capsys.readouterr()
        assert main(["import", "hf", str(src), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        return err

    assert "lm_head.weight" in run({**weights, "lm_head.weight": torch.zeros(3, 64)})
    dropped = "encoder.layers.1.attention.k_proj.weight"
    assert dropped in run({k: v for k, v in weights.items() if k != dropped})
    bad = dict(weights)
    bad["encoder.layer_norm.weight"] = torch.full_like(
        bad["encoder.layer_norm.weight"], float("nan")
    )
    assert "NaN" in run(bad)
    (src / "model.safetensors").unlink()
    torch.save(weights, src / "pytorch_model.bin")
    capsys.readouterr()
    assert main(["import", "hf", str(src), str(tmp_path / "out")]) == 1
    assert "only safetensors" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (src / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["import", "hf", str(src), str(tmp_path / "out")]) == 1
    assert "model_type 'bert'" in capsys.readouterr().err


def test_hub_id_from_the_local_cache(tmp_path):
    """A hub id resolves through huggingface_hub's cache layout
    (``models--ORG--NAME/snapshots/<commit>/``, ``refs/main``) with HF_HUB_OFFLINE=1; an id
    that is not cached is a one-line error."""
    commit = "0" * 40
    repo = tmp_path / "cache" / "models--me--tiny-hubert"
    _saved("hubert", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "speechssl.cli.main", "import", "hf"]
    ok = subprocess.run([*cmd, "me/tiny-hubert", "out"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    extra = json.loads((tmp_path / "out" / "model.json").read_text())["extra"]["imported_from"]
    assert extra["hub_id"] == "me/tiny-hubert"
    missing = subprocess.run([*cmd, "me/not-cached", "out2"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "not in the local Hugging Face cache" in lines[0]
    assert not (tmp_path / "out2").exists()


# a third subprocess (~10 s when the machine is busy): slow suite
@pytest.mark.slow
def test_hub_id_download_failure_is_one_line(tmp_path):
    """Online, not cached, and the hub cannot be reached (nothing listens on the port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(tmp_path / "cache"),
           "HF_ENDPOINT": f"http://127.0.0.1:{port}", "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    down = subprocess.run(
        [sys.executable, "-m", "speechssl.cli.main", "import", "hf", "me/not-cached", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 1
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "me/not-cached: download failed" in lines[0], down.stderr
    assert not (tmp_path / "out").exists()


def test_sharded_checkpoint_and_existing_out(tmp_path, capsys):
    """save_pretrained's sharded layout (model.safetensors.index.json) imports the same
    weights; an existing OUT is refused unless --overwrite (which works)."""
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    hf = _saved("hubert", one)
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert main(["import", "hf", str(one), str(tmp_path / "a")]) == 0
    assert main(["import", "hf", str(sharded), str(tmp_path / "b")]) == 0
    a, b = load_model_dir(tmp_path / "a").state_dict(), load_model_dir(tmp_path / "b").state_dict()
    fresh = json.loads((tmp_path / "a" / "model.json").read_text())["extra"]["imported_from"]
    assert fresh["initialised"] and a.keys() == b.keys()
    # HuBERT's heads are not in transformers: initialised (randomly) in each import
    assert all(torch.equal(a[k], b[k]) for k in a if k not in fresh["initialised"])
    capsys.readouterr()
    assert main(["import", "hf", str(one), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    assert main(["import", "hf", str(one), str(tmp_path / "a"), "--overwrite"]) == 0


def test_published_sizes_map_to_their_presets():
    """A transformers config with HuBERT Base's sizes imports as ``hubert_base``; a 2-layer
    model does not pretend to be one."""
    from transformers import HubertConfig

    from speechssl.interop.hf import INTEROPS, _preset_for

    fam = INTEROPS["hubert"]
    name, _, _ = _preset_for("hubert", fam.config_from_hf(HubertConfig().to_dict(), {}), {})
    assert name == "hubert_base"
    small = HubertConfig(**SIZES).to_dict()
    name, cfg, exact = _preset_for("hubert", fam.config_from_hf(small, {}), {})
    assert name != "hubert_base" and cfg.encoder.num_layers == 2 and not exact


def test_import_then_export_with_card_and_dry_run(tmp_path, capsys):
    """The publishing round trip from the command line (continued pretraining in between
    is `speechssl-train model.init_from=DIR`): import -> export with a card -> dry-run push."""
    from huggingface_hub import ModelCard

    _saved("wav2vec2", tmp_path / "hf")
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    out = tmp_path / "export"
    args = ["export", "hf", str(tmp_path / "ours"), str(out), "--push", "me/w2v", "--dry-run",
            "--base-model", "someone/wav2vec2-small"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "would upload to me/w2v" in printed and "speechssl/heads.safetensors" in printed
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "someone/wav2vec2-small"
    assert "wav2vec2: 2 layers x 64, 4 heads, FFN 96" in card.text
    assert "AutoModelForPreTraining" in card.text  # the default export keeps the heads
