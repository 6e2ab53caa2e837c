"""Intent-classification data from the bundled SYNTHETIC corpus's speakers.

The bundled corpus has no slot-labelled commands, so :func:`prepare_synth_ic` speaks a small
grammar of smart-home commands (:data:`COMMAND_INTENTS`: 4 actions x 2 objects each x 3
locations, 24 intents, Fluent-Speech-Commands style slots ``action|object|location``) with
every corpus speaker's own eSpeak NG voice (read from each split's ``spk2voice``, warp
included). Each speaker says every intent once, in one of two phrasings picked by a seeded
hash; the splits keep the corpus's speakers (speaker-disjoint, as in Fluent Speech Commands).

Output ``OUT/{train,dev,test}/``: ``wav.scp``, ``utt2spk``, ``utt2dur``, ``text`` and
``utt2intent``; audio in ``OUT/wav/<split>/<utt>.wav`` (16 kHz, 16-bit). Rebuilt on each
call; each data dir is written atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from speechssl.data.prep.fluent_speech_commands import intent_label
from speechssl.data.tables import read_table
from speechssl.errors import ConfigError

if TYPE_CHECKING:
    from speechssl.data.synth.espeak import EspeakSynthesizer, VoiceSettings

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")

_PHRASES = {
    "activate": ("turn on the {object}{where}", "switch on the {object}{where}"),
    "deactivate": ("turn off the {object}{where}", "switch off the {object}{where}"),
    "increase": ("turn up the {object}{where}", "increase the {object}{where}"),
    "decrease": ("turn down the {object}{where}", "decrease the {object}{where}"),
}
_OBJECTS = {
    "activate": ("lights", "music"),
    "deactivate": ("lights", "music"),
    "increase": ("heat", "volume"),
    "decrease": ("heat", "volume"),
}
_LOCATIONS = ("none", "kitchen", "bedroom")

#: (action, object, location) of every synthetic intent
COMMAND_INTENTS: tuple[tuple[str, str, str], ...] = tuple(
    (a, o, loc) for a in _PHRASES for o in _OBJECTS[a] for loc in _LOCATIONS
)

_VOICE = re.compile(
    r"^(?P<voice>\S+) gender=\S+ pitch=(?P<pitch>\d+) range=(?P<range>\d+) "
    r"rate=(?P<rate>\d+) word_gap=(?P<gap>\d+) warp=(?P<warp>[0-9.]+)$"
)


def command_text(action: str, obj: str, location: str, variant: int) -> str:
    """The spoken words of an intent (``variant``: 0 or 1, the phrasing)."""
    where = "" if location == "none" else f" in the {location}"
    return _PHRASES[action][variant % 2].format(object=obj, where=where)


def read_voices(path: Path) -> dict[str, tuple[VoiceSettings, float]]:
    """speaker -> (eSpeak settings, warp) from a bundled-corpus ``spk2voice``."""
    from speechssl.data.synth.espeak import VoiceSettings

    if not path.is_file():
        raise ConfigError(f"{path.parent}: no spk2voice (a bundled synth corpus dir has one)")
    out: dict[str, tuple[VoiceSettings, float]] = {}
    for spk, desc in read_table(path).items():
        m = _VOICE.match(desc.strip())
        if m is None:
            raise ConfigError(f"{path}: speaker {spk}: cannot read the voice {desc!r}")
        settings = VoiceSettings(
            voice=m["voice"], rate=int(m["rate"]), pitch=int(m["pitch"]),
            pitch_range=int(m["range"]), word_gap=int(m["gap"]),
        )  # fmt: skip
        out[spk] = (settings, float(m["warp"]))
    return out


def speak(
    synth: EspeakSynthesizer, settings: VoiceSettings, warp: float, words: str, seed: int,
    resamplers: dict[int, Any],
) -> np.ndarray:  # fmt: skip
    """``words`` in a corpus speaker's voice: 16 kHz float32, 0.15 s of silence (a faint
    noise floor) either side, peak 0.5."""
    import torch
    import torchaudio

    from speechssl.data.synth import augment

    res = synth.synthesize(words, settings, seed=seed)
    # the speaker's warp as in the corpus: read the samples at a shifted rate
    played = max(50, 50 * round(res.sample_rate * warp / 50))
    if played not in resamplers:
        resamplers[played] = torchaudio.transforms.Resample(played, SAMPLE_RATE)
    with torch.no_grad():
        speech = resamplers[played](
            torch.from_numpy(res.samples.astype(np.float32) / 32768.0)
        ).numpy()
    pad = np.zeros(round(0.15 * SAMPLE_RATE), dtype=np.float32)
    signal = np.concatenate([pad, speech, pad]).astype(np.float64)
    signal = signal / (np.abs(signal).max() + 1e-9) * 0.5
    signal += 3e-4 * augment.white_noise(np.random.default_rng([seed, len(signal)]), len(signal))
    return signal.astype(np.float32)


def _variant(seed: int, spk: str, k: int) -> int:
    return hashlib.sha256(f"{seed}:{spk}:{k}".encode()).digest()[0] % 2


def prepare_synth_ic(
    corpus: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0
) -> dict[str, int]:
    """Write ``out/{train,dev,test}`` (see the module doc); returns utterances per split."""
    import soundfile as sf

    from speechssl.data.kaldi_dir import write_data_dir
    from speechssl.data.synth.espeak import EspeakSynthesizer
    from speechssl.utils.atomic import atomic_dir

    root, out = Path(corpus), Path(out)
    synth = EspeakSynthesizer()
    counts: dict[str, int] = {}
    resamplers: dict[int, Any] = {}
    for split in SPLITS:
        voices = read_voices(root / split / "spk2voice")
        wav: dict[str, str] = {}
        spk2: dict[str, str] = {}
        dur: dict[str, float] = {}
        text: dict[str, str] = {}
        intent: dict[str, str] = {}
        wav_dir = out / "wav" / split
        with atomic_dir(wav_dir, overwrite=True) as tmp:
            for spk, (settings, warp) in sorted(voices.items()):
                for k, (action, obj, loc) in enumerate(COMMAND_INTENTS):
                    utt = f"{spk}-ic{k:02d}"
                    words = command_text(action, obj, loc, _variant(seed, spk, k))
                    signal = speak(synth, settings, warp, words, (seed * 7919 + k) % 2**31,
                                   resamplers)  # fmt: skip
                    sf.write(tmp / f"{utt}.wav", signal, SAMPLE_RATE, subtype="PCM_16")
                    wav[utt] = str((wav_dir / f"{utt}.wav").resolve())
                    spk2[utt], dur[utt] = spk, len(signal) / SAMPLE_RATE
                    text[utt] = words.upper()
                    intent[utt] = intent_label(action, obj, loc)
        if not wav:
            raise ConfigError(f"{root / split}: no speaker in spk2voice")
        write_data_dir(
            out / split, wav_scp=wav, utt2spk=spk2, utt2dur=dur, text=text,
            extra={"utt2intent": intent},
        )  # fmt: skip
        counts[split] = len(wav)
    return counts
