"""Checkpoints: atomic dirs, verification, partial/corrupt handling, pruning, best, RNG state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speechssl.errors import CheckpointError
from speechssl.train import checkpoint as ckpt


def _states() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    w = torch.randn(4, 3)
    model = {"a.weight": w, "tied.weight": w, "b.bias": torch.arange(3.0)}  # tied = shared storage
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.randn(2))])
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    state = {"step": 7, "optimizer": opt.state_dict(), "rng": [ckpt.capture_rng_state()]}
    return model, state


def test_roundtrip_is_weights_only_loadable(tmp_path: Path) -> None:
    model, state = _states()
    path = ckpt.save_checkpoint(tmp_path, 7, model, state, {"epoch": 1})
    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == [
        "meta.json",
        "model.safetensors",
        "trainer_state.pt",
    ]
    loaded_model, loaded_state, meta = ckpt.load_checkpoint(path)
    assert meta["step"] == 7 and meta["epoch"] == 1
    for k, v in model.items():
        assert torch.equal(loaded_model[k], v)
    # the state file needs nothing beyond weights_only loading
    again = torch.load(path / ckpt.STATE_FILE, weights_only=True)
    assert again["optimizer"]["state"][0]["step"] == state["optimizer"]["state"][0]["step"]  # type: ignore[index]
    assert loaded_state["step"] == 7


def test_rng_state_restores_every_generator(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian around
    state = ckpt.capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(),
        np.random.randn(),
        torch.rand(2),
    )
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(2))
    assert got[:4] == expected[:4]
    assert torch.equal(got[4], expected[4])


def test_partial_dirs_are_ignored_debris_removed_and_no_meta_set_aside(tmp_path: Path) -> None:
    model, state = _states()
    ckpt.save_checkpoint(tmp_path, 5, model, state)
    (tmp_path / "step-00000010").mkdir()  # a dir without metadata
    (tmp_path / "step-00000010" / ckpt.MODEL_FILE).write_bytes(b"x")
    (tmp_path / ".step-00000015.tmp-abc").mkdir()  # debris of an interrupted save
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.step == 5
    removed, aside = ckpt.remove_partial(tmp_path)
    assert [p.name for p in removed] == [".step-00000015.tmp-abc"]
    # a step dir without meta.json is set aside with its weights, never deleted
    assert len(aside) == 1 and aside[0].name.startswith("step-00000010.no-meta-")
    assert (aside[0] / ckpt.MODEL_FILE).read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000005", aside[0].name]
    assert ckpt.latest_checkpoint(tmp_path).step == 5  # type: ignore[union-attr]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "meta"])
def test_corrupt_checkpoint_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    model, state = _states()
    path = ckpt.save_checkpoint(tmp_path, 3, model, state)
    target = path / ckpt.MODEL_FILE
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[-5] ^= 0xFF
        target.write_bytes(bytes(data))
        match = "SHA-256"
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
        match = "bytes"
    elif damage == "delete":
        target.unlink()
        match = "missing"
    else:
        (path / ckpt.META_FILE).write_text("{not json")
        target = path / ckpt.META_FILE
        match = "unreadable"
    with pytest.raises(CheckpointError, match=match) as info:
        ckpt.load_checkpoint(path)
    assert str(target) in str(info.value)


def test_prune_keeps_last_n_and_best_survives(tmp_path: Path) -> None:
    model, state = _states()
    for step in (1, 2, 3, 4):
        path = ckpt.save_checkpoint(tmp_path, step, model, state)
        if step == 2:
            best = ckpt.mark_best(tmp_path, path, {"metric": "loss", "value": 0.5})
    removed = ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step-00000001", "step-00000002"]
    complete, partial = ckpt.list_checkpoints(tmp_path)
    assert [c.step for c in complete] == [3, 4] and partial == []
    meta = ckpt.verify_checkpoint(best)
    assert meta["best"]["value"] == 0.5 and meta["copied_from"] == "step-00000002"
    ckpt.load_checkpoint(best)


def test_overwriting_a_step_is_atomic(tmp_path: Path) -> None:
    model, state = _states()
    ckpt.save_checkpoint(tmp_path, 9, model, state)
    model2 = {k: v + 1 for k, v in model.items()}
    ckpt.save_checkpoint(tmp_path, 9, model2, state)
    loaded, _, _ = ckpt.load_checkpoint(tmp_path / "step-00000009")
    assert torch.equal(loaded["b.bias"], model2["b.bias"])
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000009"]


_SAVER = """
import sys, torch
from speechssl.train import checkpoint as ckpt
big = {"w": torch.ones(64, 1024, 1024)}  # 256 MiB: the save takes a while
ckpt.save_checkpoint(sys.argv[1], 2, big, {"step": 2})
"""


def test_sigkill_during_a_real_save_leaves_only_hidden_debris(tmp_path: Path) -> None:
    """A process killed while it writes a checkpoint (its temporary dir exists, meta.json
    not yet written) leaves the previous checkpoint intact and no visible step dir."""
    model, state = _states()
    ckpt.save_checkpoint(tmp_path, 1, model, state)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], env=env)
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".step-00000002.tmp-*")):
        assert proc.poll() is None, "the saver exited before its save began"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    complete, partial = ckpt.list_checkpoints(tmp_path)
    assert [c.step for c in complete] == [1]
    assert [p.name.startswith(".step-00000002.tmp-") for p in partial] == [True]
    assert not (tmp_path / ckpt.step_dir_name(2)).exists()
    ckpt.load_checkpoint(complete[0].path)
    removed, aside = ckpt.remove_partial(tmp_path)
    assert len(removed) == 1 and aside == []
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_resume_of_things_that_are_not_checkpoints_says_what_they_are(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"x")
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("u a.wav\n")
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    for path, what in ((hf, "a Hugging Face model dir"), (data, "a Kaldi data dir"),
                       (exp, "an experiment dir")):  # fmt: skip
        with pytest.raises(CheckpointError, match=what) as info:
            ckpt.verify_checkpoint(path)
        assert "partial" not in str(info.value)
