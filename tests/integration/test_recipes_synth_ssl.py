"""The speech recipes of the common core's objectives (egs/synth/speaker_dino,
speaker_vicreg, ssast) end to end on the tiny bundled (synthetic) corpus, shortened to 4
updates: validate -> pretrain -> summary table; the VICReg one also runs its conf's probing
stage shortened (SID, the model next to a random-init encoder of its config)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_recipes_synth import EGS, TRAIN_ARGS, run

# the probing stage shortened: a few probe updates, one lr
PROBE_ARGS = "preset=synth trainer.max_steps=3 trainer.save_every=3 lr=[1e-2]"


@pytest.mark.parametrize(
    "method",
    ["speaker_vicreg", pytest.param("speaker_dino", marks=pytest.mark.slow),
     pytest.param("ssast", marks=pytest.mark.slow)],
)  # fmt: skip
def test_synth_core_ssl_recipes(method: str, synth_corpus: Path, tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    if method == "speaker_vicreg":  # its conf ends with the probing stage (task data written here)
        probe = ["--probe-tasks", "sid", "--probe-upstreams", "random model",
                 "--probe-data", str(tmp_path / "probe"), "--probe-args", PROBE_ARGS]  # fmt: skip
    else:  # the same stage; the VICReg run shows it
        probe = ["--stop-stage", "4"]
    res = run(
        ["bash", str(EGS / method / "run.sh"), "--data-root", str(synth_corpus), "--stage", "2",
         "--exp-dir", str(exp), "--steps", "4", "--train-args", TRAIN_ARGS, *probe],
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((exp / "summary" / "results.json").read_text())
    assert results["train"][0]["step"] == 4 and results["train"][0]["model"] == f"{method}_tiny"
    assert f"| {method} | {method}_tiny | 4 |" in res.stdout
    if method != "speaker_vicreg":
        assert not (exp / "probe").exists()
        return
    rows = json.loads((exp / "summary" / "probe.json").read_text())
    assert [(r["upstream"], r["task"], r["metric"]) for r in rows] == [
        ("random-init", "sid", "acc"), ("speaker_vicreg", "sid", "acc")
    ]  # fmt: skip
    assert all(math.isfinite(r["value"]) and 0 <= r["value"] <= 100 for r in rows)
    # the random-init row is the run's config with fresh weights, not the trained model
    ident = json.loads((exp / "probe" / "sid_random-init" / "results.json").read_text())
    assert ident["upstream_identity"]["source"] == f"random-init:{exp}/train"
    trained = json.loads((exp / "probe" / "sid_speaker_vicreg" / "results.json").read_text())
    assert (
        ident["upstream_identity"]["weights_sha256"]
        != trained["upstream_identity"]["weights_sha256"]
    )
