"""`speechssl kmeans fit/apply/report` end to end on a feature store (real files, real CLI)."""

from __future__ import annotations

import json

import numpy as np

from speechssl.cli.main import main
from speechssl.data.tables import write_table
from speechssl.units.synthetic import MixtureSpec, write_mixture_store


def test_fit_apply_report_with_alignments(tmp_path, capsys):
    store = tmp_path / "feats"
    truth = write_mixture_store(
        store, MixtureSpec(num_frames=8000, dim=10, components=8, spread=6.0, seed=7), nshard=2
    )
    # phone alignments at 100 Hz consistent with 25 ms / 10 ms frames: the frame centred at
    # 10 i + 12.5 ms lies in alignment frame i + 1 (see speechssl.units.quality)
    ali = tmp_path / "ali.phones"
    ali.write_text(
        "".join(
            f"{u} " + " ".join(f"ph{c}" for c in np.concatenate([comps[:1], comps])) + "\n"
            for u, comps in truth.items()
        )
    )
    data = tmp_path / "data"
    data.mkdir()
    write_table(data / "utt2spk", {u: u for u in truth})
    write_table(
        data / "utt2dur", {u: f"{(len(c) - 1) / 100 + 0.025:.3f}" for u, c in truth.items()}
    )

    km, labels, rep = tmp_path / "km", tmp_path / "labels", tmp_path / "report"
    assert main(["kmeans", "fit", "--features", str(store), "--k", "8", "--out", str(km),
                 "--device", "cpu", "--normalize", "global_mv"]) == 0  # fmt: skip
    fit_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fit_line["k"] == 8 and fit_line["num_frames"] == sum(map(len, truth.values()))
    assert fit_line["schedule"] == "lloyd"  # small data: the thorough schedule
    # a rerun with the same settings is a no-op; other settings need --overwrite
    assert main(["kmeans", "fit", "--features", str(store), "--k", "8", "--out", str(km),
                 "--device", "cpu", "--normalize", "global_mv"]) == 0  # fmt: skip
    assert "nothing to do" in capsys.readouterr().out
    assert main(["kmeans", "fit", "--features", str(store), "--k", "9", "--out", str(km)]) == 1
    assert "other settings" in capsys.readouterr().err

    for rank in range(2):
        assert main(["kmeans", "apply", "--kmeans", str(km), "--features", str(store),
                     "--out", str(labels), "--nshard", "2", "--rank", str(rank),
                     "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["kmeans", "report", "--labels", str(labels), "--alignments", str(ali),
                 "--data", str(data), "--out", str(rep)]) == 0  # fmt: skip
    line = json.loads(capsys.readouterr().out)
    report = json.loads((rep / "report.json").read_text())
    assert line["pnmi"] == round(report["phones"]["pnmi"], 4)
    # k-means recovers the 8 components, so units and "phones" correspond one to one
    assert report["phones"]["pnmi"] > 0.97
    assert report["phones"]["phone_purity"] > 0.99
    assert report["phones"]["frames_unpaired"] == len(truth)  # the first alignment frame each
    assert report["usage"]["dead_clusters"] == 0
    assert (rep / "report.png").read_bytes()[:4] == b"\x89PNG"
    header = (rep / "cooccurrence.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["phone"] + [str(z) for z in range(8)]

    # a data dir with an utterance the labels lack: exit 1, the utterance named
    write_table(data / "utt2spk", {**{u: u for u in truth}, "zz-extra": "zz-extra"})
    durs = {u: f"{(len(c) - 1) / 100 + 0.025:.3f}" for u, c in truth.items()}
    write_table(data / "utt2dur", {**durs, "zz-extra": "1.000"})
    assert main(["kmeans", "report", "--labels", str(labels), "--data", str(data),
                 "--out", str(tmp_path / "r2")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "zz-extra" in err and "has no labels" in err
    assert not (tmp_path / "r2" / "report.json").exists()


def test_help_and_usage_errors(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["kmeans", "fit", "--help"])
    assert exc.value.code == 0
    helptext = " ".join(capsys.readouterr().out.split())
    assert "--percent" in helptext and "--fraction" in helptext
    # the default schedule rule is stated where the flags are
    assert "N*d*k multiply-adds" in helptext and "d <= 64" in helptext and "< 1e-3" in helptext
    with pytest.raises(SystemExit) as exc:
        main(["kmeans", "fit", "--features", "x", "--k", "3", "--out", "y",
              "--percent", "5", "--max-frames", "9"])  # fmt: skip
    assert exc.value.code == 2
    assert main(["kmeans"]) == 2
