"""The bundled synthetic corpus: multi-speaker English from eSpeak NG as Kaldi data dirs.

``make_corpus(out_dir, hours=..., seed=..., nj=...)`` (CLI: ``speechssl data synth``)
writes train/dev/test data dirs with frame-level phone alignments (``ali.phones``) and
keyword labels (``utt2keyword``); see :mod:`speechssl.data.synth.corpus` for the layout and
:mod:`speechssl.data.synth.alignment` for the alignment convention.
"""

from speechssl.data.synth.alignment import (
    FRAME_RATE,
    SILENCE,
    check_alignment_lengths,
    read_alignments,
    read_phone_table,
)
from speechssl.data.synth.corpus import CorpusSummary, SynthCorpusConfig, SynthError, make_corpus
from speechssl.data.synth.espeak import EspeakError, EspeakSynthesizer, VoiceSettings
from speechssl.data.synth.speakers import SpeakerConfig
from speechssl.data.synth.vocabulary import KEYWORDS, UNKNOWN_LABEL, TextMix

__all__ = [
    "FRAME_RATE",
    "KEYWORDS",
    "SILENCE",
    "UNKNOWN_LABEL",
    "CorpusSummary",
    "EspeakError",
    "EspeakSynthesizer",
    "SpeakerConfig",
    "SynthCorpusConfig",
    "SynthError",
    "TextMix",
    "VoiceSettings",
    "check_alignment_lengths",
    "make_corpus",
    "read_alignments",
    "read_phone_table",
]
