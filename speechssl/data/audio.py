"""Loading audio from a source: soundfile decoding, segment reads, resampling, channel policy.

An :class:`AudioSource` says where samples live (a file or a ``cmd |`` command, and the
segment of it) and loads itself; this module knows nothing of data dirs (a
:class:`~speechssl.data.kaldi_dir.KaldiDataDir` hands out sources, one per utterance)::

    from speechssl.data.audio import AudioSource, LoadOptions

    src = AudioSource(path="rec.flac", start=1.25, end=2.0)
    opts = LoadOptions(sample_rate=16000, channels="error", min_duration=0.5)
    wav, rate = src.load(opts, utt="rec-1")      # float32 [T], 16000
    info = src.probe(utt="rec-1")                # header only: rate, channels, frames

Files are read with ``soundfile`` (wav, flac, ogg and whatever the bundled libsndfile
decodes). A ``segments`` entry is read by seeking, so a long recording is never loaded whole.
Every problem with an item raises a subclass of :class:`AudioError` naming the utterance,
the file and the reason; a tolerant pass (``KaldiDataDir.iter_audio(..., tolerant=True)``)
skips such items and counts them in a :class:`SkipReport` (``loaded + skipped == seen``),
anything else propagates.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf

from speechssl.errors import ConfigError, ItemError

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------
# errors


class AudioError(ItemError):
    """An utterance's audio cannot be used; ``item`` is the utterance, ``where`` the file."""

    kind = "audio"


class AudioMissingError(AudioError):
    """The audio file does not exist."""

    kind = "missing"


class AudioEmptyError(AudioError):
    """The file (or the segment) holds no samples."""

    kind = "empty"


class AudioCorruptError(AudioError):
    """The file cannot be decoded."""

    kind = "corrupt"


class AudioTruncatedError(AudioCorruptError):
    """The file holds fewer samples than its header or the segment says."""

    kind = "truncated"


class AudioNonFiniteError(AudioError):
    """Samples are NaN or infinite."""

    kind = "non-finite"


class AudioSilentError(AudioError):
    """Every sample is zero."""

    kind = "all-zero"


class AudioSampleRateError(AudioError):
    """The sample rate is not the one required (and resampling is off or the rate not allowed)."""

    kind = "sample-rate"


class AudioChannelError(AudioError):
    """The file has several channels and the channel policy does not say which to use."""

    kind = "channels"


class AudioTooShortError(AudioError):
    """Shorter than the minimum duration."""

    kind = "too-short"


class AudioTooLongError(AudioError):
    """Longer than the maximum duration."""

    kind = "too-long"


class AudioPipeError(AudioError):
    """A ``cmd |`` source is not allowed here, or its command failed."""

    kind = "pipe"


# --------------------------------------------------------------------------------------
# sources and options


@dataclass(frozen=True, kw_only=True)
class AudioSource:
    """Where an utterance's samples live."""

    path: str
    """File path, or the shell command of a Kaldi ``cmd |`` entry when ``pipe`` is true."""
    pipe: bool = False
    """``path`` is a shell command whose stdout is an audio file (opted in by the caller)."""
    start: float = 0.0
    """Segment start in seconds (0 for a whole recording)."""
    end: float | None = None
    """Segment end in seconds; ``None`` reads to the end of the recording."""
    channel: int | None = None
    """Channel of a multi-channel recording to use; ``None`` lets the channel policy decide."""
    recording: str | None = None
    """Recording id (the ``wav.scp`` key), for messages and grouping."""

    @property
    def is_segment(self) -> bool:
        return self.start > 0.0 or self.end is not None

    def load(self, opts: LoadOptions | None = None, *, utt: str = "") -> tuple[torch.Tensor, int]:
        """Decode to a float32 mono ``[T]`` tensor: ``(waveform, rate)`` (see :func:`load_audio`)."""
        return load_audio(self, opts, utt=utt)

    def probe(self, *, utt: str = "", segment_overshoot: float = 0.05) -> AudioInfo:
        """Read only the header (see :func:`probe`)."""
        return probe(self, utt=utt, segment_overshoot=segment_overshoot)


@dataclass(kw_only=True)
class LoadOptions:
    """How to turn a source into a float32 mono waveform."""

    sample_rate: int | None = 16000
    """Target rate in Hz; ``None`` keeps each file's own rate."""
    resample: bool = True
    """Resample other rates to ``sample_rate``; if false a different rate is an error."""
    allowed_rates: tuple[int, ...] | None = None
    """Source rates accepted (``None``: any); others are an error even with resampling."""
    channels: str = "error"
    """Multi-channel policy: ``error`` (default), ``select:N`` (0-based) or ``mean``."""
    min_duration: float = 0.0
    """Shortest acceptable utterance in seconds (checked before decoding)."""
    max_duration: float | None = None
    """Longest acceptable utterance in seconds (``None``: no limit; checked before decoding)."""
    reject_silent: bool = True
    """Treat an all-zero utterance as an error."""
    segment_overshoot: float = 0.05
    """Seconds a segment may end past its recording (rounding in segment files); beyond
    that the recording is taken to be truncated."""

    def __post_init__(self) -> None:
        parse_channel_policy(self.channels)
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.min_duration < 0:
            raise ConfigError(f"min_duration must be >= 0, got {self.min_duration}")
        if self.max_duration is not None and self.max_duration <= self.min_duration:
            raise ConfigError(
                f"max_duration ({self.max_duration}) must exceed min_duration ({self.min_duration})"
            )
        if self.segment_overshoot < 0:
            raise ConfigError(f"segment_overshoot must be >= 0, got {self.segment_overshoot}")


def parse_channel_policy(policy: str) -> tuple[str, int | None]:
    """``"error"`` -> ("error", None), ``"mean"`` -> ("mean", None), ``"select:1"`` -> ("select", 1)."""
    if policy in ("error", "mean"):
        return policy, None
    if policy.startswith("select:"):
        num = policy.split(":", 1)[1]
        if num.isdigit():
            return "select", int(num)
    raise ConfigError(f"channel policy must be 'error', 'mean' or 'select:N', got {policy!r}")


@dataclass(frozen=True)
class AudioInfo:
    """What a source's header says (for a segment: the segment's extent)."""

    sample_rate: int
    channels: int
    frames: int
    """Samples per channel of the source (the segment's, for a segment)."""
    recording_frames: int
    """Samples per channel of the whole recording."""
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


# --------------------------------------------------------------------------------------
# opening and header checks


def read_pipe(source: AudioSource, utt: str) -> bytes:
    """Run a `cmd |` source and return its stdout (an audio file in memory)."""
    try:
        proc = subprocess.run(source.path, shell=True, capture_output=True, check=False)
    except OSError as exc:  # pragma: no cover - the shell itself failed to start
        raise AudioPipeError(utt, f"cannot run command: {exc}", source.path) from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise AudioPipeError(
            utt, f"command exited with status {proc.returncode}: {' | '.join(tail)}", source.path
        )
    if not proc.stdout:
        raise AudioEmptyError(utt, "command wrote no audio", source.path)
    return proc.stdout


def declared_wav_frames(path: str | os.PathLike[str]) -> int | None:
    """Samples per channel a RIFF/WAVE header declares in its ``data`` chunk.

    libsndfile quietly shrinks its frame count to what a cut-off WAV file holds, so the
    header is read here to tell a truncated file from a short one. Returns ``None`` when the
    file is not a plain RIFF WAVE or the size is a streaming placeholder.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = 0
        # walk the chunk list until "data"; every chunk is id(4) size(4 LE) body (padded)
        for _ in range(64):
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = fh.read(size + (size & 1))
                if len(body) < 16:
                    return None
                block_align = struct.unpack("<H", body[12:14])[0]
            elif cid == b"data":
                if block_align == 0 or size in (0, 0xFFFFFFFF):
                    return None
                return int(size // block_align)
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)
    return None


@dataclass
class _Opened:
    handle: sf.SoundFile
    info: AudioInfo
    start_frame: int


def _open(source: AudioSource, utt: str, overshoot: float) -> _Opened:
    where = source.path
    if source.pipe:
        data = read_pipe(source, utt)
        target: Any = io.BytesIO(data)
    else:
        p = Path(source.path)
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise AudioMissingError(utt, "audio file does not exist", where) from None
        except OSError as exc:
            raise AudioCorruptError(utt, f"cannot access audio file: {exc}", where) from exc
        if not p.is_file():
            raise AudioCorruptError(utt, "audio path is not a regular file", where)
        if size == 0:
            raise AudioEmptyError(utt, "audio file is empty (0 bytes)", where)
        target = str(p)
    try:
        handle = sf.SoundFile(target)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioCorruptError(utt, f"unreadable audio: {exc}", where) from exc
    try:
        rate, channels, frames = handle.samplerate, handle.channels, handle.frames
        if frames <= 0:
            raise AudioEmptyError(utt, "audio file holds no samples", where)
        if not source.pipe and handle.format == "WAV":
            declared = declared_wav_frames(target)
            if declared is not None and declared > frames:
                raise AudioTruncatedError(
                    utt,
                    f"truncated: header declares {declared} samples, file holds {frames}",
                    where,
                )
        start_frame, seg_frames = 0, frames
        if source.is_segment:
            start_frame = round(source.start * rate)
            if source.start < 0 or (source.end is not None and source.end <= source.start):
                raise AudioCorruptError(utt, f"bad segment {source.start}..{source.end} s", where)
            if start_frame >= frames:
                raise AudioTruncatedError(
                    utt,
                    f"segment starts at {source.start:.3f} s but the recording is only "
                    f"{frames / rate:.3f} s",
                    where,
                )
            end_frame = frames if source.end is None else round(source.end * rate)
            if end_frame > frames:
                if end_frame - frames > overshoot * rate:
                    raise AudioTruncatedError(
                        utt,
                        f"segment ends at {source.end:.3f} s but the recording is only "
                        f"{frames / rate:.3f} s",
                        where,
                    )
                end_frame = frames
            seg_frames = end_frame - start_frame
            if seg_frames <= 0:
                raise AudioEmptyError(utt, "segment holds no samples", where)
        info = AudioInfo(
            sample_rate=rate,
            channels=channels,
            frames=seg_frames,
            recording_frames=frames,
            format=str(handle.format),
        )
    except BaseException:
        handle.close()
        raise
    return _Opened(handle, info, start_frame)


def probe(source: AudioSource, *, utt: str = "", segment_overshoot: float = 0.05) -> AudioInfo:
    """Read only the header: rate, channels, length (of the segment, if any).

    Raises the same missing/empty/corrupt/truncated-header errors as :func:`load_audio`.
    """
    opened = _open(source, utt or source.recording or source.path, segment_overshoot)
    opened.handle.close()
    return opened.info


# --------------------------------------------------------------------------------------
# decoding


def _reduce_channels(data: np.ndarray, source: AudioSource, policy: str, utt: str) -> np.ndarray:
    nchan = data.shape[1]
    how, index = parse_channel_policy(policy)
    if source.channel is not None:
        how, index = "select", source.channel
    if nchan == 1 and how != "select":
        return data[:, 0]
    if how == "select":
        assert index is not None
        if index >= nchan:
            raise AudioChannelError(
                utt, f"channel {index} requested but the file has {nchan}", source.path
            )
        return data[:, index]
    if how == "mean":
        return data.mean(axis=1, dtype=np.float32)
    raise AudioChannelError(
        utt,
        f"{nchan} channels; choose one with channels='select:N' or average with 'mean'",
        source.path,
    )


def check_samples(samples: np.ndarray, *, utt: str, where: str, reject_silent: bool) -> None:
    """Raise on NaN/inf samples, or all-zero ones when ``reject_silent``."""
    finite = np.isfinite(samples)
    if not finite.all():
        nan = int(np.isnan(samples).sum())
        inf = int(samples.size - finite.sum()) - nan
        raise AudioNonFiniteError(utt, f"{nan} NaN and {inf} infinite samples", where)
    if reject_silent and not samples.any():
        raise AudioSilentError(utt, "every sample is zero", where)


def load_audio(
    source: AudioSource, opts: LoadOptions | None = None, *, utt: str = ""
) -> tuple[torch.Tensor, int]:
    """Decode ``source`` to a float32 mono ``[T]`` tensor; returns ``(waveform, rate)``.

    Checks, in order (each failure an :class:`AudioError` naming ``utt`` and the file):
    file exists and is not empty, decodes, is not truncated, the segment lies inside it,
    the sample rate is acceptable, the channel policy resolves, the duration is within
    ``[min_duration, max_duration]`` (from the header, before decoding), the samples are
    finite and not all zero. Then resamples to ``opts.sample_rate`` if needed.
    """
    opts = opts or LoadOptions()
    name = utt or source.recording or source.path
    where = source.path
    opened = _open(source, name, opts.segment_overshoot)
    info = opened.info
    with opened.handle as handle:
        rate = info.sample_rate
        target = opts.sample_rate or rate
        if opts.allowed_rates is not None and rate not in opts.allowed_rates:
            allowed = ", ".join(str(r) for r in opts.allowed_rates)
            raise AudioSampleRateError(
                name, f"sample rate {rate} Hz is not one of the allowed ({allowed})", where
            )
        if rate != target and not opts.resample:
            raise AudioSampleRateError(
                name, f"sample rate {rate} Hz, expected {target} Hz (resampling is off)", where
            )
        if info.channels > 1 and opts.channels == "error" and source.channel is None:
            raise AudioChannelError(
                name,
                f"{info.channels} channels; choose one with channels='select:N' or average "
                "with 'mean'",
                where,
            )
        duration = info.duration
        if duration < opts.min_duration:
            raise AudioTooShortError(
                name, f"{duration:.3f} s is shorter than the minimum {opts.min_duration} s", where
            )
        if opts.max_duration is not None and duration > opts.max_duration:
            raise AudioTooLongError(
                name, f"{duration:.3f} s is longer than the maximum {opts.max_duration} s", where
            )
        try:
            if opened.start_frame:
                handle.seek(opened.start_frame)
            data = handle.read(info.frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioCorruptError(name, f"decoding failed: {exc}", where) from exc
    if data.shape[0] < info.frames:
        raise AudioTruncatedError(
            name, f"truncated: read {data.shape[0]} of {info.frames} samples", where
        )
    mono = _reduce_channels(data, source, opts.channels, name)
    check_samples(mono, utt=name, where=where, reject_silent=opts.reject_silent)
    import torch  # imported here so header-only users (validate, info) stay light

    wave = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if rate != target:
        import torchaudio.functional as taf

        wave = taf.resample(wave, rate, target)
    return wave, target


# --------------------------------------------------------------------------------------
# tolerant passes


@dataclass
class SkipReport:
    """Counts of a tolerant pass: ``loaded + skipped == seen`` always holds."""

    what: str = "audio"
    seen: int = 0
    loaded: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """``(item, kind, message)`` per skipped item, in the order met."""

    def add_loaded(self) -> None:
        self.seen += 1
        self.loaded += 1

    def add_skipped(self, err: ItemError) -> None:
        self.seen += 1
        self.skipped.append((err.item, type(err).kind, str(err)))

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(kind for _, kind, _ in self.skipped).items()))

    def check(self) -> None:
        """Raise if the books do not balance (a bug, never bad input)."""
        if self.loaded + self.num_skipped != self.seen:
            raise AssertionError(
                f"{self.what}: {self.loaded} loaded + {self.num_skipped} skipped != "
                f"{self.seen} seen"
            )

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in self.by_kind().items())
        detail = f" ({kinds})" if kinds else ""
        return (
            f"{self.what}: {self.loaded} loaded, {self.num_skipped} skipped{detail} of {self.seen}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "seen": self.seen,
            "loaded": self.loaded,
            "skipped": self.num_skipped,
            "skipped_by_kind": self.by_kind(),
            "skipped_items": [{"item": i, "kind": k, "message": m} for i, k, m in self.skipped],
        }
