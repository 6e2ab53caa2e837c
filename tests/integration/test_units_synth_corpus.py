"""MFCC k-means on the bundled eSpeak corpus: dump -> fit -> apply -> report, with PNMI.

Real components end to end: synthesized audio read through soundfile, Kaldi MFCCs from
``speechssl features dump``, the frame-level phone alignments the synthesizer produced.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np

from speechssl.cli.main import main
from speechssl.units.labels import UnitLabels


def test_mfcc_units_on_synth_corpus(synth_corpus, tmp_path, capsys):
    data = synth_corpus / "train"
    feats, km, labels, rep = (tmp_path / n for n in ("mfcc", "km", "labels", "report"))
    for rank in range(2):
        assert main(["features", "dump", "--data", str(data), "--kind", "mfcc", "--deltas", "2",
                     "--out", str(feats), "--nshard", "2", "--rank", str(rank),
                     "--device", "cpu"]) == 0  # fmt: skip
    assert main(["kmeans", "fit", "--features", str(feats), "--k", "30", "--out", str(km),
                 "--device", "cpu", "--seed", "1"]) == 0  # fmt: skip
    for rank in range(2):
        assert main(["kmeans", "apply", "--kmeans", str(km), "--features", str(feats),
                     "--out", str(labels), "--nshard", "2", "--rank", str(rank)]) == 0  # fmt: skip
    # label counts agree with the audio durations under the documented convention
    units = UnitLabels.load(labels, data_dir=data, tolerance=1)
    assert units.meta.frame_window_s == 0.025 and units.label_rate == 100.0
    capsys.readouterr()
    assert main(["kmeans", "report", "--labels", str(labels), "--data", str(data),
                 "--alignments", str(data / "ali.phones"), "--out", str(rep)]) == 0  # fmt: skip
    report = json.loads((rep / "report.json").read_text())
    ph = report["phones"]
    assert ph["utts_scored"] == len(units) and ph["utts_without_alignment"] == 0
    # every phone frame is paired except the first of each utterance (25 ms window centre)
    assert ph["frames_unpaired"] <= 3 * len(units)
    # MFCC units carry phone information, far above chance (independent labels give ~0),
    # as HuBERT reports for MFCC k-means (PNMI around 0.25-0.3 on LibriSpeech)
    assert 0.15 < ph["pnmi"] < 1.0
    assert ph["phone_purity"] > 0.2
    counts = np.asarray(report["usage"]["counts"])
    assert counts.sum() == units.num_frames and report["usage"]["dead_clusters"] == 0
    assert (rep / "report.png").stat().st_size > 10_000
    print(json.dumps({k: ph[k] for k in ("pnmi", "phone_purity", "cluster_purity")}))


def _copy_with_bad_audio(src, dst):
    """A copy of data dir ``src`` (audio shared) plus one utterance with corrupt audio."""
    from speechssl.data.tables import read_table, write_table

    dst.mkdir()
    bad_wav = dst / "bad.wav"
    bad_wav.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(200)))
    for name in ("wav.scp", "utt2spk", "utt2dur"):
        table = read_table(src / name)
        table["zzz-bad"] = {"wav.scp": str(bad_wav), "utt2spk": "zzz-bad", "utt2dur": "1.0"}[name]
        write_table(dst / name, table)
    return dst


def test_labels_straight_from_audio(synth_corpus, tmp_path, capsys, monkeypatch):
    data = synth_corpus / "train"
    feats, km = tmp_path / "mfcc", tmp_path / "km"
    assert main(["features", "dump", "--data", str(data), "--kind", "mfcc", "--deltas", "2",
                 "--out", str(feats), "--device", "cpu"]) == 0  # fmt: skip
    assert main(["kmeans", "fit", "--features", str(feats), "--k", "20", "--out", str(km),
                 "--device", "cpu", "--normalize", "global_mv"]) == 0  # fmt: skip
    assert main(["kmeans", "apply", "--kmeans", str(km), "--features", str(feats),
                 "--out", str(tmp_path / "from_store")]) == 0  # fmt: skip
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for rank in range(2):
        assert main(["kmeans", "apply", "--kmeans", str(km), "--data", str(data),
                     "--out", str(tmp_path / "from_audio"), "--nshard", "2",
                     "--rank", str(rank)]) == 0  # fmt: skip
    a = UnitLabels.load(tmp_path / "from_store", data_dir=data)
    b = UnitLabels.load(tmp_path / "from_audio", data_dir=data)
    assert set(a) == set(b)
    # the same extractor rebuilt from the model's metadata: the same labels
    for utt in a:
        assert np.array_equal(a[utt], b[utt]), utt
    from speechssl.units.kmeans import KMeansModel

    assert b.meta.source["extractor"] == KMeansModel.load(km).meta["feature"]["extractor"]
    # features stream into labels: nothing but the label files is written, here or in TMPDIR
    names = {p.name for p in (tmp_path / "from_audio").iterdir()}
    stems = [f"shard-0000{r}-of-00002" for r in range(2)]
    assert names == {"meta.json"} | {f".{s}.lock" for s in stems} | {
        f"{s}.{e}" for s in stems for e in ("bin", "index", "txt", "done.json")
    }  # plus each shard's (empty-but-for-the-holder) lock file
    assert not list(scratch.iterdir())

    # corrupt audio: an error naming the utterance; tolerant mode records it, and loading
    # the labels against the data dir names it with the reason
    bad = _copy_with_bad_audio(data, tmp_path / "bad_data")
    capsys.readouterr()
    assert main(["kmeans", "apply", "--kmeans", str(km), "--data", str(bad),
                 "--out", str(tmp_path / "bad_labels")]) == 1  # fmt: skip
    assert "zzz-bad" in capsys.readouterr().err
    assert main(["kmeans", "apply", "--kmeans", str(km), "--data", str(bad), "--tolerant",
                 "--out", str(tmp_path / "bad_labels")]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_audio"] == 1 and summary["utterances"] == len(a)
    import pytest

    from speechssl.errors import LabelError

    with pytest.raises(LabelError, match=r"zzz-bad: .*no labels.*feature dump skipped it"):
        UnitLabels.load(tmp_path / "bad_labels", data_dir=bad)
