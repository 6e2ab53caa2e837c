"""Export of the speech SSL families of the common core.

SSAST -> ``transformers.ASTModel``: the export loads without missing or unexpected keys and
gives every hidden state of ours (<= 1e-4) on a bundled-corpus spectrogram segment, in AST's
frequency-major patch order; ``speechssl import hf`` restores the pretraining model exactly
(side directory) or, from a ``--bare`` export, the same encoder with learned positions. The
speaker-embedding families have no ``transformers`` class: ``speechssl export hf`` refuses
in one line, and what the line recommends (their model dir) loads and probes."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import load_synth
from transformers import ASTModel

from speechssl.cli.main import main
from speechssl.errors import ConfigError
from speechssl.interop.hf import export_to_transformers, import_transformers_dir
from speechssl.models import create_model
from speechssl.models.io import load_model_dir, save_model_dir

TOL = 1e-4


@pytest.fixture(scope="module")
def audio(synth_corpus):
    waves, lengths, _ = load_synth(synth_corpus, 2, 2.0)
    return waves, lengths


def _randomized(name: str, **overrides):
    """Every weight moved well away from its initialisation (a wrong mapping cannot hide
    behind near-zero CLS tokens or biases)."""
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _ours_vs_ast(model, hf, waves, lengths) -> list[float]:
    """Max abs difference per hidden state (and the last one) on the first segment."""
    spec, _ = model.spectrogram(waves, lengths)
    seg = spec[:, : model.config.segment_frames]
    gt, gf = model.frontend.grid
    with torch.no_grad():
        theirs = hf(seg, output_hidden_states=True)
        ours = model._encode(model.frontend(seg.unsqueeze(1)).frames.seqs, output_hidden_states=True)  # fmt: skip

    def time_major(h):  # AST: 2 leading tokens, then patches frequency-major
        n = h.shape[0]
        return h[:, 2:].reshape(n, gf, gt, -1).transpose(1, 2).reshape(n, gt * gf, -1)

    pairs = [*zip(ours.hidden_states, theirs.hidden_states, strict=True)]
    pairs.append((ours.last_hidden_state, theirs.last_hidden_state))
    return [float((a - time_major(b)).abs().max()) for a, b in pairs]


def test_ssast_exports_to_ast_model_with_hidden_state_parity(audio, tmp_path):
    waves, lengths = audio
    model = _randomized("ssast_tiny")
    out = export_to_transformers(model, tmp_path / "hf")
    hf, info = ASTModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    diffs = _ours_vs_ast(model, hf.eval(), waves, lengths)
    assert len(diffs) == model.config.encoder.num_layers + 2
    assert max(diffs) <= TOL, diffs
    # the heads and mask embedding travel beside, so pretraining resumes exactly
    back = import_transformers_dir(out)
    assert back.fresh == [] and back.model.config == model.config
    ours, theirs = model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_ssast_bare_export_imports_with_learned_positions(audio, tmp_path):
    waves, lengths = audio
    model = _randomized("ssast_tiny")
    bare = export_to_transformers(model, tmp_path / "bare", bare=True)
    assert not (bare / "speechssl").exists()
    back = import_transformers_dir(bare)
    assert back.model.config.position == "learned" and back.model.config.cls_tokens == 2
    assert sorted(back.fresh) == [
        "discrimination_head.bias", "discrimination_head.weight", "masker.mask_embedding",
        "reconstruction_head.bias", "reconstruction_head.weight",
    ]  # fmt: skip
    with torch.no_grad():
        a = model.extract(waves, lengths).hidden_states
        b = back.model.eval().extract(waves, lengths).hidden_states
    assert max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)) <= TOL
    # and the imported model exports to the same AST again
    again = ASTModel.from_pretrained(export_to_transformers(back.model, tmp_path / "again"))
    assert max(_ours_vs_ast(model, again.eval(), waves, lengths)) <= TOL


@pytest.mark.slow  # a one-step training run as a subprocess (about 20-30 s on 2 shared cores)
def test_ssast_export_refuses_what_ast_cannot_hold(synth_corpus, tmp_path):
    from train_helpers import base_overrides, run_train

    with pytest.raises(ConfigError, match=r"cls_tokens=0 .*\+model\.overrides\.cls_tokens=2"):
        export_to_transformers(create_model("ssast_tiny", cls_tokens=0), tmp_path / "x")
    # the recommended override exists: a run given it trains a model that exports
    exp = tmp_path / "exp"
    res = run_train(
        [*base_overrides(), "model=ssast_tiny", f"data.dir={synth_corpus / 'train'}",
         f"trainer.exp_dir={exp}", "trainer.max_steps=1", "trainer.export_final=true",
         "+model.overrides.cls_tokens=2"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    export_to_transformers(load_model_dir(exp / "final"), tmp_path / "y")


def test_ssast_export_and_import_from_the_command_line(tmp_path):
    torch.manual_seed(0)
    src = save_model_dir(create_model("ssast_tiny"), tmp_path / "md")
    assert main(["export", "hf", str(src), str(tmp_path / "hf")]) == 0
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    a, b = load_model_dir(src).state_dict(), load_model_dir(tmp_path / "back").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["speaker_dino_tiny", "speaker_vicreg_tiny"])
def test_speaker_families_refuse_hf_export_and_the_model_dir_works(name, audio, tmp_path, capsys):
    from speechssl.downstream.upstreams import load_upstream

    waves, lengths = audio
    torch.manual_seed(0)
    src = save_model_dir(create_model(name), tmp_path / "md")
    capsys.readouterr()
    assert main(["export", "hf", str(src), str(tmp_path / "hf")]) == 1
    assert not (tmp_path / "hf").exists()
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    family = name.removesuffix("_tiny")
    assert f"{family}: no transformers class" in lines[0]
    assert "speechssl-probe upstream=DIR" in lines[0] and "load_model_dir(DIR)" in lines[0]
    # the recommended options: the model dir as a probing upstream and through load_model_dir
    up = load_upstream(str(src))
    out = up(waves, lengths)
    assert len(out.hidden_states) == up.num_layers == 3
    with torch.no_grad():
        ref = load_model_dir(src).eval().extract(waves, lengths).hidden_states
    assert torch.allclose(out.hidden_states[-1][0, : int(out.frames[0])], ref[-1][0, : int(out.frames[0])], atol=1e-5)  # fmt: skip
