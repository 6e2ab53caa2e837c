"""Fixtures shared by integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_km_labels(
    synth_corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Unit labels of the bundled corpus' train and dev splits from MFCC k-means (K=20),
    made with the real commands (features dump, kmeans fit, kmeans apply). Returns
    ``{"train": DIR, "dev": DIR}``; both dirs are named ``km20`` (their stream name comes from meta.json: ``km20_mfcc``)."""
    from speechssl.cli.main import main

    root = tmp_path_factory.mktemp("synth_units")
    for split in ("train", "dev"):
        code = main(["features", "dump", "--data", str(synth_corpus / split), "--kind", "mfcc",
                     "--out", str(root / "mfcc" / split), "--device", "cpu"])  # fmt: skip
        assert code == 0
    code = main(["kmeans", "fit", "--features", str(root / "mfcc" / "train"), "--k", "20",
                 "--out", str(root / "km"), "--device", "cpu", "--seed", "0"])  # fmt: skip
    assert code == 0
    out = {}
    for split in ("train", "dev"):
        out[split] = root / "labels" / split / "km20"
        code = main(["kmeans", "apply", "--kmeans", str(root / "km"), "--features",
                     str(root / "mfcc" / split), "--out", str(out[split]), "--device", "cpu"])  # fmt: skip
        assert code == 0
    return out
