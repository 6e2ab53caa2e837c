"""``speechssl features dump``: features of a whole data dir into a sharded feature store.

Sharding is fairseq's: the ``LC_ALL=C`` sorted utterance list is split into ``nshard``
contiguous ranges (``round(total * r / nshard)``), so any rank can be (re)run on any machine
and the union of shards is always the same. Within a shard, utterances are batched by
length (longest first) and written in that order; the shard index maps each utterance to its
rows. A shard is complete when its ``done.json`` exists and names the store's current
``meta.json`` (see :mod:`speechssl.features.store`): a rerun skips complete shards and redoes
partial ones; ``DumpOptions.overwrite`` redoes them all. ``meta.json`` records the settings and the
utterance list the store was made from; a rerun with other settings, or after the data dir
gained or lost utterances, is refused unless ``overwrite``. A data dir with no utterances is
an error.

Each shard is written under its own exclusive lock (``.shard-R-of-N.lock``,
:func:`speechssl.utils.lock.exclusive_lock`): the ranks of one store may run at once, but a
second writer of the same shard is refused naming the holder's PID and host.

Strict mode stops at the first bad utterance, naming it; the shard being written is
discarded. Tolerant mode skips bad utterances (missing, corrupt, empty, NaN, too short, ...),
records each with its reason in the shard's ``done.json``, and checks that written + skipped
equals the shard's input count.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from speechssl.data.audio import AudioChannelError, AudioError, LoadOptions, parse_channel_policy
from speechssl.data.kaldi_dir import KaldiDataDir, load_utterance
from speechssl.errors import ConfigError, DataDirError, ItemError
from speechssl.features.extractors import FeatureExtractor, create_extractor, extractor_settings
from speechssl.features.store import (
    META_FILE,
    UTT_LIST,
    ShardWriter,
    StoreMeta,
    shard_is_complete,
    shard_stem,
    write_meta,
)
from speechssl.utils.files import check_output_dir
from speechssl.utils.lock import exclusive_lock

log = logging.getLogger(__name__)


class TooShortError(ItemError):
    """The utterance is shorter than one frame of the extractor."""

    kind = "too-short"


def shard_range(total: int, nshard: int, rank: int) -> tuple[int, int]:
    """``[start, end)`` of shard ``rank``: contiguous, as fairseq's ``get_shard_range``."""
    if nshard < 1 or not 0 <= rank < nshard:
        raise ConfigError(f"need 0 <= rank < nshard, got rank {rank}, nshard {nshard}")
    return round(total * rank / nshard), round(total * (rank + 1) / nshard)


@dataclass(frozen=True, kw_only=True)
class ExtractorRequest:
    """A picklable recipe for an extractor (worker processes build their own).

    Command-line ``options`` are turned into the kind's typed settings on construction
    (for the Kaldi kinds a validated ``KaldiExtractor`` holding ``FbankOptions`` /
    ``MfccOptions`` / ``SpectrogramOptions``), so bad options fail here, once, and workers
    receive typed settings, not flag dicts.
    """

    kind: str
    """Registered extractor name."""
    options: Any = field(default_factory=dict)
    """The kind's settings (given as command-line options, or already typed)."""
    device: str = "cpu"
    """Torch device to compute on."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", extractor_settings(self.kind, self.options))

    def build(self) -> FeatureExtractor:
        return create_extractor(self.kind, self.options, self.device)


@dataclass(kw_only=True)
class DumpOptions:
    """How a store is written."""

    nshard: int = 1
    """Number of shards the corpus is split into."""
    dtype: str = "float32"
    """On-disk dtype: float32 or float16."""
    tolerant: bool = False
    """Skip and record bad utterances instead of stopping."""
    batch_seconds: float = 200.0
    """Padded audio per batch, in seconds (bounds memory; larger is faster up to a point)."""
    max_batch: int = 256
    """Most utterances per batch."""
    allow_pipes: bool = False
    """Allow ``cmd |`` entries in wav.scp."""
    overwrite: bool = False
    """Replace a store made with other settings and redo complete shards too (without it a
    rerun skips complete shards and refuses other settings)."""
    channels: str = "error"
    """Multi-channel audio: ``error``, ``select:N`` (0-based) or ``mean`` (recorded in the
    store's meta.json when not ``error``, so a rerun with another policy is refused)."""

    def __post_init__(self) -> None:
        try:
            parse_channel_policy(self.channels)
        except ConfigError:
            raise ConfigError(
                f"--channels must be error, mean or select:N (N >= 0), got {self.channels!r}"
            ) from None
        if self.nshard < 1:
            raise ConfigError(f"nshard must be >= 1, got {self.nshard}")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"dtype must be float32 or float16, got {self.dtype!r}")
        if self.batch_seconds <= 0 or self.max_batch < 1:
            raise ConfigError("batch_seconds must be > 0 and max_batch >= 1")


@dataclass
class ShardResult:
    """What happened to one shard."""

    rank: int
    status: str  # "written" or "complete" (skipped: already done)
    inputs: int = 0
    written: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0


def shard_lock_name(rank: int, nshard: int) -> str:
    """The lock file (inside the store) that one writer of shard ``rank`` holds."""
    return f".{shard_stem(rank, nshard)}.lock"


def store_meta(extractor: FeatureExtractor, kind: str, opts: DumpOptions, data: Path) -> StoreMeta:
    described = extractor.describe()
    if opts.channels != "error":  # what the features are of (the default adds nothing)
        described = {**described, "channels": opts.channels}
    return StoreMeta(
        kind=kind,
        dim=extractor.dim,
        dtype=opts.dtype,
        frame_rate=extractor.frame_rate,
        nshard=opts.nshard,
        extractor=described,
        source=str(data.resolve()),
    )


#: the ``features dump`` options that resolve a multi-channel error (appended to its message)
CHANNELS_HINT = "for features dump use --channels select:N (0-based) or --channels mean"


def _remove_debris(out: Path, rank: int, nshard: int) -> None:
    """Temp files of a killed writer of this shard (the rerun replaces them)."""
    stem = shard_stem(rank, nshard)
    for p in out.glob(f".{stem}.*.tmp-*"):
        p.unlink(missing_ok=True)


def _batches(items: list[tuple[str, float]], opts: DumpOptions) -> list[list[str]]:
    """Longest first; a batch holds at most ``batch_seconds`` of padded audio."""
    order = sorted(items, key=lambda x: (-x[1], x[0]))
    batches: list[list[str]] = []
    cur: list[str] = []
    cur_max = 0.0
    for utt, dur in order:
        padded = max(cur_max, dur) * (len(cur) + 1)
        if cur and (padded > opts.batch_seconds or len(cur) >= opts.max_batch):
            batches.append(cur)
            cur, cur_max = [], 0.0
        cur.append(utt)
        cur_max = max(cur_max, dur)
    if cur:
        batches.append(cur)
    return batches


def iter_features(
    data_dir: KaldiDataDir,
    utts: Sequence[str],
    extractor: FeatureExtractor,
    opts: DumpOptions,
    on_bad: Callable[[str, ItemError], None],
) -> Iterator[tuple[str, torch.Tensor, float]]:
    """``(utt, features [frames, dim] float32 on CPU, seconds of audio)`` for each good
    utterance of ``utts``, in batch order; bad ones go to ``on_bad``."""
    load_opts = LoadOptions(sample_rate=extractor.sample_rate, channels=opts.channels)
    sized: list[tuple[str, float]] = []
    for utt in utts:
        try:
            sized.append((utt, data_dir.duration(utt)))
        except ItemError as err:
            on_bad(utt, err)
    for batch in _batches(sized, opts):
        loaded: list[tuple[str, torch.Tensor]] = []
        for utt in batch:
            try:
                wave, _ = load_utterance(data_dir, utt, load_opts)
            except (AudioError, ItemError) as err:
                on_bad(utt, err)
                continue
            loaded.append((utt, wave))
        if not loaded:
            continue
        lengths = torch.tensor([len(w) for _, w in loaded])
        waves = torch.zeros(len(loaded), int(lengths.max()))
        for i, (_, w) in enumerate(loaded):
            waves[i, : len(w)] = w
        feats, nframes = extractor(waves, lengths, [u for u, _ in loaded])
        feats_cpu, nf_cpu = feats.float().cpu(), nframes.cpu().tolist()
        for i, (utt, _) in enumerate(loaded):
            n = int(nf_cpu[i])
            secs = int(lengths[i]) / extractor.sample_rate
            if n == 0:
                reason = (
                    f"{int(lengths[i])} samples ({secs:.3f} s) give no frames with this extractor"
                )
                on_bad(utt, TooShortError(utt, reason))
                continue
            yield utt, feats_cpu[i, :n], secs


def dump_shard(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    request: ExtractorRequest | FeatureExtractor,
    opts: DumpOptions,
    rank: int,
    extractor: FeatureExtractor | None = None,
) -> ShardResult:
    """Write shard ``rank`` of ``opts.nshard`` (no-op if it is already complete, unless
    ``opts.overwrite``) with ``extractor``, else the one ``request`` is or builds, holding
    the shard's lock (:class:`~speechssl.utils.lock.LockedError` if another process writes
    it)."""
    out_dir = Path(out)
    what = f"shard {rank} of {opts.nshard} of a feature store"
    with exclusive_lock(out_dir, what, name=shard_lock_name(rank, opts.nshard)):
        if not opts.overwrite and shard_is_complete(out_dir, rank, opts.nshard):
            log.info("shard %d/%d is complete; skipping (--overwrite redoes it)", rank, opts.nshard)
            return ShardResult(rank=rank, status="complete")
        return _write_shard(data, out_dir, request, opts, rank, extractor)


def _write_shard(
    data: str | os.PathLike[str],
    out_dir: Path,
    request: ExtractorRequest | FeatureExtractor,
    opts: DumpOptions,
    rank: int,
    extractor: FeatureExtractor | None,
) -> ShardResult:
    start_time = time.perf_counter()
    data_dir = KaldiDataDir(data, allow_pipes=opts.allow_pipes)
    if extractor is None:
        extractor = request.build() if isinstance(request, ExtractorRequest) else request
    utts = data_dir.utt_ids()
    lo, hi = shard_range(len(utts), opts.nshard, rank)
    mine = utts[lo:hi]
    _remove_debris(out_dir, rank, opts.nshard)
    writer = ShardWriter(out_dir, rank, opts.nshard, extractor.dim, opts.dtype)
    result = ShardResult(rank=rank, status="written", inputs=len(mine))

    def bad(utt: str, err: ItemError) -> None:
        if isinstance(err, AudioChannelError):
            err = AudioChannelError(err.item, f"{err.reason}; {CHANNELS_HINT}", err.where)
        if not opts.tolerant:
            raise err
        log.warning("skipping %s", err)
        writer.skip(utt, f"{type(err).kind}: {err.reason}")

    try:
        for utt, feats, seconds in iter_features(data_dir, mine, extractor, opts, bad):
            writer.add(utt, feats)
            result.frames += feats.shape[0]
            result.seconds += seconds
        result.written = writer.num_utts
        result.skipped = list(writer.skipped)
        if result.written + len(result.skipped) != result.inputs:  # a bug, never bad input
            raise AssertionError(
                f"shard {rank}: {result.written} written + {len(result.skipped)} skipped != "
                f"{result.inputs} inputs"
            )
        writer.close(
            extra={
                "inputs": result.inputs,
                "seconds": round(result.seconds, 3),
                "first_utt": mine[0] if mine else None,
                "last_utt": mine[-1] if mine else None,
            }
        )
    except BaseException:
        writer.abort()
        raise
    log.info(
        "shard %d/%d: %d written, %d skipped of %d (%.1f s of audio in %.1f s)",
        rank,
        opts.nshard,
        result.written,
        len(result.skipped),
        result.inputs,
        result.seconds,
        time.perf_counter() - start_time,
    )
    return result


def prepare_store(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    request: ExtractorRequest,
    opts: DumpOptions,
) -> FeatureExtractor:
    """Build the extractor and write (or check) ``meta.json`` and ``utterances.txt``: a store
    made with other settings or from other utterances is refused rather than mixed (with
    ``opts.overwrite`` it is redone, and shards of another shard count are removed), and a
    data dir without utterances is an error."""
    data_dir = KaldiDataDir(data, allow_pipes=opts.allow_pipes)  # fail early on a missing dir
    utts = data_dir.utt_ids()
    if not utts:
        raise DataDirError(str(data), "the data dir has no utterances (utt2spk is empty)")
    check_output_dir(out, META_FILE, "feature store", own=(UTT_LIST,))
    extractor = request.build()
    old_meta = Path(out) / META_FILE
    if opts.overwrite and old_meta.exists():
        old_nshard = StoreMeta.from_json(json.loads(old_meta.read_text()), str(old_meta)).nshard
        if old_nshard != opts.nshard:
            for path in Path(out).glob(f"shard-*-of-{old_nshard:05d}.*"):
                path.unlink()
    meta = store_meta(extractor, request.kind, opts, Path(data))
    write_meta(out, meta, overwrite=opts.overwrite, utts=utts)
    return extractor


def dump_features(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    request: ExtractorRequest,
    opts: DumpOptions,
    ranks: Sequence[int] | None = None,
) -> list[ShardResult]:
    """Dump the given ranks (default: all) one after another in this process; ``opts.overwrite``
    replaces a store made with other settings or utterances and redoes complete shards."""
    extractor = prepare_store(data, out, request, opts)
    todo = range(opts.nshard) if ranks is None else ranks
    return [dump_shard(data, out, request, opts, r, extractor) for r in todo]


def _worker(
    data: str,
    out: str,
    request: ExtractorRequest,
    opts: DumpOptions,
    rank: int,
    threads: int,
) -> ShardResult:
    torch.set_num_threads(threads)
    return dump_shard(data, out, request, opts, rank)


def dump_features_parallel(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    request: ExtractorRequest,
    opts: DumpOptions,
    nj: int,
) -> list[ShardResult]:
    """``--nj N``: ``nshard = N`` shards written by N local processes at once."""
    if nj < 1:
        raise ConfigError(f"--nj must be >= 1, got {nj}")
    if opts.nshard != nj:
        raise ConfigError(f"--nj {nj} writes {nj} shards, but nshard is {opts.nshard}")
    prepare_store(data, out, request, opts)
    threads = max(1, (os.cpu_count() or 1) // nj)
    if nj == 1:
        return [_worker(str(data), str(out), request, opts, 0, threads)]
    with ProcessPoolExecutor(max_workers=nj, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_worker, str(data), str(out), request, opts, r, threads) for r in range(nj)
        ]
        results: list[ShardResult] = []
        errors: list[BaseException] = []
        for fut in futures:
            try:
                results.append(fut.result())
            except BaseException as exc:  # report every failed rank, then the first
                errors.append(exc)
    if errors:
        raise errors[0]
    return results
