"""Every registered model, parametrised over the registry (a new preset is tested
automatically): configs, shapes, learning on real audio, save/load, labels."""

import ast
import dataclasses
import inspect
import itertools
import textwrap

import pytest
import torch
from model_fixtures import make_batch

from speechssl.core.masking import SpanMaskConfig
from speechssl.data.batch import AudioBatch
from speechssl.errors import CheckpointError, ConfigError, LabelError
from speechssl.models import create_model, get_spec, list_models, model_config
from speechssl.models.hubert import align_labels
from speechssl.models.io import load_model_dir, save_model_dir

ALL = list_models()
# the tests below feed waveforms; image models have their own (tests/unit/test_models_vision.py)
AUDIO = list_models("audio")
TINY = [n for n in AUDIO if get_spec(n).size == "tiny"]
# speaker embeddings (two crops) and SSAST (80 ms patches) have their own frame-rate and
# learning checks in tests/unit/test_models_speech_ssl.py
# DistilHuBERT (no masking, targets from a teacher) learns in tests/integration/test_distilhubert.py
MASKED_TINY = [n for n in TINY if get_spec(n).family not in ("speaker_dino", "speaker_vicreg", "ssast", "distilhubert")]  # fmt: skip


def _is_heavy(name: str) -> bool:
    # ~1 GB or more (large presets, w2v-BERT 2.0's 600M base) and seconds to initialise
    return get_spec(name).size == "large" or model_config(name).encoder.dim >= 1024


BIG = [
    pytest.param(n, marks=pytest.mark.slow) if _is_heavy(n) else n
    for n in AUDIO
    if get_spec(n).size not in ("tiny", "")
]


def _adapt(name: str, codebook: int) -> dict:
    """Overrides that make a preset accept the test batch's single label stream."""
    cfg = model_config(name)
    return {"num_classes": (codebook,)} if hasattr(cfg, "num_classes") else {}


@pytest.fixture(scope="module")
def corpus(synth_corpus):
    return synth_corpus


def _config_classes(obj, seen=None):
    seen = set() if seen is None else seen
    if type(obj) in seen:
        return seen
    seen.add(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _config_classes(value, seen)
    return seen


def _field_docstrings(cls) -> set[str]:
    """Names of the fields of dataclass ``cls`` followed by a string literal (in ``cls`` or
    in the dataclass it extends, where an inherited field is documented)."""
    out = set()
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            out |= _field_docstrings(base)
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out.add(node.target.id)
    return out


@pytest.mark.parametrize("name", ALL)
def test_config_is_kw_only_dataclass_with_field_docs(name):
    cfg = model_config(name)
    for cls in _config_classes(cfg):
        params = dataclasses.fields(cls)
        assert all(p.kw_only for p in params), f"{cls.__name__} must be kw_only"
        missing = {p.name for p in params} - _field_docstrings(cls)
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_published_hyperparameters():
    hb, hl = model_config("hubert_base"), model_config("hubert_large")
    wb, wl = model_config("wav2vec2_base"), model_config("wav2vec2_large")
    layout = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    for c in (hb, hl, wb, wl):
        assert c.extractor.conv_layers == layout
        assert c.encoder.pos_conv_kernel == 128 and c.encoder.pos_conv_groups == 16
        assert c.mask.mask_length == 10 and c.logit_temp == 0.1
    for base, large in ((hb, hl), (wb, wl)):
        assert base.extractor.mode == "group_norm" and large.extractor.mode == "layer_norm"
        assert (
            base.encoder.dim,
            base.encoder.num_layers,
            base.encoder.num_heads,
            base.encoder.ffn_dim,
        ) == (768, 12, 12, 3072)
        assert (
            large.encoder.dim,
            large.encoder.num_layers,
            large.encoder.num_heads,
            large.encoder.ffn_dim,
        ) == (1024, 24, 16, 4096)
        assert not base.encoder.layer_norm_first and large.encoder.layer_norm_first
        assert base.extractor.feature_grad_mult == 0.1 and large.extractor.feature_grad_mult == 1.0
        assert base.final_dim == 256 and large.final_dim == 768
        assert base.encoder.dropout == 0.1 and base.encoder.attention_dropout == 0.1
        assert base.encoder.layer_drop == 0.05 and large.encoder.layer_drop == 0.0
    assert hb.mask.mask_prob == 0.8 and wb.mask.mask_prob == 0.65
    assert hb.feature_penalty_weight == 10.0 and wb.feature_penalty_weight == 10.0
    assert (wb.codebook_groups, wb.codebook_vars) == (2, 320)
    assert wb.gumbel_temp == (2.0, 0.5, 0.999995) and wl.gumbel_temp == (2.0, 0.1, 0.999995)
    assert wb.num_negatives == 100 and wb.diversity_weight == 0.1
    assert wl.extractor.conv_bias and not wb.extractor.conv_bias


@pytest.mark.parametrize("name", MASKED_TINY)
def test_tiny_keeps_20ms_frames(name):
    model = create_model(name)
    assert model.frame_rate == 50.0
    lengths = torch.tensor([16000, 32000])
    assert model.output_lengths(lengths).tolist() == [49, 99]


def _train(model, batch, steps: int, lr: float = 2e-3):
    """``steps`` Adam steps; returns the losses/metrics measured with a fixed mask before and
    after (evaluation mode), and the last training output."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(batch, generator=torch.Generator().manual_seed(123))
        model.train()
        return out

    before = evaluate()
    for step in range(steps):
        out = model(batch)
        assert torch.isfinite(out.loss.total)
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()
        model.after_optimizer_step(step + 1)
    return before, evaluate(), out


@pytest.mark.parametrize("name", MASKED_TINY)
def test_tiny_model_learns_on_real_audio(name, corpus):
    """A few Adam steps on bundled-corpus audio lower the loss measured with a fixed mask.

    HuBERT: the masked-prediction term falls and masked accuracy rises. wav2vec 2.0 and
    w2v-BERT (a few steps are too few for the contrastive term itself; see the slow test
    below): the diversity term falls and the code perplexity stays at least a quarter of the
    codebook (16 of 2 x 32 codes for wav2vec 2.0, of 1 x 64 for w2v-BERT): a collapsed
    quantizer sits at G (one code per group), and the ~170 masked frames of this batch could
    support far more than 16. data2vec: the EMA teacher moved with the student (beating a
    constant prediction takes longer: tests/unit/test_models_families.py).
    """
    torch.manual_seed(0)
    batch = make_batch(corpus, 3, 1.2, codebook_size=32)
    model = create_model(name, **_adapt(name, 32))
    teacher_before = (
        {k: v.clone() for k, v in model.teacher.state_dict().items()}
        if hasattr(model, "teacher")
        else None
    )
    before, after, last = _train(model, batch, 8)
    assert after.loss.total < 0.8 * before.loss.total
    for key in after.loss.terms:
        assert torch.isfinite(after.loss.terms[key])
    if "code_perplexity" in after.metrics:
        codes = model.quantizer.num_codes
        assert after.loss.terms["diversity"] < before.loss.terms["diversity"]
        assert after.metrics["code_perplexity"] >= codes / 4
        assert last.metrics["code_perplexity"] >= codes / 4
        assert after.metrics["temperature"] < before.metrics["temperature"]
    elif teacher_before is not None:
        moved = [
            k
            for k, v in model.teacher.state_dict().items()
            if not torch.equal(v, teacher_before[k])
        ]
        assert int(model.teacher.num_updates) == 8 and len(moved) > 10
    else:
        # HuBERT/WavLM name the term by label stream; BEST-RQ's targets are its own
        term = "rpq/masked" if "rpq/masked" in after.loss.terms else "masked"
        assert after.loss.terms[term] < 0.8 * before.loss.terms[term]
        assert after.metrics["acc_masked"] > before.metrics["acc_masked"] + 0.1


@pytest.mark.slow
def test_wav2vec2_tiny_contrastive_term_learns(corpus):
    """40 steps: the InfoNCE term itself falls and accuracy among 21 candidates rises, while
    the code perplexity stays >= 8 of 64 (4x the collapsed value G = 2; it drifts down as the
    contrastive task is fitted, the known tension the diversity loss counters)."""
    torch.manual_seed(0)
    batch = make_batch(corpus, 3, 1.0, codebook_size=32)
    model = create_model("wav2vec2_tiny")
    before, after, last = _train(model, batch, 40)
    assert after.loss.terms["contrastive"] < 0.85 * before.loss.terms["contrastive"]
    assert after.metrics["acc_masked"] > before.metrics["acc_masked"] + 0.15
    assert after.metrics["code_perplexity"] >= 8 and last.metrics["code_perplexity"] >= 8


@pytest.mark.parametrize("name", BIG)
def test_big_presets_shapes(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    cfg = model.config
    waves = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6000])
    with torch.no_grad():
        ext = model.extract(waves, lengths)
    assert len(ext.hidden_states) == cfg.encoder.num_layers + 1
    assert ext.hidden_states[-1].shape == (2, 24, cfg.encoder.dim)
    assert ext.padding_mask is not None and ext.padding_mask.sum(1).tolist() == [0, 6]
    assert ext.last_hidden_state is not None and ext.frame_rate == 50.0


@pytest.mark.parametrize("name", TINY)
def test_padding_does_not_change_an_utterance(name, corpus):
    """An utterance's hidden states and (fixed-mask) logits are the same alone or padded in a
    batch with arbitrary padding content."""
    torch.manual_seed(0)
    model = create_model(name, **_adapt(name, 32)).eval()
    batch = make_batch(corpus, 1, 1.5, codebook_size=32)
    t = batch.waveforms.shape[1]
    padded_w = torch.cat([batch.waveforms, torch.randn(1, 4000)], dim=1)
    other = torch.randn(1, t + 4000)
    waves = torch.cat([padded_w, other])
    lengths = torch.tensor([t, t + 4000])
    with torch.no_grad():
        alone = model.extract(batch.waveforms, batch.lengths)
        both = model.extract(waves, lengths)
    s = alone.hidden_states[0].shape[1]
    for a, b in zip(alone.hidden_states, both.hidden_states, strict=True):
        assert torch.allclose(a[0], b[0, :s], atol=2e-5)
    if hasattr(model, "logits"):
        mask = torch.zeros(2, both.hidden_states[0].shape[1], dtype=torch.bool)
        mask[:, 10:30] = True
        with torch.no_grad():
            la, _ = model.logits(batch.waveforms, batch.lengths, mask[:1, :s])
            lb, _ = model.logits(waves, lengths, mask)
        assert torch.allclose(la[0][0], lb[0][0, :s], atol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_save_and_load_model_dir(name, tmp_path, corpus):
    torch.manual_seed(0)
    model = create_model(name, **{"encoder.num_layers": 3, **_adapt(name, 32)})
    model.after_optimizer_step(1000)
    path = save_model_dir(model, tmp_path / "m", extra={"kmeans": "km100"})
    loaded = load_model_dir(path)
    assert loaded.model_name == name and loaded.config == model.config
    assert loaded.encoder.num_layers == 3
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    if hasattr(loaded, "quantizer"):
        assert loaded.quantizer.current_temp == model.quantizer.current_temp < 2.0
    batch = make_batch(corpus, 2, 1.5, codebook_size=32)
    model.eval(), loaded.eval()
    distil = get_spec(name).family == "distilhubert"
    if distil:  # targets from a teacher, no mask to draw
        teacher = create_model("hubert_tiny", num_classes=(32,))
        model.attach_teacher(teacher), loaded.attach_teacher(teacher)

    def kwargs() -> dict:
        return {} if distil else {"generator": torch.Generator().manual_seed(1)}

    with torch.no_grad():
        a = model(batch, **kwargs()).loss.total
        b = loaded(batch, **kwargs()).loss.total
    assert torch.equal(a, b)
    with pytest.raises(CheckpointError):
        save_model_dir(model, path)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        load_model_dir(path)
    with pytest.raises(CheckpointError):
        load_model_dir(tmp_path / "nowhere")


def test_overrides_nested_dotted_and_unknown():
    a = model_config("hubert_tiny", **{"encoder.num_layers": 3, "mask.mask_prob": 0.5})
    b = model_config("hubert_tiny", encoder={"num_layers": 3}, mask={"mask_prob": 0.5})
    assert a == b and a.encoder.num_layers == 3 and a.mask.mask_prob == 0.5
    c = model_config("hubert_tiny", mask=SpanMaskConfig(mask_prob=0.3))
    assert c.mask.mask_prob == 0.3
    with pytest.raises(ConfigError, match="num_layerz"):
        model_config("hubert_tiny", **{"encoder.num_layerz": 3})
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("hubert_gigantic")
    with pytest.raises(ConfigError):
        model_config("hubert_tiny", extractor={"mode": "batch_norm"})


def test_label_rate_rule():
    labels = torch.arange(10).unsqueeze(0)  # 100 Hz: 10 labels = 100 ms
    assert align_labels(labels, 100.0, 50.0, 5).tolist() == [[0, 2, 4, 6, 8]]
    assert align_labels(labels, 50.0, 50.0, 12).tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -100, -100]
    ]
    assert align_labels(labels, 25.0, 50.0, 4).tolist() == [[0, 0, 1, 1]]


def test_hubert_100hz_labels_train_every_second_label(corpus):
    """With 100 Hz labels the loss uses labels 0, 2, 4, ...: changing odd labels changes
    nothing, changing even ones does."""
    torch.manual_seed(0)
    model = create_model("hubert_tiny", num_classes=(32,)).eval()
    batch = make_batch(corpus, 2, 1.5, codebook_size=32)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with torch.no_grad():
        ref = model(batch, generator=gen()).loss.total
        odd = batch.labels["rpq"].clone()
        odd[:, 1::2] = torch.where(odd[:, 1::2] >= 0, (odd[:, 1::2] + 1) % 32, odd[:, 1::2])
        b2 = AudioBatch(batch.waveforms, batch.lengths, {"rpq": odd}, {"rpq": 100.0}, batch.utt_ids)
        assert torch.equal(model(b2, generator=gen()).loss.total, ref)
        even = batch.labels["rpq"].clone()
        even[:, 0::2] = torch.where(even[:, 0::2] >= 0, (even[:, 0::2] + 1) % 32, even[:, 0::2])
        b3 = AudioBatch(
            batch.waveforms, batch.lengths, {"rpq": even}, {"rpq": 100.0}, batch.utt_ids
        )
        assert not torch.equal(model(b3, generator=gen()).loss.total, ref)


def test_hubert_label_errors_name_the_utterance(corpus):
    model = create_model("hubert_tiny", num_classes=(32,))
    batch = make_batch(corpus, 2, 1.5, codebook_size=32)
    wrong_rate = AudioBatch(
        batch.waveforms, batch.lengths, batch.labels, {"rpq": 50.0}, batch.utt_ids
    )
    with pytest.raises(LabelError, match=batch.utt_ids[0]):
        model(wrong_rate)
    short = batch.labels["rpq"].clone()
    short[1, 40:] = -100
    with pytest.raises(LabelError, match=batch.utt_ids[1]):
        model(
            AudioBatch(
                batch.waveforms, batch.lengths, {"rpq": short}, {"rpq": 100.0}, batch.utt_ids
            )
        )
    big = batch.labels["rpq"].clone()
    big[1, 3] = 40
    with pytest.raises(LabelError, match="outside"):
        model(
            AudioBatch(batch.waveforms, batch.lengths, {"rpq": big}, {"rpq": 100.0}, batch.utt_ids)
        )
    with pytest.raises(ConfigError, match="label stream"):
        model(AudioBatch(batch.waveforms, batch.lengths, {}, {}, batch.utt_ids))


def test_hubert_two_label_streams(corpus):
    torch.manual_seed(0)
    batch = make_batch(corpus, 2, 1.5, codebook_size=32)
    lab50 = batch.labels["rpq"][:, ::2]
    km50 = torch.where(lab50 >= 0, lab50 % 8, lab50)
    two = AudioBatch(
        batch.waveforms,
        batch.lengths,
        {"a100": batch.labels["rpq"], "b50": km50},
        {"a100": 100.0, "b50": 50.0},
        batch.utt_ids,
    )
    model = create_model("hubert_tiny", num_classes=(32, 8), label_streams=("a100", "b50"))
    out = model(two)
    assert {"a100/masked", "b50/masked", "feature_penalty"} <= set(out.loss.terms)
    assert {"acc_masked/a100", "acc_masked/b50", "acc_masked"} <= set(out.metrics)
    out.loss.total.backward()
    assert model.head.label_embeddings.grad is not None
