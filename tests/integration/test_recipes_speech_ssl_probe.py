"""The probing stage of the speech SSL recipes (egs/synth/speaker_dino, speaker_vicreg:
SID/ASV; ssast: KS/SID, its 12.5 Hz frames are too few for PR's CTC) in --dry-run mode:
each task next to MFCC, fbank and a random-init encoder of the run's own config (``random-init:EXP/train``), the table from ``speechssl probe report``."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_recipes_dryrun import EGS, inner, opts, run, stages


@pytest.mark.parametrize(
    ("method", "tasks"),
    [("speaker_dino", ["sid", "asv"]), ("speaker_vicreg", ["sid", "asv"]),
     ("ssast", ["ks", "sid"])],
)  # fmt: skip
def test_speech_ssl_recipes_probe_against_random_init(
    method: str, tasks: list[str], tmp_path: Path
) -> None:
    exp = tmp_path / "e"
    res = run(EGS / "synth" / method / "run.sh", "--dry-run", "true", "--stage", "5",
              "--stop-stage", "5", "--exp-dir", exp)  # fmt: skip
    assert res.returncode == 0, res.stderr
    plan = stages(res.stdout)[5]
    assert plan[0] == ["../local/probe_data.sh", "--data-root", "../data", "--out", "../data/probe",
                       "--tasks", ",".join(tasks)]  # fmt: skip
    probes = [opts(inner(c)) for c in plan[1:-1]]
    ups = ["mfcc", "fbank", f"random-init:{exp}/train", f"{exp}/train"]
    names = ["mfcc", "fbank", "random-init", method]
    assert [(p["task"], p["upstream"], p["trainer.exp_dir"]) for p in probes] == [
        (t, u, f"{exp}/probe/{t}_{n}") for t in tasks for u, n in zip(ups, names, strict=True)
    ]
    assert all(p["preset"] == "synth" for p in probes)
    assert f"random-init={exp}/probe/{tasks[0]}_random-init" in plan[-1]
    assert plan[-1][:3] == ["speechssl", "probe", "report"]
