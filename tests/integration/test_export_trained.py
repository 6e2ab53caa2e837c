"""A real `speechssl-train` run (bundled corpus, a few updates) exported with
`speechssl export hf`: the card reads the training record the trainer wrote (data dir,
hours kept, updates, optimiser) and warns that the data was synthetic."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from train_helpers import base_overrides, events, run_train

from speechssl.cli.main import main


# a training subprocess: ~20-30 s on a busy 2-core machine
@pytest.mark.slow
def test_card_of_a_trained_model(synth_corpus: Path, tmp_path: Path, capsys) -> None:
    exp = tmp_path / "exp"
    overrides = [o for o in base_overrides() if not o.startswith("trainer.export_final")]
    res = run_train(
        ["model=wav2vec2_tiny", f"data.dir={synth_corpus / 'train'}", *overrides,
         "trainer.max_steps=2", "trainer.export_final=true", f"trainer.exp_dir={exp}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    hours = next(e["kept_hours"] for e in events(exp, "data") if e["split"] == "train")
    out = tmp_path / "hf"
    assert main(["export", "hf", str(exp / "final"), str(out), "--push", "me/w2v-synth",
                 "--dry-run"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "would upload to me/w2v-synth" in printed
    card = ModelCard.load(out / "README.md")
    assert "synthetic-data" in card.data.tags and "wav2vec2" in card.data.tags
    text = card.text
    assert "Warning: trained on synthetic speech" in text
    assert f"| data dir | `train` ({hours:.2f} h kept) |" in text
    assert "| updates | 2 |" in text and "| optimizer |" in text
    assert str(tmp_path) not in (out / "README.md").read_text()
