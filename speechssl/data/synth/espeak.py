"""A ctypes binding to eSpeak NG, as bundled by the PyPI package ``espeakng-loader``.

Synthesis is synchronous (``AUDIO_OUTPUT_SYNCHRONOUS``): ``espeak_Synth`` returns once the
whole utterance has gone through our callback, which collects the int16 samples and the
events. The library is initialised with ``espeakINITIALIZE_PHONEME_EVENTS``, so every
phoneme arrives as an ``espeakEVENT_PHONEME`` whose ``sample`` field is the index of its
first output sample; that gives a phone alignment straight from the synthesizer.

eSpeak NG keeps state in C globals (voice flutter phase, random generators, filter memories)
that survive ``espeak_Terminate``/``espeak_Initialize``, so the same request gives different
audio depending on what was synthesized before it. To make every utterance a pure function
of its request (and so a corpus independent of how work is split across processes), each
:meth:`EspeakSynthesizer.synthesize` call loads a fresh copy of the library, uses it once
and unloads it (``dlclose``); that costs a few milliseconds. eSpeak NG seeds its random generator (breath noise of voices
like ``f5``) from the clock when initialised, so every request reseeds it
(``espeak_ng_SetRandSeed``) with its ``seed`` argument. The library is not thread-safe:
use one process per worker, never threads.

Struct layouts follow ``speak_lib.h`` (API revision 12) of eSpeak NG 1.52.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechssl.errors import SpeechSSLError

# espeak_AUDIO_OUTPUT
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize options
INITIALIZE_PHONEME_EVENTS = 0x0001
# espeak_EVENT_TYPE
EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_SENTENCE = 2
EVENT_END = 5
EVENT_MSG_TERMINATED = 6
EVENT_PHONEME = 7
EVENT_SAMPLERATE = 8
# espeak_POSITION_TYPE
POS_CHARACTER = 1
# espeak_Synth flags
CHARS_UTF8 = 1
# espeak_PARAMETER
PARAM_RATE = 1
PARAM_VOLUME = 2
PARAM_PITCH = 3
PARAM_RANGE = 4
PARAM_WORDGAP = 7

RATE_MIN, RATE_MAX = 80, 450
"""eSpeak's accepted speaking rates (words per minute)."""


class EspeakError(SpeechSSLError):
    """eSpeak NG is missing, failed to initialise, or failed on a request."""


class _EventId(ctypes.Union):
    _fields_ = (
        ("number", ctypes.c_int),  # WORD / SENTENCE events
        ("name", ctypes.c_char_p),  # MARK / PLAY events
        ("string", ctypes.c_char * 8),  # PHONEME events: mnemonic, NUL-terminated unless 8 long
    )


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # output sample index
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class PhoneEvent:
    """One phoneme of the synthesized output."""

    start: int
    """First output sample of the phoneme (at the synthesizer's native rate)."""
    name: str
    """eSpeak's phoneme mnemonic, as reported (stress marks included, e.g. ``'E``)."""


@dataclass(frozen=True)
class WordEvent:
    """One word of the input text as it starts in the output."""

    start: int
    """First output sample of the word."""
    text_position: int
    """1-based character position of the word in the input text."""
    length: int
    """Length of the word in characters."""


@dataclass(frozen=True)
class SynthResult:
    """What one synthesis request produced."""

    samples: np.ndarray
    """int16 mono samples at ``sample_rate``."""
    sample_rate: int
    phones: list[PhoneEvent]
    """In output order; pauses are phonemes whose name starts with ``_``."""
    words: list[WordEvent]


@dataclass(frozen=True, kw_only=True)
class VoiceSettings:
    """How a request is spoken."""

    voice: str
    """eSpeak voice name with an optional variant, e.g. ``en-us+m3`` or ``en-gb-x-rp+f2``."""
    rate: int = 175
    """Speaking rate in words per minute (80..450)."""
    pitch: int = 50
    """Base pitch, 0..100 (50 = the voice's normal pitch)."""
    pitch_range: int = 50
    """Pitch range, 0..100 (0 = monotone, 50 = normal)."""
    word_gap: int = 0
    """Extra pause between words, in units of 10 ms at the default rate."""


def default_library_paths() -> tuple[str, str]:
    """The eSpeak NG shared library and data directory bundled by ``espeakng-loader``."""
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise EspeakError(
            "espeakng-loader is not installed; `pip install espeakng-loader` provides eSpeak NG"
        ) from exc
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


_LOCK = threading.Lock()


def _dlclose(handle: int) -> None:
    if sys.platform == "win32":  # pragma: no cover - Linux/macOS are what we test
        import _ctypes

        _ctypes.FreeLibrary(handle)  # type: ignore[attr-defined]
    else:
        import _ctypes

        _ctypes.dlclose(handle)


def _mapped(path: str) -> bool | None:
    """Whether ``path`` is mapped into this process (None where we cannot tell)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    real = os.path.realpath(path)
    return real in maps.read_text()


class EspeakSynthesizer:
    """Text -> int16 samples + phoneme and word events, one fresh library per request.

    Args:
        library_path: the eSpeak NG shared library (default: the one espeakng-loader bundles).
        data_path: its ``espeak-ng-data`` directory (default: espeakng-loader's).
    """

    def __init__(self, library_path: str | None = None, data_path: str | None = None) -> None:
        lib_default, data_default = (None, None)
        if library_path is None or data_path is None:
            lib_default, data_default = default_library_paths()
        self.library_path = library_path or lib_default or ""
        self.data_path = data_path or data_default or ""
        if not Path(self.library_path).is_file():
            raise EspeakError(f"eSpeak NG library not found: {self.library_path}")
        if not (Path(self.data_path) / "phontab").is_file():
            raise EspeakError(f"eSpeak NG data directory not found or incomplete: {self.data_path}")
        self._samples: list[bytes] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        # kept as an attribute: ctypes must not free the trampoline while C can call it
        self._callback = _SynthCallback(self._on_synth)
        self._unload_checked = False
        self.version = ""

    def _on_synth(self, wav: ctypes._Pointer, nsamples: int, events: ctypes._Pointer) -> int:
        if wav and nsamples > 0:
            self._samples.append(ctypes.string_at(wav, 2 * nsamples))
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            raw = bytes(ev.id.string) if ev.type == EVENT_PHONEME else b""
            self._events.append((ev.type, ev.sample, ev.text_position, ev.length, raw))
            i += 1
        return 0  # continue

    def _load(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self.library_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = ctypes.c_int
        return lib

    def _unload(self, lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        handle = lib._handle
        del lib
        _dlclose(handle)
        if not self._unload_checked:
            # per-request independence rests on the library really being unloaded
            if _mapped(self.library_path):
                raise EspeakError(
                    f"{self.library_path} stayed loaded after dlclose; eSpeak output would "
                    "depend on earlier requests (is another module holding the library open?)"
                )
            self._unload_checked = True

    def synthesize(self, text: str, settings: VoiceSettings, seed: int = 0) -> SynthResult:
        """Speak ``text`` (UTF-8; punctuation shapes pauses and intonation) with ``settings``.

        ``seed`` (0 <= seed < 2**31) drives the random parts of the voice (breath noise);
        the same text, settings and seed give the same samples.
        """
        if not 0 <= seed < 2**31:
            raise EspeakError(f"seed {seed} outside 0..2**31-1")
        if not RATE_MIN <= settings.rate <= RATE_MAX:
            raise EspeakError(f"rate {settings.rate} outside {RATE_MIN}..{RATE_MAX} wpm")
        for name, value in (("pitch", settings.pitch), ("pitch_range", settings.pitch_range)):
            if not 0 <= value <= 100:
                raise EspeakError(f"{name} {value} outside 0..100")
        with _LOCK:
            self._samples, self._events = [], []
            lib = self._load()
            try:
                rate = lib.espeak_Initialize(
                    AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), INITIALIZE_PHONEME_EVENTS
                )
                if rate <= 0:
                    raise EspeakError(f"espeak_Initialize failed with data {self.data_path}")
                self.version = (lib.espeak_Info(None) or b"").decode()
                lib.espeak_SetSynthCallback(self._callback)
                if lib.espeak_SetVoiceByName(settings.voice.encode()) != 0:
                    raise EspeakError(f"unknown eSpeak voice {settings.voice!r}")
                for param, value in (
                    (PARAM_RATE, settings.rate),
                    (PARAM_PITCH, settings.pitch),
                    (PARAM_RANGE, settings.pitch_range),
                    (PARAM_WORDGAP, settings.word_gap),
                    (PARAM_VOLUME, 100),
                ):
                    if lib.espeak_SetParameter(param, value, 0) != 0:
                        raise EspeakError(f"espeak_SetParameter({param}, {value}) failed")
                # after initialisation, which seeds from the clock
                lib.espeak_ng_SetRandSeed(seed)
                data = text.encode("utf-8") + b"\0"
                status = lib.espeak_Synth(
                    data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None
                )
                if status != 0 or lib.espeak_Synchronize() != 0:
                    raise EspeakError(f"espeak_Synth failed (status {status}) on {text!r}")
            finally:
                self._unload(lib)
            samples = np.frombuffer(b"".join(self._samples), dtype=np.int16).copy()
            phones: list[PhoneEvent] = []
            words: list[WordEvent] = []
            for etype, sample, text_pos, length, raw in self._events:
                if etype == EVENT_PHONEME:
                    name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
                    phones.append(PhoneEvent(start=sample, name=name))
                elif etype == EVENT_WORD:
                    words.append(WordEvent(start=sample, text_position=text_pos, length=length))
            return SynthResult(samples=samples, sample_rate=rate, phones=phones, words=words)


def list_variants(data_path: str | None = None) -> dict[str, str | None]:
    """Voice variants shipped in ``espeak-ng-data/voices/!v``: name -> gender (or None)."""
    data = Path(data_path or default_library_paths()[1])
    out: dict[str, str | None] = {}
    for path in sorted((data / "voices" / "!v").iterdir()):
        gender = None
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].lower() == "gender":
                gender = parts[1].lower()
                break
        out[path.name] = gender
    return out
