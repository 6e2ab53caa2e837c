"""Speaker diarization (SUPERB SD): frame DER against pyannote.metrics, the PIT loss,
LibriMix-style prep, and two-speaker mixtures of the bundled SYNTHETIC corpus."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from speechssl.cli.main import main as cli
from speechssl.data.tables import read_table
from speechssl.downstream.tasks_superb2 import SpeakerDiarization, frame_der_counts

STEP = 0.02


def _annotation(frames: np.ndarray, names: list[str]):
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for k, name in enumerate(names):
        active = np.r_[0, frames[:, k], 0]
        starts = np.flatnonzero(np.diff(active) == 1)
        ends = np.flatnonzero(np.diff(active) == -1)
        for i, (a, b) in enumerate(zip(starts, ends)):
            ann[Segment(a * STEP, b * STEP), f"{name}-{i}"] = name
    return ann


def test_frame_der_matches_pyannote():
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    rng = np.random.default_rng(0)
    for _ in range(10):
        ref = (rng.random((200, 2)) < 0.4).astype(np.float32)
        hyp = (rng.random((200, 2)) < 0.4).astype(np.float32)
        hyp[50:120] = ref[50:120, ::-1]  # a stretch right only under the swapped mapping
        miss, fa, conf, total = frame_der_counts(torch.from_numpy(ref), torch.from_numpy(hyp))
        der = metrics.DiarizationErrorRate(collar=0.0, skip_overlap=False)
        value = der(_annotation(ref, ["A", "B"]), _annotation(hyp, ["x", "y"]), detailed=True)
        assert (miss + fa + conf) / total == pytest.approx(value["diarization error rate"])
        assert miss * STEP == pytest.approx(value["missed detection"])
        assert fa * STEP == pytest.approx(value["false alarm"])
        assert conf * STEP == pytest.approx(value["confusion"])


def test_pit_loss_and_der_ignore_speaker_order():
    spec = SpeakerDiarization()
    targets = [(2.0, [(0, 0.1, 1.2), (1, 0.9, 1.9)]), (1.0, [(0, 0.0, 0.5)])]
    frames = torch.tensor([20, 10])
    torch.manual_seed(0)
    logits = torch.randn(2, 20, 2)
    loss, _ = spec.loss((logits, frames), targets, frames)
    swapped, _ = spec.loss((logits.flip(-1), frames), targets, frames)
    assert float(loss) == pytest.approx(float(swapped))
    ref = spec._targets(targets, frames, 20)
    perfect = (ref.flip(-1) * 2 - 1) * 10  # right, with the speakers named the other way
    sums, speech = spec.score((perfect, frames), targets, frames)
    assert sums["der"] == 0 and speech == float(ref.sum())


def test_prepare_synth_sd_and_diarization_errors(synth_corpus, tmp_path, capsys):
    out = tmp_path / "tasks"
    assert cli(["probe", "prepare-synth", "--corpus", str(synth_corpus), "--out", str(out),
                "--tasks", "sd"]) == 0  # fmt: skip
    sd = out / "sd"
    activity = read_table(sd / "train" / "utt2activity")
    overlapping = 0
    for value in activity.values():
        fields = value.split()
        turns = [(f.rpartition(":")[0], *map(float, f.rpartition(":")[2].split("-")))
                 for f in fields[1:]]  # fmt: skip
        assert len({t[0] for t in turns}) == 2 and all(t[2] <= float(fields[0]) for t in turns)
        (_, _, a1), (_, b0, _) = sorted(turns, key=lambda t: t[1])
        overlapping += b0 < a1
    assert overlapping == len(activity)  # overlap 0.2: every mixture overlaps
    # the mixer's RTTM is the reference; a line naming an unknown recording is refused
    kaldi = tmp_path / "kaldi"
    shutil.copytree(sd / "kaldi", kaldi)
    with (kaldi / "dev" / "rttm").open("a") as f:
        f.write("SPEAKER nosuchmix 1 0.000 1.000 <NA> <NA> spkX <NA> <NA>\n")
    code = cli(["data", "prepare-diarization", "--corpus-dir", str(kaldi), "--out",
                str(tmp_path / "o")])  # fmt: skip
    assert code == 1 and "nosuchmix is not in wav.scp" in capsys.readouterr().err


@pytest.mark.slow
def test_probe_sd_bundled_corpus(synth_corpus, tmp_path):
    from speechssl.downstream.cli import main as probe_main

    out = tmp_path / "tasks"
    assert cli(["probe", "prepare-synth", "--corpus", str(synth_corpus), "--out", str(out),
                "--tasks", "sd"]) == 0  # fmt: skip
    exp = tmp_path / "sd_fbank"
    with pytest.raises(SystemExit) as exc:
        probe_main(["task=sd", "preset=synth", "upstream=fbank", f"data.dir={out / 'sd'}",
                    f"trainer.exp_dir={exp}", "trainer.max_steps=2", "trainer.save_every=2",
                    "trainer.tensorboard=false", "lr=[1e-2]"])  # fmt: skip
    assert exc.value.code in (0, None)
    res = json.loads((exp / "results.json").read_text())
    assert res["task"] == "sd" and res["metric"] == "der" and res["mode"] == "min"
    assert np.isfinite(res["test"]) and res["test"] >= 0
