"""The Trainer in-process on an in-memory corpus: tolerant loading and its accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speechssl.errors import ConfigError, ItemError
from speechssl.train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, TrainerConfig
from speechssl.train.data import AudioReader, TrainCorpus
from speechssl.distributed import init_distributed
from speechssl.train.monitor import iter_kind, read_log
from speechssl.train.trainer import Trainer

RATE = 16000


class FlakyReader(AudioReader):
    """Noise waveforms; utterances in ``bad`` fail like unreadable audio."""

    def __init__(self, sizes: dict[str, int], bad: set[str]) -> None:
        self.sizes = sizes
        self.bad = bad

    def __call__(self, utt_id: str) -> np.ndarray:
        if utt_id in self.bad:
            raise ItemError(utt_id, "unreadable audio (test)")
        rng = np.random.default_rng(int(utt_id[1:]))
        return (0.1 * rng.standard_normal(self.sizes[utt_id])).astype(np.float32)


def _trainer(tmp_path: Path, tolerant: bool, bad: set[str]) -> Trainer:
    # two short bad utterances sort into the same 2-utterance batch: one batch fails whole
    sizes = {"u0": 8000, "u1": 8100, "u2": 12000, "u3": 12100, "u4": 16000, "u5": 16100}
    corpus = TrainCorpus(
        utt_ids=list(sizes),
        num_samples=np.array(list(sizes.values())),
        sample_rate=RATE,
        reader=FlakyReader(sizes, bad),
    )
    cfg = TrainConfig(
        model=ModelConfig(name="wav2vec2_tiny"),
        data=DataConfig(
            dir="(in memory)",
            min_seconds=0.0,
            crop_seconds=1.0,
            max_batch_seconds=2.0,
            max_batch_utts=2,
            num_workers=0,
            tolerant=tolerant,
            shuffle=False,
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        trainer=TrainerConfig(
            exp_dir=str(tmp_path / "exp"),
            device="cpu",
            max_steps=2,  # one epoch: the empty step on (u0, u1), then (u2, u3), (u4, u5)
            log_every=1,
            save_every=100,
            progress_bar=False,
            tensorboard=False,
            export_final=False,
        ),
    )
    return Trainer(cfg, init_distributed("cpu"), train_corpus=corpus)


def test_tolerant_training_skips_and_counts_bad_utterances(tmp_path: Path) -> None:
    summary = _trainer(tmp_path, tolerant=True, bad={"u0", "u1", "u4"}).fit()
    assert summary.step == 2 and summary.epoch == 0
    records = read_log(tmp_path / "exp")
    # the batch (u0, u1) has nothing left: no update on it, the data moves on
    empty = [r for r in iter_kind(records, "event") if r["event"] == "empty_step"]
    assert len(empty) == 1
    train = list(iter_kind(records, "train"))
    skipped_events = [r for r in iter_kind(records, "event") if r["event"] == "skipped_utterance"]
    assert sorted(r["utt"] for r in skipped_events) == ["u0", "u1", "u4"]
    assert sum(r["skipped_utts"] for r in train) == 3
    # used + skipped == input: every utterance of the epoch is trained on or counted
    used = sum(round(r["utts_per_batch"] * r["batches"]) for r in train)
    assert used + 3 == 6


def test_strict_training_stops_naming_the_utterance(tmp_path: Path) -> None:
    with pytest.raises(ItemError, match="u2"):
        _trainer(tmp_path, tolerant=False, bad={"u2"}).fit()


def test_unit_predicting_model_without_labels_is_refused_up_front(tmp_path: Path) -> None:
    cfg = TrainConfig(
        model=ModelConfig(name="hubert_tiny"),
        data=DataConfig(dir="unused"),
        trainer=TrainerConfig(exp_dir=str(tmp_path / "exp"), device="cpu"),
    )
    with pytest.raises(ConfigError, match=r"hubert_tiny predicts unit labels: give data\.labels"):
        Trainer(cfg, init_distributed("cpu"))
