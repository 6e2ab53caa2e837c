"""`speechssl-train` runs the new audio families by registry name (real Hydra configs, real
subprocesses, bundled-corpus audio, no labels), and a resumed run continues bitwise: the EMA
teacher (data2vec) and the Gumbel temperature (w2v-BERT) are part of the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import base_overrides, losses, records, run_train

from speechssl.train import checkpoint as ckpt


# ~25 s each on a busy 2-core machine: slow suite (the teacher's state round trip through a
# model dir is in the default suite: tests/unit/test_models.py::test_save_and_load_model_dir)
@pytest.mark.slow
@pytest.mark.parametrize("model", ["data2vec_audio_tiny", "w2v_bert_tiny"])
def test_train_and_resume_bitwise(model: str, synth_corpus: Path, tmp_path: Path) -> None:
    common = [
        f"model={model}",
        f"data.dir={synth_corpus / 'train'}",
        *base_overrides(),
        "trainer.max_steps=4",
        "trainer.save_every=2",
    ]
    straight = tmp_path / "straight"
    res = run_train([*common, f"trainer.exp_dir={straight}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    first = straight / "checkpoints" / ckpt.step_dir_name(2)
    resumed = tmp_path / "resumed"
    res = run_train([*common, f"trainer.exp_dir={resumed}", f"resume={first}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    want, got = losses(straight), losses(resumed)
    assert sorted(want) == [1, 2, 3, 4] and sorted(got) == [3, 4]
    for step in (3, 4):
        assert got[step] == want[step], f"step {step}: {got[step]!r} != {want[step]!r}"
    logged = records(straight, "train")[-1]
    key = "ema_decay" if model.startswith("data2vec") else "temperature"
    assert key in logged and "loss/" + ("regression" if key == "ema_decay" else "mlm") in logged
