"""Self-supervised pretraining as a :class:`~speechssl.train.trainer.TrainTask`.

:class:`PretrainTask` builds, from a :class:`~speechssl.train.config.TrainConfig`, the model
(by registry name, with the label streams' names and sizes), the training corpus and its
length-bucketed batches (:mod:`speechssl.train.data`), and the optional dev set; the loss of
a micro-batch is the model's own (``PretrainModel.forward`` returns a typed loss record).

Randomness inside the model (masks, dropout) is re-seeded before every micro-batch from
``(seed, epoch, global batch index)``, and the data pipeline is a pure function of the same
numbers, so a step computes the same thing whether the run was resumed or not and however
the global batch is spread over ranks and accumulation.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechssl.distributed import DistEnv
from speechssl.errors import ConfigError
from speechssl.train import checkpoint as ckpt
from speechssl.train.config import TrainConfig
from speechssl.train.data import (
    BatchingOptions,
    BatchPlanSampler,
    CroppedBatchDataset,
    FilterReport,
    TrainBatch,
    TrainCorpus,
    derive_seed,
    filter_by_duration,
    load_corpus,
    make_loader,
    stream_names_for,
)
from speechssl.train.task import BatchInfo, StepOutput, autocast

log = logging.getLogger(__name__)

# seed-stream tags (see data.py for the data streams 0 and 1)
_MODEL_STREAM = 2
_DEV_STREAM = 3
_DEV_EPOCH = 0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PretrainTask:
    """Pretraining of a registered model on a Kaldi data dir (and its unit labels).

    Args:
        cfg: the validated config.
        env: this process's place in the world.
        train_corpus, dev_corpus: corpora to use instead of loading ``cfg.data.dir`` /
            ``cfg.data.dev_dir``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        *,
        train_corpus: TrainCorpus | None = None,
        dev_corpus: TrainCorpus | None = None,
    ) -> None:
        from speechssl.models.registry import create_model

        self.cfg, self.env = cfg, env
        tc, dc = cfg.trainer, cfg.data
        self.device = env.device
        self.seed = tc.seed
        self.model_name = cfg.model.name
        self.init_desc: dict[str, Any] | None = None
        if cfg.model.init_from:
            from speechssl.models.init import describe_init_source, resolve_name

            self.init_desc = describe_init_source(cfg.model.init_from)
            self.model_name = resolve_name(self.init_desc, cfg.model.name, cfg.model.init_from)
        elif not cfg.model.name:
            raise ConfigError(
                "model.name is empty: pick a preset (model=NAME) or model.init_from=DIR"
            )
        if (
            tc.precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise ConfigError("trainer.precision=bf16 but this GPU does not support bfloat16")  # fmt: skip
        given_streams = train_corpus is not None and bool(train_corpus.streams)
        self.stream_names = [] if given_streams else stream_names_for(dc.labels)
        _seed_everything(tc.seed)  # the same initial weights on every rank
        teacher = self._load_teacher()
        model = create_model(self.model_name, **self._model_overrides(given_streams, teacher))
        if teacher is not None:
            from speechssl.models.distilhubert import init_student_from_teacher

            copied = init_student_from_teacher(model, teacher)  # type: ignore[arg-type]
            model.attach_teacher(teacher)  # type: ignore[operator]
            if env.is_main:
                log.info(
                    "student initialised from teacher %s (%d tensors copied)",
                    cfg.model.teacher,
                    len(copied),
                )
        if cfg.model.init_from:
            from speechssl.models.init import init_from_dir

            report = init_from_dir(model, cfg.model.init_from)
            if env.is_main:
                log.info("%s", report.summary())
        self.model: nn.Module = model.to(self.device)
        self.teacher_cache: Any = None
        if cfg.model.teacher_cache:
            self.teacher_cache = self._open_teacher_cache(model)
        self.sample_rate = int(dc.sample_rate or getattr(self.model, "sample_rate", 16000))
        self.reports: dict[str, FilterReport] = {}
        self.load_skipped: dict[str, list[tuple[str, str]]] = {}
        self.train_corpus = self._corpus(train_corpus, dc.dir, dc.labels, "train")
        if len(self.train_corpus) == 0:
            raise ConfigError(
                f"data.dir {dc.dir}: no utterance is left after the duration filter "
                f"({self.reports['train'].summary()})"
            )
        self.batching = BatchingOptions(
            crop_samples=round(dc.crop_seconds * self.sample_rate),
            max_batch_samples=round(dc.max_batch_seconds * self.sample_rate),
            max_batch_utts=dc.max_batch_utts,
            num_buckets=dc.num_buckets,
            shuffle=dc.shuffle,
            crop_mode=dc.crop_mode,
            random_crop=dc.random_crop,
        )
        self.sampler = BatchPlanSampler(
            self.train_corpus.num_samples, self.batching, seed=tc.seed, rank=env.rank,
            world_size=env.world_size, grad_accum=tc.grad_accum,
        )  # fmt: skip
        # cached teacher frames are read at the crop offsets: crops start on frame edges
        hop = round(self.sample_rate / model.frame_rate) if self.teacher_cache is not None else 0
        self.dataset = CroppedBatchDataset(
            self.train_corpus, self.batching, seed=tc.seed, normalize=dc.normalize,
            tolerant=dc.tolerant, frame_samples=hop,
        )  # fmt: skip
        pin = self.device.type == "cuda"
        self.loader = make_loader(
            self.dataset, self.sampler, num_workers=dc.num_workers, pin_memory=pin
        )
        self.dev_loader: Any = None
        self.dev_plan_size = 0
        if dc.dev_dir or dev_corpus is not None:
            self._build_dev(self._corpus(dev_corpus, dc.dev_dir or "", dc.dev_labels, "dev"))

    # setup ------------------------------------------------------------------------------

    def _corpus(
        self, given: TrainCorpus | None, data_dir: str, label_dirs: list[str], split: str
    ) -> TrainCorpus:
        dc = self.cfg.data
        corpus = given
        if corpus is None:
            corpus = load_corpus(
                data_dir, label_dirs, sample_rate=self.sample_rate,
                label_tolerance=dc.label_tolerance, stream_names=self.stream_names,
                tolerant=dc.tolerant, channels=dc.channels, allow_pipes=dc.allow_pipes,
            )  # fmt: skip
        filtered, report = filter_by_duration(corpus, dc.min_seconds, dc.max_seconds)
        if self.env.is_main:
            log.info("%s data %s: %s", split, data_dir or "(given)", report.summary())
        self.reports[split] = report
        self.load_skipped[split] = list(corpus.skipped)
        return filtered

    def _build_dev(self, dev: TrainCorpus) -> None:
        dc, tc = self.cfg.data, self.cfg.trainer
        opts = BatchingOptions(
            crop_samples=self.batching.crop_samples,
            max_batch_samples=self.batching.max_batch_samples,
            max_batch_utts=self.batching.max_batch_utts,
            shuffle=False,
            crop_mode=dc.crop_mode,
            random_crop=False,
        )
        sampler = BatchPlanSampler(
            dev.num_samples, opts, seed=tc.seed, rank=self.env.rank, world_size=self.env.world_size
        )
        sampler.set_position(_DEV_EPOCH, 0)
        plan, padded = sampler.epoch_plan(_DEV_EPOCH)
        self.dev_plan_size = len(plan) - padded
        self.dev_loader = make_loader(
            # strict even in tolerant mode: an emptied dev batch would leave ranks with
            # different numbers of (collective, under FSDP) forward passes
            CroppedBatchDataset(dev, opts, seed=tc.seed, normalize=dc.normalize),
            sampler,
            num_workers=0,
            pin_memory=self.device.type == "cuda",
        )

    def _load_teacher(self) -> Any:
        """The frozen teacher of a distillation model (``model.teacher``), else None."""
        from speechssl.models.registry import get_spec

        teacher_dir = self.cfg.model.teacher
        is_distil = get_spec(self.model_name).family == "distilhubert"
        if not is_distil:
            if teacher_dir:
                raise ConfigError(
                    f"model.teacher is for distillation models (distilhubert_*), not "
                    f"{self.model_name}"
                )
            return None
        if not teacher_dir:
            raise ConfigError(
                f"model {self.model_name} distils a teacher: give model.teacher=DIR (a "
                "speechssl model dir, e.g. a run's final/ or an `speechssl import hf` output)"
            )
        if self.cfg.model.init_from:
            raise ConfigError(
                "model.init_from and model.teacher together: the student starts from its "
                "teacher; give only model.teacher"
            )
        from speechssl.models.io import load_model_dir

        return load_model_dir(teacher_dir)

    def _open_teacher_cache(self, student: Any) -> Any:
        """The layer cache of ``model.teacher_cache``, checked: a layer cache, made from
        the teacher's weights, holding every target layer."""
        from speechssl.features.store import FeatureStore
        from speechssl.models.io import WEIGHTS_NAME
        from speechssl.utils.files import sha256_file

        root = Path(str(self.cfg.model.teacher_cache))
        teacher = str(self.cfg.model.teacher)
        hint = f"speechssl probe cache --upstream {teacher} --data DATA --out DIR"
        try:
            meta = json.loads((root / "meta.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(f"model.teacher_cache {root}: no layer cache here ({hint})") from None
        ext = meta.get("extractor") or {}
        if meta.get("kind") != "layers":
            raise ConfigError(
                f"model.teacher_cache {root}: a {meta.get('kind')!r} feature store, not a layer "
                f"cache ({hint})"
            )
        have = str((ext.get("upstream") or {}).get("weights_sha256", ""))
        want = sha256_file(Path(teacher) / WEIGHTS_NAME)
        if have != want:
            name = (ext.get("upstream") or {}).get("name")
            raise ConfigError(
                f"model.teacher_cache {root}: layer cache of another upstream ({name}, weights "
                f"{have[:12] or 'unknown'}) than model.teacher {teacher} (weights {want[:12]}); "
                f"cache the teacher's layers ({hint})"
            )
        layers = [int(i) for i in ext.get("layers", [])]
        missing = [i for i in student.config.target_layers if i not in layers]
        if missing:
            raise ConfigError(
                f"model.teacher_cache {root}: holds layers {layers}, not the target layers "
                f"{missing} ({hint} --layers ...)"
            )
        store = FeatureStore(root)
        return store, layers, int(ext["layer_dim"])

    def _cached_targets(self, batch: TrainBatch) -> list[torch.Tensor]:
        """The teacher's target layers for ``batch``'s crops, read from the layer cache."""
        store, layers, dim = self.teacher_cache
        model: Any = self.model
        hop = round(self.sample_rate / model.frame_rate)
        width = int(model.output_lengths(torch.tensor([batch.waveforms.shape[1]]))[0])
        frames = model.output_lengths(batch.lengths.cpu()).tolist()
        assert batch.crop_offsets is not None
        picks = [layers.index(i) for i in model.config.target_layers]
        out = torch.zeros(len(picks), len(batch.utt_ids), width, dim)
        for row, (utt, off, n) in enumerate(
            zip(batch.utt_ids, batch.crop_offsets.tolist(), frames)
        ):
            if utt not in store:
                raise ConfigError(
                    f"{utt}: not in model.teacher_cache {store.root} (cache the same data dir)"
                )
            cached = store[utt]
            cached = cached.reshape(cached.shape[0], len(layers), dim)
            start = int(off) // hop
            piece = cached[start : start + n][:, picks]
            if piece.shape[0] != n:
                raise ConfigError(
                    f"{utt}: model.teacher_cache {store.root} has {cached.shape[0]} frames, "
                    f"fewer than the audio's crop needs (cached from other audio?)"
                )
            out[:, row, :n] = torch.from_numpy(np.asarray(piece, dtype=np.float32)).permute(1, 0, 2)
        return [t.to(self.device, non_blocking=True) for t in out]

    def _model_overrides(self, given_streams: bool = False, teacher: Any = None) -> dict[str, Any]:
        """The user's model overrides, plus the label streams' names and sizes (k) for
        models that predict units, unless the user set them. ``given_streams``: the caller
        passed a corpus with its own label streams (the overrides are then the caller's).
        ``teacher``: a distillation teacher, whose shapes the student takes (before the
        user's overrides)."""
        from speechssl.models.registry import model_config

        overrides = dict(self.cfg.model.overrides)
        if teacher is not None:
            from speechssl.models.distilhubert import student_overrides

            overrides = {**student_overrides(teacher), **overrides}
        if self.init_desc is not None:
            from speechssl.models.init import config_overrides

            overrides = config_overrides(self.init_desc, overrides, str(self.cfg.model.init_from))
        labels = self.cfg.data.labels
        config = model_config(self.model_name, **overrides)
        if not labels:
            if hasattr(config, "num_classes") and not given_streams:
                raise ConfigError(
                    f"model {self.model_name} predicts unit labels: give data.labels=[DIR,...] "
                    "(label dirs from speechssl kmeans apply)"
                )
            return overrides
        given = dict(self.cfg.model.overrides)  # the user's, not the model dir's
        if hasattr(config, "num_classes") and "num_classes" not in given:
            from speechssl.units.labels import LabelsMeta

            overrides["num_classes"] = tuple(LabelsMeta.read(d).k for d in labels)
        if hasattr(config, "label_streams") and "label_streams" not in given:
            overrides["label_streams"] = tuple(self.stream_names)
        return overrides

    # the TrainTask interface -------------------------------------------------------------

    def batches(self, epoch: int, start: int) -> Iterator[TrainBatch]:
        self.sampler.set_position(epoch, start)
        for batch in self.loader:
            if batch.error is not None:  # strict mode: the item error, as itself
                raise batch.error
            yield batch

    def batches_per_rank(self, epoch: int) -> int:
        return self.sampler.batches_per_rank(epoch)

    def info(self, batch: TrainBatch) -> BatchInfo:
        return BatchInfo(
            index=batch.index,
            utt_ids=list(batch.utt_ids),
            lengths=batch.lengths,
            padded_samples=batch.waveforms.numel(),
            loaded_samples=batch.loaded_samples,
            skipped=list(batch.skipped),
        )

    def forward(self, module: nn.Module, batch: TrainBatch) -> StepOutput:
        torch.manual_seed(derive_seed(self.seed, batch.epoch, batch.index, _MODEL_STREAM))
        audio = batch.audio_batch().to(self.device, non_blocking=True)
        if self.teacher_cache is not None:
            out = module(audio, targets=self._cached_targets(batch))
        else:
            out = module(audio)
        total = out.loss.total.float()
        scalars = {"loss": total, **{f"loss/{n}": v for n, v in out.loss.terms.items()}}
        scalars.update(out.metrics)
        return StepOutput(loss=total, scalars=scalars)

    def evaluate(self, module: nn.Module) -> tuple[dict[str, float], float] | None:
        if self.dev_loader is None:
            return None
        tc = self.cfg.trainer
        sums: dict[str, float] = {}
        weight = 0.0
        for i, tb in enumerate(self.dev_loader):
            if tb.error is not None:
                raise tb.error
            if tc.dev_max_batches and i >= tc.dev_max_batches:
                break
            torch.manual_seed(derive_seed(tc.seed, _DEV_EPOCH, tb.index, _DEV_STREAM))
            with autocast(self.device, tc.precision):
                out = module(tb.audio_batch().to(self.device))
            w = 0.0 if tb.index >= self.dev_plan_size else 1.0  # wrap-around padding
            vals = {**out.loss.scalars(), **{k: float(v) for k, v in out.metrics.items()}}
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + w * v
            weight += w
        return sums, weight

    def model_files(self) -> dict[str, str]:
        from speechssl.models.io import model_description

        desc = model_description(self.model)  # type: ignore[arg-type]
        return {"model.json": json.dumps(desc, indent=2, sort_keys=True) + "\n"}

    def start_events(self, epoch: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for split, report in self.reports.items():
            skipped = self.load_skipped.get(split, [])
            events.append(
                {
                    "event": "data",
                    "split": split,
                    "total": report.total + len(skipped),
                    "kept": report.kept,
                    "unreadable": len(skipped),
                    "too_short": report.too_short,
                    "too_long": report.too_long,
                    "kept_hours": round(report.kept_hours, 4),
                }
            )
            for utt, reason in skipped:
                events.append({"event": "skipped_utterance", "split": split, "utt": utt, "reason": reason})  # fmt: skip
        _, padded = self.sampler.epoch_plan(epoch)
        events.append(
            {
                "event": "plan",
                "epoch": epoch,
                "batches_per_rank": self.sampler.batches_per_rank(epoch),
                "repeated_batches": padded,
            }
        )
        return events

    def training_info(self, step: int) -> dict[str, Any]:
        """What the exported model was trained on (kept in its ``model.json``)."""
        from speechssl.units.labels import LabelsMeta

        labels = []
        for name, d in zip(self.stream_names, self.cfg.data.labels):
            meta = LabelsMeta.read(d)
            labels.append(
                {"stream": name, "dir": str(d), "k": meta.k, "label_rate": meta.label_rate,
                 "kmeans": meta.kmeans, "source": meta.source}
            )  # fmt: skip
        return {
            "exp_dir": str(self.cfg.trainer.exp_dir),
            "init_from": self.cfg.model.init_from,
            "teacher": self.cfg.model.teacher,
            "teacher_cache": self.cfg.model.teacher_cache,
            "step": step,
            "data": self.cfg.data.dir,
            "labels": labels,
        }

    def export(self, target: Path, fsdp: bool, step: int) -> None:
        """``exp_dir/final``: the trained model as a model dir (``speechssl.models.io``), the
        one ``speechssl features dump --kind model --checkpoint`` and export read."""
        from speechssl.models.io import (
            build_from_description,
            load_weights,
            model_description,
            save_model_dir,
        )

        state = ckpt.model_state(self.model, fsdp) if fsdp else None
        if not self.env.is_main:
            return
        model: Any = self.model
        if state is not None:  # FSDP: gather into an unsharded copy
            model = build_from_description(model_description(self.model))  # type: ignore[arg-type]
            load_weights(model, state, str(target))
        save_model_dir(model, target, overwrite=True, extra={"training": self.training_info(step)})
