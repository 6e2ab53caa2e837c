"""The speech recipes of the common core's objectives (egs/synth/speaker_dino,
speaker_vicreg, ssast) end to end on the tiny bundled (synthetic) corpus, shortened to 4
updates: validate -> pretrain -> summary table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_recipes_synth import EGS, TRAIN_ARGS, run


@pytest.mark.parametrize(
    "method",
    ["speaker_vicreg", pytest.param("speaker_dino", marks=pytest.mark.slow),
     pytest.param("ssast", marks=pytest.mark.slow)],
)  # fmt: skip
def test_synth_core_ssl_recipes(method: str, synth_corpus: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    res = run(
        ["bash", str(EGS / method / "run.sh"), "--data-root", str(synth_corpus), "--stage", "2",
         "--exp-dir", str(exp), "--steps", "4", "--train-args", TRAIN_ARGS],
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((exp / "summary" / "results.json").read_text())
    assert results["train"][0]["step"] == 4 and results["train"][0]["model"] == f"{method}_tiny"
    assert f"| {method} | {method}_tiny | 4 |" in res.stdout
