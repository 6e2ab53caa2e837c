"""`speechssl features dump --kind model`: a hidden layer of a trained model dir (or a
transformers export) written to a feature store, equal to extracting each utterance alone."""

import numpy as np
import pytest
import torch

from speechssl.cli.main import main
from speechssl.data.audio import LoadOptions
from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance
from speechssl.features.store import FeatureStore
from speechssl.interop.hf import export_to_transformers
from speechssl.models import create_model
from speechssl.models.io import save_model_dir


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("hubert_tiny", **{"encoder.num_layers": 3}).eval()
    root = tmp_path_factory.mktemp("model_dump")
    save_model_dir(model, root / "model")
    export_to_transformers(model, root / "export")
    return model, root


@pytest.mark.parametrize("source", ["model", "export"])
def test_dump_model_layer_matches_single_utterance_extraction(
    saved, synth_corpus, tmp_path, source
):
    model, root = saved
    data = synth_corpus / "dev"
    out = tmp_path / "store"
    args = [
        "features",
        "dump",
        "--data",
        str(data),
        "--kind",
        "model",
        "--checkpoint",
        str(root / source),
        "--layer",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--batch-seconds",
        "6",
    ]
    assert main(args) == 0
    store = FeatureStore(out)
    ddir = KaldiDataDir(data)
    assert sorted(store.utt_ids) == sorted(ddir.utt_ids())
    for utt in ddir.utt_ids():
        wave, _ = load_utterance(ddir, utt, LoadOptions(sample_rate=16000))
        with torch.no_grad():
            ref = model.extract(wave.unsqueeze(0), num_layers=2).hidden_states[2][0]
        got = torch.from_numpy(np.array(store[utt]))
        assert got.shape == ref.shape == (int(model.output_lengths(torch.tensor([len(wave)]))), 128)
        assert (got - ref).abs().max() < 1e-4, utt
    assert main(args) == 0  # a rerun finds the complete store and keeps it


def test_dump_model_option_errors(saved, synth_corpus, tmp_path, capsys):
    _, root = saved
    base = [
        "features",
        "dump",
        "--data",
        str(synth_corpus / "dev"),
        "--kind",
        "model",
        "--out",
        str(tmp_path / "s"),
        "--device",
        "cpu",
    ]
    assert main([*base, "--checkpoint", str(root / "model"), "--layer", "9"]) == 1
    assert "--layer must be in [0, 3]" in capsys.readouterr().err
    assert main([*base, "--layer", "1"]) == 1
    assert "needs --checkpoint" in capsys.readouterr().err
    assert (
        main([*base, "--checkpoint", str(root / "model"), "--layer", "1", "--num-mel-bins", "40"])
        == 1
    )
    assert "do not apply to --kind model" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(tmp_path / "nothing"), "--layer", "1"]) == 1
    assert "neither a model dir" in capsys.readouterr().err
