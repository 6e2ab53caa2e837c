"""The audio rules of ``validate`` (default level: headers; ``strict``: full decode).

Recordings are sampled on big dirs (``audio_sample``, ``seed``) and checked in ``nj`` worker
processes; each result is reported against its ``wav.scp`` line. Durations from reco2dur,
utt2dur, utt2num_samples and segment ends are then compared with the headers read.
"""

from __future__ import annotations

import io
import multiprocessing
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from speechssl.data.audio import AudioError, AudioSource, read_pipe
from speechssl.data.kaldi_dir import parse_wav_entry
from speechssl.data.tables import iter_rows
from speechssl.data.validate.values import finite_span, positive

if TYPE_CHECKING:
    from speechssl.data.validate.scan import DirCheck


def check_audio(c: DirCheck) -> None:
    """Each (sampled) recording exists and decodes; rates, channels, durations; with
    ``strict``, decoded content (NaN/inf, all-zero recordings or segments, truncation)."""
    opts = c.opts
    has_segments = c.has_segments
    n = c.scans["wav.scp"].lines
    sample = opts.audio_sample
    if sample is None:
        sample = 0 if opts.level == "strict" else 10000
    chosen: set[int] | None = None
    if 0 < sample < n:
        chosen = set(random.Random(opts.seed).sample(range(1, n + 1), sample))
    strict = opts.level == "strict"
    allow_pipes = opts.allow_pipes
    wav_path = c.dir / "wav.scp"

    def selected() -> Iterator[tuple[str, int, str, bool]]:
        for lineno, key, rest in iter_rows(wav_path, only_lines=chosen):
            if not rest:
                continue
            path, pipe = parse_wav_entry(" ".join(rest))
            if pipe and not allow_pipes:
                continue  # already an error; never run it
            yield key, lineno, path, pipe

    segs_of: dict[str, list[tuple[str, float, float]]] = {}
    if strict and has_segments:
        # strict checks each segment for digital silence, so workers need the segments
        wanted = {key.encode() for key, _, _, _ in selected()}
        for _, utt, rest in iter_rows(c.dir / "segments", only_values=wanted, field=1):
            span = finite_span(rest[1], rest[2]) if len(rest) == 3 else None
            if span is not None:  # a bad one is reported by check_segments, never decoded
                segs_of.setdefault(rest[0], []).append((utt, *span))
    jobs = (
        (key, lineno, path, pipe, strict, segs_of.get(key, []))
        for key, lineno, path, pipe in selected()
    )
    infos: dict[str, tuple[int, int, int]] = {}
    rates: Counter[int] = Counter()
    channels: Counter[int] = Counter()
    checked = 0
    for result in _run_jobs(jobs, opts.nj):
        checked += 1
        key, lineno = result["key"], result["line"]
        if "error" in result:
            kind, reason = result["error"]
            c.err(f"audio-{kind}", "wav.scp", lineno, key, reason)
            continue
        rate, nchan, frames = result["rate"], result["channels"], result["frames"]
        infos[key] = (rate, nchan, frames)
        rates[rate] += 1
        channels[nchan] += 1
        if opts.sample_rate is not None and rate != opts.sample_rate:
            c.err(
                "audio-sample-rate",
                "wav.scp",
                lineno,
                key,
                f"{result['path']}: sample rate {rate} Hz, expected {opts.sample_rate} Hz",
            )
        if nchan > 1:
            c.warn(
                "audio-channels",
                "wav.scp",
                lineno,
                key,
                f"{result['path']}: {nchan} channels (loading needs channels=select:N or mean)",
            )
        for code, reason in result.get("content", []):
            c.err(f"audio-{code}", "wav.scp", lineno, key, f"{result['path']}: {reason}")
    c.report.stats["audio_checked"] = checked
    how = "decoded fully" if strict else "headers read"
    scope = "all" if chosen is None else f"a random sample of {checked}"
    c.report.notes.append(
        f"audio: {how} for {scope} of {n} recordings"
        + ("" if chosen is None else " (--audio-sample 0 checks all)")
    )
    c.report.stats["sample_rates"] = {str(r): n for r, n in sorted(rates.items())}
    c.report.stats["channels"] = {str(ch): k for ch, k in sorted(channels.items())}
    if opts.sample_rate is None and len(rates) > 1:
        c.warn(
            "mixed-sample-rates",
            "wav.scp",
            None,
            None,
            "recordings have different sample rates: "
            + ", ".join(f"{r} Hz x{n}" for r, n in sorted(rates.items())),
        )
    _check_durations_against_audio(c, infos)


def _check_durations_against_audio(c: DirCheck, infos: dict[str, tuple[int, int, int]]) -> None:
    """reco2dur / utt2dur / utt2num_samples and segment ends against the headers read."""
    has_segments = c.has_segments
    if not infos:
        return
    tol = c.opts.duration_tolerance
    over = c.opts.segment_overshoot
    wanted = {key.encode("utf-8") for key in infos}

    def seconds(key: str) -> float:
        rate, _, frames = infos[key]
        return frames / rate

    def check_duration_table(table: str) -> None:
        # reco2dur / utt2dur: a duration per key whose audio we read
        for lineno, key, rest in iter_rows(c.dir / table, only_values=wanted):
            if key in infos and len(rest) == 1:
                d = positive(rest[0], integer=False)
                if d is not None and abs(d - seconds(key)) > tol:
                    c.err(
                        "duration-mismatch",
                        table,
                        lineno,
                        key,
                        f"{d} s but the audio is {seconds(key):.4f} s",
                    )

    if c.has("reco2dur"):
        check_duration_table("reco2dur")
    if has_segments:
        for lineno, utt, rest in iter_rows(c.dir / "segments", only_values=wanted, field=1):
            if len(rest) != 3 or rest[0] not in infos:
                continue
            span = finite_span(rest[1], rest[2])
            if span is None:
                continue  # reported by check_segments
            end = span[1]
            if end > seconds(rest[0]) + over:
                c.err(
                    "segment-outside",
                    "segments",
                    lineno,
                    utt,
                    f"ends at {end} s, after the end of {rest[0]} ({seconds(rest[0]):.4f} s)",
                )
        return
    if c.has("utt2dur"):
        check_duration_table("utt2dur")
    if c.has("utt2num_samples"):
        for lineno, key, rest in iter_rows(c.dir / "utt2num_samples", only_values=wanted):
            if key in infos and len(rest) == 1:
                ns = positive(rest[0], integer=True)
                if ns is not None and int(ns) != infos[key][2]:
                    c.err(
                        "duration-mismatch",
                        "utt2num_samples",
                        lineno,
                        key,
                        f"{int(ns)} samples but the audio has {infos[key][2]}",
                    )


# --------------------------------------------------------------------------------------
# audio jobs (run in worker processes when nj > 1)

_Job = tuple[str, int, str, bool, bool, list[tuple[str, float, float]]]


def _check_recording(job: _Job) -> dict[str, Any]:
    key, lineno, path, pipe, strict, segments = job
    out: dict[str, Any] = {"key": key, "line": lineno, "path": path}
    try:
        info = AudioSource(path=path, pipe=pipe, recording=key).probe(utt=key)
    except AudioError as err:
        out["error"] = (type(err).kind, f"{path}: {err.reason}")
        return out
    out.update(rate=info.sample_rate, channels=info.channels, frames=info.frames)
    if strict:
        out["content"] = _decode_stats(path, pipe, key, info.sample_rate, info.frames, segments)
    return out


def _decode_stats(
    path: str,
    pipe: bool,
    key: str,
    rate: int,
    frames: int,
    segments: list[tuple[str, float, float]],
) -> list[tuple[str, str]]:
    """Decode block by block (bounded memory): NaN/inf, all-zero, decodable length."""
    problems: list[tuple[str, str]] = []
    source: Any = io.BytesIO(read_pipe(AudioSource(path=path, pipe=True), key)) if pipe else path
    block = rate * 30
    nan = inf = 0
    decoded = 0
    # per-segment nonzero flags, found by mapping each block onto the segments it covers
    spans = sorted((round(s * rate), round(e * rate), utt) for utt, s, e in segments)
    seg_nonzero = {utt: False for _, _, utt in spans}
    any_nonzero = False
    try:
        with sf.SoundFile(source) as fh:
            while True:
                data = fh.read(block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                start = decoded
                decoded += data.shape[0]
                finite = np.isfinite(data)
                if not finite.all():
                    n_nan = int(np.isnan(data).sum())
                    nan += n_nan
                    inf += int(data.size - finite.sum()) - n_nan
                nz_rows = np.flatnonzero(np.any(np.nan_to_num(data) != 0, axis=1))
                if nz_rows.size:
                    any_nonzero = True
                    for s, e, utt in spans:
                        if seg_nonzero[utt] or e <= start or s >= decoded:
                            continue
                        lo, hi = max(s - start, 0), min(e - start, data.shape[0])
                        idx = np.searchsorted(nz_rows, lo)
                        if idx < nz_rows.size and nz_rows[idx] < hi:
                            seg_nonzero[utt] = True
    except (sf.LibsndfileError, RuntimeError) as exc:
        problems.append(("corrupt", f"decoding failed after {decoded} samples: {exc}"))
        return problems
    if decoded < frames:
        problems.append(
            ("truncated", f"decoded {decoded} of the {frames} samples the header declares")
        )
    if nan or inf:
        problems.append(("non-finite", f"{nan} NaN and {inf} infinite samples"))
    if not any_nonzero:
        problems.append(("all-zero", "every sample is zero"))
    else:
        for utt, nonzero in seg_nonzero.items():
            if not nonzero:
                problems.append(("all-zero", f"segment {utt}: every sample is zero"))
    return problems


def _run_jobs(jobs: Iterable[_Job], nj: int) -> Iterator[dict[str, Any]]:
    if nj <= 1:
        yield from map(_check_recording, jobs)
        return
    # spawn: workers import only soundfile/numpy; safe whatever threads the parent runs
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(nj) as pool:
        yield from pool.imap(_check_recording, jobs, chunksize=64)
