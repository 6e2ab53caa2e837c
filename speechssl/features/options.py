"""Options of the Kaldi-compatible features, named as Kaldi's command-line options.

Field names follow Kaldi's flags (``--frame-length`` -> ``frame_length``) and the keyword
arguments of ``torchaudio.compliance.kaldi``, so a Kaldi ``conf/fbank.conf`` maps one to
one. Defaults are Kaldi's with two exceptions, both matching ``torchaudio.compliance.kaldi``
(which is what most Python recipes, HuBERT's MFCC dump included, run today): ``dither``
defaults to 0 (deterministic features) and ``MfccOptions.use_energy`` defaults to False.
VTLN warping is not supported (warp factor 1).

The options are frozen dataclasses: hashable, so derived tables (windows, mel banks, DCT
matrices) are cached per option set, and serialisable with :func:`options_to_dict` for the
feature store's ``meta.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from speechssl.errors import ConfigError

WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "sine", "blackman")


@dataclass(kw_only=True, frozen=True)
class FrameOptions:
    """How a waveform is cut into windowed frames (Kaldi's ``FrameExtractionOptions``)."""

    sample_frequency: float = 16000.0
    """Sample rate of the waveform in Hz."""
    frame_length: float = 25.0
    """Frame length in milliseconds."""
    frame_shift: float = 10.0
    """Frame shift in milliseconds."""
    dither: float = 0.0
    """Standard deviation of Gaussian noise added to every frame (0 = off). The noise is a
    counter-based hash of (per-utterance seed, frame, sample), so it is reproducible and
    identical for an utterance whether it is processed alone or in a batch."""
    preemphasis_coefficient: float = 0.97
    """Pre-emphasis ``x[i] -= c * x[i-1]`` (0 = off)."""
    remove_dc_offset: bool = True
    """Subtract each frame's mean before pre-emphasis."""
    window_type: str = "povey"
    """One of hamming, hanning, povey, rectangular, sine, blackman."""
    blackman_coeff: float = 0.42
    """Constant of the generalised Blackman window."""
    round_to_power_of_two: bool = True
    """Zero-pad each frame to the next power of two before the FFT."""
    snip_edges: bool = True
    """True: only frames that fit completely in the signal. False: frames centred every
    shift, the signal reflected at both ends (frame count depends only on the shift)."""

    def __post_init__(self) -> None:
        if self.sample_frequency <= 0:
            raise ConfigError(f"sample_frequency must be > 0, got {self.sample_frequency}")
        if self.window_type not in WINDOW_TYPES:
            raise ConfigError(
                f"window_type {self.window_type!r} is not one of {', '.join(WINDOW_TYPES)}"
            )
        if self.window_size < 2:
            raise ConfigError(
                f"frame_length {self.frame_length} ms at {self.sample_frequency} Hz gives "
                f"{self.window_size} samples; need at least 2"
            )
        if self.window_shift < 1:
            raise ConfigError(
                f"frame_shift {self.frame_shift} ms at {self.sample_frequency} Hz gives "
                f"{self.window_shift} samples; need at least 1"
            )
        if self.padded_window_size % 2:
            raise ConfigError(
                f"the FFT size {self.padded_window_size} (frame of {self.window_size} samples) "
                "must be even, as in Kaldi; use round_to_power_of_two or change frame_length"
            )
        if self.dither < 0:
            raise ConfigError(f"dither must be >= 0, got {self.dither}")
        if not 0.0 <= self.preemphasis_coefficient <= 1.0:
            raise ConfigError(
                f"preemphasis_coefficient must be in [0, 1], got {self.preemphasis_coefficient}"
            )

    @property
    def window_size(self) -> int:
        """Frame length in samples (Kaldi's ``WindowSize()``: truncated, not rounded)."""
        return int(self.sample_frequency * 0.001 * self.frame_length)

    @property
    def window_shift(self) -> int:
        """Frame shift in samples (Kaldi's ``WindowShift()``)."""
        return int(self.sample_frequency * 0.001 * self.frame_shift)

    @property
    def padded_window_size(self) -> int:
        """FFT size: the frame length, or the next power of two."""
        size = self.window_size
        return 1 << (size - 1).bit_length() if self.round_to_power_of_two else size

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        return self.sample_frequency / self.window_shift


@dataclass(kw_only=True, frozen=True)
class MelOptions:
    """The triangular mel filterbank (Kaldi's ``MelBanksOptions``, without VTLN)."""

    num_mel_bins: int = 23
    """Number of triangular mel filters."""
    low_freq: float = 20.0
    """Low edge of the lowest filter in Hz."""
    high_freq: float = 0.0
    """High edge of the highest filter in Hz; <= 0 means Nyquist + high_freq."""

    def __post_init__(self) -> None:
        if self.num_mel_bins < 3:
            raise ConfigError(f"num_mel_bins must be >= 3, got {self.num_mel_bins}")

    def edges(self, sample_frequency: float) -> tuple[float, float]:
        """``(low, high)`` in Hz, checked against the Nyquist frequency as Kaldi does."""
        nyquist = 0.5 * sample_frequency
        high = self.high_freq if self.high_freq > 0.0 else nyquist + self.high_freq
        low = self.low_freq
        if not (0.0 <= low < nyquist and 0.0 < high <= nyquist and high > low):
            raise ConfigError(
                f"bad mel frequency range: low_freq={self.low_freq}, high_freq={self.high_freq} "
                f"(-> {low}..{high} Hz) at sample_frequency {sample_frequency} "
                f"(Nyquist {nyquist}); need 0 <= low < high <= Nyquist"
            )
        return low, high


@dataclass(kw_only=True, frozen=True)
class FbankOptions:
    """Log mel filterbank energies (Kaldi's ``compute-fbank-feats``)."""

    frame: FrameOptions = field(default_factory=FrameOptions)
    """Framing options."""
    mel: MelOptions = field(default_factory=lambda: MelOptions(num_mel_bins=23))
    """Mel filterbank options."""
    use_energy: bool = False
    """Add the log frame energy as an extra (first, or last with htk_compat) coefficient."""
    energy_floor: float = 0.0
    """Floor on the energy (absolute, not log); 0 = no floor."""
    raw_energy: bool = True
    """Energy before pre-emphasis and windowing (else after)."""
    htk_compat: bool = False
    """Put the energy last, as HTK does."""
    use_log_fbank: bool = True
    """Log of the mel energies (else the energies themselves)."""
    use_power: bool = True
    """Power spectrum (else magnitude) into the filterbank."""

    @property
    def dim(self) -> int:
        return self.mel.num_mel_bins + (1 if self.use_energy else 0)


@dataclass(kw_only=True, frozen=True)
class MfccOptions:
    """Mel-frequency cepstral coefficients (Kaldi's ``compute-mfcc-feats``)."""

    frame: FrameOptions = field(default_factory=FrameOptions)
    """Framing options."""
    mel: MelOptions = field(default_factory=lambda: MelOptions(num_mel_bins=23))
    """Mel filterbank options."""
    num_ceps: int = 13
    """Number of cepstra kept (including C0)."""
    cepstral_lifter: float = 22.0
    """Liftering coefficient Q (0 = off): c[i] *= 1 + Q/2 sin(pi i / Q)."""
    use_energy: bool = False
    """Replace C0 by the log frame energy."""
    energy_floor: float = 0.0
    """Floor on the energy (absolute, not log); 0 = no floor."""
    raw_energy: bool = True
    """Energy before pre-emphasis and windowing (else after)."""
    htk_compat: bool = False
    """HTK order: C0/energy last (C0 scaled by sqrt(2) when use_energy is off)."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_ceps <= self.mel.num_mel_bins:
            raise ConfigError(
                f"num_ceps must be in [1, num_mel_bins={self.mel.num_mel_bins}], "
                f"got {self.num_ceps}"
            )

    @property
    def dim(self) -> int:
        return self.num_ceps


@dataclass(kw_only=True, frozen=True)
class SpectrogramOptions:
    """Log power spectrum (Kaldi's ``compute-spectrogram-feats``); bin 0 holds the energy."""

    frame: FrameOptions = field(default_factory=FrameOptions)
    """Framing options."""
    energy_floor: float = 0.0
    """Floor on the energy (absolute, not log); 0 = no floor."""
    raw_energy: bool = True
    """Energy before pre-emphasis and windowing (else after)."""

    @property
    def dim(self) -> int:
        return self.frame.padded_window_size // 2 + 1


FeatureOptions = FbankOptions | MfccOptions | SpectrogramOptions


def options_to_dict(opts: Any) -> dict[str, Any]:
    """Every option as a JSON-ready nested dict (for ``meta.json``)."""
    return dataclasses.asdict(opts)


def log_energy_floor(energy_floor: float) -> float:
    """Kaldi's floor on the log energy (``-inf`` when there is none)."""
    return math.log(energy_floor) if energy_floor > 0.0 else -math.inf
