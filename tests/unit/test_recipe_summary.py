"""`speechssl recipe summary` on reports made by the real `speechssl kmeans` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechssl.cli.main import main
from speechssl.features.store import ShardWriter, StoreMeta, write_meta
from speechssl.recipe.summary import RESULTS_JSON, RESULTS_MD, SummaryError, read_unit_report

NUM_PHONES = 4


def _make_store(root: Path, phones: dict[str, np.ndarray], noise: float, seed: int) -> None:
    """Features at 100 frames/s whose frames sit near their phone's centroid (plus noise)."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(NUM_PHONES, 3)) * 3
    write_meta(root, StoreMeta(kind="mfcc", dim=3, dtype="float32", frame_rate=100, nshard=1))
    with ShardWriter(root, 0, 1, dim=3, dtype="float32") as writer:
        for utt, seq in phones.items():
            writer.add(utt, centroids[seq] + rng.normal(scale=noise, size=(len(seq), 3)))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two unit reports on the same alignments: clean features (high PNMI), noisy (low)."""
    root = tmp_path_factory.mktemp("units")
    rng = np.random.default_rng(0)
    phones = {f"utt{i:02d}": np.repeat(rng.integers(0, NUM_PHONES, 12), 5) for i in range(8)}
    ali = root / "ali.phones"
    ali.write_text(
        "".join(f"{u} " + " ".join(f"p{p}" for p in s) + "\n" for u, s in phones.items())
    )
    out = {}
    for name, noise in (("noisy", 8.0), ("clean", 0.1)):
        store = root / f"store_{name}"
        _make_store(store, phones, noise, seed=1)
        km, labels, report = root / f"km_{name}", root / f"labels_{name}", root / f"rep_{name}"
        common = ["--features", str(store)]
        assert main(["kmeans", "fit", *common, "--k", "4", "--out", str(km), "--threads", "1"]) == 0
        assert main(["kmeans", "apply", "--kmeans", str(km), *common, "--out", str(labels)]) == 0
        args = ["kmeans", "report", "--labels", str(labels), "--alignments", str(ali)]
        assert main([*args, "--out", str(report)]) == 0
        out[name] = report
    return out


def test_unit_rows_come_from_the_reports(reports: dict[str, Path]) -> None:
    clean = read_unit_report("clean", reports["clean"])
    noisy = read_unit_report("noisy", reports["noisy"])
    report = json.loads((reports["clean"] / "report.json").read_text())
    assert clean.pnmi == pytest.approx(report["phones"]["pnmi"])
    assert clean.k == 4 and clean.num_utts == 8 and clean.features == "mfcc"
    assert clean.pnmi is not None and noisy.pnmi is not None
    assert clean.pnmi > noisy.pnmi


def test_summary_table_and_passing_check(
    reports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "recipe", "summary", "--out", str(tmp_path),
            "--units", f"iter1:noisy={reports['noisy']}",
            "--units", f"iter2:clean={reports['clean']}",
            "--expect-higher", "pnmi",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / RESULTS_MD).read_text()
    assert "| units | features | K | PNMI |" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| iter")]
    assert [r.split(" | ")[0] for r in rows] == ["| iter1:noisy", "| iter2:clean"]
    results = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert results["failed_checks"] == []
    assert results["checks"][0].startswith("pnmi: iter2:clean ")
    assert [u["name"] for u in results["units"]] == ["iter1:noisy", "iter2:clean"]


def test_failing_check_still_writes_the_tables(
    reports: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "recipe", "summary", "--out", str(tmp_path),
            "--units", f"a={reports['clean']}", "--units", f"b={reports['noisy']}",
            "--expect-higher", "pnmi",
        ]
    )  # fmt: skip
    assert rc == 1
    out, err = capsys.readouterr()
    assert "FAILED: units b have pnmi" in out
    assert "check failed: units b have pnmi" in err and "not higher than a's" in err
    assert json.loads((tmp_path / RESULTS_JSON).read_text())["failed_checks"]


def test_bad_inputs_are_named(reports: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SummaryError, match=r"nowhere/report.json: missing"):
        read_unit_report("x", tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "report.json").write_text('{"k": 4}')
    with pytest.raises(SummaryError, match=r"bad/report.json: no num_utts"):
        read_unit_report("x", bad)
    assert main(["recipe", "summary", "--out", str(tmp_path), "--units", "nopath"]) == 1
    rc = main(
        ["recipe", "summary", "--out", str(tmp_path), "--units", f"a={reports['clean']}",
         "--expect-higher", "pnmi"]
    )  # fmt: skip
    assert rc == 1  # one row cannot be compared
