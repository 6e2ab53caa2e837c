"""DistilHuBERT: the target-layer rule, the per-layer loss, student initialisation from a
teacher, `speechssl-train model=distilhubert_tiny model.teacher=DIR` as a real subprocess on
bundled-corpus audio (synthetic speech), its refusals, and the export as a 2-layer
``HubertModel`` (hidden-state parity) plus the heads in the side directory."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import load_synth
from train_helpers import base_overrides, records, run_train
from transformers import AutoModel

from speechssl.data.batch import AudioBatch
from speechssl.errors import ConfigError
from speechssl.interop.hf import export_to_transformers, import_from_transformers
from speechssl.models import create_model
from speechssl.models.distilhubert import (
    default_target_layers,
    distillation_loss,
    init_student_from_teacher,
    student_overrides,
)
from speechssl.models.io import load_model_dir, save_model_dir

ATOL = 1e-4


def _teacher(num_layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "hubert_tiny", encoder={"num_layers": num_layers}, extractor={"mode": "layer_norm"}
    ).eval()


def _student(teacher: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    student = create_model("distilhubert_tiny", **student_overrides(teacher))
    init_student_from_teacher(student, teacher)  # type: ignore[arg-type]
    return student


def test_target_layers_rule():
    assert default_target_layers(12) == (4, 8, 12)  # the paper's
    assert default_target_layers(24) == (8, 16, 24)
    assert default_target_layers(3) == (1, 2, 3)
    assert default_target_layers(2) == (1, 2)
    assert default_target_layers(1) == (1,)
    assert create_model("distilhubert_base").config.target_layers == (4, 8, 12)
    with pytest.raises(ConfigError, match="target_layers"):
        create_model("distilhubert_tiny", target_layers=(1, 3))  # a 2-layer teacher


def test_loss_terms_by_hand():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    total, l1, cos_term, cos_sim = distillation_loss(pred, target, pad, cos_weight=0.5)
    keep = ~pad
    want_l1 = (pred - target).abs()[keep].mean()
    cos = F.cosine_similarity(pred, target, dim=-1)[keep]
    want_cos = -F.logsigmoid(cos).mean()
    assert torch.allclose(l1, want_l1) and torch.allclose(cos_term, want_cos)
    assert torch.allclose(total, want_l1 + 0.5 * want_cos)
    assert torch.allclose(cos_sim, cos.mean())
    # padding frames do not count: changing them changes nothing
    pred2 = pred.clone()
    pred2[1, 3:] += 100.0
    assert torch.equal(
        distillation_loss(pred2, target, pad)[0], distillation_loss(pred, target, pad)[0]
    )
    # a perfect prediction leaves only -log sigmoid(1) of the cosine term
    assert torch.allclose(
        distillation_loss(target, target, pad)[0], -F.logsigmoid(torch.tensor(1.0))
    )


def test_student_starts_from_teacher_and_loss_goes_down(synth_corpus):
    teacher = _teacher(3)
    student = _student(teacher)
    assert student.config.target_layers == (1, 2, 3)
    assert student.config.encoder.num_layers == 2
    s, t = student.state_dict(), teacher.state_dict()
    for name in (
        "frontend.projection.weight",
        "encoder.pos_conv.conv.bias",
        "encoder.layers.1.ffn.fc1.weight",
    ):
        assert name in s and torch.equal(s[name], t[name]), name
    assert not any(k.startswith("encoder.layers.2.") for k in s)
    assert not any("teacher" in k for k in s)  # the teacher is never part of the student
    student.attach_teacher(teacher)
    waves, lengths, _ = load_synth(synth_corpus, 2, 1.0)
    batch = AudioBatch(waves, lengths)
    student.train()
    assert not teacher.training
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    first = None
    for _ in range(8):
        out = student(batch)
        assert set(out.loss.terms) == {f"{k}_{i}" for k in ("l1", "cos") for i in (1, 2, 3)}
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()
        first = first if first is not None else float(out.loss.total.detach())
    assert all(p.grad is None for p in teacher.parameters())
    assert float(out.loss.total) < 0.8 * first, (first, float(out.loss.total))


def test_teacher_must_match(synth_corpus):
    teacher = _teacher(3)
    student = create_model("distilhubert_tiny")  # built for a 2-layer teacher
    with pytest.raises(ConfigError, match="3 layers of 128"):
        student.attach_teacher(teacher)
    with pytest.raises(ConfigError, match="waveform transformer"):
        student_overrides(create_model("wavlm_tiny"))
    waves, lengths, _ = load_synth(synth_corpus, 1, 1.0)
    with pytest.raises(ConfigError, match="no teacher attached"):
        student(AudioBatch(waves, lengths))


def test_export_as_two_layer_hubert_with_parity(synth_corpus, tmp_path):
    teacher = _teacher(3)
    student = _student(teacher).eval()
    with torch.no_grad():  # heads and layers away from their copies
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    waves, lengths, _ = load_synth(synth_corpus, 3, 2.0)
    assert int(lengths.min()) < waves.shape[1]
    path = export_to_transformers(student, tmp_path / "bare", bare=True)
    hf, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert type(hf).__name__ == "HubertModel" and hf.config.num_hidden_layers == 2
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    mask = (torch.arange(waves.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        ours = student.extract(waves, lengths)
        theirs = hf(waves, attention_mask=mask, output_hidden_states=True)
    real = ~ours.padding_mask
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    worst = max(
        (a - b).abs()[real].max().item()
        for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True)
    )
    assert worst <= ATOL, worst
    # the default export keeps the heads in the side directory and restores the student
    full = export_to_transformers(student, tmp_path / "full")
    desc = json.loads((full / "speechssl" / "model.json").read_text())
    assert desc["family"] == "distilhubert"
    back = import_from_transformers(full)
    assert back.family == "distilhubert" and back.config == student.config
    a, b = student.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("heads.") for k in a)


def test_train_distils_a_teacher_dir(synth_corpus, tmp_path):
    teacher_dir = save_model_dir(_teacher(3), tmp_path / "teacher")
    exp = tmp_path / "exp"
    common = [
        "model=distilhubert_tiny",
        f"data.dir={synth_corpus / 'train'}",
        *base_overrides(),
        "trainer.max_steps=3",
        "trainer.save_every=3",
    ]
    res = run_train(
        [
            *common,
            f"model.teacher={teacher_dir}",
            f"trainer.exp_dir={exp}",
            "trainer.export_final=true",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    last = records(exp, "train")[-1]
    for i in (1, 2, 3):
        assert f"loss/l1_{i}" in last and f"loss/cos_{i}" in last and f"cos_sim_{i}" in last
    student = load_model_dir(exp / "final")  # loads without the teacher
    assert student.family == "distilhubert" and student.config.encoder.num_layers == 2
    assert student.config.teacher_layers == 3
    info = json.loads((exp / "final" / "model.json").read_text())["extra"]["training"]
    assert info["teacher"] == str(teacher_dir)

    # refusals: one line, exit 1, no traceback
    for extra, msg in (
        ([], "give model.teacher=DIR"),
        ([f"model.teacher={tmp_path / 'nowhere'}"], "not a model directory"),
    ):
        res = run_train([*common, *extra, f"trainer.exp_dir={tmp_path / 'bad'}"], cwd=tmp_path)
        assert res.returncode == 1 and msg in res.stderr, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
    res = run_train(
        [
            "model=hubert_tiny",
            f"model.teacher={teacher_dir}",
            *common[1:],
            f"trainer.exp_dir={tmp_path / 'bad'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 1 and "model.teacher is for distillation models" in res.stderr


def test_synth_recipe_distils_a_teacher(synth_corpus, tmp_path):
    """egs/synth/distilhubert/run.sh shortened to 4 updates on the bundled (synthetic)
    corpus, distilling a teacher model dir written here; its default teacher is the main
    job's iteration-2 model, and recipes/distilhubert.sh without one is refused."""
    from test_recipes_synth import EGS, TRAIN_ARGS, run

    teacher_dir = save_model_dir(_teacher(3), tmp_path / "teacher")
    exp = tmp_path / "exp"
    res = run(
        ["bash", str(EGS / "distilhubert" / "run.sh"), "--data-root", str(synth_corpus),
         "--stage", "2", "--stop-stage", "4", "--exp-dir", str(exp), "--steps", "4",
         "--teacher", str(teacher_dir), "--train-args", TRAIN_ARGS],
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((exp / "summary" / "results.json").read_text())
    assert results["train"][0]["step"] == 4
    assert results["train"][0]["model"] == "distilhubert_tiny"
    student = load_model_dir(exp / "train" / "final")
    assert student.config.teacher_layers == 3 and student.config.target_layers == (1, 2, 3)
    # the default teacher: egs/synth/hubert's iteration-2 model
    res = run(
        ["bash", str(EGS / "distilhubert" / "run.sh"), "--dry-run", "true", "--stage", "3",
         "--stop-stage", "3", "--exp-dir", str(tmp_path / "dry")],
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "model.teacher=../hubert/exp/hubert/iter2/train/final" in res.stdout
    res = run(
        ["bash", str(EGS.parents[1] / "recipes" / "distilhubert.sh"), "--dry-run", "true",
         "--exp-dir", str(tmp_path / "dry2")],
    )  # fmt: skip
    assert res.returncode == 1 and "give --teacher DIR" in res.stderr


@pytest.mark.slow  # about 55 s on the shared 2-core machine (four short trainings)
def test_teacher_targets_from_a_layer_cache(synth_corpus, tmp_path):
    """model.teacher_cache: the teacher's layers cached once (`speechssl probe cache`) give
    the same first loss as running the teacher (whole utterances, float16 cache); random
    crops read the cache at frame-aligned offsets; another upstream's cache is refused."""
    from train_helpers import losses

    from speechssl.downstream.cache import cache_layers
    from speechssl.downstream.upstreams import load_upstream

    teacher_dir = save_model_dir(_teacher(3), tmp_path / "teacher")
    data = synth_corpus / "train"
    cache = tmp_path / "cache"
    cache_layers(data, cache, load_upstream(str(teacher_dir)))  # `speechssl probe cache`
    common = [
        "model=distilhubert_tiny",
        f"model.teacher={teacher_dir}",
        f"data.dir={data}",
        *base_overrides(),
        "trainer.max_steps=2",
    ]
    whole = ["data.crop_mode=pad", "data.crop_seconds=4.5", "data.max_seconds=4.5"]
    runs = {}
    for name, extra in (("live", whole), ("cached", [*whole, f"model.teacher_cache={cache}"])):
        exp = tmp_path / name
        res = run_train([*common, *extra, f"trainer.exp_dir={exp}"], cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[name] = losses(exp)
    print("first losses, live teacher vs cached layers:", runs["live"][1], runs["cached"][1])
    assert runs["live"][1] == pytest.approx(runs["cached"][1], rel=2e-3), runs
    # random crops of the default batching read the cache at their offsets
    res = run_train(
        [*common, f"model.teacher_cache={cache}", f"trainer.exp_dir={tmp_path / 'crops'}"],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # a cache of other weights is refused, naming both
    other = save_model_dir(_teacher(3).requires_grad_(False).apply(_shift), tmp_path / "other")
    res = run_train(
        [*common, f"model.teacher={other}", f"model.teacher_cache={cache}",
         f"trainer.exp_dir={tmp_path / 'bad'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1 and "layer cache of another upstream" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_train(
        [
            *common[:1],
            f"model.teacher_cache={cache}",
            *common[2:],
            f"trainer.exp_dir={tmp_path / 'b2'}",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 1 and "model.teacher_cache needs model.teacher" in res.stderr


def _shift(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Linear):
        module.weight.data.add_(0.01)
