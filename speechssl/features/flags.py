"""Command-line flags of the Kaldi feature options, named as Kaldi's (no torch import, so
building the ``speechssl`` parser stays fast)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from speechssl.features.options import WINDOW_TYPES


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# (flag, type, field) of the Kaldi options; the destination is the dataclass field name
FRAME_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("--sample-frequency", float, "sample frequency in Hz (audio is resampled to it)"),
    ("--frame-length", float, "frame length in ms"),
    ("--frame-shift", float, "frame shift in ms"),
    ("--dither", float, "dither stddev (int16 units with the default scale); 0 = off"),
    ("--preemphasis-coefficient", float, "pre-emphasis coefficient"),
    ("--remove-dc-offset", parse_bool, "subtract each frame's mean (true/false)"),
    ("--window-type", str, f"window: {', '.join(WINDOW_TYPES)}"),
    ("--blackman-coeff", float, "Blackman window constant"),
    ("--round-to-power-of-two", parse_bool, "zero-pad frames to a power of two (true/false)"),
    ("--snip-edges", parse_bool, "only whole frames (true) or reflect at the ends (false)"),
]
MEL_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("--num-mel-bins", int, "number of mel bins"),
    ("--low-freq", float, "low cutoff of the mel bins in Hz"),
    ("--high-freq", float, "high cutoff in Hz (<= 0: offset from Nyquist)"),
]
FEATURE_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("--use-energy", parse_bool, "fbank: add log energy; mfcc: replace C0 by it (true/false)"),
    ("--energy-floor", float, "floor on the energy (absolute); 0 = none"),
    ("--raw-energy", parse_bool, "energy before pre-emphasis and window (true/false)"),
    ("--htk-compat", parse_bool, "HTK order: energy / C0 last (true/false)"),
    ("--use-log-fbank", parse_bool, "fbank: log of the mel energies (true/false)"),
    ("--use-power", parse_bool, "fbank: power (true) or magnitude (false) spectrum"),
    ("--num-ceps", int, "mfcc: number of cepstra"),
    ("--cepstral-lifter", float, "mfcc: liftering coefficient (0 = off)"),
]


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_kaldi_arguments(group: argparse._ArgumentGroup) -> list[str]:
    """Kaldi's option names (``--snip-edges=false`` style) for fbank, mfcc, spectrogram;
    returns their destinations (the option names a Kaldi extractor reads)."""
    actions = [
        group.add_argument(flag, type=typ, default=None, help=text)
        for flag, typ, text in FRAME_FLAGS + MEL_FLAGS + FEATURE_FLAGS
    ]
    actions += [
        group.add_argument(
            "--waveform-scale",
            type=float,
            default=None,
            help="multiply samples by this (default 32768: Kaldi's int16 range; 1: [-1, 1])",
        ),
        group.add_argument(
            "--deltas", type=int, default=None, help="append deltas of this order (2: +d +dd)"
        ),
        group.add_argument(
            "--cmvn", choices=["none", "mean", "meanvar"], default=None, help="per-utterance CMVN"
        ),
        group.add_argument("--seed", type=int, default=None, help="dither seed (mixed per utt)"),
    ]
    return [action.dest for action in actions]
