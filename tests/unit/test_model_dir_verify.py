"""The one model-dir loader verifies what it reads: recorded sizes and SHA-256s (model.json
of a model dir, meta.json of a training checkpoint), and finite weights (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from speechssl.errors import CheckpointError
from speechssl.models import create_model
from speechssl.models.io import CONFIG_NAME, WEIGHTS_NAME, load_model_dir, save_model_dir


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model_dir(create_model("wav2vec2_tiny"), tmp_path / "m")


def test_model_dir_records_its_weights_and_loads(model_dir: Path) -> None:
    files = json.loads((model_dir / CONFIG_NAME).read_text())["files"]
    assert files[WEIGHTS_NAME]["bytes"] == (model_dir / WEIGHTS_NAME).stat().st_size
    load_model_dir(model_dir)


def test_a_flipped_byte_in_the_weights_is_refused(model_dir: Path) -> None:
    data = bytearray((model_dir / WEIGHTS_NAME).read_bytes())
    data[-3] ^= 0x01  # a finite change deep in the last tensor: loadable, but not the weights
    (model_dir / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: SHA-256 does not match model"):
        load_model_dir(model_dir)


def test_checkpoint_meta_json_is_verified_first(model_dir: Path) -> None:
    meta = {"files": {WEIGHTS_NAME: {"bytes": 1, "sha256": "0" * 64}}}
    (model_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"bytes, meta.json says 1 \(truncated or replaced"):
        load_model_dir(model_dir)
    (model_dir / "meta.json").write_text(json.dumps({"files": {}}))
    with pytest.raises(
        CheckpointError, match=r"records no size and SHA-256 for model\.safetensors"
    ):
        load_model_dir(model_dir)


def test_a_model_dir_without_records_still_loads(model_dir: Path) -> None:
    """Model dirs written before checksums were recorded: names, shapes and finiteness are
    still checked."""
    desc = json.loads((model_dir / CONFIG_NAME).read_text())
    del desc["files"]
    (model_dir / CONFIG_NAME).write_text(json.dumps(desc))
    load_model_dir(model_dir)
