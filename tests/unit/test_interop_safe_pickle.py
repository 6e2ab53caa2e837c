"""The restricted unpickler and the small pure helpers of the fairseq import."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import subprocess

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from speechssl.errors import CheckpointError
from speechssl.interop.fairseq import parse_conv_layers
from speechssl.interop.safe_pickle import ForeignObject, load_foreign_checkpoint, to_plain
from speechssl.models import model_config
from speechssl.models.registry import get_spec, name_for_config


@dataclasses.dataclass
class HubertConfig:  # stands for fairseq.models.hubert.hubert.HubertConfig
    encoder_layers: int = 2
    label_rate: float = 50.0


HubertConfig.__module__ = "fairseq.models.hubert.hubert"


def test_omegaconf_namespace_and_numpy_become_plain_data(tmp_path, monkeypatch):
    import sys
    import types

    for name in ("fairseq", "fairseq.models", "fairseq.models.hubert"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    mod = types.ModuleType("fairseq.models.hubert.hubert")
    mod.HubertConfig = HubertConfig  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fairseq.models.hubert.hubert", mod)
    structured = OmegaConf.structured(HubertConfig)  # object_type names the fairseq class
    cfg = OmegaConf.create({"model": structured, "task": {"normalize": True, "x": [1, 2.5]}})
    path = tmp_path / "c.pt"
    torch.save(
        {"cfg": cfg, "args": argparse.Namespace(arch="hubert"), "best": np.float64(1.5),
         "arr": np.arange(3), "model": {"w": torch.ones(2)}},
        path,
    )  # fmt: skip
    monkeypatch.undo()
    plain = to_plain(load_foreign_checkpoint(path))
    assert plain["cfg"] == {
        "model": {"encoder_layers": 2, "label_rate": 50.0},
        "task": {"normalize": True, "x": [1, 2.5]},
    }
    assert plain["args"] == {"arch": "hubert"} and plain["best"] == 1.5
    assert plain["arr"].tolist() == [0, 1, 2] and torch.equal(plain["model"]["w"], torch.ones(2))


def test_stand_ins_are_inert():
    obj = ForeignObject(1, 2)
    obj.__setstate__({"symbols": ["a"]})
    assert obj.args == (1, 2) and obj.symbols == ["a"]
    assert not [
        n
        for n in vars(ForeignObject)
        if not n.startswith("__") and callable(getattr(ForeignObject, n))
    ]


@pytest.mark.parametrize(
    "payload",
    [
        (eval, ("1+1",)),
        (subprocess.call, (["true"],)),
        (pickle.loads, (b"",)),
    ],
    ids=["eval", "subprocess.call", "pickle.loads"],
)
def test_other_callables_are_refused_by_name(payload, tmp_path):
    class Evil:
        def __reduce__(self):
            return payload

    path = tmp_path / "e.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle the global"):
        load_foreign_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match=r"x\.pt"):
        load_foreign_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_foreign_checkpoint(tmp_path / "missing.pt")


def test_conv_layers_are_evaluated_as_literals_only():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2", "c") == (
        (512, 10, 5), (512, 3, 2), (512, 3, 2),
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="conv_feature_layers"):
        parse_conv_layers("__import__('os').system('true')", "c")


def test_imported_models_are_named_by_shape():
    assert name_for_config("hubert", model_config("hubert_base")) == "hubert_base"
    small = model_config("hubert_base", encoder={"num_layers": 2})
    assert name_for_config("hubert", small) == "hubert"
    spec = get_spec("hubert")
    assert spec.size == "custom" and spec.family == "hubert"
