"""Feature extractors for ``speechssl features dump``, by registered name.

An extractor turns a padded waveform batch into frame features and describes itself for the
store's ``meta.json``. The dump loop only talks to this interface, so new kinds (``model``:
a hidden layer of a trained model) plug in with :func:`register_extractor` without touching
it. Modules named in :data:`EXTRACTOR_MODULES` are imported (when present) before the
registry is used, so a later module (e.g. ``speechssl.downstream.upstreams``) only has to call
``register_extractor("model", spec)`` at import time.
"""

from __future__ import annotations

import dataclasses
import importlib
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from speechssl.errors import ConfigError
from speechssl.features.cmvn import utterance_cmvn
from speechssl.features.deltas import add_deltas
from speechssl.features.flags import FEATURE_FLAGS, FRAME_FLAGS, MEL_FLAGS, dest
from speechssl.features.kaldi import compute_features
from speechssl.features.options import (
    FbankOptions,
    FeatureOptions,
    FrameOptions,
    MelOptions,
    MfccOptions,
    SpectrogramOptions,
    options_to_dict,
)
from speechssl.registry import Registry


class FeatureExtractor(Protocol):
    """What the dump loop needs from an extractor."""

    @property
    def dim(self) -> int:
        """Feature dimension."""
        ...

    @property
    def frame_rate(self) -> float:
        """Frames per second."""
        ...

    @property
    def sample_rate(self) -> int:
        """Waveform sample rate the extractor expects (audio is resampled to it)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Everything that determines the output (recorded in meta.json, compared on rerun)."""
        ...

    def __call__(
        self, waves: Tensor, lengths: Tensor, utt_ids: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        """``waves [N, T]`` float32 in [-1, 1], ``lengths [N]`` -> ``([N, F, D], [N])``."""
        ...


@dataclass(frozen=True)
class ExtractorSpec:
    """A registered extractor kind.

    Attributes:
        factory: builds the extractor from its settings and a torch device. The settings are
            what ``parse`` returned, or without ``parse`` the command-line options themselves
            (a mapping of option name to value, unset options absent or None; ``--checkpoint``
            and ``--layer`` arrive as ``checkpoint``/``layer``).
        help: one line for ``--help``.
        parse: turns the command-line options into the kind's typed settings, once, where
            the request is made (the CLI edge), refusing options that do not apply; the
            settings are what crosses into worker processes.
    """

    factory: Callable[[Any, torch.device], FeatureExtractor]
    help: str = ""
    parse: Callable[[Mapping[str, Any]], Any] | None = None


EXTRACTORS: Registry[ExtractorSpec] = Registry("feature extractor")

#: modules that register extractors when imported (missing ones are skipped)
EXTRACTOR_MODULES: list[str] = ["speechssl.downstream.upstreams"]


def register_extractor(name: str, spec: ExtractorSpec) -> None:
    """Register an extractor kind for ``features dump --kind NAME``."""
    EXTRACTORS.add(name, spec)


def load_extractor_plugins() -> None:
    for module in EXTRACTOR_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def extractor_settings(kind: str, options: Any) -> Any:
    """The typed settings of ``kind`` from command-line ``options`` (already typed settings
    pass through); a kind without a ``parse`` keeps the mapping."""
    load_extractor_plugins()
    spec = EXTRACTORS.get(kind)
    if spec.parse is None or not isinstance(options, Mapping):
        return options
    return spec.parse(options)


def create_extractor(
    kind: str, options: Any, device: torch.device | str = "cpu"
) -> FeatureExtractor:
    """Build ``kind`` on ``device`` from its settings or its command-line options."""
    settings = extractor_settings(kind, options)
    return EXTRACTORS.get(kind).factory(settings, torch.device(device))


def utterance_seed(utt: str, seed: int = 0) -> int:
    """A stable 63-bit dither seed per utterance id (independent of batch and shard)."""
    return (zlib.crc32(utt.encode("utf-8")) << 31 ^ zlib.crc32(f"{seed}:{utt}".encode())) & (
        2**63 - 1
    )


# --------------------------------------------------------------------------- Kaldi kinds


@dataclass(kw_only=True)
class KaldiExtractor:
    """Kaldi fbank / MFCC / spectrogram, optionally with deltas and utterance CMVN."""

    kind: str
    """``fbank``, ``mfcc`` or ``spectrogram``."""
    opts: FeatureOptions
    """The feature options."""
    waveform_scale: float = 32768.0
    """Samples are multiplied by this first: 32768 gives Kaldi's int16 range (so energies,
    dither and energy floors mean what they mean in Kaldi); 1 keeps [-1, 1]."""
    deltas: int = 0
    """Delta order appended (0 none, 2 = deltas + delta-deltas, Kaldi window 2)."""
    cmvn: str = "none"
    """``none``, ``mean`` or ``meanvar``: per-utterance normalisation."""
    seed: int = 0
    """Mixed into each utterance's dither seed."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where features are computed."""

    @property
    def dim(self) -> int:
        return self.opts.dim * (self.deltas + 1)

    @property
    def frame_rate(self) -> float:
        return self.opts.frame.frame_rate

    @property
    def sample_rate(self) -> int:
        return int(self.opts.frame.sample_frequency)

    def describe(self) -> dict[str, Any]:
        return {
            "type": "kaldi",
            "kind": self.kind,
            "options": options_to_dict(self.opts),
            "waveform_scale": self.waveform_scale,
            "deltas": self.deltas,
            "cmvn": self.cmvn,
            "seed": self.seed,
        }

    @torch.no_grad()
    def __call__(
        self, waves: Tensor, lengths: Tensor, utt_ids: Sequence[str]
    ) -> tuple[Tensor, Tensor]:
        seeds = None
        if self.opts.frame.dither != 0.0:
            seeds = torch.tensor([utterance_seed(u, self.seed) for u in utt_ids])
        waves = waves.to(self.device, torch.float32, non_blocking=True)
        # scale into a batch whose width is a whole number of frame shifts: the CPU path
        # then gathers real frames with a plain row copy (see kaldi.flat_windows)
        shift = self.opts.frame.window_shift
        width = -(-waves.shape[1] // shift) * shift
        scaled = waves.new_zeros(waves.shape[0], width)
        torch.mul(waves, self.waveform_scale, out=scaled[:, : waves.shape[1]])
        waves = scaled
        feats, nf = compute_features(waves, lengths.to(self.device), self.opts, seeds=seeds)
        if self.deltas:
            feats = add_deltas(feats, nf, order=self.deltas, window=2)
        if self.cmvn != "none":
            feats = utterance_cmvn(feats, nf, norm_vars=self.cmvn == "meanvar")
        return feats, nf


def _picked(options: Mapping[str, Any], flags: list[tuple[str, Any, str]]) -> dict[str, Any]:
    return {
        dest(flag): options[dest(flag)]
        for flag, _, _ in flags
        if options.get(dest(flag)) is not None
    }


def kaldi_options(kind: str, options: Mapping[str, Any]) -> FeatureOptions:
    """Build the options dataclass of ``kind`` from flag values (unset ones keep defaults)."""
    frame = FrameOptions(**_picked(options, FRAME_FLAGS))
    extra = _picked(options, FEATURE_FLAGS)
    allowed: dict[str, set[str]] = {
        "fbank": {"use_energy", "energy_floor", "raw_energy", "htk_compat"}
        | {"use_log_fbank", "use_power"},
        "mfcc": {"use_energy", "energy_floor", "raw_energy", "htk_compat"}
        | {"num_ceps", "cepstral_lifter"},
        "spectrogram": {"energy_floor", "raw_energy"},
    }
    wrong = sorted(set(extra) - allowed[kind])
    mel_set = _picked(options, MEL_FLAGS)
    if kind == "spectrogram" and mel_set:
        wrong += sorted(mel_set)
    if wrong:
        names = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise ConfigError(f"option(s) {names} do not apply to --kind {kind}")
    if kind == "spectrogram":
        return SpectrogramOptions(frame=frame, **extra)
    mel = MelOptions(**mel_set)
    if kind == "fbank":
        return FbankOptions(frame=frame, mel=mel, **extra)
    return MfccOptions(frame=frame, mel=mel, **extra)


def _kaldi_parser(kind: str) -> Callable[[Mapping[str, Any]], KaldiExtractor]:
    def parse(options: Mapping[str, Any]) -> KaldiExtractor:
        foreign = [k for k in ("checkpoint", "layer") if options.get(k) is not None]
        if foreign:
            names = ", ".join("--" + k for k in foreign)
            raise ConfigError(f"option(s) {names} do not apply to --kind {kind}")
        opts = kaldi_options(kind, options)
        scale = options.get("waveform_scale")
        cmvn = options.get("cmvn") or "none"
        deltas = options.get("deltas") or 0
        if deltas < 0:
            raise ConfigError(f"--deltas must be >= 0, got {deltas}")
        return KaldiExtractor(
            kind=kind,
            opts=opts,
            waveform_scale=32768.0 if scale is None else float(scale),
            deltas=int(deltas),
            cmvn=str(cmvn),
            seed=int(options.get("seed") or 0),
        )

    return parse


def _kaldi_on_device(settings: KaldiExtractor, device: torch.device) -> FeatureExtractor:
    """The parsed Kaldi extractor (its settings are the extractor itself) on ``device``."""
    return dataclasses.replace(settings, device=device)


for _kind, _help in (
    ("fbank", "Kaldi log mel filterbank"),
    ("mfcc", "Kaldi MFCC"),
    ("spectrogram", "Kaldi log power spectrogram"),
):
    register_extractor(
        _kind,
        ExtractorSpec(factory=_kaldi_on_device, help=_help, parse=_kaldi_parser(_kind)),
    )
