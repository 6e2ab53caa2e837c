"""Generate the bundled synthetic corpus: eSpeak NG speech as Kaldi data dirs.

``make_corpus(out_dir, hours=1.0, seed=0, nj=2)`` writes::

    out_dir/
      README          what this is (SYNTHETIC speech), sizes, seed, how it was made
      meta.json       machine-readable: config, seed, speakers, per-split counts/hours
      phones.txt      phone symbol table for the whole corpus (SIL = 0)
      train/ dev/ test/
        wav/<utt>.wav   16-bit PCM, mono, 16 kHz
        wav.scp text utt2spk spk2utt utt2dur utt2num_samples spk2gender
        ali.phones      one phone per 10 ms frame (see speechssl.data.synth.alignment)
        phones.txt      copy of the corpus table
        utt2keyword     isolated-word utterances only: keyword or _unknown_
        utt2kind        keyword | word | digits | sentence
        utt2aug         clean, or the reverb/noise applied
        spk2voice       eSpeak voice, pitch, range and rate of each speaker

Determinism: utterance ``i`` is a pure function of ``(seed, i)`` (its speaker, text, voice
perturbation, padding, degradations), eSpeak NG is reloaded for every request (see
:mod:`speechssl.data.synth.espeak`) and resampling runs single-threaded, so the same seed
gives byte-identical files for any ``nj``. The corpus is the shortest prefix of that
utterance sequence with at least ``hours`` of audio and at least one utterance per split.

The whole ``out_dir`` is built under a temporary name and renamed when complete; a rerun
with the same settings finds ``meta.json`` and does nothing, a rerun with other settings
needs ``overwrite=True``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import multiprocessing
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechssl.data.synth import augment
from speechssl.data.synth.alignment import (
    FRAME_RATE,
    SILENCE,
    frame_labels,
    normalize_phone,
    phone_table,
    write_alignments,
    write_phone_table,
)
from speechssl.data.synth.espeak import EspeakSynthesizer, SynthResult, VoiceSettings
from speechssl.data.synth.speakers import SPLITS, Speaker, SpeakerConfig, make_speakers
from speechssl.data.synth.vocabulary import TextMix, UtteranceText, sample_text
from speechssl.errors import ConfigError, ItemError, SpeechSSLError
from speechssl.utils.atomic import atomic_dir, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

NOISE_TYPES = ("white", "pink", "babble")
_BABBLE_TEXT = TextMix(keyword=0, word=0, digits=0.3, sentence=0.7)  # running speech


class SynthError(ItemError):
    """One synthetic utterance could not be produced (names the utterance)."""

    kind = "synth"


@dataclass(frozen=True, kw_only=True)
class SynthCorpusConfig:
    """Everything that determines the corpus (with the seed). ``nj`` is not part of it."""

    hours: float = 1.0
    """Audio to generate over all splits, in hours (the corpus ends at the first utterance
    that reaches it)."""
    sample_rate: int = 16000
    """Output sample rate (Hz); a multiple of 100 so 10 ms frames are whole samples."""
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)
    """How many speakers, their splits and voice ranges."""
    text: TextMix = field(default_factory=TextMix)
    """Mix of isolated keywords, other words, digit strings and sentences."""
    lead_silence: tuple[float, float] = (0.15, 0.5)
    """Range (s) of silence before the speech."""
    trail_silence: tuple[float, float] = (0.15, 0.5)
    """Range (s) of silence after the speech (then padded to a whole 10 ms frame)."""
    rate_jitter: float = 0.08
    """Per-utterance relative change of the speaker's rate, drawn from +-this."""
    pitch_jitter: int = 5
    """Per-utterance change of the speaker's base pitch (0..100 scale), +-this."""
    range_jitter: int = 10
    """Per-utterance change of the speaker's pitch range, +-this."""
    level_dbfs: tuple[float, float] = (-32.0, -20.0)
    """Range of the speech RMS level in dB below full scale."""
    noise_floor_snr: float | None = 60.0
    """SNR (dB) of a faint white noise floor added to every utterance so no stretch is
    digital silence; None for none."""
    noise: bool = False
    """Add noise (white, pink or babble) to some utterances."""
    noise_prob: float = 0.8
    """With ``noise``: share of utterances that get noise."""
    noise_types: tuple[str, ...] = NOISE_TYPES
    """With ``noise``: noise kinds drawn from, uniformly."""
    snr_db: tuple[float, float] = (5.0, 20.0)
    """With ``noise``: SNR range (dB, speech samples only)."""
    babble_talkers: tuple[int, int] = (3, 6)
    """With ``noise``: how many other talkers (same split, other speakers) make babble."""
    reverb: bool = False
    """Convolve some utterances with a synthetic room impulse response."""
    reverb_prob: float = 0.5
    """With ``reverb``: share of utterances that get reverberation."""
    rt60: tuple[float, float] = (0.2, 0.8)
    """With ``reverb``: RT60 range (s)."""
    direct_to_reverb_db: tuple[float, float] = (0.0, 10.0)
    """With ``reverb``: direct-to-reverberant energy ratio range (dB)."""

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ConfigError(f"hours must be positive, got {self.hours}")
        if self.sample_rate % FRAME_RATE or self.sample_rate < 8000:
            raise ConfigError(
                f"sample_rate must be >= 8000 and a multiple of 100, got {self.sample_rate}"
            )
        for name in (
            "lead_silence",
            "trail_silence",
            "level_dbfs",
            "snr_db",
            "rt60",
            "direct_to_reverb_db",
            "babble_talkers",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"{name}: low {lo} > high {hi}")
        if self.lead_silence[0] < 0.05 or self.trail_silence[0] < 0.05:
            raise ConfigError("lead/trail silence must be at least 0.05 s (edges are silence)")
        if self.rt60[0] <= 0:
            raise ConfigError("rt60 must be positive")
        if self.babble_talkers[0] < 1:
            raise ConfigError("babble needs at least one talker")
        if not 0 <= self.noise_prob <= 1 or not 0 <= self.reverb_prob <= 1:
            raise ConfigError("noise_prob and reverb_prob must be in [0, 1]")
        bad = [t for t in self.noise_types if t not in NOISE_TYPES]
        if bad or not self.noise_types:
            raise ConfigError(
                f"noise_types must be a non-empty subset of {NOISE_TYPES}, got {self.noise_types}"
            )
        if self.level_dbfs[1] > -3:
            raise ConfigError("level_dbfs must stay below -3 dBFS")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    kind: str
    snr_db: float
    seed: tuple[int, ...]
    babble: tuple[tuple[str, VoiceSettings, int, float], ...] = ()
    """Babble talkers: (text, voice, synthesis seed, warp)."""


@dataclass(frozen=True, kw_only=True)
class ReverbSpec:
    rt60: float
    direct_to_reverb_db: float
    seed: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class UtteranceSpec:
    """Everything needed to render one utterance (a pure function of seed and index)."""

    index: int
    utt_id: str
    speaker: Speaker
    text: UtteranceText
    settings: VoiceSettings
    synth_seed: int
    lead_silence: float
    trail_silence: float
    level_dbfs: float
    noise_floor_snr: float | None
    floor_seed: tuple[int, ...]
    noise: NoiseSpec | None
    reverb: ReverbSpec | None


@dataclass(frozen=True)
class UtteranceRecord:
    """What rendering an utterance produced (the wav is on disk)."""

    utt_id: str
    spk_id: str
    split: str
    num_samples: int
    words: tuple[str, ...]
    kind: str
    keyword: str | None
    labels: str
    """Frame phone labels, space separated (a string: compact for long corpora)."""
    aug: str


class CorpusPlan:
    """The infinite, deterministic sequence of utterance specs for a config and seed."""

    def __init__(self, config: SynthCorpusConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.speakers = make_speakers(config.speakers, seed)
        self.by_split = {s: [spk for spk in self.speakers if spk.split == s] for s in SPLITS}
        self._cycle_cache: dict[int, list[Speaker]] = {}
        self._index_width = 6

    def _cycle(self, c: int) -> list[Speaker]:
        """Speaker order of cycle ``c``: every speaker once, splits interleaved evenly."""
        if c not in self._cycle_cache:
            rng = np.random.default_rng([self.seed, 2, c])
            queues = {
                s: [spks[i] for i in rng.permutation(len(spks))]
                for s, spks in self.by_split.items()
            }
            sizes = {s: len(q) for s, q in queues.items()}
            taken = dict.fromkeys(SPLITS, 0)
            order = []
            for _ in range(len(self.speakers)):
                # stride scheduling: the split furthest behind its share goes next
                split = min(
                    (s for s in SPLITS if taken[s] < sizes[s]),
                    key=lambda s: ((taken[s] + 1) / sizes[s], SPLITS.index(s)),
                )
                order.append(queues[split][taken[split]])
                taken[split] += 1
            if len(self._cycle_cache) > 64:
                self._cycle_cache.clear()
            self._cycle_cache[c] = order
        return self._cycle_cache[c]

    def speaker_of(self, index: int) -> Speaker:
        n = len(self.speakers)
        return self._cycle(index // n)[index % n]

    def spec(self, index: int) -> UtteranceSpec:
        cfg = self.config
        spk = self.speaker_of(index)
        rng = np.random.default_rng([self.seed, 1, index])
        text = sample_text(rng, cfg.text)
        settings = spk.settings(
            rate_scale=1.0 + rng.uniform(-cfg.rate_jitter, cfg.rate_jitter),
            pitch_shift=int(rng.integers(-cfg.pitch_jitter, cfg.pitch_jitter + 1)),
            range_shift=int(rng.integers(-cfg.range_jitter, cfg.range_jitter + 1)),
        )
        synth_seed = int(rng.integers(2**31))
        lead = float(rng.uniform(*cfg.lead_silence))
        trail = float(rng.uniform(*cfg.trail_silence))
        level = float(rng.uniform(*cfg.level_dbfs))
        reverb = None
        if cfg.reverb and rng.random() < cfg.reverb_prob:
            reverb = ReverbSpec(
                rt60=float(rng.uniform(*cfg.rt60)),
                direct_to_reverb_db=float(rng.uniform(*cfg.direct_to_reverb_db)),
                seed=(self.seed, 3, index),
            )
        noise = None
        if cfg.noise and rng.random() < cfg.noise_prob:
            kind = cfg.noise_types[int(rng.integers(len(cfg.noise_types)))]
            snr = float(rng.uniform(*cfg.snr_db))
            babble: list[tuple[str, VoiceSettings, int, float]] = []
            if kind == "babble":
                pool = [s for s in self.by_split[spk.split] if s.spk_id != spk.spk_id] or [spk]
                n_talkers = int(rng.integers(cfg.babble_talkers[0], cfg.babble_talkers[1] + 1))
                for _ in range(n_talkers):
                    other = pool[int(rng.integers(len(pool)))]
                    talker_text = sample_text(rng, _BABBLE_TEXT).spoken
                    talker_seed = int(rng.integers(2**31))
                    babble.append((talker_text, other.settings(), talker_seed, other.warp))
            noise = NoiseSpec(
                kind=kind, snr_db=snr, seed=(self.seed, 4, index), babble=tuple(babble)
            )
        return UtteranceSpec(
            index=index,
            utt_id=f"{spk.spk_id}-{index:0{self._index_width}d}",
            speaker=spk,
            text=text,
            settings=settings,
            synth_seed=synth_seed,
            lead_silence=lead,
            trail_silence=trail,
            level_dbfs=level,
            noise_floor_snr=cfg.noise_floor_snr,
            floor_seed=(self.seed, 5, index),
            noise=noise,
            reverb=reverb,
        )


class UtteranceRenderer:
    """Turns specs into wav files and records; one per process (owns an eSpeak instance)."""

    def __init__(self, root: Path, sample_rate: int) -> None:
        import torch  # heavy: imported where rendering happens

        self.root = root
        self.sample_rate = sample_rate
        self.synth = EspeakSynthesizer()
        self._torch = torch
        self._resamplers: dict[int, Any] = {}

    def _resample(self, samples: np.ndarray, orig_rate: int) -> np.ndarray:
        if orig_rate == self.sample_rate:
            return samples.astype(np.float64)
        import torchaudio

        torch = self._torch
        if orig_rate not in self._resamplers:
            self._resamplers[orig_rate] = torchaudio.transforms.Resample(
                orig_rate, self.sample_rate
            )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # bitwise-reproducible regardless of the caller's setting
        try:
            with torch.no_grad():
                out = self._resamplers[orig_rate](torch.from_numpy(samples.astype(np.float32)))
        finally:
            torch.set_num_threads(threads)
        return out.numpy().astype(np.float64)

    def _speak(self, utt_id: str, text: str, settings: VoiceSettings, seed: int) -> SynthResult:
        try:
            result = self.synth.synthesize(text, settings, seed=seed)
        except SpeechSSLError as exc:
            raise SynthError(utt_id, f"eSpeak NG failed on {text!r}: {exc}") from exc
        if len(result.samples) == 0:
            raise SynthError(utt_id, f"eSpeak NG produced no audio for {text!r}")
        return result

    def render(self, spec: UtteranceSpec) -> UtteranceRecord:
        sr = self.sample_rate
        result = self._speak(spec.utt_id, spec.text.spoken, spec.settings, spec.synth_seed)
        native = result.sample_rate
        # the speaker's warp: treat the samples as recorded at a higher/lower rate; rounded
        # to 50 Hz so the resampling ratio reduces to a short polyphase kernel
        played = _warped_rate(native, spec.speaker.warp)
        speech = self._resample(result.samples.astype(np.float64) / 32768.0, played)
        phones = [(p.start, normalize_phone(p.name)) for p in result.phones]
        if not any(sym != SILENCE for _, sym in phones):
            raise SynthError(spec.utt_id, f"no phoneme events for {spec.text.spoken!r}")
        last = phones[-1][0]
        if last > len(result.samples) + native // 100:
            raise SynthError(
                spec.utt_id,
                f"phoneme event at sample {last} past the audio end {len(result.samples)}",
            )

        lead = round(spec.lead_silence * sr)
        trail = round(spec.trail_silence * sr)
        total = lead + len(speech) + trail
        total += (-total) % (sr // FRAME_RATE)  # whole 10 ms frames
        signal = np.zeros(total)
        signal[lead : lead + len(speech)] = speech
        # phone boundaries on the output timeline; the synthesized span ends in silence
        bounds = [(lead + round(s * sr / played), sym) for s, sym in phones]
        bounds = [(min(max(b, lead), lead + len(speech)), sym) for b, sym in bounds]
        bounds.append((lead + len(speech), SILENCE))
        speech_mask = np.zeros(total, dtype=bool)
        for (start, sym), (end, _) in itertools.pairwise(bounds):
            if sym != SILENCE:
                speech_mask[start:end] = True

        aug = []
        if spec.reverb is not None:
            rir = augment.synthetic_rir(
                np.random.default_rng(list(spec.reverb.seed)),
                sr,
                spec.reverb.rt60,
                spec.reverb.direct_to_reverb_db,
            )
            signal = augment.reverberate(signal, rir)
            aug.append(
                f"reverb(rt60={spec.reverb.rt60:.2f}s,drr={spec.reverb.direct_to_reverb_db:.1f}dB)"
            )
        if spec.noise is not None:
            nrng = np.random.default_rng(list(spec.noise.seed))
            if spec.noise.kind == "white":
                noise = augment.white_noise(nrng, total)
            elif spec.noise.kind == "pink":
                noise = augment.pink_noise(nrng, total)
            else:
                talkers = []
                for k, (text, settings, seed, warp) in enumerate(spec.noise.babble):
                    res = self._speak(f"{spec.utt_id}(babble {k})", text, settings, seed)
                    played_k = _warped_rate(res.sample_rate, warp)
                    talkers.append(
                        self._resample(res.samples.astype(np.float64) / 32768.0, played_k)
                    )
                noise = augment.babble_noise(nrng, talkers, total)
            signal = augment.add_noise(signal, noise, spec.noise.snr_db, speech_mask)
            extra = f",talkers={len(spec.noise.babble)}" if spec.noise.kind == "babble" else ""
            aug.append(f"{spec.noise.kind}(snr={spec.noise.snr_db:.1f}dB{extra})")
        if spec.noise_floor_snr is not None:
            floor = augment.white_noise(np.random.default_rng(list(spec.floor_seed)), total)
            signal = augment.add_noise(signal, floor, spec.noise_floor_snr, speech_mask)
        signal = augment.normalize_level(signal, spec.level_dbfs, speech_mask)
        pcm = augment.to_int16(signal)

        import soundfile

        path = self.root / spec.speaker.split / "wav" / f"{spec.utt_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, pcm, sr, subtype="PCM_16", format="WAV")
        return UtteranceRecord(
            utt_id=spec.utt_id,
            spk_id=spec.speaker.spk_id,
            split=spec.speaker.split,
            num_samples=total,
            words=spec.text.words,
            kind=spec.text.kind,
            keyword=spec.text.keyword,
            labels=" ".join(frame_labels(bounds, total, sr)),
            aug="+".join(aug) or "clean",
        )


def _warped_rate(native: int, warp: float) -> int:
    """The rate at which to read ``native``-rate samples to warp them by ``warp`` (50 Hz steps)."""
    return max(50, 50 * round(native * warp / 50))


# -- worker processes (spawned: eSpeak NG is not thread-safe and must not be forked) --------

_WORKER: UtteranceRenderer | None = None


def _worker_init(root: str, sample_rate: int) -> None:
    import torch

    torch.set_num_threads(1)
    global _WORKER
    _WORKER = UtteranceRenderer(Path(root), sample_rate)


def _worker_render(spec: UtteranceSpec) -> UtteranceRecord:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.render(spec)


@dataclass
class CorpusSummary:
    """What :func:`make_corpus` produced (or found up to date)."""

    out_dir: Path
    seed: int
    splits: dict[str, dict[str, float]]
    """Per split: ``utterances``, ``speakers``, ``hours``."""
    seconds_taken: float
    reused: bool
    """True when an identical corpus was already there and nothing was done."""

    @property
    def hours(self) -> float:
        return sum(s["hours"] for s in self.splits.values())


def _render_all(
    plan: CorpusPlan, root: Path, nj: int, target_seconds: float
) -> list[UtteranceRecord]:
    sr = plan.config.sample_rate
    records: list[UtteranceRecord] = []
    total = 0.0
    seen_splits: set[str] = set()
    next_index = 0
    mean_estimate = 2.0  # seconds per utterance, refined after the first round

    def done() -> bool:
        return total >= target_seconds and seen_splits == set(SPLITS)

    def rounds(render: Any) -> None:
        nonlocal total, next_index, mean_estimate
        while not done():
            remaining = max(target_seconds - total, 0.0)
            n = max(4 * nj, math.ceil(remaining / mean_estimate * 1.05) + nj)
            specs = [plan.spec(i) for i in range(next_index, next_index + n)]
            next_index += n
            for rec in render(specs):
                if done():
                    # past the end of the corpus: rendered in parallel, not part of it
                    (root / rec.split / "wav" / f"{rec.utt_id}.wav").unlink(missing_ok=True)
                    continue
                records.append(rec)
                total += rec.num_samples / sr
                seen_splits.add(rec.split)
            mean_estimate = max(total / max(len(records), 1), 0.2)
            log.info("synth: %d utterances, %.2f h", len(records), total / 3600)

    if nj <= 1:
        renderer = UtteranceRenderer(root, sr)
        rounds(lambda specs: (renderer.render(s) for s in specs))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(nj, initializer=_worker_init, initargs=(str(root), sr)) as pool:

            def render(specs: Sequence[UtteranceSpec]) -> Iterator[UtteranceRecord]:
                return pool.imap(
                    _worker_render, specs, chunksize=max(1, min(16, len(specs) // (4 * nj)))
                )

            rounds(render)
    return records


def _readme(meta: dict[str, Any]) -> str:
    lines = [
        "SYNTHETIC SPEECH CORPUS (speechssl data synth)",
        "",
        "Every recording here was generated by the eSpeak NG formant synthesizer; none is a",
        "human voice. It is a small, fully reproducible stand-in for a real corpus: use it to",
        "test and demonstrate pipelines, not to report speech-recognition results.",
        "",
        f"seed: {meta['seed']}    eSpeak NG: {meta['espeak_ng_version']}    sample rate: {meta['sample_rate']} Hz",
        f"total: {meta['total_hours']:.3f} h in {meta['total_utterances']} utterances, {len(meta['speakers'])} speakers",
    ]
    for split, info in meta["splits"].items():
        lines.append(
            f"  {split:5s} {info['utterances']:6d} utterances  {info['hours']:.3f} h  {info['speakers']} speakers"
        )
    lines += [
        f"noise: {'on' if meta['config']['noise'] else 'off'}    reverb: {'on' if meta['config']['reverb'] else 'off'}",
        "",
        "Speakers are eSpeak NG accents x voice variants with their own pitch, pitch range and",
        "rate (see meta.json and each split's spk2voice); splits share no speaker.",
        "Text: Speech Commands keywords and auxiliary words in isolation, digit strings, and",
        "short sentences from a small grammar; `text` holds uppercase words.",
        "ali.phones: one phone symbol per 10 ms frame (frame i = [10i, 10i+10) ms, labelled at",
        "its centre), from the synthesizer's own phoneme events; phones.txt lists the symbols",
        "(SIL = 0). utt2keyword labels the isolated-word utterances (keyword or _unknown_).",
        "Full description: egs/synth/local/README.md in the speechssl sources.",
        "",
    ]
    return "\n".join(lines)


def _is_complete(out: Path, config_dict: dict[str, Any], seed: int) -> bool:
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("config") != config_dict or meta.get("seed") != seed:
        return False
    for split, info in meta.get("splits", {}).items():
        wav_dir = out / split / "wav"
        if not wav_dir.is_dir() or sum(1 for _ in wav_dir.glob("*.wav")) != info.get("utterances"):
            return False
    return True


def make_corpus(
    out_dir: str | Path,
    *,
    hours: float = 1.0,
    seed: int = 0,
    nj: int = 1,
    noise: bool = False,
    reverb: bool = False,
    num_speakers: int | None = None,
    config: SynthCorpusConfig | None = None,
    overwrite: bool = False,
) -> CorpusSummary:
    """Synthesize the corpus into ``out_dir`` (see the module docstring for the layout).

    Args:
        hours, noise, reverb, num_speakers: shortcuts for the matching ``config`` fields
            (ignored when ``config`` is given).
        seed: the corpus is a pure function of ``(config, seed)``.
        nj: worker processes (each with its own eSpeak NG); does not change the output.
        overwrite: replace an existing ``out_dir`` made with other settings.

    Raises:
        ConfigError: bad settings, or ``out_dir`` exists with other contents and
            ``overwrite`` is false.
        SynthError: an utterance could not be synthesized (names it).
    """
    if config is None:
        spk_cfg = (
            SpeakerConfig() if num_speakers is None else SpeakerConfig(num_speakers=num_speakers)
        )
        config = SynthCorpusConfig(hours=hours, noise=noise, reverb=reverb, speakers=spk_cfg)
    if nj < 1:
        raise ConfigError(f"nj must be >= 1, got {nj}")
    out = Path(out_dir).absolute()
    config_dict = config.to_dict()
    t0 = time.perf_counter()

    if out.exists():
        if _is_complete(out, config_dict, seed):
            meta = json.loads((out / "meta.json").read_text())
            log.info("synth: %s is up to date (same settings and seed); nothing to do", out)
            splits = {s: meta["splits"][s] for s in SPLITS if s in meta["splits"]}
            return CorpusSummary(out, seed, splits, time.perf_counter() - t0, reused=True)
        if not overwrite:
            raise ConfigError(
                f"{out} exists and is not this corpus (other settings, other seed, or incomplete); "
                "pass overwrite=True (--overwrite) to replace it"
            )
    # debris of an interrupted run: atomic_dir's temporary dirs next to the target
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        log.warning("synth: removing leftover %s from an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)

    plan = CorpusPlan(config, seed)
    with atomic_dir(out, overwrite=True) as tmp:
        records = _render_all(plan, tmp, nj, config.hours * 3600)
        meta = _write_tables(tmp, out, plan, records, seed)
    elapsed = time.perf_counter() - t0
    log.info("synth: wrote %.3f h to %s in %.1f s", meta["total_hours"], out, elapsed)
    return CorpusSummary(out, seed, meta["splits"], elapsed, reused=False)


def _write_tables(
    tmp: Path, final: Path, plan: CorpusPlan, records: list[UtteranceRecord], seed: int
) -> dict[str, Any]:
    from speechssl.data.kaldi_dir import write_data_dir

    config = plan.config
    sr = config.sample_rate
    table = phone_table({sym for rec in records for sym in rec.labels.split()})
    write_phone_table(tmp / "phones.txt", table)
    splits: dict[str, dict[str, float]] = {}
    speakers_by_id = {s.spk_id: s for s in plan.speakers}
    for split in SPLITS:
        recs = [r for r in records if r.split == split]
        ddir = tmp / split
        spk_ids = sorted({r.spk_id for r in recs})
        write_data_dir(
            ddir,
            wav_scp={r.utt_id: str(final / split / "wav" / f"{r.utt_id}.wav") for r in recs},
            utt2spk={r.utt_id: r.spk_id for r in recs},
            text={r.utt_id: " ".join(w.upper() for w in r.words) for r in recs},
            utt2dur={r.utt_id: r.num_samples / sr for r in recs},
            utt2num_samples={r.utt_id: r.num_samples for r in recs},
            spk2gender={s: speakers_by_id[s].gender for s in spk_ids},
            extra={
                "utt2keyword": {r.utt_id: r.keyword for r in recs if r.keyword is not None},
                "utt2kind": {r.utt_id: r.kind for r in recs},
                "utt2aug": {r.utt_id: r.aug for r in recs},
                "spk2voice": {s: speakers_by_id[s].describe() for s in spk_ids},
            },
        )
        write_alignments(ddir / "ali.phones", {r.utt_id: r.labels.split() for r in recs})
        write_phone_table(ddir / "phones.txt", table)
        splits[split] = {
            "utterances": len(recs),
            "speakers": len(spk_ids),
            "hours": round(sum(r.num_samples for r in recs) / sr / 3600, 6),
        }
    meta: dict[str, Any] = {
        "synthetic": True,
        "description": "SYNTHETIC speech generated with eSpeak NG by speechssl data synth",
        "generator": "speechssl.data.synth.make_corpus",
        "espeak_ng_version": _espeak_version(),
        "seed": seed,
        "config": config.to_dict(),
        "sample_rate": sr,
        "frame_rate": FRAME_RATE,
        "silence_phone": SILENCE,
        "num_phones": len(table),
        "total_utterances": len(records),
        "total_hours": round(sum(r.num_samples for r in records) / sr / 3600, 6),
        "splits": splits,
        "speakers": [asdict(s) | {"voice": s.voice} for s in plan.speakers],
    }
    atomic_write_json(tmp / "meta.json", meta)
    atomic_write_text(tmp / "README", _readme(meta))
    return meta


def _espeak_version() -> str:
    synth = EspeakSynthesizer()
    synth.synthesize("a", VoiceSettings(voice="en-us"))
    return synth.version
