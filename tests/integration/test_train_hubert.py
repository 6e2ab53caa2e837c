"""`speechssl-train model=hubert_tiny` on the bundled corpus with real k-means units: it learns
(loss falls, masked accuracy rises), evaluates on dev, keeps the best checkpoint, logs every
health signal, plots, and exports a model dir (`speechssl.models.io`) that
`speechssl features dump --kind model` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from train_helpers import base_overrides, events, records, run_train

from speechssl.cli.main import main
from speechssl.models.io import load_model_dir
from speechssl.train import checkpoint as ckpt


def test_hubert_tiny_learns_on_the_bundled_corpus(
    synth_corpus: Path, synth_km_labels: dict[str, Path], tmp_path: Path
) -> None:
    exp = tmp_path / "exp"
    steps = 40
    res = run_train(
        [
            "model=hubert_tiny",
            *base_overrides(),
            f"data.dir={synth_corpus / 'train'}",
            f"data.labels=[{synth_km_labels['train']}]",
            f"data.dev_dir={synth_corpus / 'dev'}",
            f"data.dev_labels=[{synth_km_labels['dev']}]",
            f"trainer.exp_dir={exp}",
            f"trainer.max_steps={steps}",
            "trainer.save_every=20",
            "trainer.tensorboard=true",
            "trainer.export_final=true",
            "optim.total_steps=0",
            "trainer.peak_flops=1e12",  # MFU against a nominal 1 TFLOP/s device
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    train = records(exp, "train")
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    first, last = train[:8], train[-8:]
    loss0, loss1 = np.mean([r["loss"] for r in first]), np.mean([r["loss"] for r in last])
    acc0, acc1 = np.mean([r["acc_masked"] for r in first]), np.mean([r["acc_masked"] for r in last])
    assert loss1 < 0.8 * loss0, (loss0, loss1)
    assert acc1 > acc0 + 0.05, (acc0, acc1)
    # every health signal is logged
    for key in ("loss/km20_mfcc/masked", "acc_unmasked", "lr", "grad_norm", "loss_scale",
                "audio_sec_per_sec", "padding_fraction", "crop_waste"):  # fmt: skip
        assert key in train[-1], key
    assert train[-1]["audio_sec_per_sec"] > 0
    assert all(0.0 < r["mfu"] < 1.0 for r in train)
    dev = records(exp, "dev")
    assert [d["step"] for d in dev] == [20, 40] and dev[-1]["loss"] < dev[0]["loss"] * 1.05
    data_event = events(exp, "data")[0]
    assert (
        data_event["kept"] + data_event["too_short"] + data_event["too_long"] == data_event["total"]
    )
    # checkpoints, best, resolved config, TensorBoard, curves
    complete, _ = ckpt.list_checkpoints(exp / "checkpoints")
    assert [c.step for c in complete] == [20, 40]
    best = ckpt.verify_checkpoint(exp / "checkpoints" / ckpt.BEST_NAME)
    assert best["best"]["source"] == "dev"
    assert "name: hubert_tiny" in (exp / "config.yaml").read_text()
    assert list((exp / "tb").glob("events.out.tfevents.*"))
    assert main(["train", "plot", str(exp)]) == 0 and (exp / "curves.png").stat().st_size > 10000
    # the exported model dir (and every checkpoint dir) loads as a model with the final weights
    final = load_model_dir(exp / "final")
    weights, _, _ = ckpt.load_checkpoint(exp / "checkpoints" / ckpt.step_dir_name(steps))
    assert all(torch.equal(final.state_dict()[k], v) for k, v in weights.items())
    from_ckpt = load_model_dir(exp / "checkpoints" / ckpt.step_dir_name(steps))
    assert from_ckpt.model_name == final.model_name == "hubert_tiny"
    info = json.loads((exp / "final" / "model.json").read_text())["extra"]["training"]
    assert info["step"] == steps and info["labels"][0]["k"] == 20
    # ... and what `speechssl features dump --kind model` reads (HuBERT iteration 2)
    store = tmp_path / "hidden"
    code = main(["features", "dump", "--data", str(synth_corpus / "dev"), "--kind", "model",
                 "--checkpoint", str(exp / "final"), "--layer", "1", "--out", str(store),
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    meta = json.loads((store / "meta.json").read_text())
    assert meta["kind"] == "model" and meta["dim"] == final.config.encoder.dim
