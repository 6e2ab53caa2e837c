"""Structured config of `speechssl-probe` (the Hydra app): the probe's own settings plus the
trainer's ``optim`` and ``trainer`` groups (:mod:`speechssl.train.config`).

The YAML groups live in ``speechssl/configs/probe/``: ``probe.yaml`` (primary),
``task/<name>.yaml`` (one per task, SUPERB's defaults) and ``preset/`` (``superb``: the
task defaults; ``synth``: a few hundred steps for the bundled corpus on a CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import MISSING

from speechssl.errors import ConfigError
from speechssl.train.config import OptimConfig, TrainerConfig


@dataclass(kw_only=True)
class ProbeTaskConfig:
    """Which task and head (group ``task``)."""

    name: str = "pr"
    """Registered probing task (``pr``, ``asr``, ``ks``, ``sid``, ``asv``, ``ic``, ``sd``,
    ``er``, ``sf``;
    ``qbe`` (no training, :mod:`speechssl.downstream.qbe`); see ``speechssl.downstream.tasks``)."""
    proj_dim: int = 256
    """Width of the head's projection layer (asr: also the BiLSTM width per direction;
    asv: the x-vector's input projection)."""
    lexicon: str = ""
    """asr only: a lexicon for flashlight's beam search, one ``WORD W O R D |`` line per
    word (its characters, then the word boundary); empty: greedy decoding."""
    lm: str = ""
    """asr only: a KenLM n-gram (ARPA or binary) for the beam search (needs ``lexicon``)."""
    beam_size: int = 50
    """asr only: beam width of the lexicon search."""
    lm_weight: float = 2.0
    """asr only: weight of the LM score in the beam search."""
    word_score: float = 0.0
    """asr only: score added per word in the beam search."""
    layer: int = -1
    """Hidden state to probe (0 = input of layer 1); -1 learns a weighted sum of all."""
    layer_norm: bool = False
    """Layer-normalise each hidden state before the weighted sum (s3prl's option)."""

    def __post_init__(self) -> None:
        if self.proj_dim < 1:
            raise ConfigError(f"task.proj_dim must be >= 1, got {self.proj_dim}")
        if (self.lexicon or self.lm) and self.name != "asr":
            raise ConfigError(
                f"task.lexicon/task.lm are beam-search settings of task asr, not {self.name}"
            )
        if self.lm and not self.lexicon:
            raise ConfigError("task.lm needs task.lexicon (the beam search is lexicon-based)")
        if self.beam_size < 1:
            raise ConfigError(f"task.beam_size must be >= 1, got {self.beam_size}")
        if self.layer < -1:
            raise ConfigError(
                f"task.layer must be >= 0, or -1 for a weighted sum; got {self.layer}"
            )


@dataclass(kw_only=True)
class ProbeDataConfig:
    """The task's data and how batches are made (group-free, set on the command line)."""

    dir: str = MISSING
    """Task data root holding ``train/``, ``dev/`` and ``test/`` Kaldi data dirs with the
    task's label file (``utt2phones``, ``utt2keyword``, ``utt2spk``)."""
    cache: bool = True
    """Train from cached layers (computed once, see ``speechssl probe cache``); False runs
    the upstream on every step (s3prl's way; slower, for comparison)."""
    cache_dir: str = ""
    """Where the layer caches are (``<cache_dir>/<split>``); empty: ``<exp_dir>/cache``."""
    cache_dtype: str = "float16"
    """On-disk dtype of cached layers (``float16`` or ``float32``)."""
    max_batch_frames: int = 16000
    """Padded upstream frames per batch (batches are bucketed by length)."""
    max_batch_utts: int = 32
    """Most utterances per batch (SUPERB's batch size)."""
    extract_batch_seconds: float = 100.0
    """Padded audio seconds per upstream forward when caching or running uncached."""

    def __post_init__(self) -> None:
        if self.cache_dtype not in ("float16", "float32"):
            raise ConfigError(
                f"data.cache_dtype must be float16 or float32, got {self.cache_dtype!r}"
            )
        if self.max_batch_frames < 1 or self.max_batch_utts < 1:
            raise ConfigError("data.max_batch_frames and data.max_batch_utts must be >= 1")
        if self.extract_batch_seconds <= 0:
            raise ConfigError("data.extract_batch_seconds must be > 0")


@dataclass(kw_only=True)
class ProbeConfig:
    """Everything `speechssl-probe` needs; the root of its Hydra config."""

    upstream: str = MISSING
    """``fbank``, ``mfcc``, a speechssl model dir / training exp dir, or a transformers dir."""
    lr: list[float] = field(default_factory=lambda: [1e-2])
    """Learning rates swept (one run each, ``<exp_dir>/lr-<value>``); the best dev result
    picks the test number. Each run uses ``optim`` with ``optim.lr`` set to the value."""
    task: ProbeTaskConfig = field(default_factory=ProbeTaskConfig)
    """Task group."""
    data: ProbeDataConfig = field(default_factory=ProbeDataConfig)
    """Data settings."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule (``optim.lr`` is replaced by each value of ``lr``)."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """The training loop (``trainer.exp_dir`` is the probe's output dir)."""
    resume: str = "auto"
    """``auto`` (continue unfinished runs of the sweep) or ``never``."""

    def __post_init__(self) -> None:
        if not self.lr or not all(math.isfinite(x) and x > 0 for x in self.lr):
            raise ConfigError(f"lr must be a non-empty list of values > 0, got {self.lr}")
        if len(set(self.lr)) != len(self.lr):
            raise ConfigError(f"lr has repeated values: {self.lr}")
        if self.resume not in ("auto", "never"):
            raise ConfigError(f"resume must be auto or never, got {self.resume!r}")


def register_probe_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="probe_schema", node=ProbeConfig)
    cs.store(group="task", name="schema", node=ProbeTaskConfig)
    cs.store(group="optim", name="schema", node=OptimConfig)
    cs.store(group="trainer", name="schema", node=TrainerConfig)
