"""``speechssl data info``: what a data dir holds (counts, hours, durations, rates, speakers).

Durations come from ``utt2dur`` if present, else from ``segments``, else from the audio
headers of every recording. Sample rates and channel counts come from the headers of a
random sample of recordings (all of them when the dir is small). Tables are streamed; only
the durations (8 bytes per utterance) and per-speaker counts are held in memory.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.data.audio import AudioError, AudioSource, probe
from speechssl.data.kaldi_dir import parse_wav_entry
from speechssl.data.tables import iter_rows
from speechssl.errors import DataDirError

#: histogram bucket edges in seconds (the last bucket is open)
HISTOGRAM_EDGES = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)


@dataclass
class DataDirInfo:
    data_dir: str
    utterances: int = 0
    recordings: int = 0
    speakers: int = 0
    has_segments: bool = False
    duration_source: str = ""
    """``utt2dur``, ``segments`` or ``audio headers``."""
    total_hours: float = 0.0
    duration_stats: dict[str, float] = field(default_factory=dict)
    """Seconds: min, mean, median, max."""
    histogram: list[dict[str, Any]] = field(default_factory=list)
    """``{"from": s, "to": s | None, "count": n, "hours": h}`` per bucket."""
    sample_rates: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    audio_checked: int = 0
    audio_unreadable: int = 0
    utts_per_speaker: dict[str, float] = field(default_factory=dict)
    genders: dict[str, int] = field(default_factory=dict)
    words: int | None = None
    vocabulary: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [f"data dir        {self.data_dir}"]
        lines.append(
            f"utterances      {self.utterances}"
            + (f" (segments of {self.recordings} recordings)" if self.has_segments else "")
        )
        lines.append(f"speakers        {self.speakers}")
        if self.utts_per_speaker:
            u = self.utts_per_speaker
            lines.append(
                f"utts/speaker    min {u['min']:g}  median {u['median']:g}  mean "
                f"{u['mean']:.1f}  max {u['max']:g}"
            )
        if self.genders:
            lines.append(
                "genders         " + "  ".join(f"{g}: {n}" for g, n in self.genders.items())
            )
        lines.append(f"total           {self.total_hours:.3f} h (from {self.duration_source})")
        if self.duration_stats:
            d = self.duration_stats
            lines.append(
                f"duration (s)    min {d['min']:.2f}  median {d['median']:.2f}  mean "
                f"{d['mean']:.2f}  max {d['max']:.2f}"
            )
        rates = ", ".join(f"{r} Hz x{n}" for r, n in self.sample_rates.items()) or "-"
        chans = ", ".join(f"{c} ch x{n}" for c, n in self.channels.items()) or "-"
        sampled = f"(headers of {self.audio_checked} of {self.recordings} recordings"
        sampled += f", {self.audio_unreadable} unreadable)" if self.audio_unreadable else ")"
        lines.append(f"sample rates    {rates} {sampled}")
        lines.append(f"channels        {chans}")
        if self.words is not None:
            lines.append(f"text            {self.words} words, vocabulary {self.vocabulary}")
        if self.histogram:
            lines.append("duration histogram:")
            peak = max(b["count"] for b in self.histogram) or 1
            for b in self.histogram:
                hi = f"{b['to']:g}" if b["to"] is not None else "inf"
                bar = "#" * round(40 * b["count"] / peak)
                lines.append(
                    f"  [{b['from']:>4g}, {hi:>4}) s {b['count']:>9} {b['hours']:>9.3f} h  {bar}".rstrip()
                )
        return "\n".join(lines)


def data_dir_info(
    path: str | Path,
    *,
    audio_sample: int = 1000,
    seed: int = 0,
    allow_pipes: bool = False,
) -> DataDirInfo:
    """Collect :class:`DataDirInfo` for ``path`` (``audio_sample=0``: read every header)."""
    ddir = Path(path)
    if not ddir.is_dir():
        raise DataDirError(str(ddir), "data directory does not exist")
    wav = ddir / "wav.scp"
    if not wav.is_file():
        raise DataDirError(str(wav), "data directory has no wav.scp")
    info = DataDirInfo(str(ddir), has_segments=(ddir / "segments").is_file())

    def entries() -> Iterator[tuple[str, str]]:
        for _, key, rest in iter_rows(wav):
            yield key, " ".join(rest)

    rates: Counter[int] = Counter()
    channels: Counter[int] = Counter()
    header_durations: list[float] = []

    def read_header(key: str, value: str) -> float | None:
        src_path, pipe = parse_wav_entry(value)
        if pipe and not allow_pipes:
            info.audio_unreadable += 1
            return None
        try:
            head = probe(AudioSource(path=src_path, pipe=pipe, recording=key), utt=key)
        except AudioError:
            info.audio_unreadable += 1
            return None
        info.audio_checked += 1
        rates[head.sample_rate] += 1
        channels[head.channels] += 1
        return head.duration

    if (ddir / "utt2dur").is_file():
        info.duration_source = "utt2dur"
        durs = np.fromiter(
            (float(rest[0]) for _, _, rest in iter_rows(ddir / "utt2dur") if rest), np.float64
        )
    elif info.has_segments:
        info.duration_source = "segments"
        durs = np.fromiter(
            (
                float(rest[2]) - float(rest[1])
                for _, _, rest in iter_rows(ddir / "segments")
                if len(rest) == 3
            ),
            np.float64,
        )
    else:
        info.duration_source = "audio headers"
        for key, value in entries():
            info.recordings += 1
            d = read_header(key, value)
            if d is not None:
                header_durations.append(d)
        durs = np.array(header_durations)
    if info.duration_source != "audio headers":
        # reservoir sample of the recordings (one pass, memory bounded by the sample)
        rng = random.Random(seed)
        picks: list[tuple[str, str]] = []
        for i, entry in enumerate(entries()):
            info.recordings += 1
            if audio_sample <= 0 or i < audio_sample:
                picks.append(entry)
            else:
                j = rng.randint(0, i)
                if j < audio_sample:
                    picks[j] = entry
        for key, value in picks:
            read_header(key, value)
    info.sample_rates = {str(r): n for r, n in sorted(rates.items())}
    info.channels = {str(c): n for c, n in sorted(channels.items())}

    spk_counts: Counter[str] = Counter()
    if (ddir / "utt2spk").is_file():
        for _, _, rest in iter_rows(ddir / "utt2spk"):
            if rest:
                spk_counts[rest[0]] += 1
        info.utterances = sum(spk_counts.values())
    else:
        info.utterances = len(durs) if info.has_segments else info.recordings
    info.speakers = len(spk_counts)
    if spk_counts:
        per = np.array(list(spk_counts.values()))
        info.utts_per_speaker = {
            "min": float(per.min()),
            "median": float(np.median(per)),
            "mean": float(per.mean()),
            "max": float(per.max()),
        }
    if (ddir / "spk2gender").is_file():
        genders = Counter(rest[0] for _, _, rest in iter_rows(ddir / "spk2gender") if rest)
        info.genders = dict(sorted(genders.items()))
    if (ddir / "text").is_file():
        words = 0
        vocab: set[str] = set()
        for _, _, rest in iter_rows(ddir / "text"):
            words += len(rest)
            vocab.update(rest)
        info.words, info.vocabulary = words, len(vocab)

    if durs.size:
        info.total_hours = float(durs.sum()) / 3600.0
        info.duration_stats = {
            "min": float(durs.min()),
            "median": float(np.median(durs)),
            "mean": float(durs.mean()),
            "max": float(durs.max()),
        }
        edges = [*HISTOGRAM_EDGES, float("inf")]
        idx = np.searchsorted(np.array(HISTOGRAM_EDGES), durs, side="right") - 1
        counts = np.bincount(idx, minlength=len(HISTOGRAM_EDGES))
        hours = np.bincount(idx, weights=durs, minlength=len(HISTOGRAM_EDGES)) / 3600.0
        info.histogram = [
            {
                "from": edges[i],
                "to": None if edges[i + 1] == float("inf") else edges[i + 1],
                "count": int(counts[i]),
                "hours": float(hours[i]),
            }
            for i in range(len(HISTOGRAM_EDGES))
        ]
    return info
