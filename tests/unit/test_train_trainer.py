"""The Trainer in-process on an in-memory corpus: tolerant loading and its accounting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from speechssl.distributed import init_distributed
from speechssl.errors import ConfigError, ItemError, TrainingError
from speechssl.train import checkpoint as ckpt
from speechssl.train.config import DataConfig, ModelConfig, OptimConfig, TrainConfig, TrainerConfig
from speechssl.train.data import AudioReader, TrainCorpus
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


def _trainer(
    tmp_path: Path, tolerant: bool, bad: set[str], lr: float = 1e-3, **trainer: Any
) -> Trainer:
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
        optim=OptimConfig(lr=lr, warmup_steps=0),
        trainer=TrainerConfig(
            exp_dir=str(tmp_path / "exp"),
            device="cpu",
            log_every=1,
            progress_bar=False,
            tensorboard=False,
            export_final=False,
            # max_steps=2 is one epoch: the empty step on (u0, u1), then (u2, u3), (u4, u5)
            **{"save_every": 100, "max_steps": 2, **trainer},
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


@pytest.mark.parametrize("save_every", [1, 100])
def test_optimizer_made_nonfinite_weights_are_never_saved_and_blamed(
    tmp_path: Path, save_every: int
) -> None:
    """A finite but absurd lr (1e30) blows the weights up in the first update. With a save
    due at once the save refuses; otherwise the next step's non-finite loss finds the
    broken weights. Either way nothing is written, and the message names the optimizer
    settings (not the data) and the last good checkpoint (none)."""
    trainer = _trainer(tmp_path, False, set(), lr=1e30, max_steps=4, save_every=save_every)
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    message = str(info.value)
    assert "optimizer settings are the likely cause" in message and "optim.lr=1e+30" in message
    assert "Check the data" not in message
    assert "last good checkpoint is none" in message
    complete, _ = ckpt.list_checkpoints(tmp_path / "exp" / "checkpoints")
    assert complete == [] and not (tmp_path / "exp" / "checkpoints" / "best").exists()


def test_manager_refuses_to_save_nonfinite_parameters(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, False, set())
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ckpt.NonFiniteStateError, match="non-finite"):
        trainer.checkpoints.save()
    assert not (tmp_path / "exp" / "checkpoints").exists() or not any(
        (tmp_path / "exp" / "checkpoints").iterdir()
    )
