"""The corpus text: a fixed vocabulary and a small grammar over it.

Three kinds of utterance, so one corpus serves pretraining, keyword spotting and phone/word
recognition:

* isolated words: the ten Speech Commands keywords (the keyword-spotting targets) and the
  Speech Commands auxiliary words and digits (the ``_unknown_`` class);
* digit strings: three to eight digits, with ``oh`` as well as ``zero`` for 0, spoken with
  phone-number style grouping pauses;
* short sentences from a template grammar (commands, descriptions, questions, times and
  numbers) over a few hundred words.

All sampling goes through a ``numpy.random.Generator`` the caller seeds, so the text of an
utterance is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The ten Speech Commands v1 keywords (the keyword-spotting classes besides ``_unknown_``)."""

UNKNOWN_LABEL = "_unknown_"
"""Keyword label of an isolated word that is not one of :data:`KEYWORDS`."""

DIGITS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
AUXILIARY_WORDS: tuple[str, ...] = (
    "bed",
    "bird",
    "cat",
    "dog",
    "happy",
    "house",
    "marvin",
    "sheila",
    "tree",
    "wow",
    "backward",
    "forward",
    "follow",
    "learn",
    "visual",
)
"""Speech Commands' non-keyword words (spoken in isolation they are ``_unknown_``)."""

_COLORS = [
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "brown",
    "orange",
    "purple",
    "pink",
    "gray",
    "silver",
    "golden",
]
_SIZES = ["big", "small", "little", "large", "tiny", "long", "short", "tall", "old", "new", "young"]
_QUALITIES = [
    "happy",
    "sad",
    "quiet",
    "loud",
    "warm",
    "cold",
    "soft",
    "hard",
    "bright",
    "dark",
    "clean",
    "heavy",
    "light",
    "fast",
    "slow",
    "empty",
    "full",
    "open",
    "round",
    "square",
    "sweet",
    "strange",
    "friendly",
    "busy",
    "lazy",
]
_ANIMALS = [
    "dog",
    "cat",
    "bird",
    "horse",
    "cow",
    "sheep",
    "goat",
    "pig",
    "duck",
    "mouse",
    "rabbit",
    "fox",
    "bear",
    "lion",
    "tiger",
    "frog",
    "fish",
    "owl",
]
_THINGS = [
    "box",
    "ball",
    "book",
    "cup",
    "chair",
    "table",
    "door",
    "window",
    "lamp",
    "clock",
    "phone",
    "key",
    "bag",
    "hat",
    "coat",
    "shoe",
    "car",
    "bus",
    "train",
    "boat",
    "bike",
    "plane",
    "letter",
    "picture",
    "radio",
    "camera",
    "bottle",
    "basket",
    "pencil",
    "paper",
    "map",
    "ticket",
    "blanket",
    "bucket",
    "candle",
    "kettle",
    "ladder",
    "mirror",
    "pillow",
    "rope",
    "spoon",
]
_PLACES = [
    "house",
    "garden",
    "kitchen",
    "office",
    "station",
    "market",
    "river",
    "forest",
    "beach",
    "school",
    "park",
    "bridge",
    "street",
    "village",
    "city",
    "tower",
    "castle",
    "farm",
    "hill",
    "lake",
    "harbor",
    "library",
    "garage",
    "corner",
]
_PEOPLE = [
    "man",
    "woman",
    "boy",
    "girl",
    "teacher",
    "doctor",
    "farmer",
    "driver",
    "baker",
    "sailor",
    "child",
    "friend",
]
_NAMES = [
    "anna",
    "ben",
    "clara",
    "david",
    "emma",
    "frank",
    "grace",
    "henry",
    "isabel",
    "jack",
    "kate",
    "leo",
    "maria",
    "nora",
    "oliver",
    "peter",
    "rosa",
    "sam",
    "tom",
    "victor",
    "marvin",
    "sheila",
]
_VERBS_3SG = [
    "sees",
    "finds",
    "likes",
    "wants",
    "takes",
    "brings",
    "moves",
    "opens",
    "closes",
    "holds",
    "watches",
    "needs",
    "carries",
    "paints",
    "cleans",
    "follows",
    "chases",
    "helps",
]
_VERBS_PAST = [
    "saw",
    "found",
    "liked",
    "wanted",
    "took",
    "brought",
    "moved",
    "opened",
    "closed",
    "held",
    "watched",
    "needed",
    "carried",
    "painted",
    "cleaned",
    "followed",
    "chased",
    "helped",
]
_COMMAND_VERBS = [
    "move",
    "push",
    "pull",
    "lift",
    "drop",
    "open",
    "close",
    "bring",
    "take",
    "find",
    "show",
    "clean",
    "paint",
    "carry",
    "hide",
    "fetch",
]
_DIRECTIONS = ("up", "down", "left", "right", "forward", "backward")
_PREPOSITIONS = [
    "near",
    "under",
    "behind",
    "beside",
    "above",
    "below",
    "inside",
    "outside",
    "across",
    "past",
]
_SWITCHABLE = [
    "lights",
    "radio",
    "music",
    "heater",
    "fan",
    "television",
    "alarm",
    "oven",
    "computer",
    "camera",
]
_ROOMS = ["kitchen", "bedroom", "hallway", "garage", "office", "bathroom", "basement", "garden"]
_COUNT_WORDS = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty"]
_UNITS = ["minutes", "hours", "seconds", "days", "weeks", "steps", "meters"]
_TIME_WORDS = ["today", "tomorrow", "tonight", "now", "later", "soon"]
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_QUESTION_VERBS = ["see", "find", "hear", "reach", "open", "carry"]


@dataclass(frozen=True)
class UtteranceText:
    """The words of one utterance and how they are spoken."""

    words: tuple[str, ...]
    """Lowercase words (the transcript; Kaldi ``text`` holds them uppercased)."""
    spoken: str
    """What the synthesizer reads: the words plus punctuation that shapes pauses/intonation."""
    kind: str
    """``keyword``, ``word`` (other isolated word), ``digits`` or ``sentence``."""
    keyword: str | None
    """For isolated-word utterances the keyword-spotting label, else None."""


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _maybe(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _noun_phrase(rng: np.random.Generator, nouns: list[str]) -> list[str]:
    det = _pick(rng, ["the", "the", "a", "my", "your", "this", "that"])
    if det == "a":
        det = "the"  # avoids a/an agreement with vowel-initial adjectives and nouns
    words = [det]
    if _maybe(rng, 0.35):
        words.append(_pick(rng, _SIZES))
    if _maybe(rng, 0.45):
        words.append(_pick(rng, _COLORS))
    words.append(_pick(rng, nouns))
    return words


def _number_words(rng: np.random.Generator) -> list[str]:
    if _maybe(rng, 0.6):
        return [_pick(rng, _COUNT_WORDS)]
    words = [_pick(rng, _TENS)]
    if _maybe(rng, 0.6):
        words.append(_pick(rng, DIGITS[1:]))
    return words


def _sentence_command(rng: np.random.Generator) -> list[str]:
    words = []
    if _maybe(rng, 0.3):
        words.append("please")
    words.append(_pick(rng, _COMMAND_VERBS))
    words += _noun_phrase(rng, _THINGS)
    r = rng.random()
    if r < 0.35:
        words += [_pick(rng, _DIRECTIONS)]
    elif r < 0.7:
        words += ["to", "the", _pick(rng, _PLACES)]
    else:
        words += [_pick(rng, _PREPOSITIONS), *_noun_phrase(rng, _THINGS)]
    return words


def _sentence_navigation(rng: np.random.Generator) -> list[str]:
    words = [_pick(rng, ["turn", "go", "walk", "drive"])]
    words.append(_pick(rng, ["left", "right", "up", "down", "forward", "backward"]))
    r = rng.random()
    if r < 0.4:
        words += ["at", *_noun_phrase(rng, _PLACES)]
    elif r < 0.75:
        words += [*_number_words(rng), _pick(rng, ["steps", "meters", "blocks"])]
    if _maybe(rng, 0.35):
        words += ["then", _pick(rng, ["stop", "go", "wait", "turn"])]
        if words[-1] == "turn":
            words.append(_pick(rng, ["left", "right"]))
    return words


def _sentence_switch(rng: np.random.Generator) -> list[str]:
    words = [_pick(rng, ["turn", "switch"]), _pick(rng, ["on", "off"]), "the"]
    words.append(_pick(rng, _SWITCHABLE))
    if _maybe(rng, 0.5):
        words += ["in", "the", _pick(rng, _ROOMS)]
    return words


def _sentence_description(rng: np.random.Generator) -> list[str]:
    subject_pool = _ANIMALS + _PEOPLE
    if _maybe(rng, 0.3):
        subject = [_pick(rng, _NAMES)]
    else:
        subject = _noun_phrase(rng, subject_pool)
    verb = _pick(rng, _VERBS_3SG if _maybe(rng, 0.5) else _VERBS_PAST)
    words = [*subject, verb, *_noun_phrase(rng, _THINGS + _ANIMALS)]
    if _maybe(rng, 0.5):
        words += [_pick(rng, _PREPOSITIONS), *_noun_phrase(rng, _PLACES + _THINGS)]
    return words


def _sentence_state(rng: np.random.Generator) -> list[str]:
    words = _noun_phrase(rng, _PLACES + _THINGS + _ANIMALS)
    words += [_pick(rng, ["is", "was", "looks", "seems"])]
    if _maybe(rng, 0.3):
        words.append(_pick(rng, ["very", "quite", "too", "so"]))
    words.append(_pick(rng, _QUALITIES + _SIZES))
    if _maybe(rng, 0.3):
        words.append(_pick(rng, _TIME_WORDS))
    return words


def _sentence_question(rng: np.random.Generator) -> list[str]:
    r = rng.random()
    if r < 0.4:
        return [
            _pick(rng, ["where", "when", "why", "how"]),
            _pick(rng, ["is", "was", "did"]),
            *_noun_phrase(rng, _ANIMALS + _THINGS + _PEOPLE),
            *(["go"] if _maybe(rng, 0.3) else []),
        ]
    if r < 0.75:
        return [
            _pick(rng, ["can", "could", "will", "did"]),
            _pick(rng, ["you", "we", "they"]),
            _pick(rng, _QUESTION_VERBS),
            *_noun_phrase(rng, _THINGS + _ANIMALS + _PLACES),
        ]
    return [
        _pick(rng, ["is", "was"]),
        *_noun_phrase(rng, _THINGS + _ANIMALS),
        _pick(rng, _PREPOSITIONS),
        *_noun_phrase(rng, _PLACES + _THINGS),
    ]


def _sentence_time(rng: np.random.Generator) -> list[str]:
    r = rng.random()
    if r < 0.35:
        return ["set", "a", "timer", "for", *_number_words(rng), _pick(rng, _UNITS)]
    if r < 0.7:
        hour = _pick(rng, _COUNT_WORDS)
        tail = _pick(rng, ["o'clock", "thirty", "fifteen", "forty five"])
        when = [_pick(rng, _WEEKDAYS)] if _maybe(rng, 0.5) else [_pick(rng, _TIME_WORDS)]
        return [
            "the",
            _pick(rng, ["meeting", "train", "class", "game", "party"]),
            "starts",
            "at",
            hour,
            *tail.split(),
            *when,
        ]
    return [
        _pick(rng, ["call", "text", "meet", "visit", "help"]),
        _pick(rng, _NAMES),
        _pick(rng, ["on", "at", "after", "before"]),
        _pick(rng, _WEEKDAYS)
        if _maybe(rng, 0.6)
        else _pick(rng, ["noon", "lunch", "dinner", "work"]),
    ]


_SENTENCE_TEMPLATES: tuple[tuple[Callable[[np.random.Generator], list[str]], float, str], ...] = (
    (_sentence_command, 0.2, "."),
    (_sentence_navigation, 0.15, "."),
    (_sentence_switch, 0.1, "."),
    (_sentence_description, 0.2, "."),
    (_sentence_state, 0.12, "."),
    (_sentence_question, 0.13, "?"),
    (_sentence_time, 0.1, "."),
)


@dataclass(frozen=True, kw_only=True)
class TextMix:
    """How often each kind of utterance is drawn (normalised to sum to one)."""

    keyword: float = 0.25
    """Isolated Speech Commands keyword."""
    word: float = 0.12
    """Isolated other word (auxiliary word or digit): the ``_unknown_`` class."""
    digits: float = 0.18
    """A string of three to eight digits."""
    sentence: float = 0.45
    """A short sentence from the grammar."""


def sample_isolated(rng: np.random.Generator, keyword: bool) -> UtteranceText:
    word = _pick(rng, KEYWORDS) if keyword else _pick(rng, AUXILIARY_WORDS + DIGITS)
    return UtteranceText(
        words=(word,),
        spoken=word + ".",
        kind="keyword" if keyword else "word",
        keyword=word if keyword else UNKNOWN_LABEL,
    )


def sample_digits(rng: np.random.Generator) -> UtteranceText:
    n = int(rng.integers(3, 9))
    zero = "oh" if _maybe(rng, 0.5) else "zero"
    words = [zero if d == 0 else DIGITS[d] for d in rng.integers(0, 10, size=n)]
    # phone-number grouping: a short pause after the third digit of longer strings
    if n >= 6 and _maybe(rng, 0.6):
        spoken = " ".join(words[:3]) + ", " + " ".join(words[3:]) + "."
    else:
        spoken = " ".join(words) + "."
    return UtteranceText(words=tuple(words), spoken=spoken, kind="digits", keyword=None)


def sample_sentence(rng: np.random.Generator, pause_prob: float = 0.08) -> UtteranceText:
    probs = np.array([w for _, w, _ in _SENTENCE_TEMPLATES])
    idx = int(rng.choice(len(_SENTENCE_TEMPLATES), p=probs / probs.sum()))
    make, _, final = _SENTENCE_TEMPLATES[idx]
    words = [w for item in make(rng) for w in item.split()]
    # an occasional comma gives a natural inter-word pause (silence in the alignment)
    pieces = [words[0]]
    for w in words[1:]:
        pieces.append(("," if len(words) > 3 and _maybe(rng, pause_prob) else "") + " " + w)
    spoken = "".join(pieces) + final
    return UtteranceText(words=tuple(words), spoken=spoken, kind="sentence", keyword=None)


def sample_text(rng: np.random.Generator, mix: TextMix | None = None) -> UtteranceText:
    """Draw one utterance's text according to ``mix``."""
    mix = mix or TextMix()
    weights = np.array([mix.keyword, mix.word, mix.digits, mix.sentence], dtype=float)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"bad text mix {mix}")
    kind = int(rng.choice(4, p=weights / weights.sum()))
    if kind == 0:
        return sample_isolated(rng, keyword=True)
    if kind == 1:
        return sample_isolated(rng, keyword=False)
    if kind == 2:
        return sample_digits(rng)
    return sample_sentence(rng)


def vocabulary() -> list[str]:
    """Every word the grammar and word lists can produce (lowercase, sorted)."""
    pools = [
        KEYWORDS,
        DIGITS,
        AUXILIARY_WORDS,
        ("oh", "please", "the", "my", "your", "this", "that", "to", "at", "in", "then"),
        ("turn", "go", "walk", "drive", "steps", "meters", "blocks", "stop", "wait", "switch"),
        ("is", "was", "looks", "seems", "very", "quite", "too", "so", "where", "when", "why"),
        ("how", "did", "can", "could", "will", "you", "we", "they", "set", "a", "timer", "for"),
        ("meeting", "train", "class", "game", "party", "starts", "o'clock", "thirty", "fifteen"),
        ("forty", "five", "call", "text", "meet", "visit", "help", "after", "before", "noon"),
        ("lunch", "dinner", "work"),
        _COLORS,
        _SIZES,
        _QUALITIES,
        _ANIMALS,
        _THINGS,
        _PLACES,
        _PEOPLE,
        _NAMES,
        _VERBS_3SG,
        _VERBS_PAST,
        _COMMAND_VERBS,
        _DIRECTIONS,
        _PREPOSITIONS,
        _SWITCHABLE,
        _ROOMS,
        _COUNT_WORDS,
        _TENS,
        _UNITS,
        _TIME_WORDS,
        _WEEKDAYS,
        _QUESTION_VERBS,
    ]
    return sorted({w for pool in pools for w in pool})
