"""`speechssl export hf` / `import hf` for the image families: every ViT encoder ->
``transformers.IJepaModel`` (the ``transformers`` ViT without a CLS token) with hidden-state
parity, no missing/unexpected keys, heads in the side dir, ``--bare``, and back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, IJepaConfig, IJepaModel

from speechssl.cli.main import main
from speechssl.data.images import load_image_folder
from speechssl.models import create_model
from speechssl.models.io import load_model_dir, save_model_dir

IMAGE_PRESETS = [
    "simclr_vision_tiny",
    "vicreg_vision_tiny",
    "barlow_twins_vision_tiny",
    "dino_vision_tiny",
    "mae_vision_tiny",
    "ijepa_vision_tiny",
    "data2vec_vision_tiny",
    "hubert_vision_tiny",
]


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_image_folder("builtin:digits", 1, (8, 8)).images[:6]


def _trained_like(name: str) -> torch.nn.Module:
    """A preset with every weight moved off its init (LayerNorms, biases, tables too), so
    a weight mapped to the wrong place cannot hide behind ones/zeros."""
    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _parity(ours, hf, images: torch.Tensor) -> float:
    with torch.no_grad():
        a = ours.eval().extract(images)
        b = hf.eval()(pixel_values=images, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states)
    diffs = [(x - y).abs().max().item() for x, y in zip(a.hidden_states, b.hidden_states, strict=True)]  # fmt: skip
    diffs.append((a.last_hidden_state - b.last_hidden_state).abs().max().item())
    return max(diffs)


@pytest.mark.parametrize("name", IMAGE_PRESETS)
def test_vision_export_parity_bare_and_back(name, tmp_path, digits, capsys):
    model = _trained_like(name)
    md = save_model_dir(model, tmp_path / "md")
    full, bare = tmp_path / "full", tmp_path / "bare"
    assert main(["export", "hf", str(md), str(full)]) == 0
    assert main(["export", "hf", str(md), str(bare), "--bare"]) == 0
    assert "IJepaModel" in capsys.readouterr().out
    for out in (full, bare):
        hf, info = AutoModel.from_pretrained(out, output_loading_info=True)
        assert type(hf).__name__ == "IJepaModel"
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert _parity(model, hf, digits) <= 1e-4
    assert not (bare / "speechssl").exists()
    # heads (projector, DINO head + centre, decoder, predictor, EMA teacher, ...) in the side dir
    side = load_file(str(full / "speechssl" / "heads.safetensors"))
    own = set(load_model_dir(md).state_dict())
    hf_count = len(load_file(str(full / "model.safetensors")))
    assert hf_count > 0 and side.keys() <= own
    assert not any(k.startswith(("encoder.", "frontend.")) for k in side)
    # ours back: exact from the full export, encoder-exact from the bare one
    assert main(["import", "hf", str(full), str(tmp_path / "back")]) == 0
    back = load_model_dir(tmp_path / "back")
    assert back.model_name == name
    ref = load_model_dir(md).state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert main(["import", "hf", str(bare), str(tmp_path / "bare_back")]) == 0
    bare_back = load_model_dir(tmp_path / "bare_back")
    assert bare_back.model_name.startswith("ijepa_vision")
    assert bare_back.config.patch.position == "learned"
    with torch.no_grad():
        a = model.extract(digits).last_hidden_state
        b = bare_back.eval().extract(digits).last_hidden_state
    assert (a - b).abs().max().item() <= 1e-5


def test_foreign_ijepa_checkpoint_imports_with_fresh_predictor(tmp_path, digits, capsys):
    torch.manual_seed(1)
    cfg = IJepaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, image_size=8, patch_size=2, num_channels=1,
                      layer_norm_eps=1e-6)  # fmt: skip
    hf = IJepaModel(cfg).eval()
    hf.save_pretrained(tmp_path / "src")
    assert main(["import", "hf", str(tmp_path / "src"), str(tmp_path / "ours")]) == 0
    out = capsys.readouterr().out
    assert "initialised" in out and "predictor" in out
    ours = load_model_dir(tmp_path / "ours")
    assert ours.family == "ijepa_vision" and ours.config.encoder.dim == 32
    assert _parity(ours, hf, digits) <= 1e-4


def test_refusals_are_one_line(tmp_path, capsys):
    # a post-LN encoder has no IJepaModel equivalent
    model = create_model("simclr_vision_tiny", encoder={"layer_norm_first": False})
    md = save_model_dir(model, tmp_path / "md")
    assert main(["export", "hf", str(md), str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert "pre-LN" in err and "\n" not in err
    # an export whose position table was edited is not silently accepted as sin-cos
    good = save_model_dir(create_model("mae_vision_tiny"), tmp_path / "good")
    assert main(["export", "hf", str(good), str(tmp_path / "hf")]) == 0
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    weights["embeddings.position_embeddings"] += 1.0
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "y")]) == 1
    err = capsys.readouterr().err.strip()
    assert "position table" in err and "\n" not in err
