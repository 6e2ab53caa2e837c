"""Structured configs of `speechssl-train`: one kw-only dataclass per Hydra group.

The YAML files under ``configs/`` are merged into these dataclasses, so every field is typed,
checked and overridable on the command line (``optim.lr=1e-4``). Components (models,
optimizers, schedules) are referred to by registry name; a ``_target_`` key anywhere in a
config is refused, so no config can instantiate an arbitrary class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from speechssl.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp")
CROP_MODES = ("batch_min", "pad")


@dataclass(kw_only=True)
class ModelConfig:
    """Which model to pretrain (group ``model``)."""

    name: str = "hubert_tiny"
    """Registry name of the model (``speechssl.models.registry``); with ``init_from`` and no
    ``model=`` it is taken from that model dir."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the model's own dataclass config to change (``+model.overrides.K=V``)."""
    init_from: str | None = None
    """A speechssl model dir (from ``speechssl import ...`` or a run's ``final/``) to start
    from: its architecture and weights. Heads it lacks or whose size follows the labels
    (HuBERT's label embeddings for a new k) start fresh and are logged; overrides may change
    training settings (masking, dropout, loss weights) but not the architecture."""
    teacher: str | None = None
    """Distillation models (``distilhubert_*``): the frozen teacher, a speechssl model dir
    (a run's ``final/``, or ``speechssl import hf`` of a transformers model). The student
    takes its conv stack and layer shape and starts from its first layers."""
    teacher_cache: str | None = None
    """With ``teacher``: read its hidden states from this layer cache (``speechssl probe
    cache --upstream TEACHER_DIR``, made from the same weights; another upstream's cache
    is refused) instead of running the teacher on every step. Crops then start on the
    teacher's frame edges."""

    def __post_init__(self) -> None:
        from speechssl.models.registry import get_spec

        if self.teacher_cache is not None and not self.teacher:
            raise ConfigError(
                "model.teacher_cache needs model.teacher (the student starts from the "
                "teacher, and the cache must be of its weights)"
            )
        if self.teacher is not None and self.name and get_spec(self.name).family != "distilhubert":
            raise ConfigError(
                f"model.teacher is for distillation models (distilhubert_*), not {self.name}"
            )

        if not self.name:  # model.init_from without model=: the name comes from that dir
            if not self.init_from:
                raise ConfigError(
                    "model.name is empty: pick a preset (model=NAME) or model.init_from=DIR"
                )
            return
        get_spec(self.name)  # an unknown name is a ConfigError listing the known ones
        # a model/data modality mismatch is refused with the data group in view
        # (speechssl.train.images.check_modality), before the exp dir is touched


@dataclass(kw_only=True)
class DataConfig:
    """Training data: a Kaldi data dir, its unit labels and the batching (group ``data``)."""

    dir: str = MISSING
    """Kaldi data dir to train on (validated with ``speechssl data validate``)."""
    labels: list[str] = field(default_factory=list)
    """Unit-label dirs (one per label stream) beside ``dir``; empty for label-free models."""
    label_tolerance: int = 2
    """Frames by which an utterance's label count may differ from its duration x rate."""
    dev_dir: str | None = None
    """Optional dev data dir; its loss picks the best checkpoint."""
    dev_labels: list[str] = field(default_factory=list)
    """Unit-label dirs for ``dev_dir``, same streams in the same order as ``labels``."""
    min_seconds: float = 2.0
    """Utterances shorter than this are left out (counted and logged); fairseq's 32000."""
    max_seconds: float | None = None
    """Utterances longer than this are left out (counted and logged); None keeps all."""
    crop_seconds: float = 15.625
    """Longest stretch of audio fed per utterance (fairseq's max_sample_size=250000)."""
    crop_mode: str = "batch_min"
    """``batch_min``: crop every utterance of a batch to the shortest one (no padding, as
    fairseq's HuBERT); ``pad``: crop only to ``crop_seconds`` and pad the rest."""
    random_crop: bool = True
    """Random crop offsets (a function of seed, epoch and batch); False crops from the start."""
    max_batch_seconds: float = 87.5
    """Padded audio seconds per batch per device (fairseq's max_tokens=1400000 at 16 kHz)."""
    max_batch_utts: int = 0
    """Most utterances in one batch; 0 means no limit."""
    num_buckets: int = 0
    """Length buckets (quantiles) shuffled within; 0 sorts by exact length (fairseq)."""
    shuffle: bool = True
    """Shuffle the batch order each epoch."""
    num_workers: int = 2
    """Data-loading worker processes per device (0 loads in the training process)."""
    sample_rate: int = 0
    """Audio sample rate; 0 takes the model's."""
    normalize: bool = False
    """Normalise each waveform to zero mean, unit variance (HuBERT large)."""
    channels: str = "error"
    """Multi-channel audio: ``error`` (refuse it, naming the utterance), ``select:N`` (use
    channel N, 0-based) or ``mean`` (average the channels)."""
    allow_pipes: bool = False
    """Run ``wav.scp`` entries that are shell commands (``cmd |``); off by default because
    they execute whatever the data dir says."""
    tolerant: bool = False
    """Skip (and count) utterances that fail to load instead of stopping (at start-up and
    during training; each is logged as a ``skipped_utterance`` event)."""
    modality: str = "audio"
    """``audio`` (a Kaldi data dir) or ``image`` (``dir`` is an image folder, one
    subdirectory per class, or ``builtin:digits``; ``max_batch_utts`` images per batch);
    must match the model's (``data=images`` sets it)."""

    def __post_init__(self) -> None:
        from speechssl.data.audio import parse_channel_policy

        try:
            parse_channel_policy(self.channels)
        except ConfigError:
            raise ConfigError(
                f"data.channels must be error, mean or select:N (N >= 0), got {self.channels!r}"
            ) from None
        if self.modality not in ("audio", "image"):
            raise ConfigError(f"data.modality must be audio or image, got {self.modality!r}")
        if self.crop_mode not in CROP_MODES:
            raise ConfigError(f"data.crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.crop_seconds <= 0:
            raise ConfigError(f"data.crop_seconds must be > 0, got {self.crop_seconds}")
        if self.max_batch_seconds <= 0:
            raise ConfigError(f"data.max_batch_seconds must be > 0, got {self.max_batch_seconds}")
        if self.max_seconds is not None and self.max_seconds < self.min_seconds:
            raise ConfigError(
                f"data.max_seconds ({self.max_seconds}) < data.min_seconds ({self.min_seconds})"
            )
        if self.dev_dir and len(self.dev_labels) != len(self.labels):
            raise ConfigError(
                f"data.dev_labels needs one dir per training label stream "
                f"({len(self.labels)}), got {len(self.dev_labels)}"
            )
        for name in ("max_batch_utts", "num_buckets", "num_workers", "sample_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (group ``optim``)."""

    name: str = "adamw"
    """Registry name of the optimizer (``adamw``, ``adam``)."""
    lr: float = 5e-4
    """Peak learning rate (reached at the end of warmup)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    schedule: str = "polynomial_decay"
    """Registry name of the schedule (``polynomial_decay``, ``linear``, ``constant``,
    ``cosine``)."""
    warmup_steps: int = 32000
    """Steps of linear warmup from ``warmup_init_lr`` to ``lr``."""
    warmup_init_lr: float = 0.0
    """Learning rate at step 0."""
    end_lr: float = 0.0
    """Learning rate at ``total_steps`` (polynomial and cosine decay)."""
    power: float = 1.0
    """Exponent of the polynomial decay (1 = linear)."""
    total_steps: int = 0
    """Steps over which the schedule decays; 0 takes ``trainer.max_steps``."""

    def __post_init__(self) -> None:
        for name in ("lr", "eps", "weight_decay", "warmup_init_lr", "end_lr", "power"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"optim.{name} must be finite, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.eps <= 0:
            raise ConfigError(
                f"optim.eps must be > 0 (it keeps Adam's update finite), got {self.eps}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_init_lr < 0 or self.end_lr < 0 or self.power <= 0:
            raise ConfigError(
                "optim.warmup_init_lr and optim.end_lr must be >= 0 and optim.power > 0, got "
                f"{self.warmup_init_lr}, {self.end_lr}, {self.power}"
            )
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.total_steps < 0:
            raise ConfigError("optim.warmup_steps and optim.total_steps must be >= 0")


@dataclass(kw_only=True)
class TrainerConfig:
    """The training loop: devices, precision, checkpoints, logging (group ``trainer``)."""

    exp_dir: str = MISSING
    """Experiment dir: checkpoints, logs, resolved config and the exported model."""
    seed: int = 1
    """Seed of everything random (initialisation, crops, batch order, masks)."""
    max_steps: int = 400000
    """Optimizer updates to run (skipped non-finite steps do not count)."""
    max_epochs: int = 0
    """Stop after this many epochs; 0 means no epoch limit."""
    grad_accum: int = 1
    """Micro-batches per optimizer update (fairseq's update_freq)."""
    precision: str = "fp32"
    """``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast + dynamic loss scaling)."""
    clip_norm: float = 10.0
    """Clip the global gradient norm to this (finite, > 0); exactly 0 disables clipping
    (the norm is still logged). Negative values are refused."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    strategy: str = "ddp"
    """Multi-process wrapping: ``ddp`` or ``fsdp`` (FSDP2 ``fully_shard``)."""
    find_unused_parameters: bool = False
    """DDP: tolerate parameters that get no gradient in a step."""
    compile: bool = False
    """``torch.compile`` the model's repeated blocks (transformer layers, ...) in place."""
    log_every: int = 100
    """Updates between log records (JSON lines, TensorBoard, progress bar)."""
    save_every: int = 5000
    """Updates between checkpoints (one is also written at the end)."""
    keep_last: int = 3
    """Complete step checkpoints to keep (the best one is kept separately)."""
    validate_every: int = 0
    """Updates between dev evaluations; 0 evaluates at every checkpoint."""
    dev_max_batches: int = 0
    """Cap on dev batches per evaluation; 0 uses the whole dev set."""
    best_metric: str = "loss"
    """Metric choosing the best checkpoint: dev value if a dev set is given, else train."""
    best_mode: str = "min"
    """``min`` or ``max``: which direction of ``best_metric`` is better."""
    init_loss_scale: float = 128.0
    """fp16: initial loss scale."""
    min_loss_scale: float = 1e-4
    """fp16: stop when the loss scale falls below this."""
    max_consecutive_nonfinite: int = 20
    """Stop (saving state) after this many consecutive skipped non-finite steps."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""
    tensorboard: bool = True
    """Write TensorBoard scalars under ``exp_dir/tb``."""
    verify_checkpoint: bool = True
    """Check every checkpoint file's SHA-256 against its metadata before resuming."""
    export_final: bool = True
    """Write ``exp_dir/final`` (the model dir ``speechssl features dump`` reads) at the end."""
    peak_flops: float = 0.0
    """Peak FLOP/s of one device for MFU; 0 takes the GPU's dense bf16 peak from
    ``speechssl.models.flops`` (no MFU on CPU unless set). Model FLOPs come from
    ``speechssl.models.flops`` (real, unpadded lengths) or, for models it cannot count,
    from one measured micro-batch (``torch.utils.flop_counter``, per padded sample)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"trainer.strategy must be one of {STRATEGIES}, got {self.strategy!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"trainer.device must be auto, cpu or cuda, got {self.device!r}")
        if self.best_mode not in ("min", "max"):
            raise ConfigError(f"trainer.best_mode must be min or max, got {self.best_mode!r}")
        if self.seed < 0:
            raise ConfigError(f"trainer.seed must be >= 0, got {self.seed}")
        if not math.isfinite(self.clip_norm) or self.clip_norm < 0:
            raise ConfigError(
                f"trainer.clip_norm must be a finite value > 0, or 0 for no clipping; got "
                f"{self.clip_norm}"
            )
        for name in ("init_loss_scale", "min_loss_scale", "peak_flops"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"trainer.{name} must be finite and >= 0, got {value}")
        for name in ("max_steps", "grad_accum", "log_every", "save_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_epochs",
            "validate_every",
            "dev_max_batches",
            "max_consecutive_nonfinite",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything `speechssl-train` needs; the root of the Hydra config."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model group."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data group."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer group."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Trainer group."""
    resume: str = "auto"
    """``auto`` (newest complete checkpoint in exp_dir, if any), ``never`` (refuse an exp
    dir that already has checkpoints), or a checkpoint dir to start from."""


def refuse_targets(node: Any, path: str = "") -> None:
    """Raise ConfigError if a ``_target_`` key appears anywhere in a (plain) config tree."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                raise ConfigError(
                    f"{where}: configs may not instantiate classes; components are chosen by "
                    "registry name (e.g. model.name=hubert_tiny)"
                )
            refuse_targets(value, where)
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            refuse_targets(value, f"{path}[{i}]")


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="data", name="schema", node=DataConfig)
    cs.store(group="optim", name="schema", node=OptimConfig)
    cs.store(group="trainer", name="schema", node=TrainerConfig)


def to_train_config(cfg: Any) -> TrainConfig:
    """Turn a composed OmegaConf config into a validated :class:`TrainConfig`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue, ValidationError

    if isinstance(cfg, TrainConfig):
        return cfg
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    try:
        refuse_targets(OmegaConf.to_container(cfg, resolve=False))
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        obj = OmegaConf.to_object(merged)
    except MissingMandatoryValue as exc:
        raise ConfigError(
            f"missing mandatory value {exc.full_key} (set it on the command line)"
        ) from None
    except ValidationError as exc:
        raise ConfigError(f"{exc.full_key}: {exc.msg}") from None
    assert isinstance(obj, TrainConfig)
    return obj
