"""`speechssl-train model.init_from=DIR`: continue pretraining from a model dir (a fairseq
import, then an earlier run's ``final/``) on the bundled corpus (synthetic speech), from
the command line."""

from __future__ import annotations

import json

import pytest
import torch
from fairseq_fixtures import fairseq_arch, fairseq_state, write_fairseq_checkpoint
from safetensors.torch import load_file
from train_helpers import base_overrides, run_train

from speechssl.cli.main import main


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> object:
    """A fairseq HuBERT (2 layers of 48, k=5 label embeddings) imported as a model dir."""
    root = tmp_path_factory.mktemp("init_from")
    torch.manual_seed(0)
    arch = fairseq_arch(encoder_layerdrop=0.0)
    write_fairseq_checkpoint(root / "hubert.pt", "hubert", arch, fairseq_state("hubert", arch, 9))
    assert main(["import", "fairseq", str(root / "hubert.pt"), str(root / "model")]) == 0
    return root / "model"


def _overrides(synth_corpus, labels, exp) -> list[str]:
    return [
        *base_overrides(),
        f"data.dir={synth_corpus / 'train'}",
        f"data.labels=[{labels}]",
        f"trainer.exp_dir={exp}",
        "trainer.max_steps=2",
        "trainer.export_final=true",
    ]


@pytest.fixture(scope="module")
def continued(imported, synth_corpus, synth_km_labels, tmp_path_factory):
    """A 2-step run started from the import with no model= preset (lr 1e-7)."""
    cwd = tmp_path_factory.mktemp("continued")
    exp = cwd / "exp1"
    res = run_train(
        [*_overrides(synth_corpus, synth_km_labels["train"], exp), f"model.init_from={imported}",
         "optim.lr=1e-7", "optim.weight_decay=0.0"],
        cwd=cwd,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return exp, res.stdout + res.stderr


def test_continue_from_an_import(imported, continued):
    exp, log = continued
    # k=5 label embeddings in the import, k=20 labels here: re-created, and the log says so
    assert "initialised fresh: head.label_embeddings" in log
    desc = json.loads((exp / "final" / "model.json").read_text())
    assert desc["name"] == "hubert"  # the architecture is the import's (2 layers of 48)
    assert desc["config"]["encoder"]["num_layers"] == 2
    assert desc["config"]["encoder"]["dim"] == 48
    assert desc["config"]["num_classes"] == [20]
    assert desc["extra"]["training"]["init_from"] == str(imported)
    before = load_file(str(imported / "model.safetensors"))
    after = load_file(str(exp / "final" / "model.safetensors"))
    # lr 1e-7 (Adam moves each weight by <= ~2e-7 in 2 steps): the loaded tensors are the
    # import's, a fresh initialisation would be O(1) away
    for name in (
        "encoder.layers.1.ffn.fc2.weight",
        "frontend.projection.weight",
        "masker.mask_embedding",
    ):
        assert torch.allclose(before[name], after[name], atol=1e-5), name
    assert after["head.label_embeddings"].shape == (20, 24)


def test_new_run_from_an_earlier_final(continued, synth_corpus, synth_km_labels, tmp_path):
    exp, _ = continued
    exp2 = tmp_path / "exp2"
    res = run_train(
        [*_overrides(synth_corpus, synth_km_labels["train"], exp2),
         f"model.init_from={exp / 'final'}", "+model.overrides.mask.mask_prob=0.5"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "initialised fresh: none" in res.stdout + res.stderr  # same labels: all fits
    desc2 = json.loads((exp2 / "final" / "model.json").read_text())
    assert desc2["config"]["mask"]["mask_prob"] == 0.5
    assert desc2["config"]["encoder"]["num_layers"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model=wav2vec2_tiny"], "model=wav2vec2_tiny conflicts with model.init_from"),
        (
            ["+model.overrides.encoder.num_layers=3"],
            "model.overrides.encoder.num_layers=3 conflicts",
        ),
        (["model.init_from=/nonexistent/model"], "not a model directory"),
        (["resume={imported}"], "a model dir (weights only"),
    ],
    ids=["preset", "architecture", "missing", "resume-a-model-dir"],
)
def test_conflicts_are_refused(imported, synth_corpus, synth_km_labels, tmp_path, extra, message):
    over = [*_overrides(synth_corpus, synth_km_labels["train"], tmp_path / "exp")]
    over.append(f"model.init_from={imported}")
    extra = [e.format(imported=imported) for e in extra]
    res = run_train([*over, *extra], cwd=tmp_path)
    assert res.returncode == 1
    assert message in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "exp" / "final").exists()


def test_wav2vec2_continues_from_a_fairseq2_import(synth_corpus, tmp_path):
    """A label-free family: the quantizer and projections come from the import too."""
    from fairseq_fixtures import fairseq2_wav2vec2_state

    torch.manual_seed(4)
    arch = fairseq_arch(encoder_layerdrop=0.0)
    state = fairseq2_wav2vec2_state(fairseq_state("wav2vec2", arch), pre_ln=False)
    torch.save({"model": state}, tmp_path / "w2v2.pt")
    model_dir = tmp_path / "model"
    assert (
        main(["import", "fairseq2", str(tmp_path / "w2v2.pt"), str(model_dir), "--num-heads", "4"])
        == 0
    )
    exp = tmp_path / "exp"
    over = [o for o in _overrides(synth_corpus, "", exp) if not o.startswith("data.labels")]
    res = run_train([*over, f"model.init_from={model_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "initialised fresh: none" in res.stdout + res.stderr
    desc = json.loads((exp / "final" / "model.json").read_text())
    assert desc["name"] == "wav2vec2" and desc["config"]["codebook_vars"] == 16
