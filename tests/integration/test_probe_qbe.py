"""Query by example (SUPERB QbE): subsequence DTW against librosa, MTWV against a brute
force over thresholds, MAP against scikit-learn, and `speechssl-probe task=qbe` on queries
synthesized with the bundled SYNTHETIC corpus's voices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from speechssl.cli.main import main as cli
from speechssl.downstream.cli import main as probe_main
from speechssl.downstream.qbe import (
    BETA,
    cosine_cost,
    layer_scores,
    mean_average_precision,
    mtwv,
    pick_layer,
    subsequence_dtw,
)


def probe(args: list[str]) -> int:
    try:
        probe_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("speechssl-probe main() did not exit")


def test_subsequence_dtw_matches_librosa():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((2, 11, 5)), rng.standard_normal((2, 37, 5))
    cost = cosine_cost(q, d)
    ours = subsequence_dtw(cost)
    for layer in range(2):
        acc, _ = librosa.sequence.dtw(C=cost[layer], subseq=True)
        assert ours[layer] == pytest.approx(acc[-1].min(), rel=1e-12)
    # a document holding the query's exact frames aligns at (nearly) zero cost
    doc = np.concatenate([rng.standard_normal((9, 5)), q[0], rng.standard_normal((6, 5))])
    assert subsequence_dtw(cosine_cost(q[0], doc)) == pytest.approx(0.0, abs=1e-9)


def _twv_brute(scores, hits, beta=BETA):
    keep = hits.sum(1) > 0
    s, h = scores[keep], hits[keep]
    best = 0.0
    for t in np.unique(s):
        det = s >= t
        p_miss = 1 - (det & h).sum(1) / h.sum(1)
        p_fa = (det & ~h).sum(1) / (~h).sum(1)
        best = max(best, 1 - float(np.mean(p_miss + beta * p_fa)))
    return best


def test_mtwv_and_map_match_independent_computations():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    for trial in range(20):
        hits = rng.random((6, 30)) < 0.2
        hits[0] = False  # a query without hits is left out
        scores = rng.standard_normal((6, 30)) + 1.5 * hits
        if trial % 2:
            scores = np.round(scores, 1)  # ties
        for beta in (BETA, 1.0):
            assert mtwv(scores, hits, beta)[0] == pytest.approx(_twv_brute(scores, hits, beta))
        if trial % 2 == 0:  # sklearn ranks ties together; compare without ties
            ref = np.mean([average_precision_score(h, s) for s, h in zip(scores, hits) if h.any()])
            assert mean_average_precision(scores, hits) == pytest.approx(ref)
    perfect = np.where(hits, 1.0, 0.0)
    assert mtwv(perfect, hits)[0] == pytest.approx(1.0)
    assert mean_average_precision(perfect, hits) == pytest.approx(1.0)
    assert mtwv(-perfect, hits) == (0.0, math.inf)


def test_pick_layer_breaks_mtwv_ties_by_map():
    assert pick_layer([0.0, 0.0, 0.0], [0.10, 0.30, 0.20]) == 1
    assert pick_layer([0.2, 0.5, 0.5], [0.9, 0.1, 0.4]) == 2  # MTWV first, MAP only on ties
    assert pick_layer([0.0, 0.0], [0.3, 0.3]) == 0  # a full tie: the lowest layer


def test_layer_scores_find_the_planted_query():
    rng = np.random.default_rng(2)
    query = rng.standard_normal((8, 2, 4))
    docs = [rng.standard_normal((n, 2, 4)) for n in (20, 31, 25)]
    docs[1][10:18] = query + 0.01 * rng.standard_normal(query.shape)
    scores = layer_scores([query], docs)
    assert scores.shape == (2, 1, 3)
    assert (scores[:, 0].argmax(-1) == 1).all()
    assert np.allclose(scores.mean(-1), 0) and np.allclose(scores.std(-1), 1)


@pytest.mark.slow
def test_probe_qbe_bundled_corpus(synth_corpus, tmp_path, capsys):
    """Spoken word queries (SYNTHETIC voices) searched in the corpus's sentences."""
    out = tmp_path / "tasks"
    assert cli(["probe", "prepare-synth", "--corpus", str(synth_corpus), "--out", str(out),
                "--tasks", "qbe"]) == 0  # fmt: skip
    hits = (out / "qbe" / "dev" / "hits").read_text().split("\n")
    assert len([h for h in hits if h]) > 0
    exp = tmp_path / "qbe_mfcc"
    assert probe(["task=qbe", "upstream=mfcc", f"data.dir={out / 'qbe'}",
                  f"trainer.exp_dir={exp}", "trainer.device=cpu"]) == 0  # fmt: skip
    res = json.loads((exp / "results.json").read_text())
    assert res["task"] == "qbe" and res["metric"] == "mtwv" and res["mode"] == "max"
    assert 0.0 <= res["test"] <= 1.0 and 0.0 <= res["test_map"] <= 1.0
    assert res["dev"] == max(v["dev_mtwv"] for v in res["per_layer"].values())
    per = res["per_layer"]
    names = list(per)
    picked = pick_layer([per[n]["dev_mtwv"] for n in names], [per[n]["dev_map"] for n in names])
    assert str(res["layer"]) == names[picked]
    # the report takes the run beside the trained tasks
    assert cli(["probe", "report", f"mfcc={exp}", "--out", str(tmp_path / "rep")]) == 0
    assert "QBE MTWV" in (tmp_path / "rep" / "probe.md").read_text()
    # a hit naming an unknown document is refused, naming file and line
    (out / "qbe" / "test" / "hits").write_text("spk01-q-x nosuchdoc\n")
    assert probe(["task=qbe", "upstream=mfcc", f"data.dir={out / 'qbe'}",
                  f"trainer.exp_dir={tmp_path / 'e2'}", "trainer.device=cpu"]) == 1  # fmt: skip
    assert "hits:1" in capsys.readouterr().err


def test_quesst14_prep_and_probe(tmp_path, capsys):
    """QUESST 2014's English lists on a tiny fixture (tones, not speech), then task=qbe."""
    from probing_fixtures import make_quesst14

    from speechssl.data.tables import read_table

    db = make_quesst14(tmp_path / "corpus")
    out = tmp_path / "qbe"
    assert cli(["data", "prepare-quesst14", "--corpus-dir", str(db), "--out", str(out)]) == 0
    assert set(read_table(out / "dev" / "docs" / "wav.scp")) == {
        f"quesst14_0000{i}" for i in range(1, 5)
    }  # the albanian document is left out
    assert set(read_table(out / "test" / "queries" / "wav.scp")) == {
        "quesst14_eval_0001", "quesst14_eval_0002",
    }  # fmt: skip
    assert (out / "dev" / "hits").read_text().split("\n")[:3] == [
        "quesst14_dev_0001 quesst14_00001",
        "quesst14_dev_0001 quesst14_00004",
        "quesst14_dev_0002 quesst14_00002",
    ]
    exp = tmp_path / "exp"
    assert probe(["task=qbe", "upstream=fbank", f"data.dir={out}", f"trainer.exp_dir={exp}",
                  "trainer.device=cpu"]) == 0  # fmt: skip
    res = json.loads((exp / "results.json").read_text())
    assert res["counts"]["test"] == {"queries": 2, "queries_with_hits": 2, "docs": 4, "hits": 3}
    assert 0.0 <= res["test"] <= 1.0
    assert cli(["probe", "report", f"fbank={exp}", "--out", str(tmp_path / "rep")]) == 0
    assert f"| fbank | layer {res['layer']} |" in (tmp_path / "rep" / "probe.md").read_text()
    # a listed query without audio names the list line
    (db / "eval_queries" / "quesst14_eval_0002.wav").unlink()
    assert cli(["data", "prepare-quesst14", "--corpus-dir", str(db), "--out", str(out)]) == 1
    assert "quesst14_eval_0002.wav" in capsys.readouterr().err
