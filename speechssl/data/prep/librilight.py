"""Libri-Light (unlabeled) -> Kaldi data dir, optionally cut into segments.

The real layout::

    ROOT/<subset>/<speaker>/<book>/<file>.flac
    ROOT/<subset>/<speaker>/<book>/<file>.json     metadata: speaker, book_meta, snr,
                                                  voice_activity [[start, end], ...] (s)

There are no transcripts. Each flac is a recording ``<speaker>-<book>-<file>`` (whitespace
replaced by ``_``), speaker = the speaker folder. Without ``max_segment`` each recording is
one utterance. With it, each recording is cut into ``segments`` of at most ``max_segment``
seconds: consecutive voice-activity regions from the metadata are packed greedily into one
segment while it fits (silence between packed regions is kept, silence between segments
dropped; a region longer than the limit is cut into equal pieces), or, without voice
activity, the recording is cut into equal pieces. Output: ``wav.scp``, ``utt2spk``,
``spk2utt``, ``utt2dur``, and with segments also ``segments`` and ``reco2dur`` (else
``utt2num_samples``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.kaldi_dir import Segment
from speechssl.data.prep.common import (
    BadMetadataError,
    CorpusError,
    MissingAudioError,
    MissingMetadataError,
    PrepResult,
    ProblemCollector,
    find_dir,
    write_prepared,
)
from speechssl.errors import ConfigError


def _clean_id(text: str) -> str:
    return "_".join(text.split())


def split_evenly(start: float, end: float, max_len: float) -> list[tuple[float, float]]:
    """Cut ``[start, end]`` into the fewest equal pieces no longer than ``max_len``."""
    n = max(1, math.ceil((end - start) / max_len - 1e-9))
    step = (end - start) / n
    return [(start + i * step, start + (i + 1) * step if i < n - 1 else end) for i in range(n)]


def pack_voice_activity(
    regions: list[tuple[float, float]], duration: float, max_len: float
) -> list[tuple[float, float]]:
    """Greedy packing of voice-activity regions into segments of at most ``max_len``."""
    cleaned = sorted(
        (max(0.0, s), min(duration, e)) for s, e in regions if min(duration, e) > max(0.0, s)
    )
    out: list[tuple[float, float]] = []
    cur: tuple[float, float] | None = None
    for s, e in cleaned:
        if cur is not None and e - cur[0] <= max_len:
            cur = (cur[0], max(cur[1], e))
            continue
        if cur is not None:
            out.append(cur)
            cur = None
        if e - s <= max_len:
            cur = (s, e)
        else:
            out.extend(split_evenly(s, e, max_len))
    if cur is not None:
        out.append(cur)
    return out


def _voice_activity(meta: Any) -> list[tuple[float, float]] | None:
    va = meta.get("voice_activity") if isinstance(meta, dict) else None
    if not isinstance(va, list):
        return None
    regions = []
    for pair in va:
        if (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(x, int | float) for x in pair)
        ):
            regions.append((float(pair[0]), float(pair[1])))
        else:
            raise ValueError(f"voice_activity entry {pair!r} is not [start, end]")
    return regions


def prepare_librilight(
    corpus_dir: str | os.PathLike[str],
    subset: str,
    out: str | os.PathLike[str],
    *,
    max_segment: float | None = None,
    tolerant: bool = False,
) -> PrepResult:
    """Prepare Libri-Light ``subset`` (``small``, ``medium``, ``large``, ...)."""
    if max_segment is not None and max_segment <= 0:
        raise ConfigError(f"max_segment must be positive, got {max_segment}")
    root = Path(corpus_dir).resolve()
    subset_dir = find_dir([root / subset], f"Libri-Light subset {subset}")
    collect = ProblemCollector(f"librilight {subset}", tolerant)
    wav_scp: dict[str, str] = {}
    reco_spk: dict[str, str] = {}
    reco_dur: dict[str, float] = {}
    reco_frames: dict[str, int] = {}
    reco_va: dict[str, list[tuple[float, float]] | None] = {}
    for spk_dir in sorted(p for p in subset_dir.iterdir() if p.is_dir()):
        spk = _clean_id(spk_dir.name)
        for book_dir in sorted(p for p in spk_dir.iterdir() if p.is_dir()):
            flacs = {p.stem: p for p in book_dir.glob("*.flac")}
            metas = {p.stem: p for p in book_dir.glob("*.json")}
            for stem in sorted(set(flacs) | set(metas)):
                reco = f"{spk}-{_clean_id(book_dir.name)}-{_clean_id(stem)}"
                flac, meta_path = flacs.get(stem), metas.get(stem)
                if flac is None:
                    assert meta_path is not None
                    collect.bad(
                        MissingAudioError(
                            reco, f"metadata has no audio file {stem}.flac", str(meta_path)
                        )
                    )
                    continue
                if meta_path is None:
                    collect.bad(
                        MissingMetadataError(reco, f"audio file has no {stem}.json", str(flac))
                    )
                    continue
                try:
                    with open(meta_path, encoding="utf-8") as fh:
                        regions = _voice_activity(json.load(fh))
                except (ValueError, UnicodeDecodeError) as exc:
                    collect.bad(
                        BadMetadataError(reco, f"unreadable metadata: {exc}", str(meta_path))
                    )
                    continue
                if reco in wav_scp:
                    collect.bad(
                        CorpusError(reco, "two files map to the same recording id", str(flac))
                    )
                    continue
                try:
                    head = probe(AudioSource(path=str(flac)), utt=reco)
                except AudioError as err:
                    collect.bad(err)
                    continue
                wav_scp[reco] = str(flac)
                reco_spk[reco] = spk
                reco_dur[reco] = head.duration
                reco_frames[reco] = head.frames
                reco_va[reco] = regions
                collect.written()
    collect.raise_if_any()
    notes: list[str] = []
    if max_segment is None:
        target = write_prepared(
            out,
            wav_scp=wav_scp,
            utt2spk=reco_spk,
            utt2dur=reco_dur,
            utt2num_samples=reco_frames,
        )
    else:
        segments: dict[str, Segment] = {}
        utt2spk: dict[str, str] = {}
        utt2dur: dict[str, float] = {}
        no_va = 0
        for reco, dur in reco_dur.items():
            regions = reco_va[reco]
            pieces = pack_voice_activity(regions, dur, max_segment) if regions else []
            if not pieces:  # no (usable) voice activity in the metadata
                no_va += 1
                pieces = split_evenly(0.0, dur, max_segment)
            for i, (s, e) in enumerate(pieces):
                # 4 decimals is what the segments file keeps; compute durations from those
                s, e = round(s, 4), round(e, 4)
                if e <= s:
                    continue
                utt = f"{reco}-{i:04d}"
                segments[utt] = Segment(reco, s, e)
                utt2spk[utt] = reco_spk[reco]
                utt2dur[utt] = round(e - s, 4)
        used = {seg.recording for seg in segments.values()}
        if no_va:
            notes.append(f"{no_va} recordings without voice activity were cut evenly")
        target = write_prepared(
            out,
            wav_scp={r: p for r, p in wav_scp.items() if r in used},
            utt2spk=utt2spk,
            segments=segments,
            utt2dur=utt2dur,
            reco2dur={r: d for r, d in reco_dur.items() if r in used},
        )
        notes.append(f"{len(segments)} segments of at most {max_segment:g} s")
    collect.report.check()
    return PrepResult(target, collect.report, notes)
