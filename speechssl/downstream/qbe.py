"""Query by example (SUPERB QbE): no training, subsequence DTW over each layer's features.

A QbE task root holds ``dev/`` and ``test/``, each with two Kaldi data dirs and a hit list::

    <split>/queries/   the spoken queries
    <split>/docs/      the utterances searched
    <split>/hits       "<query-utt> <doc-utt>" per line: the query occurs in the document

For every layer of the upstream, each (query, document) pair is scored by subsequence DTW
(:func:`subsequence_dtw`: cosine distance between frames, free start and end in the
document, steps (1,1), (1,0), (0,1) of weight 1), as ``-cost / query frames``; each query's
scores are then standardised over the documents (zero mean, unit variance), as in SUPERB's
QbE. The layer with the best dev MTWV is picked (:func:`pick_layer`: ties, e.g. every layer at
MTWV 0 on a hard collection, go to the best dev MAP) and scored on test (MTWV and MAP).

:func:`mtwv` is the maximum term-weighted value of TRECVID/QUESST (beta 999.9:
``C/V (1/P_target - 1)`` with ``C=1, V=1000, P_target=1e-4``) and :func:`mean_average_precision`
the mean over queries of the average precision of the ranked documents. Queries with no hit
in a split are left out of both (and counted in the results).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.errors import ConfigError

BETA = 999.9
QBE_SPLITS = ("dev", "test")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_cost(query: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """``[..., N, M]`` cosine distances ``1 - cos`` between frames ``[..., N, D]`` and
    ``[..., M, D]`` (float64)."""
    return 1.0 - _unit_rows(query) @ np.swapaxes(_unit_rows(doc), -1, -2)


def _sdtw_rows(cost: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover (numba)
    # cost [B, N, W] float64 -> out [B]: row by row, two rows of the accumulated cost
    n_pairs, n, w = cost.shape
    for b in range(n_pairs):
        prev = cost[b, 0].copy()  # free start anywhere in the document
        cur = np.empty(w)
        for i in range(1, n):
            cur[0] = cost[b, i, 0] + prev[0]
            for j in range(1, w):
                best = prev[j - 1]
                if prev[j] < best:
                    best = prev[j]
                if cur[j - 1] < best:
                    best = cur[j - 1]
                cur[j] = cost[b, i, j] + best
            prev, cur = cur, prev
        low = np.inf
        for j in range(w):
            if prev[j] < low:
                low = prev[j]
        out[b] = low


_SDTW: list[Any] = []


def subsequence_dtw(cost: np.ndarray) -> np.ndarray:
    """Cheapest subsequence alignment cost of a query ``[..., N, M]`` cost matrix.

    The whole query (rows) aligns to any span of the document (columns); returns ``[...]``:
    ``min_j D[N-1, j]`` with ``D[0, j] = C[0, j]`` and
    ``D[i, j] = C[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` (``inf`` columns: no
    alignment passes them). A numba kernel, compiled once and cached on disk.
    """
    if not _SDTW:
        import numba

        _SDTW.append(numba.njit(cache=True, nogil=True)(_sdtw_rows))
    n, m = cost.shape[-2:]
    flat = np.ascontiguousarray(cost, dtype=np.float64).reshape(-1, n, m)
    out = np.empty(flat.shape[0])
    _SDTW[0](flat, out)
    return out.reshape(cost.shape[:-2])


def _targets(hits: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1)


def mtwv(scores: np.ndarray, hits: np.ndarray, beta: float = BETA) -> tuple[float, float]:
    """``(mtwv, threshold)`` of ``scores [Q, M]`` with ``hits [Q, M]`` (bool).

    ``TWV(t) = 1 - mean_q (P_miss(q, t) + beta P_fa(q, t))`` over the queries with at least
    one hit, a document detected when its score is ``>= t``; the maximum over every
    threshold, including one above all scores (TWV 0).
    """
    keep = _targets(hits) > 0
    if not keep.any():
        raise ConfigError("QbE: no query has a hit, MTWV is undefined")
    s, h = scores[keep], hits[keep].astype(bool)
    n_q, m = s.shape
    n_true = h.sum(axis=1, keepdims=True)
    n_false = m - n_true
    # each detection adds its share of TWV: +1/(Q n_true) if a hit, -beta/(Q n_false) if not
    gain = np.where(h, 1.0 / (n_q * n_true), -beta / (n_q * np.maximum(n_false, 1)))
    flat_s, flat_g = s.ravel(), gain.ravel()
    order = np.argsort(-flat_s, kind="stable")
    sorted_s = flat_s[order]
    total = np.cumsum(flat_g[order])
    last_of_tie = np.r_[sorted_s[1:] != sorted_s[:-1], True]
    values = total[last_of_tie]
    k = int(np.argmax(values))
    if values[k] <= 0.0:
        return 0.0, math.inf
    return float(values[k]), float(sorted_s[last_of_tie][k])


def mean_average_precision(scores: np.ndarray, hits: np.ndarray) -> float:
    """Mean over the queries with a hit of the average precision of their ranked documents
    (ties ranked in document order)."""
    aps = []
    for s, h in zip(scores, hits.astype(bool)):
        if not h.any():
            continue
        ranked = h[np.argsort(-s, kind="stable")]
        ranks = np.flatnonzero(ranked) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    if not aps:
        raise ConfigError("QbE: no query has a hit, MAP is undefined")
    return float(np.mean(aps))


def layer_scores(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray]) -> np.ndarray:
    """``[L, Q, M]`` standardised DTW scores from per-utterance ``[T, L, D]`` features."""
    n_layers = queries[0].shape[1]
    width = max(d.shape[0] for d in docs)
    # documents padded to one width; padded columns cost inf, so no alignment ends there
    padded = np.zeros((len(docs), width, n_layers, docs[0].shape[2]), dtype=np.float64)
    valid = np.zeros((len(docs), width), dtype=bool)
    for i, d in enumerate(docs):
        padded[i, : d.shape[0]] = d
        valid[i, : d.shape[0]] = True
    # unit-length document frames once, each layer as one [M * W, D] matrix
    doc_rows = _unit_rows(np.transpose(padded, (2, 0, 1, 3))).reshape(n_layers, -1, padded.shape[3])
    n_docs = len(docs)
    raw = np.zeros((n_layers, len(queries), n_docs))
    for qi, q in enumerate(queries):
        qt = _unit_rows(np.swapaxes(q, 0, 1))  # [L, N, D]
        n = qt.shape[1]
        cost = np.empty((n_layers, n_docs, n, width))
        for li in range(n_layers):  # one [N, D] x [D, M * W] product per layer
            sim = (qt[li] @ doc_rows[li].T).reshape(n, n_docs, width)
            cost[li] = 1.0 - np.swapaxes(sim, 0, 1)
        cost[:, ~valid[:, None, :].repeat(n, axis=1)] = np.inf
        raw[:, qi, :] = -subsequence_dtw(cost) / q.shape[0]
    mean = raw.mean(axis=2, keepdims=True)
    std = raw.std(axis=2, keepdims=True)
    return (raw - mean) / np.where(std > 0, std, 1.0)


def read_hits(path: Path, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    """``[Q, M]`` bool from a hit list; an unknown query or document names ``file:line``."""
    if not path.is_file():
        raise ConfigError(f"{path.parent}: no hits file (lines '<query-utt> <doc-utt>')")
    qi = {q: i for i, q in enumerate(queries)}
    di = {d: i for i, d in enumerate(docs)}
    hits = np.zeros((len(queries), len(docs)), dtype=bool)
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ConfigError(f"{path}:{lineno}: expected '<query-utt> <doc-utt>'")
        q, d = parts
        if q not in qi:
            raise ConfigError(f"{path}:{lineno}: query {q} is not in {path.parent / 'queries'}")
        if d not in di:
            raise ConfigError(f"{path}:{lineno}: document {d} is not in {path.parent / 'docs'}")
        hits[qi[q], di[d]] = True
    return hits


def _utterance_cmvn(feats: np.ndarray) -> np.ndarray:
    """``[T, L, D]`` standardised over its own frames, per layer and dimension."""
    std = feats.std(0, keepdims=True)
    return ((feats - feats.mean(0, keepdims=True)) / np.maximum(std, 1e-5)).astype(np.float32)


def run_qbe(cfg: Any, env: Any) -> dict[str, Any]:
    """``speechssl-probe task=qbe``: per-layer DTW on dev, the best layer scored on test."""
    from speechssl.data.kaldi_dir import KaldiDataDir
    from speechssl.downstream.cache import cache_layers, open_layer_cache
    from speechssl.downstream.upstreams import load_upstream
    from speechssl.utils.atomic import atomic_write_json

    root = Path(cfg.data.dir)
    exp = Path(cfg.trainer.exp_dir)
    if (exp / "wav.scp").exists():
        raise ConfigError(f"trainer.exp_dir={exp} is a Kaldi data dir; point it at a new dir")
    for split in QBE_SPLITS:
        for part in ("queries", "docs"):
            if not (root / split / part / "wav.scp").is_file():
                raise ConfigError(
                    f"data.dir={root}: no {split}/{part}/ data dir (a QbE root holds "
                    "dev/ and test/, each with queries/, docs/ and hits)"
                )
    upstream = load_upstream(cfg.upstream, env.device)
    layer = cfg.task.layer if cfg.task.layer >= 0 else None
    if layer is not None and layer >= upstream.num_layers:
        raise ConfigError(
            f"task.layer={layer}: upstream {upstream.name} has hidden states "
            f"0..{upstream.num_layers - 1}"
        )
    layers = [layer] if layer is not None else list(range(upstream.num_layers))
    cache_root = Path(cfg.data.cache_dir or exp / "cache")
    per_split: dict[str, dict[str, Any]] = {}
    for split in QBE_SPLITS:
        feats: dict[str, list[np.ndarray]] = {}
        ids: dict[str, list[str]] = {}
        for part in ("queries", "docs"):
            data = root / split / part
            out = cache_root / split / part
            cache_layers(
                data, out, upstream, layers, dtype=cfg.data.cache_dtype,
                batch_seconds=cfg.data.extract_batch_seconds,
            )  # fmt: skip
            cache = open_layer_cache(out, upstream, layers)
            ids[part] = KaldiDataDir(data).utt_ids()
            feats[part] = [np.asarray(cache.get(u), dtype=np.float32) for u in ids[part]]
            if upstream.standardize:  # raw fbank/MFCC: per-utterance CMVN (no training split)
                feats[part] = [_utterance_cmvn(a) for a in feats[part]]
        hits = read_hits(root / split / "hits", ids["queries"], ids["docs"])
        scores = layer_scores(feats["queries"], feats["docs"])
        per_split[split] = {
            "mtwv": [mtwv(s, hits)[0] for s in scores],
            "map": [mean_average_precision(s, hits) for s in scores],
            "queries": len(ids["queries"]),
            "queries_with_hits": int((hits.sum(1) > 0).sum()),
            "docs": len(ids["docs"]),
            "hits": int(hits.sum()),
        }
    dev = per_split["dev"]["mtwv"]
    best = pick_layer(dev, per_split["dev"]["map"])
    results = {
        "task": "qbe",
        "upstream": upstream.name,
        "upstream_spec": cfg.upstream,
        "upstream_identity": upstream.identity(),
        "metric": "mtwv",
        "mode": "max",
        "lr": None,
        "layer": layers[best],
        "dev": dev[best],
        "test": per_split["test"]["mtwv"][best],
        "dev_map": per_split["dev"]["map"][best],
        "test_map": per_split["test"]["map"][best],
        "per_layer": {
            str(layers[i]): {"dev_mtwv": dev[i], "dev_map": per_split["dev"]["map"][i]}
            for i in range(len(layers))
        },
        "counts": {
            s: {k: v for k, v in d.items() if k not in ("mtwv", "map")}
            for s, d in per_split.items()
        },
        "data": str(root.resolve()),
    }
    if env.is_main:
        exp.mkdir(parents=True, exist_ok=True)
        atomic_write_json(exp / "results.json", results)
    return results


def pick_layer(dev_mtwv: Sequence[float], dev_map: Sequence[float]) -> int:
    """Index of the layer with the best dev MTWV; equal MTWVs go to the best dev MAP, then
    to the lowest layer. (MTWV is 0 for every layer when no threshold beats the miss and
    false-alarm costs, as on small collections; MAP still ranks the layers there.)"""
    return max(range(len(dev_mtwv)), key=lambda i: (dev_mtwv[i], dev_map[i], -i))


# --------------------------------------------------------------------------- bundled corpus


def prepare_synth_qbe(
    corpus: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0,
    terms: int = 12,
) -> dict[str, dict[str, int]]:  # fmt: skip
    """QbE from the bundled SYNTHETIC corpus.

    Documents: every multi-word utterance of the corpus (sentences, digit strings), one
    collection searched by both splits (as in QUESST). Terms: ``terms`` words (3 letters or
    more, seeded choice) that occur in the documents. Queries: each term spoken in
    isolation by every dev-split speaker (dev queries) and every test-split speaker (test
    queries) with the speaker's own eSpeak NG voice. A query hits the documents whose text
    holds its term. Output ``OUT/{dev,test}/{queries,docs}`` and ``OUT/{dev,test}/hits``;
    query audio in ``OUT/wav/<split>/``.
    """
    import soundfile as sf

    from speechssl.data.kaldi_dir import KaldiDataDir, write_data_dir
    from speechssl.data.synth.espeak import EspeakSynthesizer
    from speechssl.data.tables import read_table
    from speechssl.downstream.prep_synth_ic import SAMPLE_RATE, read_voices, speak
    from speechssl.utils.atomic import atomic_dir, atomic_write_text

    root, out = Path(corpus), Path(out)
    docs: dict[str, tuple[str, str, float, str]] = {}
    for split in ("train", "dev", "test"):
        d = root / split
        for name in ("wav.scp", "utt2spk", "text"):
            if not (d / name).is_file():
                raise ConfigError(f"{d}: no {name} (not a bundled synth corpus split)")
        ddir = KaldiDataDir(d)
        scp, u2s, u2t = (read_table(d / n) for n in ("wav.scp", "utt2spk", "text"))
        for u in ddir.utt_ids():
            if len(u2t[u].split()) > 1:
                docs[u] = (scp[u], u2s[u], ddir.duration(u), u2t[u])
    if not docs:
        raise ConfigError(f"{root}: no multi-word utterance to search in")
    words = sorted({w for e in docs.values() for w in e[3].split() if len(w) >= 3})
    words.sort(key=lambda w: hashlib.sha256(f"{seed}:{w}".encode()).hexdigest())
    chosen = sorted(words[:terms])
    if not chosen:
        raise ConfigError(f"{root}: no word of 3 letters or more in the documents")
    synth = EspeakSynthesizer()
    resamplers: dict[int, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in QBE_SPLITS:
        voices = read_voices(root / split / "spk2voice")
        wav: dict[str, str] = {}
        spk2: dict[str, str] = {}
        dur: dict[str, float] = {}
        terms_of: dict[str, str] = {}
        wav_dir = out / "wav" / split
        with atomic_dir(wav_dir, overwrite=True) as tmp:
            for speaker, (settings, warp) in sorted(voices.items()):
                for k, term in enumerate(chosen):
                    utt = f"{speaker}-q-{term.lower()}"
                    signal = speak(synth, settings, warp, term.lower(),
                                   (seed * 7907 + k) % 2**31, resamplers)  # fmt: skip
                    sf.write(tmp / f"{utt}.wav", signal, SAMPLE_RATE, subtype="PCM_16")
                    wav[utt] = str((wav_dir / f"{utt}.wav").resolve())
                    spk2[utt], dur[utt], terms_of[utt] = speaker, len(signal) / SAMPLE_RATE, term
        if not wav:
            raise ConfigError(f"{root / split}: no speaker in spk2voice")
        write_data_dir(
            out / split / "queries", wav_scp=wav, utt2spk=spk2, utt2dur=dur, text=terms_of
        )
        write_data_dir(
            out / split / "docs",
            wav_scp={u: e[0] for u, e in docs.items()},
            utt2spk={u: e[1] for u, e in docs.items()},
            utt2dur={u: e[2] for u, e in docs.items()},
            text={u: e[3] for u, e in docs.items()},
        )
        lines = sorted(
            f"{q} {d}"
            for q, term in terms_of.items()
            for d, e in docs.items()
            if term in e[3].split()
        )
        atomic_write_text(out / split / "hits", "".join(f"{x}\n" for x in lines))
        counts[split] = {"queries": len(wav), "docs": len(docs), "hits": len(lines)}
    return counts
