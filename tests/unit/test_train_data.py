"""Training data pipeline: batch plans, resumable distributed sampling, consistent crops."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from speechssl.data.batch import LABEL_PAD
from speechssl.errors import ConfigError, ItemError
from speechssl.train.data import (
    AudioReader,
    BatchingOptions,
    BatchPlanSampler,
    BatchSpec,
    CroppedBatchDataset,
    LabelStream,
    TrainCorpus,
    filter_by_duration,
    frame_alignment,
    load_corpus,
    make_loader,
    plan_batches,
    plan_crops,
)

RATE = 16000


class RampReader(AudioReader):
    """Waveform whose sample ``t`` holds ``t`` (so a crop's first value is its offset)."""

    def __init__(self, sizes: dict[str, int], bad: frozenset[str] = frozenset()) -> None:
        self.sizes = sizes
        self.bad = bad

    def __call__(self, utt_id: str) -> np.ndarray:
        if utt_id in self.bad:
            raise ItemError(utt_id, "unreadable (test)")
        return np.arange(self.sizes[utt_id], dtype=np.float32)


def ramp_corpus(
    sizes: list[int], label_rate: float = 50.0, bad: frozenset[str] = frozenset()
) -> TrainCorpus:
    utts = [f"u{i:03d}" for i in range(len(sizes))]
    step = RATE / label_rate
    # label s of an utterance is s itself: a crop's first label is its frame offset
    labels = [np.arange(int((n - 400) // step) + 1, dtype=np.int64) for n in sizes]
    return TrainCorpus(
        utt_ids=utts,
        num_samples=np.array(sizes),
        sample_rate=RATE,
        reader=RampReader(dict(zip(utts, sizes)), bad),
        streams=[LabelStream.from_arrays("km", label_rate, labels)],
    )


def opts(**kw: object) -> BatchingOptions:
    base: dict[str, object] = {"crop_samples": 2 * RATE, "max_batch_samples": 6 * RATE}
    base.update(kw)
    return BatchingOptions(**base)  # type: ignore[arg-type]


SIZES = np.random.default_rng(5).integers(RATE // 2, 3 * RATE, size=57)


def test_plan_covers_every_utterance_once_within_budget() -> None:
    o = opts(max_batch_utts=5)
    plan = plan_batches(SIZES, o, seed=3, epoch=0)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(SIZES)))
    for b in plan:
        capped = np.minimum(SIZES[b], o.crop_samples)
        assert len(b) <= 5
        assert len(b) == 1 or len(b) * capped.max() <= o.max_batch_samples


def test_plan_is_a_pure_function_of_seed_and_epoch() -> None:
    o = opts()
    a = plan_batches(SIZES, o, seed=3, epoch=1)
    b = plan_batches(SIZES, o, seed=3, epoch=1)
    c = plan_batches(SIZES, o, seed=3, epoch=2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]


def test_exact_length_sort_keeps_batches_homogeneous() -> None:
    o = opts(crop_samples=3 * RATE, max_batch_samples=9 * RATE)

    def padding(plan: list[np.ndarray]) -> float:
        padded = sum(len(b) * SIZES[b].max() for b in plan)
        return 1.0 - sum(SIZES[b].sum() for b in plan) / padded

    exact = padding(plan_batches(SIZES, o, seed=0, epoch=0))
    bucketed = plan_batches(
        SIZES, opts(crop_samples=3 * RATE, max_batch_samples=9 * RATE, num_buckets=2), 0, 0
    )
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(len(SIZES)))
    rng = np.random.default_rng(0)
    shuffled = np.array_split(rng.permutation(len(SIZES)), len(bucketed))
    assert exact < 0.1 and padding(shuffled) > 3 * exact
    assert exact <= padding(bucketed)


def test_crop_longer_than_batch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_batch_seconds"):
        BatchingOptions(crop_samples=10 * RATE, max_batch_samples=5 * RATE)


def test_sampler_resumes_mid_epoch_exactly() -> None:
    s = BatchPlanSampler(SIZES, opts(), seed=1)
    s.set_position(2, 0)
    full = [b.indices for b in s]
    s.set_position(2, 4)
    assert [b.indices for b in s] == full[4:]
    assert len(s) == len(full) - 4


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (3, 2)])
def test_sampler_splits_global_batches_as_accumulation_would(world: int, accum: int) -> None:
    """Step k consumes the same global batches on W ranks x A micro-batches as on one rank
    with W x A micro-batches."""
    one = BatchPlanSampler(SIZES, opts(), seed=4, world_size=1, grad_accum=world * accum)
    one.set_position(0, 0)
    single = [b.indices for b in one]
    ranks = []
    for r in range(world):
        s = BatchPlanSampler(SIZES, opts(), seed=4, rank=r, world_size=world, grad_accum=accum)
        s.set_position(0, 0)
        ranks.append([b.indices for b in s])
    assert all(len(r) == len(ranks[0]) for r in ranks)
    assert len(ranks[0]) % accum == 0
    group = world * accum
    for step in range(len(single) // group):
        spread = {idx for r in ranks for idx in r[step * accum : (step + 1) * accum]}
        assert spread == set(single[step * group : (step + 1) * group])
    _, repeated = one.epoch_plan(0)
    assert (len(plan_batches(SIZES, opts(), 4, 0)) + repeated) % group == 0


def test_crop_offsets_land_on_label_frames_and_labels_follow() -> None:
    corpus = ramp_corpus([int(x) for x in SIZES[:8]])
    o = opts(crop_samples=RATE, crop_mode="pad")
    ds = CroppedBatchDataset(corpus, o, seed=7)
    assert ds.align == 320
    batch = ds[BatchSpec(epoch=0, index=3, indices=tuple(range(8)))]
    assert batch.waveforms.shape[0] == 8
    for row in range(8):
        length = int(batch.lengths[row])
        assert length == min(RATE, int(SIZES[row]))
        offset = int(batch.waveforms[row, 0])
        assert offset % 320 == 0
        # the waveform is the ramp [offset, offset + length)
        assert torch.equal(
            batch.waveforms[row, :length],
            torch.arange(offset, offset + length, dtype=torch.float32),
        )
        assert torch.all(batch.waveforms[row, length:] == 0)
        lab = batch.labels["km"][row]
        real = lab[lab != LABEL_PAD]
        assert int(real[0]) == offset // 320  # first label = first frame of the crop
        assert torch.equal(real, torch.arange(int(real[0]), int(real[0]) + len(real)))
        assert abs(len(real) - length / 320) <= 1
    assert batch.label_rates == {"km": 50.0}
    assert 0.0 < batch.padding_fraction < 1.0


def test_batch_min_crops_to_the_shortest_without_padding() -> None:
    corpus = ramp_corpus([int(x) for x in SIZES[:6]])
    ds = CroppedBatchDataset(corpus, opts(), seed=7)
    batch = ds[BatchSpec(epoch=1, index=0, indices=tuple(range(6)))]
    shortest = int(min(SIZES[:6].min(), 2 * RATE))
    assert batch.lengths.tolist() == [shortest] * 6
    assert batch.padding_fraction == 0.0
    assert batch.labels["km"].shape[1] > 0 and bool((batch.labels["km"] != LABEL_PAD).all())
    assert batch.loaded_samples == int(SIZES[:6].sum())


def test_crops_are_pure_functions_of_seed_epoch_index() -> None:
    sizes = np.full(4, 3 * RATE)
    a = plan_crops(sizes, opts(), seed=1, epoch=0, batch_index=5, align=320)
    b = plan_crops(sizes, opts(), seed=1, epoch=0, batch_index=5, align=320)
    c = plan_crops(sizes, opts(), seed=1, epoch=0, batch_index=6, align=320)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])
    fixed = plan_crops(sizes, opts(random_crop=False), seed=1, epoch=0, batch_index=5)
    assert fixed[0].tolist() == [0, 0, 0, 0]


def test_frame_alignment() -> None:
    assert frame_alignment(16000, [50.0, 100.0]) == 320
    assert frame_alignment(16000, []) == 1
    assert frame_alignment(16000, [30.0]) == 1


def test_worker_processes_give_the_same_batches() -> None:
    corpus = ramp_corpus([int(x) for x in SIZES[:20]])
    o = opts()
    batches = []
    for workers in (0, 2):
        sampler = BatchPlanSampler(corpus.num_samples, o, seed=2)
        sampler.set_position(1, 1)
        loader = make_loader(CroppedBatchDataset(corpus, o, seed=2), sampler, num_workers=workers)
        batches.append([(b.utt_ids, b.waveforms, b.labels["km"]) for b in loader])
    assert len(batches[0]) == len(batches[1]) > 0
    for (u0, w0, l0), (u1, w1, l1) in zip(*batches):
        assert u0 == u1 and torch.equal(w0, w1) and torch.equal(l0, l1)


def test_tolerant_mode_skips_and_counts_bad_audio() -> None:
    corpus = ramp_corpus([RATE, RATE, RATE], bad=frozenset({"u001"}))
    spec = BatchSpec(epoch=0, index=0, indices=(0, 1, 2))
    failed = CroppedBatchDataset(corpus, opts(), seed=0)[spec]  # strict: the error travels
    assert isinstance(failed.error, ItemError) and failed.error.item == "u001"
    assert pickle.loads(pickle.dumps(failed)).error.item == "u001"  # across worker processes
    batch = CroppedBatchDataset(corpus, opts(), seed=0, tolerant=True)[spec]
    assert batch.utt_ids == ["u000", "u002"]
    assert [u for u, _ in batch.skipped] == ["u001"]
    assert len(batch.utt_ids) + len(batch.skipped) == 3


def test_duration_filter_counts_add_up() -> None:
    corpus = ramp_corpus([RATE // 4, RATE, 2 * RATE, 5 * RATE])
    kept, report = filter_by_duration(corpus, 0.5, 3.0)
    assert kept.utt_ids == ["u001", "u002"]
    assert (report.total, report.kept, report.too_short, report.too_long) == (4, 2, 1, 1)
    assert report.kept + report.too_short + report.too_long == report.total
    assert [len(kept.streams[0].get(i)) for i in range(2)] == [
        len(corpus.streams[0].get(i)) for i in (1, 2)
    ]


def test_load_corpus_reads_real_audio(tmp_path: Path) -> None:
    from audio_fixtures import write_audio

    from speechssl.data.kaldi_dir import write_data_dir

    durs = {"a1": 0.5, "a2": 1.25, "b1": 0.75}
    wav = {
        u: str(write_audio(tmp_path / f"{u}.wav", d, seed=i))
        for i, (u, d) in enumerate(durs.items())
    }
    ddir = tmp_path / "data"
    write_data_dir(ddir, wav_scp=wav, utt2spk={u: u[0] for u in durs}, utt2dur=durs)
    corpus = load_corpus(str(ddir), [], sample_rate=RATE)
    assert corpus.utt_ids == ["a1", "a2", "b1"]
    assert corpus.num_samples.tolist() == [8000, 20000, 12000]
    wave = corpus.reader("a2")
    assert wave.dtype == np.float32 and wave.shape == (20000,)
    ds = CroppedBatchDataset(corpus, opts(crop_mode="pad"), seed=0)
    batch = ds[BatchSpec(epoch=0, index=0, indices=(0, 1, 2))]
    assert batch.lengths.tolist() == [8000, 20000, 12000]
