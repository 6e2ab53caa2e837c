"""Every registered image model, parametrised over the registry: learning on real images
(scikit-learn's digits), extract, save/load; patch units from ``speechssl.units`` k-means;
label errors naming the image."""

import numpy as np
import pytest
import torch

from speechssl.data.images import ImageBatch, ImageError, digits_images
from speechssl.errors import ConfigError, LabelError
from speechssl.features.store import FeatureStore
from speechssl.frontends.vision import patchify, unpatchify
from speechssl.models import create_model, get_spec, list_models
from speechssl.models.io import load_model_dir, save_model_dir
from speechssl.units.kmeans import KMeansConfig, fit_kmeans
from speechssl.units.patches import patch_unit_labels, write_patch_store

IMAGE = list_models("image")
# models that replace masked patches by a mask embedding (the encoder sees every position)
MASK_EMBEDDING = [n for n in IMAGE if get_spec(n).family in ("data2vec_vision", "hubert_vision")]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """``(images [1797, 1, 8, 8], classes, units [1797, 16])``: 32 k-means units of the raw
    2x2 patches of the first 500 images (through a feature store, as for speech frames)."""
    images, classes = digits_images()
    store = tmp_path_factory.mktemp("patches") / "store"
    write_patch_store(store, images[:500], [f"digit{i:04d}" for i in range(500)], patch_size=2)
    kmeans = fit_kmeans(store, KMeansConfig(k=32, seed=0, device="cpu", n_init=1)).model
    return images, classes, patch_unit_labels(kmeans, images, 2)


def _batch(digits, idx):
    images, _, units = digits
    return ImageBatch(images[idx], {"km": units[idx]}, [f"digit{int(i):04d}" for i in idx])


def test_registry_lists_image_models_apart():
    assert {
        "data2vec_vision_tiny",
        "hubert_vision_tiny",
        "simclr_vision_tiny",
        "vicreg_vision_tiny",
        "barlow_twins_vision_tiny",
        "dino_vision_tiny",
        "mae_vision_tiny",
        "ijepa_vision_tiny",
    } <= set(IMAGE)
    assert not set(IMAGE) & set(list_models("audio"))


@pytest.mark.parametrize("name", IMAGE)
def test_tiny_image_model_learns_on_digits(name, digits):
    """A few Adam steps on real images lower the loss measured with fixed masks/views (the
    same generator seed in eval mode). HuBERT on images: masked unit accuracy rises;
    EMA-teacher models: the teacher moves; masked models hide the configured share."""
    torch.manual_seed(0)
    batch = _batch(digits, torch.arange(64))
    model = create_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    # the two-view losses are defined over the batch (BatchNorm in the projector uses batch
    # statistics); they are measured in training mode, the others in eval mode
    batch_stats = name.split("_")[0] in ("simclr", "vicreg", "barlow")

    def evaluate():
        model.train(batch_stats)
        with torch.no_grad():
            out = model(batch, generator=torch.Generator().manual_seed(123))
        model.train()
        return out

    before = evaluate()
    for step in range(15):
        out = model(batch)
        assert torch.isfinite(out.loss.total)
        opt.zero_grad()
        out.loss.total.backward()
        opt.step()
        model.after_optimizer_step(step + 1)
    after = evaluate()
    if name.startswith("dino"):
        # DINO's loss is not monotone early (the centre moves the target distribution);
        # what must hold: the teacher followed the student and the centre moved
        assert int(model.teacher.num_updates) == 15
        assert float(model.objective.center.abs().sum()) > 0
        return
    if batch_stats:
        # NT-Xent starts near its floor log(2N - 1) and VICReg's variance hinge needs many
        # steps: 15 steps take a few percent off (Barlow Twins about 10%)
        assert after.loss.total < (0.999 if name.startswith("simclr") else 0.97) * before.loss.total
    else:
        # the masked-unit loss starts near log(32) = 3.47 and the units' own entropy on
        # masked patches is about 2.9, so 10% is what 15 steps can honestly take off it
        assert after.loss.total < 0.9 * before.loss.total
    expected_mask = {"mae": 0.75, "ijepa": 0.5, "data2vec": 0.5, "hubert": 0.5}
    family = name.split("_")[0]
    if family in expected_mask:
        assert after.metrics["mask_fraction"] == pytest.approx(expected_mask[family])
    if "acc_masked" in after.metrics:
        assert after.metrics["acc_masked"] > before.metrics["acc_masked"] + 0.1
    if hasattr(model, "teacher"):
        assert int(model.teacher.num_updates) == 15


@pytest.mark.parametrize("name", IMAGE)
def test_extract_and_model_dir_roundtrip(name, digits, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, **{"encoder.num_layers": 3})
    model.after_optimizer_step(3)
    images = digits[0][:5]
    model.eval()
    with torch.no_grad():
        ext = model.extract(images)
    assert len(ext.hidden_states) == 4 and ext.hidden_states[-1].shape == (5, 16, 64)
    assert ext.padding_mask is None and ext.last_hidden_state is not None
    # pre-LN encoder: the final LayerNorm is only in last_hidden_state
    assert torch.allclose(ext.last_hidden_state, model.encoder.layer_norm(ext.hidden_states[-1]))
    loaded = load_model_dir(save_model_dir(model, tmp_path / "m"))
    assert loaded.config == model.config
    batch = _batch(digits, torch.arange(8))
    loaded.eval()
    with torch.no_grad():
        a = model(batch, generator=torch.Generator().manual_seed(1)).loss.total
        b = loaded(batch, generator=torch.Generator().manual_seed(1)).loss.total
    assert torch.equal(a, b)


def test_patch_hubert_label_errors_name_the_image(digits):
    model = create_model("hubert_vision_tiny")
    images, _, units = digits
    bad = units[:4].clone()
    bad[2, 5] = 40
    with pytest.raises(LabelError, match="digit0002"):
        model(ImageBatch(images[:4], {"km": bad}, [f"digit{i:04d}" for i in range(4)]))
    with pytest.raises(LabelError, match="one unit per patch"):
        model(ImageBatch(images[:4], {"km": units[:4, :8]}, ["a", "b", "c", "d"]))
    with pytest.raises(ConfigError, match="label stream"):
        model(ImageBatch(images[:4]))
    with pytest.raises(ValueError, match="images must be"):
        model(ImageBatch(torch.zeros(2, 1, 6, 6), {"km": units[:2]}))
    with pytest.raises(ImageError):
        ImageBatch(torch.zeros(2, 8, 8))


def test_patch_store_skips_bad_images_and_counts_them(tmp_path):
    images, _ = digits_images()
    images = images[:10].clone()
    images[3, 0, 2, 2] = float("nan")
    ids = [f"img{i}" for i in range(10)]
    write_patch_store(tmp_path / "s", images, ids, patch_size=2)
    store = FeatureStore(tmp_path / "s")
    shard = store.shard(0)
    assert len(shard.utts) == 9 and [s["utt"] for s in shard.skipped] == ["img3"]
    assert len(shard.utts) + len(shard.skipped) == 10
    assert store.dim == 4 and store.meta.kind == "patches"
    first = np.asarray(shard.data[: int(shard.counts[0])])
    assert np.array_equal(first, patchify(images[:1], 2)[0].numpy())
    kmeans = fit_kmeans(tmp_path / "s", KMeansConfig(k=4, seed=0, device="cpu", n_init=1)).model
    labels = patch_unit_labels(kmeans, images, 2)
    assert labels.shape == (10, 16) and (labels[3] == -100).all() and (labels[0] >= 0).all()


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 6, 4)
    p = patchify(x, 2)
    assert p.shape == (2, 6, 12)
    # row-major patches, channel-major inside a patch
    assert torch.equal(p[0, 1], x[0, :, 0:2, 2:4].reshape(-1))
    assert torch.equal(unpatchify(p, 2, 3, (3, 2)), x)


@pytest.mark.parametrize("name", MASK_EMBEDDING)
def test_masked_patches_keep_their_positions(name, digits):
    """Masked patches are the mask embedding plus their own position (added after masking),
    so the encoder can tell them apart; unmasked ones are unchanged."""
    model = create_model(name).eval()
    seen = []
    model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5, 10]] = True
    model.encode(digits[0][:1], mask=mask)
    model.encode(digits[0][:1], apply_mask=False)
    masked, clean = seen[0][0], seen[1][0]
    assert not torch.allclose(masked[0], masked[5]) and not torch.allclose(masked[5], masked[10])
    pos = model.frontend.fixed_position
    assert torch.allclose(masked[5] - pos[5], masked[10] - pos[10], atol=1e-6)
    assert torch.equal(masked[~mask[0]], clean[~mask[0]])


def test_mae_and_ijepa_encoders_see_only_their_patches(digits):
    """MAE's encoder gets only the visible quarter of the patches; I-JEPA's context encoder
    only the patches outside the target blocks, while its EMA target encoder sees all."""
    images = digits[0][:2]
    mae = create_model("mae_vision_tiny")
    seen = []
    mae.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    out = mae(ImageBatch(images), generator=torch.Generator().manual_seed(0))
    assert seen == [(2, 4, 64)] and out.metrics["mask_fraction"] == pytest.approx(0.75)
    ijepa = create_model("ijepa_vision_tiny")
    context, target = [], []
    ijepa.encoder.register_forward_pre_hook(lambda _m, args: context.append(args[0].shape))
    ijepa.teacher.model["encoder"].register_forward_pre_hook(
        lambda _m, args: target.append(args[0].shape)
    )
    ijepa(ImageBatch(images), generator=torch.Generator().manual_seed(0))
    assert context == [(2, 8, 64)] and target == [(2, 16, 64)]
    uneven = torch.zeros(2, 16, dtype=torch.bool)
    uneven[0, :12] = True
    uneven[1, :11] = True
    with pytest.raises(ValueError, match="same number of masked patches"):
        mae(ImageBatch(images), mask=uneven)
