"""Synthetic speakers: eSpeak NG accent x voice variant x pitch/range/rate, split by speaker.

A speaker is an English accent (``en-us``, ``en-gb-scotland``, ...) combined with a voice
variant (formant scaling, breathiness, base pitch: ``m3``, ``f2``, ...) and its own base
pitch, pitch range and speaking rate. Only variants whose voice file states a gender are
used, so every speaker has a ``spk2gender`` entry. Speakers are drawn from a seeded
generator and split train/dev/test with no overlap, genders interleaved so each split is
balanced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from speechssl.data.synth.espeak import VoiceSettings
from speechssl.errors import ConfigError

ACCENTS: tuple[str, ...] = (
    "en-us",
    "en",
    "en-us-nyc",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
)
"""eSpeak NG English voices used as accents (American, British (`en`), New York, Received
Pronunciation, Scottish, Lancastrian, West Midlands, Caribbean)."""

MALE_VARIANTS: tuple[str, ...] = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "Andy",
    "Lee",
    "Denis",
    "travis",
)
FEMALE_VARIANTS: tuple[str, ...] = (
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Alicia",
    "Andrea",
    "Annie",
    "anika",
    "belinda",
    "linda",
    "steph",
)
"""Variants (``espeak-ng-data/voices/!v``) whose voice file says ``gender male``/``female``;
robotic, whispered and novelty variants are left out."""

SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass(frozen=True, kw_only=True)
class Speaker:
    """One synthetic speaker."""

    spk_id: str
    """Kaldi speaker id (a prefix of each of its utterance ids)."""
    accent: str
    """eSpeak NG voice (language/accent) name."""
    variant: str
    """eSpeak NG voice variant name."""
    gender: str
    """``m`` or ``f`` (from the variant's voice file)."""
    pitch: int
    """Base pitch 0..100 (eSpeak scale, 50 = the variant's own)."""
    pitch_range: int
    """Pitch range 0..100 (50 = normal intonation)."""
    rate: int
    """Speaking rate, words per minute."""
    word_gap: int
    """Extra pause between words (10 ms units)."""
    warp: float
    """Frequency warp of the synthesized audio (played back ``warp`` times faster, so
    formants, pitch and tempo scale by ``warp``): a vocal-tract-length change."""
    split: str
    """``train``, ``dev`` or ``test``."""

    @property
    def voice(self) -> str:
        return f"{self.accent}+{self.variant}"

    def settings(
        self, *, rate_scale: float = 1.0, pitch_shift: int = 0, range_shift: int = 0
    ) -> VoiceSettings:
        """Voice settings for one utterance, with that utterance's small perturbations."""
        return VoiceSettings(
            voice=self.voice,
            rate=int(np.clip(round(self.rate * rate_scale), 80, 450)),
            pitch=int(np.clip(self.pitch + pitch_shift, 0, 100)),
            pitch_range=int(np.clip(self.pitch_range + range_shift, 0, 100)),
            word_gap=self.word_gap,
        )

    def describe(self) -> str:
        return (
            f"{self.voice} gender={self.gender} pitch={self.pitch} range={self.pitch_range} "
            f"rate={self.rate} word_gap={self.word_gap} warp={self.warp:.3f}"
        )


@dataclass(frozen=True, kw_only=True)
class SpeakerConfig:
    """How speakers are drawn."""

    num_speakers: int = 40
    """Total speakers over all splits (at least 3: one per split)."""
    dev_fraction: float = 0.1
    """Share of speakers held out for dev (at least one)."""
    test_fraction: float = 0.1
    """Share of speakers held out for test (at least one)."""
    pitch_low: int = 25
    """Lowest base pitch (eSpeak 0..100 scale)."""
    pitch_high: int = 75
    """Highest base pitch."""
    range_low: int = 25
    """Flattest intonation (pitch range)."""
    range_high: int = 85
    """Liveliest intonation."""
    rate_low: int = 135
    """Slowest speaking rate (wpm)."""
    rate_high: int = 205
    """Fastest speaking rate (wpm)."""
    word_gap_prob: float = 0.25
    """Chance that a speaker leaves a short extra pause between words."""
    warp_low: float = 0.9
    """Smallest frequency warp (longer vocal tract: lower formants, slower)."""
    warp_high: float = 1.1
    """Largest frequency warp (shorter vocal tract: higher formants, faster)."""

    def __post_init__(self) -> None:
        if self.num_speakers < 3:
            raise ConfigError(f"num_speakers must be >= 3 (one per split), got {self.num_speakers}")
        if not (0 < self.dev_fraction < 1 and 0 < self.test_fraction < 1):
            raise ConfigError("dev_fraction and test_fraction must be in (0, 1)")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ConfigError("dev_fraction + test_fraction must leave speakers for train")
        for lo, hi, name in (
            (self.pitch_low, self.pitch_high, "pitch"),
            (self.range_low, self.range_high, "range"),
        ):
            if not 0 <= lo <= hi <= 100:
                raise ConfigError(f"{name} bounds must satisfy 0 <= low <= high <= 100")
        if not 80 <= self.rate_low <= self.rate_high <= 450:
            raise ConfigError("rate bounds must satisfy 80 <= low <= high <= 450")
        if not 0.7 <= self.warp_low <= self.warp_high <= 1.4:
            raise ConfigError("warp bounds must satisfy 0.7 <= low <= high <= 1.4")


def split_sizes(num_speakers: int, dev_fraction: float, test_fraction: float) -> dict[str, int]:
    """Speakers per split: dev/test rounded, at least one each, the rest train."""
    n_dev = max(1, round(num_speakers * dev_fraction))
    n_test = max(1, round(num_speakers * test_fraction))
    n_train = num_speakers - n_dev - n_test
    if n_train < 1:
        raise ConfigError(f"{num_speakers} speakers leave none for train")
    return {"train": n_train, "dev": n_dev, "test": n_test}


def make_speakers(config: SpeakerConfig, seed: int) -> list[Speaker]:
    """Draw ``config.num_speakers`` distinct speakers and assign splits (deterministic)."""
    rng = np.random.default_rng([seed, 0x5EA4E5])
    n = config.num_speakers
    n_male = math.ceil(n / 2)
    per_gender = {"m": n_male, "f": n - n_male}
    voices: dict[str, list[tuple[str, str]]] = {}
    for gender, variants in (("m", MALE_VARIANTS), ("f", FEMALE_VARIANTS)):
        var_order = [variants[i] for i in rng.permutation(len(variants))]
        acc_order = [ACCENTS[i] for i in rng.permutation(len(ACCENTS))]
        # walking both lists in step gives distinct (accent, variant) pairs for
        # lcm(len(variants), len(accents)) speakers, each accent used about equally
        voices[gender] = [
            (acc_order[k % len(acc_order)], var_order[k % len(var_order)])
            for k in range(per_gender[gender])
        ]
    # interleave genders, then cut dev | test | train so every split is gender balanced
    order: list[tuple[str, str, str]] = []
    for k in range(max(per_gender.values())):
        for gender in ("m", "f"):
            if k < len(voices[gender]):
                order.append((gender, *voices[gender][k]))
    sizes = split_sizes(n, config.dev_fraction, config.test_fraction)
    split_of = ["dev"] * sizes["dev"] + ["test"] * sizes["test"] + ["train"] * sizes["train"]
    width = max(2, len(str(n)))
    speakers = []
    for idx, (gender, accent, variant) in enumerate(order):
        speakers.append(
            Speaker(
                spk_id=f"spk{idx + 1:0{width}d}",
                accent=accent,
                variant=variant,
                gender=gender,
                pitch=int(rng.integers(config.pitch_low, config.pitch_high + 1)),
                pitch_range=int(rng.integers(config.range_low, config.range_high + 1)),
                rate=int(rng.integers(config.rate_low, config.rate_high + 1)),
                word_gap=int(rng.random() < config.word_gap_prob),
                warp=round(float(rng.uniform(config.warp_low, config.warp_high)), 3),
                split=split_of[idx],
            )
        )
    return speakers
