"""Training data pipeline: length-bucketed dynamic batches, consistent crops, resumable order.

Everything random here (the batch order, which utterances share a batch, crop offsets) is a
pure function of ``(seed, epoch, batch index)``: the sampler computes an epoch's batch plan
from the seed and the epoch, and a worker crops a batch from the seed, the epoch and the
batch's index. Neither depends on worker state, so a resumed run (or a run with a different
number of workers) sees exactly the same batches.

Batches are formed per epoch over the whole corpus (utterances sorted by length with a
random tie-break, or shuffled within length buckets), packed greedily up to
``max_batch_seconds`` of padded audio, and the batch order is shuffled. Rank ``r`` of ``W``
takes batches ``r, r + W, ...``; the plan is padded by wrap-around to a multiple of
``W * grad_accum`` so every rank runs the same number of steps. With this layout an
optimizer step consumes the same global batches whether they are spread over ranks or
accumulated on one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from speechssl.data.audio import AudioChannelError, AudioPipeError
from speechssl.data.batch import LABEL_PAD, AudioBatch
from speechssl.errors import ConfigError, ItemError

log = logging.getLogger(__name__)

# stream tags mixed into the seed so independent draws never share a generator
_ORDER_STREAM = 0
_CROP_STREAM = 1


def rng_for(seed: int, epoch: int, *extra: int) -> np.random.Generator:
    """A numpy generator that depends only on ``(seed, epoch, *extra)``."""
    return np.random.default_rng([seed, epoch, *extra])


def derive_seed(*parts: int) -> int:
    """A 63-bit seed (for ``torch.manual_seed``) that depends only on ``parts``."""
    state = np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


# --------------------------------------------------------------------------------------
# corpus


@dataclass
class LabelStream:
    """One unit-label stream over a corpus, stored flat (compact, cheap to share with workers).

    Attributes:
        name: stream name (the key in ``AudioBatch.labels``).
        rate: label frames per second.
        values: all labels, utterance after utterance, in corpus order.
        offsets: ``[n + 1]``; utterance ``i`` has ``values[offsets[i]:offsets[i + 1]]``.
    """

    name: str
    rate: float
    values: np.ndarray
    offsets: np.ndarray

    @staticmethod
    def from_arrays(name: str, rate: float, arrays: Sequence[np.ndarray]) -> LabelStream:
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # keep the labels' own (small) integer dtype: a large corpus has 10^8+ labels
        values = (
            np.concatenate([np.asarray(a) for a in arrays]) if arrays else np.zeros(0, np.int64)
        )
        return LabelStream(name=name, rate=float(rate), values=values, offsets=offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def subset(self, keep: np.ndarray) -> LabelStream:
        return LabelStream.from_arrays(self.name, self.rate, [self.get(int(i)) for i in keep])


class AudioReader:
    """Loads an utterance as a float32 mono waveform; subclasses are picklable (workers)."""

    def __call__(self, utt_id: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


#: the training options that resolve these audio errors (appended to their messages)
CHANNELS_HINT = "for speechssl-train set data.channels=select:N (0-based) or data.channels=mean"
PIPES_HINT = "for speechssl-train set data.allow_pipes=true"


def with_training_hint(exc: ItemError) -> ItemError:
    """``exc`` with the ``speechssl-train`` option that resolves it appended (channel and
    pipe errors; the data layer names its own, Python-level options)."""
    hint = (
        CHANNELS_HINT
        if isinstance(exc, AudioChannelError)
        else PIPES_HINT
        if isinstance(exc, AudioPipeError)
        else None
    )
    return exc if hint is None else type(exc)(exc.item, f"{exc.reason}; {hint}", exc.where)


class KaldiAudioReader(AudioReader):
    """Reads utterances of a Kaldi data dir through ``speechssl.data.audio`` (typed errors
    naming the utterance), resampled to ``sample_rate``; ``channels`` is the multi-channel
    policy (``error``, ``mean``, ``select:N``), ``allow_pipes`` runs ``cmd |`` entries."""

    def __init__(
        self, data_dir: str, sample_rate: int, allow_pipes: bool = False, channels: str = "error"
    ) -> None:
        self.data_dir = str(data_dir)
        self.sample_rate = sample_rate
        self.allow_pipes = allow_pipes
        self.channels = channels
        self._dir: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dir": None}  # each worker re-reads the tables lazily

    def __call__(self, utt_id: str) -> np.ndarray:
        from speechssl.data.audio import LoadOptions
        from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance

        if self._dir is None:
            self._dir = KaldiDataDir(self.data_dir, allow_pipes=self.allow_pipes)
        opts = LoadOptions(sample_rate=self.sample_rate, channels=self.channels)
        try:
            wave, _ = load_utterance(self._dir, utt_id, opts)
        except ItemError as exc:
            raise with_training_hint(exc) from None
        return wave.numpy()


def stream_name(meta: Any) -> str:
    """A label stream's name from its labels' ``meta.json`` (:class:`LabelsMeta`): the
    k-means size and the features it clustered, e.g. ``km100_mfcc`` (HuBERT's first
    iteration), ``km500_model_L6`` (a model's layer 6: the second iteration)."""
    name = f"km{meta.k}"
    kind = str(meta.source.get("kind") or "")
    if kind:
        name += f"_{kind}"
    layer = meta.source.get("layer")
    if layer is not None:
        name += f"_L{layer}"
    return re.sub(r"[^A-Za-z0-9_]+", "_", name)


def stream_names_for(label_dirs: Sequence[str]) -> list[str]:
    """Label-stream names (the keys of ``loss/<stream>/...`` in the log): from each label
    dir's ``meta.json`` (:func:`stream_name`), made unique with a suffix (``_2``, ...).

    The dir's own name is not used: recipes call their label dirs after the split
    (``labels/train``), which would log ``loss/train``."""
    from speechssl.units.labels import LabelsMeta

    names: list[str] = []
    for d in label_dirs:
        base = stream_name(LabelsMeta.read(d))
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}_{i}"
        names.append(name)
    return names


def load_corpus(
    data_dir: str,
    label_dirs: Sequence[str],
    *,
    sample_rate: int,
    label_tolerance: float = 2.0,
    stream_names: Sequence[str] | None = None,
    tolerant: bool = False,
    channels: str = "error",
    allow_pipes: bool = False,
) -> TrainCorpus:
    """A :class:`TrainCorpus` over a Kaldi data dir and its unit-label dirs.

    Every label set is checked against the utterances' durations at load time
    (``UnitLabels.load``); a missing or misaligned utterance is a LabelError naming it
    (in tolerant mode it is left out, logged and counted). An utterance whose duration
    cannot be read (no ``utt2dur`` and a missing or unreadable file) is an ItemError, or in
    tolerant mode left out and listed in ``TrainCorpus.skipped``.
    """
    from speechssl.data.kaldi_dir import KaldiDataDir

    ddir = KaldiDataDir(data_dir, allow_pipes=allow_pipes)
    durations: dict[str, float] = {}
    skipped: list[tuple[str, str]] = []
    for utt in ddir.utt_ids():
        try:
            durations[utt] = ddir.duration(utt)
        except ItemError as exc:
            if not tolerant:
                raise with_training_hint(exc) from None
            skipped.append((utt, str(exc)))
    if skipped:
        log.warning(
            "%s: left out %d utterance(s) whose audio cannot be read", data_dir, len(skipped)
        )
    utts = list(durations)
    names = list(stream_names) if stream_names is not None else stream_names_for(label_dirs)
    loaded = []
    if label_dirs:
        from speechssl.units.labels import UnitLabels

        for ldir in label_dirs:
            labels = UnitLabels.load(
                ldir, data_dir=data_dir, tolerance=label_tolerance, tolerant=tolerant
            )
            if labels.skipped:
                log.warning(
                    "%s: left out %d utterance(s) with missing or misaligned labels",
                    ldir,
                    len(labels.skipped),
                )
            loaded.append(labels)
        keep = set(utts)
        for labels in loaded:
            keep &= set(labels)
        dropped = len(utts) - len(keep)
        if dropped:
            log.warning(
                "%s: %d utterance(s) lack labels in some stream (tolerant mode)", data_dir, dropped
            )
        utts = [u for u in utts if u in keep]
    streams = [
        LabelStream.from_arrays(name, labels.label_rate, [labels[u] for u in utts])
        for name, labels in zip(names, loaded)
    ]
    return TrainCorpus(
        utt_ids=utts,
        num_samples=np.array([round(durations[u] * sample_rate) for u in utts], dtype=np.int64),
        sample_rate=sample_rate,
        reader=KaldiAudioReader(data_dir, sample_rate, allow_pipes=allow_pipes, channels=channels),
        streams=streams,
        skipped=skipped,
    )


@dataclass
class TrainCorpus:
    """The utterances to train on, with their lengths and label streams.

    Attributes:
        utt_ids: utterance ids (corpus order).
        num_samples: ``[n]`` samples of each utterance at ``sample_rate``.
        sample_rate: Hz.
        reader: loads a waveform by utterance id.
        streams: label streams aligned with ``utt_ids``.
        skipped: ``(utt_id, reason)`` of utterances left out at load (tolerant mode).
    """

    utt_ids: list[str]
    num_samples: np.ndarray
    sample_rate: int
    reader: AudioReader
    streams: list[LabelStream] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.num_samples = np.asarray(self.num_samples, dtype=np.int64)
        if len(self.num_samples) != len(self.utt_ids):
            raise ValueError("num_samples and utt_ids differ in length")
        for stream in self.streams:
            if len(stream) != len(self.utt_ids):
                raise ValueError(f"label stream {stream.name} does not cover the corpus")

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def hours(self) -> float:
        return float(self.num_samples.sum()) / self.sample_rate / 3600.0

    def subset(self, keep: np.ndarray) -> TrainCorpus:
        return TrainCorpus(
            utt_ids=[self.utt_ids[int(i)] for i in keep],
            num_samples=self.num_samples[keep],
            sample_rate=self.sample_rate,
            reader=self.reader,
            streams=[s.subset(keep) for s in self.streams],
            skipped=list(self.skipped),
        )


@dataclass
class FilterReport:
    """Outcome of the duration filter: ``kept + too_short + too_long == total``."""

    total: int
    kept: int
    too_short: int
    too_long: int
    kept_hours: float

    def summary(self) -> str:
        return (
            f"{self.total} utterances: kept {self.kept} ({self.kept_hours:.2f} h), "
            f"left out {self.too_short} shorter than min_seconds and {self.too_long} longer "
            "than max_seconds"
        )


def filter_by_duration(
    corpus: TrainCorpus, min_seconds: float, max_seconds: float | None
) -> tuple[TrainCorpus, FilterReport]:
    """Keep utterances with ``min_seconds <= duration <= max_seconds``; counts the rest."""
    seconds = corpus.num_samples / corpus.sample_rate
    short = seconds < min_seconds
    long = seconds > max_seconds if max_seconds is not None else np.zeros_like(short)
    keep = np.flatnonzero(~short & ~long)
    kept = corpus.subset(keep) if len(keep) != len(corpus) else corpus
    report = FilterReport(
        total=len(corpus),
        kept=len(keep),
        too_short=int(short.sum()),
        too_long=int((long & ~short).sum()),
        kept_hours=kept.hours,
    )
    return kept, report


# --------------------------------------------------------------------------------------
# batch planning (pure functions of seed and epoch)


@dataclass(frozen=True, kw_only=True)
class BatchingOptions:
    """How batches are formed and cropped (samples at the corpus rate)."""

    crop_samples: int
    """Longest stretch of one utterance fed to the model."""
    max_batch_samples: int
    """Padded samples per batch (utterances x longest cropped length)."""
    max_batch_utts: int = 0
    """Most utterances per batch; 0 = no limit."""
    num_buckets: int = 0
    """Length buckets to shuffle within; 0 sorts by exact length."""
    shuffle: bool = True
    """Shuffle the order (tie-breaks, bucket contents, batch order)."""
    crop_mode: str = "batch_min"
    """``batch_min`` or ``pad`` (see ``DataConfig.crop_mode``)."""
    random_crop: bool = True
    """Random offsets; False crops from the start."""

    def __post_init__(self) -> None:
        if self.crop_samples > self.max_batch_samples:
            raise ConfigError(
                f"data.max_batch_seconds holds {self.max_batch_samples} samples, fewer than "
                f"one crop of data.crop_seconds ({self.crop_samples} samples); raise "
                "max_batch_seconds or lower crop_seconds"
            )


def plan_batches(
    num_samples: np.ndarray, opts: BatchingOptions, seed: int, epoch: int
) -> list[np.ndarray]:
    """The epoch's batches as arrays of corpus indices: a pure function of the arguments."""
    n = len(num_samples)
    if n == 0:
        return []
    rng = rng_for(seed, epoch, _ORDER_STREAM)
    cost = np.minimum(num_samples, opts.crop_samples)
    tiebreak = rng.permutation(n) if opts.shuffle else np.arange(n)
    if opts.num_buckets > 0:
        edges = np.quantile(cost, np.linspace(0, 1, opts.num_buckets + 1)[1:-1])
        key = np.searchsorted(edges, cost, side="right")
    else:
        key = cost
    order = np.lexsort((tiebreak, key))
    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    for pos in range(n):
        size = int(cost[order[pos]])
        count = pos - start + 1
        new_longest = max(longest, size)
        too_big = count * new_longest > opts.max_batch_samples
        too_many = opts.max_batch_utts > 0 and count > opts.max_batch_utts
        if (too_big or too_many) and count > 1:
            batches.append(order[start:pos])
            start, new_longest = pos, size
        longest = new_longest
    batches.append(order[start:n])
    if opts.shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def frame_alignment(sample_rate: int, rates: Sequence[float]) -> int:
    """Samples per label frame common to all streams (crop offsets land on frame edges);
    1 when a rate does not divide the sample rate."""
    align = 1
    for rate in rates:
        step = sample_rate / rate
        if abs(step - round(step)) > 1e-6:
            return 1
        align = math.lcm(align, round(step))
    return align


def plan_crops(
    num_samples: np.ndarray,
    opts: BatchingOptions,
    seed: int,
    epoch: int,
    batch_index: int,
    align: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, lengths)`` in samples for the utterances of one batch; pure function."""
    sizes = np.asarray(num_samples, dtype=np.int64)
    capped = np.minimum(sizes, opts.crop_samples)
    if opts.crop_mode == "batch_min":
        lengths = np.full_like(capped, capped.min())
    else:
        lengths = capped
    offsets = np.zeros_like(sizes)
    if opts.random_crop:
        rng = rng_for(seed, epoch, _CROP_STREAM, batch_index)
        room = (sizes - lengths) // align
        draws = rng.integers(0, room + 1)  # one draw per utterance, even where room == 0
        offsets = draws * align
    return offsets, lengths


# --------------------------------------------------------------------------------------
# sampler and dataset


@dataclass(frozen=True)
class BatchSpec:
    """What a worker needs to build one batch: which utterances, and the crop seed parts."""

    epoch: int
    index: int
    """Index of the batch in the epoch's global plan (seeds its crops)."""
    indices: tuple[int, ...]


class BatchPlanSampler(Sampler[BatchSpec]):
    """Yields this rank's :class:`BatchSpec` s of an epoch, from a resumable position.

    The position is ``(epoch, index)``, where ``index`` counts the batches this rank has
    consumed in the epoch; the trainer records it in checkpoints and sets it back with
    :meth:`set_position`.
    """

    def __init__(
        self,
        num_samples: np.ndarray,
        opts: BatchingOptions,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        self.num_samples = np.asarray(num_samples, dtype=np.int64)
        self.opts = opts
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.epoch = 0
        self.start = 0
        self._cache: tuple[int, list[np.ndarray], int] | None = None

    def epoch_plan(self, epoch: int) -> tuple[list[np.ndarray], int]:
        """The epoch's global plan padded for the ranks, and how many batches were repeated."""
        if self._cache is None or self._cache[0] != epoch:
            plan = plan_batches(self.num_samples, self.opts, self.seed, epoch)
            group = self.world_size * self.grad_accum
            padded = -len(plan) % group
            if plan and padded:
                plan = plan + [plan[i % len(plan)] for i in range(padded)]
            self._cache = (epoch, plan, padded)
        return self._cache[1], self._cache[2]

    def batches_per_rank(self, epoch: int) -> int:
        plan, _ = self.epoch_plan(epoch)
        return len(plan) // self.world_size

    def set_position(self, epoch: int, index: int) -> None:
        self.epoch = epoch
        self.start = index

    def __len__(self) -> int:
        return max(0, self.batches_per_rank(self.epoch) - self.start)

    def __iter__(self) -> Iterator[BatchSpec]:
        plan, _ = self.epoch_plan(self.epoch)
        for local in range(self.start, len(plan) // self.world_size):
            global_index = local * self.world_size + self.rank
            yield BatchSpec(
                epoch=self.epoch,
                index=global_index,
                indices=tuple(int(i) for i in plan[global_index]),
            )


@dataclass
class TrainBatch(AudioBatch):
    """An :class:`AudioBatch` plus bookkeeping for logging and resume.

    Attributes:
        epoch, index: the batch's place in the epoch's global plan.
        loaded_samples: samples of the utterances before cropping (crop waste = 1 -
            lengths.sum() / loaded_samples).
        skipped: ``(utt_id, reason)`` of utterances left out in tolerant mode.
        error: the item error that made the batch fail (strict mode); carried as a value
            so it reaches the training process as itself, not as a DataLoader traceback.
        crop_offsets: ``[N]`` sample offset of each utterance's crop in its audio (where
            per-utterance caches of the whole audio, e.g. a teacher's layers, are read).
    """

    epoch: int = 0
    index: int = 0
    loaded_samples: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: ItemError | None = None
    crop_offsets: torch.Tensor | None = None

    def pin_memory(self) -> TrainBatch:
        pinned = super().pin_memory()
        return TrainBatch(
            **pinned.__dict__,
            epoch=self.epoch,
            index=self.index,
            loaded_samples=self.loaded_samples,
            skipped=list(self.skipped),
            error=self.error,
            crop_offsets=self.crop_offsets,
        )

    def audio_batch(self) -> AudioBatch:
        """The plain model input (no bookkeeping)."""
        return AudioBatch(
            waveforms=self.waveforms,
            lengths=self.lengths,
            labels=self.labels,
            label_rates=self.label_rates,
            utt_ids=self.utt_ids,
        )


class CroppedBatchDataset(Dataset[TrainBatch]):
    """Builds a cropped, padded :class:`TrainBatch` from a :class:`BatchSpec`.

    Args:
        corpus: the (filtered) corpus.
        opts: batching options (crop length and mode).
        seed: the run's seed (crop offsets depend on seed, epoch and batch index only).
        normalize: zero-mean unit-variance each waveform (after cropping).
        tolerant: skip utterances whose audio fails to load (recorded in ``skipped``);
            otherwise the batch carries the first error (``TrainBatch.error``).
        frame_samples: crop offsets also land on multiples of this (e.g. 320, the model's
            frame hop, when cached per-frame targets are read at the offsets); 0: no
            constraint beyond the label streams'.
    """

    def __init__(
        self,
        corpus: TrainCorpus,
        opts: BatchingOptions,
        *,
        seed: int,
        normalize: bool = False,
        tolerant: bool = False,
        frame_samples: int = 0,
    ) -> None:
        self.corpus = corpus
        self.opts = opts
        self.seed = seed
        self.normalize = normalize
        self.tolerant = tolerant
        self.align = frame_alignment(corpus.sample_rate, [s.rate for s in corpus.streams])
        if frame_samples > 0:
            self.align = math.lcm(self.align, frame_samples)

    def __len__(self) -> int:  # batches are addressed by spec, not by position
        return len(self.corpus)

    def __getitem__(self, spec: BatchSpec) -> TrainBatch:
        corpus = self.corpus
        waves: list[np.ndarray] = []
        kept: list[int] = []
        skipped: list[tuple[str, str]] = []
        for i in spec.indices:
            utt = corpus.utt_ids[i]
            try:
                wave = corpus.reader(utt)
            except ItemError as exc:
                if not self.tolerant:
                    return TrainBatch(
                        waveforms=torch.zeros(0, 0),
                        lengths=torch.zeros(0, dtype=torch.long),
                        epoch=spec.epoch,
                        index=spec.index,
                        error=exc,
                    )
                skipped.append((utt, str(exc)))
                continue
            waves.append(wave)
            kept.append(i)
        return self.collate(spec, kept, waves, skipped)

    def collate(
        self,
        spec: BatchSpec,
        kept: list[int],
        waves: list[np.ndarray],
        skipped: list[tuple[str, str]],
    ) -> TrainBatch:
        corpus = self.corpus
        rate = corpus.sample_rate
        if not waves:
            return TrainBatch(
                waveforms=torch.zeros(0, 0),
                lengths=torch.zeros(0, dtype=torch.long),
                labels={s.name: torch.zeros(0, 0, dtype=torch.long) for s in corpus.streams},
                label_rates={s.name: s.rate for s in corpus.streams},
                epoch=spec.epoch,
                index=spec.index,
                skipped=skipped,
            )
        # actual lengths (a resampled file can differ from utt2dur by a sample or two)
        sizes = np.array([len(w) for w in waves], dtype=np.int64)
        offsets, lengths = plan_crops(
            sizes, self.opts, self.seed, spec.epoch, spec.index, self.align
        )
        n, width = len(waves), int(lengths.max())
        out = torch.zeros(n, width, dtype=torch.float32)
        for row, (wave, off, length) in enumerate(zip(waves, offsets, lengths)):
            piece = torch.from_numpy(
                np.ascontiguousarray(wave[off : off + length], dtype=np.float32)
            )
            if self.normalize and length > 1:
                piece = (piece - piece.mean()) / (piece.std() + 1e-5)
            out[row, :length] = piece
        labels: dict[str, torch.Tensor] = {}
        for stream in corpus.streams:
            starts = np.rint(offsets * stream.rate / rate).astype(np.int64)
            counts = np.rint(lengths * stream.rate / rate).astype(np.int64)
            arrays = [stream.get(i) for i in kept]
            avail = np.array([len(a) for a in arrays], dtype=np.int64) - starts
            counts = np.clip(np.minimum(counts, avail), 0, None)
            if self.opts.crop_mode == "batch_min":
                counts[:] = counts.min()  # equal-length crops keep equal-length labels
            lab = torch.full((n, int(counts.max())), LABEL_PAD, dtype=torch.long)
            for row, (arr, s, c) in enumerate(zip(arrays, starts, counts)):
                lab[row, :c] = torch.from_numpy(np.asarray(arr[s : s + c], dtype=np.int64))
            labels[stream.name] = lab
        return TrainBatch(
            waveforms=out,
            lengths=torch.from_numpy(lengths.copy()),
            labels=labels,
            label_rates={s.name: s.rate for s in corpus.streams},
            utt_ids=[corpus.utt_ids[i] for i in kept],
            epoch=spec.epoch,
            index=spec.index,
            loaded_samples=int(sizes.sum()),
            skipped=skipped,
            crop_offsets=torch.from_numpy(offsets.copy()),
        )


def pass_through(batch: Any) -> Any:
    """DataLoader ``collate_fn`` for datasets that already return whole batches."""
    return batch


def make_loader(
    dataset: CroppedBatchDataset,
    sampler: BatchPlanSampler,
    *,
    num_workers: int,
    pin_memory: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> torch.utils.data.DataLoader[TrainBatch]:
    """A DataLoader over batch specs (``batch_size=None``: the dataset builds whole batches)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=pass_through,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=worker_init_fn,
    )
