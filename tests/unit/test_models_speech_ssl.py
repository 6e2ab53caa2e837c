"""The speech families on the common core's joint-embedding and reconstruction objectives:
speaker embeddings by DINO / VICReg on two crops of an utterance, and SSAST (masked
spectrogram patches through the vision patch front end). Real audio from the bundled
(synthetic) corpus; training from the command line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_fixtures import load_synth, make_batch
from train_helpers import base_overrides, losses, run_train

from speechssl.data.batch import AudioBatch
from speechssl.frontends.vision import PatchFrontend
from speechssl.models import create_model
from speechssl.models.io import load_model_dir, save_model_dir
from speechssl.models.speech_ssl import random_crops

SPEECH_SSL = ["speaker_dino_tiny", "speaker_vicreg_tiny", "ssast_tiny"]


def test_random_crops_come_from_the_real_samples():
    waves = torch.arange(20.0).view(2, 10)
    waves[1, 6:] = -1.0  # padding of the second utterance
    crops, size = random_crops(waves, torch.tensor([10, 6]), 4, 3, torch.Generator().manual_seed(0))
    assert size == 4 and crops.shape == (6, 4)
    for v in range(3):
        for i, row in enumerate(crops.view(3, 2, 4)[v]):
            assert (row[1:] - row[:-1] == 1).all()  # contiguous samples
            assert (row >= 0).all() if i == 1 else True  # never the padding
    crops, size = random_crops(waves, torch.tensor([10, 6]), 100, 2, None)
    assert size == 6  # the shortest utterance bounds the crop


@pytest.mark.parametrize("name", SPEECH_SSL)
def test_speech_ssl_model_learns_on_real_audio(name, synth_corpus):
    torch.manual_seed(0)
    batch = make_batch(synth_corpus, 6, 1.5)
    model = create_model(name)

    def evaluate():
        model.train(name == "speaker_vicreg_tiny")  # VICReg's expander uses batch statistics
        with torch.no_grad():
            out = model(batch, generator=torch.Generator().manual_seed(123))
        model.train()
        return out

    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    before = evaluate()
    for step in range(12):
        out = model(batch)
        assert torch.isfinite(out.loss.total)
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()
        model.after_optimizer_step(step + 1)
    after = evaluate()
    if name == "speaker_dino_tiny":  # DINO's loss is not monotone early; the teacher moves
        assert int(model.teacher.num_updates) == 12
        assert float(model.objective.center.abs().sum()) > 0
    elif name == "speaker_vicreg_tiny":
        assert after.loss.total < 0.97 * before.loss.total
    else:
        assert after.loss.total < 0.8 * before.loss.total
        assert after.loss.terms["reconstruction"] < before.loss.terms["reconstruction"]
        assert after.metrics["mask_fraction"] == pytest.approx(0.5)


def test_ssast_reuses_the_vision_patch_front_end(synth_corpus):
    model = create_model("ssast_tiny").eval()
    assert isinstance(model.frontend, PatchFrontend)
    assert model.frontend.grid == (12, 5) and model.frame_rate == 12.5
    waves, lengths, _ = load_synth(synth_corpus, 2, 2.0)
    with torch.no_grad():
        ext = model.extract(waves, lengths)
    assert len(ext.hidden_states) == model.encoder.num_layers + 1
    steps = model.output_lengths(lengths)
    assert ext.hidden_states[-1].shape[1] >= int(steps.max())
    if ext.padding_mask is not None:
        assert (ext.padding_mask.sum(1) == ext.hidden_states[-1].shape[1] - steps).all()


@pytest.mark.parametrize("name", ["speaker_dino_tiny", "speaker_vicreg_tiny"])
def test_speaker_model_extract_padding_and_embeddings(name, synth_corpus):
    """50 Hz frames; an utterance's frames and embedding are the same alone or padded."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    waves, lengths, _ = load_synth(synth_corpus, 1, 1.5)
    t = waves.shape[1]
    both = torch.cat([torch.cat([waves, torch.randn(1, 4000)], 1), torch.randn(1, t + 4000)])
    both_lengths = torch.tensor([t, t + 4000])
    with torch.no_grad():
        alone = model.extract(waves, lengths)
        padded = model.extract(both, both_lengths)
        e1, e2 = model.embed(waves, lengths), model.embed(both, both_lengths)
    assert model.frame_rate == 50.0 and alone.frame_rate == 50.0
    s = alone.hidden_states[-1].shape[1]
    assert s == int(model.output_lengths(lengths)[0])
    assert torch.allclose(alone.hidden_states[-1][0], padded.hidden_states[-1][0, :s], atol=2e-5)
    assert torch.allclose(e1[0], e2[0], atol=2e-5)


@pytest.mark.parametrize("name", SPEECH_SSL)
def test_model_dir_roundtrip(name, synth_corpus, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    model.after_optimizer_step(3)
    loaded = load_model_dir(save_model_dir(model, tmp_path / "m"))
    assert loaded.config == model.config
    batch = make_batch(synth_corpus, 3, 1.5)
    model.eval(), loaded.eval()
    with torch.no_grad():
        a = model(batch, generator=torch.Generator().manual_seed(1)).loss.total
        b = loaded(batch, generator=torch.Generator().manual_seed(1)).loss.total
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name", ["speaker_vicreg_tiny", pytest.param("speaker_dino_tiny", marks=pytest.mark.slow),
             pytest.param("ssast_tiny", marks=pytest.mark.slow)],
)  # fmt: skip
def test_speech_ssl_trains_from_the_command_line(name, synth_corpus, tmp_path):
    exp = tmp_path / "exp"
    proc = run_train(
        [f"model={name}", f"data.dir={synth_corpus / 'train'}", *base_overrides(),
         "trainer.max_steps=3", f"trainer.exp_dir={exp}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    steps = losses(exp)
    assert sorted(steps) == [1, 2, 3] and all(np.isfinite(v) for v in steps.values())


def test_vicreg_speaker_model_on_a_batch_of_one_trains_invariance_only(synth_corpus):
    """One utterance has no batch statistics: the step is the invariance term alone, and the
    record and metrics say so (the pure VICReg function refuses such a batch)."""
    waves, lengths, ids = load_synth(synth_corpus, 1, 1.0)
    model = create_model("speaker_vicreg_tiny")
    out = model(AudioBatch(waves, lengths, utt_ids=ids))
    assert out.metrics["single_utterance_batch"] == 1
    assert out.loss.weights["variance"] == 0.0 and out.loss.terms["variance"] == 0.0
    assert torch.allclose(out.loss.total, 25.0 * out.loss.terms["invariance"])
    out.loss.total.backward()
    two = model(make_batch(synth_corpus, 2, 1.0))
    assert two.metrics["single_utterance_batch"] == 0 and two.loss.weights["variance"] == 25.0


@pytest.mark.slow  # 2 x 30 updates of the DINO speaker model (about 30 s on 2 shared cores)
def test_dino_speaker_head_batch_norm_keeps_the_teacher_from_collapsing(synth_corpus):
    """Regression: without BatchNorm in the DINO head the mean-pooled crops of different
    utterances give the same centred teacher distribution, which goes uniform
    (``teacher_entropy`` -> log K, per-item = batch entropy: nothing about the utterance is
    left to learn from). The preset's BatchNorm keeps the items apart."""
    waves, lengths, ids = load_synth(synth_corpus, 12, 2.0)
    batch = AudioBatch(waves, lengths, utt_ids=ids)
    log_k = math.log(create_model("speaker_dino_tiny").config.out_dim)
    result = {}
    for batch_norm in (True, False):
        torch.manual_seed(0)
        model = create_model("speaker_dino_tiny", head_batch_norm=batch_norm, crop_seconds=0.5)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        gen = torch.Generator().manual_seed(0)
        for step in range(1, 31):
            out = model.train()(batch, generator=gen)
            opt.zero_grad()
            out.loss.total.backward()
            opt.step()
            model.after_optimizer_step(step)
        m = out.metrics
        result[batch_norm] = (float(m["teacher_entropy"]), float(m["teacher_batch_entropy"]))
    assert create_model("speaker_dino_tiny").config.head_batch_norm  # the preset has it
    item, whole = result[True]
    assert item < log_k - 0.8 and whole - item > 0.3, result
    item, whole = result[False]
    assert item > log_k - 0.4 and whole - item < 0.2, result
