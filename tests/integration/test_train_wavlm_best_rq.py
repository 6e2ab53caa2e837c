"""`speechssl-train` runs WavLM (k-means labels, utterance mixing on every utterance) and
BEST-RQ (no labels) by registry name as real subprocesses on bundled-corpus audio, and a
run resumed from a checkpoint gives the same losses bitwise: the mixing draws come from
the batch's place in the data, BEST-RQ's frozen quantizer is in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from train_helpers import base_overrides, losses, records, run_train

from speechssl.models import create_model
from speechssl.train import checkpoint as ckpt


def _train_and_resume(common: list[str], tmp_path: Path) -> tuple[Path, Path]:
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
    return straight, resumed


@pytest.mark.slow
def test_wavlm_trains_with_mixing_and_resumes_bitwise(
    synth_corpus: Path, synth_km_labels: dict[str, Path], tmp_path: Path
) -> None:
    common = [
        "model=wavlm_tiny",
        f"data.dir={synth_corpus / 'train'}",
        f"data.labels=[{synth_km_labels['train']}]",
        "+model.overrides.mixing.mix_prob=1.0",
        *base_overrides(),
        "trainer.max_steps=4",
        "trainer.save_every=2",
    ]
    straight, _ = _train_and_resume(common, tmp_path)
    logged = records(straight, "train")
    # every utterance of a batch of several is mixed with another one; a batch of one has
    # no other utterance (and no noise dir is given), so it stays clean
    seen = [(r["utts_per_batch"], r["mixed_fraction"]) for r in logged]
    assert all(frac == (1.0 if n >= 2 else 0.0) for n, frac in seen), seen
    assert any(n >= 2 for n, _ in seen), seen


@pytest.mark.slow
def test_best_rq_trains_without_labels_and_resumes_bitwise(
    synth_corpus: Path, tmp_path: Path
) -> None:
    common = [
        "model=best_rq_tiny",
        f"data.dir={synth_corpus / 'train'}",
        *base_overrides(),
        "trainer.max_steps=4",
        "trainer.save_every=2",
    ]
    straight, _ = _train_and_resume(common, tmp_path)
    assert "loss/masked" in records(straight, "train")[-1]
    # the frozen quantizer travels with the weights, equal to the one the seed draws
    saved = load_file(str(straight / "checkpoints" / ckpt.step_dir_name(4) / "model.safetensors"))
    fresh = create_model("best_rq_tiny").state_dict()
    for key in ("quantizers.0.projection", "quantizers.0.codebook"):
        assert key in saved and saved[key].equal(fresh[key])
