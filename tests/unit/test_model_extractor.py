"""`speechssl features dump --kind model`: a layer of a saved model as a feature store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speechssl.cli.main import main
from speechssl.errors import ConfigError
from speechssl.features.extractors import create_extractor
from speechssl.features.store import FeatureStore
from speechssl.models.io import save_model_dir
from speechssl.models.registry import create_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("hubert_tiny")
    return save_model_dir(model, tmp_path_factory.mktemp("model") / "final")


def test_batch_output_equals_each_utterance_alone(model_dir: Path) -> None:
    ex = create_extractor("model", {"checkpoint": str(model_dir), "layer": 1})
    assert (ex.dim, ex.frame_rate, ex.sample_rate) == (128, 50.0, 16000)
    desc = ex.describe()
    assert (
        desc["layer"] == 1 and desc["model"] == "hubert_tiny" and len(desc["weights_sha256"]) == 64
    )
    torch.manual_seed(1)
    waves = torch.zeros(2, 16000)
    waves[0] = torch.randn(16000) * 0.1
    waves[1, :8000] = torch.randn(8000) * 0.1
    feats, nframes = ex(waves, torch.tensor([16000, 8000]), ["a", "b"])
    reference = ex.model.extract(waves[1:, :8000], None)  # type: ignore[attr-defined]
    assert nframes.tolist() == [49, 24]
    assert feats.shape == (2, 49, 128)
    torch.testing.assert_close(feats[1, :24], reference.hidden_states[1][0], rtol=1e-5, atol=1e-5)
    assert torch.all(feats[1, 24:] == 0)


def test_bad_options_are_named(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="needs --checkpoint MODEL_DIR and --layer L"):
        create_extractor("model", {"checkpoint": str(model_dir)})
    with pytest.raises(ConfigError, match=r"--layer 3: .* has layers 0..2"):
        create_extractor("model", {"checkpoint": str(model_dir), "layer": 3})
    with pytest.raises(ConfigError, match="--deltas do not apply to --kind model"):
        create_extractor("model", {"checkpoint": str(model_dir), "layer": 1, "deltas": 2})


def test_dump_a_layer_of_the_bundled_corpus(
    model_dir: Path, synth_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    args = ["features", "dump", "--data", str(synth_corpus / "dev"), "--kind", "model"]
    assert main([*args, "--checkpoint", str(model_dir), "--layer", "2", "--out", str(out)]) == 0
    store = FeatureStore(out)
    assert store.meta.kind == "model" and store.meta.frame_rate == 50.0 and store.dim == 128
    utts = (synth_corpus / "dev" / "utt2spk").read_text().split("\n")
    assert len(store) == len([u for u in utts if u])
    # a rerun with another layer into the same store is refused, not mixed in
    assert main([*args, "--checkpoint", str(model_dir), "--layer", "1", "--out", str(out)]) == 1
