"""Image pretraining as a :class:`~speechssl.train.task.TrainTask` (``data=images``).

:class:`ImageTrainTask` builds an image model by registry name, reads ``data.dir`` (an
image-folder layout, one subdirectory per class, or ``builtin:digits``) at the model's
geometry (:func:`speechssl.data.images.load_image_folder`), and serves batches of
``data.max_batch_utts`` images in a seeded order per epoch (the last partial batch is
dropped; each rank takes every ``world_size``-th batch). Models that predict patch units
(``hubert_vision_*``) get them from a k-means fitted at start-up on the raw patches of the
training images (``exp_dir/patch_units``), the image counterpart of ``speechssl kmeans``.

:func:`check_modality` refuses a model/data modality mismatch before anything is built.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.distributed import DistEnv
from speechssl.errors import ConfigError
from speechssl.train.config import TrainConfig
from speechssl.train.data import derive_seed
from speechssl.train.task import BatchInfo, StepOutput

log = logging.getLogger(__name__)

_ORDER_STREAM = 10
_MODEL_STREAM = 2


def check_modality(cfg: TrainConfig) -> str:
    """The modality both the model and the data agree on; a one-line ConfigError when the
    model (``model.name``) takes another kind of input than ``data.modality`` provides."""
    from speechssl.models.registry import get_spec

    name = cfg.model.name
    if not name and cfg.model.init_from:  # the architecture comes from that model dir
        from speechssl.models.init import describe_init_source

        name = str(describe_init_source(cfg.model.init_from)["name"])
    spec = get_spec(name)
    data = cfg.data.modality
    if spec.modality != data:
        hint = "data=images or data=digits" if spec.modality == "image" else "an audio data group (data=default, data=synth)"  # fmt: skip
        raise ConfigError(
            f"model {name} takes {spec.modality} input but the data group provides "
            f"{data} (data.modality={data}); use {hint}"
        )
    if data == "image":
        dc = cfg.data
        if dc.max_batch_utts < 1:
            raise ConfigError("data.max_batch_utts (images per batch) must be >= 1 for image data")  # fmt: skip
        if dc.dev_dir or dc.labels:
            raise ConfigError(
                "image data takes no data.dev_dir or data.labels (patch units of hubert_vision "
                "models are fitted at start-up)"
            )
    return data


@dataclass
class ImageTrainBatch:
    """One micro-batch of images: where it sits in the epoch's order and its pixels."""

    epoch: int
    index: int
    images: Tensor
    image_ids: list[str]
    labels: dict[str, Tensor] = field(default_factory=dict)


class ImageTrainTask:
    """Pretraining of a registered image model on an image folder or the bundled digits."""

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        from speechssl.data.images import load_image_folder
        from speechssl.models.registry import create_model

        check_modality(cfg)
        self.cfg, self.env = cfg, env
        self.device = env.device
        self.seed = cfg.trainer.seed
        self.model_name = cfg.model.name
        self.sample_rate = 16000  # unused by image models; the loop's throughput meters read it
        torch.manual_seed(self.seed)
        self.model: nn.Module = create_model(cfg.model.name, **dict(cfg.model.overrides)).to(
            self.device
        )
        self.model_config: Any = self.model.config
        patch = self.model_config.patch
        self.data = load_image_folder(cfg.data.dir, patch.channels, patch.image_size)
        self.batch_size = cfg.data.max_batch_utts
        if len(self.data) < self.batch_size * env.world_size:
            raise ConfigError(
                f"data.dir {cfg.data.dir}: {len(self.data)} images, fewer than one batch of "
                f"data.max_batch_utts={self.batch_size} per rank ({env.world_size} ranks)"
            )
        if self.batch_size < 2 and getattr(self.model_config, "loss", "") in (
            "vicreg",
            "barlow_twins",
        ):
            raise ConfigError(
                f"{self.model_name} needs batch statistics: set data.max_batch_utts to 2 or more"
            )
        self.units: Tensor | None = None
        if hasattr(self.model_config, "num_classes"):
            self.units = self._fit_patch_units()
        if env.is_main:
            log.info(
                "image data %s: %d images in %d classes", cfg.data.dir, len(self.data),
                len(self.data.class_names),
            )  # fmt: skip

    def _fit_patch_units(self) -> Tensor:
        """k-means units of the raw patches (k = the model's first stream size), every rank
        the same (fitted from the same seed on the same images)."""
        from speechssl.units.kmeans import KMeansConfig, fit_kmeans
        from speechssl.units.patches import patch_unit_labels, write_patch_store

        config = self.model_config
        if len(config.num_classes) != 1:
            raise ConfigError(f"{self.model_name}: image pretraining fits one patch-unit stream; set num_classes to one k")  # fmt: skip
        root = Path(self.cfg.trainer.exp_dir) / "patch_units" / f"rank{self.env.rank}"
        store = root / "patches"
        if not (store / "meta.json").exists():
            write_patch_store(
                store, self.data.images, self.data.image_ids, config.patch.patch_size, overwrite=True
            )  # fmt: skip
        km = KMeansConfig(k=int(config.num_classes[0]), seed=self.seed, device="cpu", n_init=1)
        kmeans = fit_kmeans(store, km).model
        return patch_unit_labels(kmeans, self.data.images, config.patch.patch_size)

    # the TrainTask interface -------------------------------------------------------------

    def batches_per_rank(self, epoch: int) -> int:
        return len(self.data) // (self.batch_size * self.env.world_size)

    def _order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _ORDER_STREAM))
        if not self.cfg.data.shuffle:
            return torch.arange(len(self.data))
        return torch.randperm(len(self.data), generator=g)

    def batches(self, epoch: int, start: int) -> Iterator[ImageTrainBatch]:
        order = self._order(epoch)
        per_rank = self.batches_per_rank(epoch)
        for local in range(start, per_rank):
            index = local * self.env.world_size + self.env.rank
            idx = order[index * self.batch_size : (index + 1) * self.batch_size]
            labels = {"km": self.units[idx]} if self.units is not None else {}
            yield ImageTrainBatch(
                epoch=epoch,
                index=index,
                images=self.data.images[idx],
                image_ids=[self.data.image_ids[int(i)] for i in idx],
                labels=labels,
            )

    def info(self, batch: ImageTrainBatch) -> BatchInfo:
        pixels = batch.images[0].numel() if len(batch.image_ids) else 0
        return BatchInfo(
            index=batch.index,
            utt_ids=list(batch.image_ids),
            lengths=torch.full((len(batch.image_ids),), pixels, dtype=torch.long),
            padded_samples=batch.images.numel(),
            loaded_samples=batch.images.numel(),
        )

    def forward(self, module: nn.Module, batch: ImageTrainBatch) -> StepOutput:
        from speechssl.data.images import ImageBatch

        torch.manual_seed(derive_seed(self.seed, batch.epoch, batch.index, _MODEL_STREAM))
        image_batch = ImageBatch(batch.images, batch.labels, batch.image_ids)
        out = module(image_batch.to(self.device, non_blocking=True))
        total = out.loss.total.float()
        scalars = {"loss": total, **{f"loss/{n}": v for n, v in out.loss.terms.items()}}
        scalars.update(out.metrics)
        return StepOutput(loss=total, scalars=scalars)

    def evaluate(self, module: nn.Module) -> tuple[dict[str, float], float] | None:
        return None

    def model_files(self) -> dict[str, str]:
        from speechssl.models.io import model_description

        desc = model_description(self.model)  # type: ignore[arg-type]
        return {"model.json": json.dumps(desc, indent=2, sort_keys=True) + "\n"}

    def start_events(self, epoch: int) -> list[dict[str, Any]]:
        return [
            {
                "event": "data",
                "split": "train",
                "total": len(self.data),
                "kept": len(self.data),
                "classes": len(self.data.class_names),
            },
            {
                "event": "plan",
                "epoch": epoch,
                "batches_per_rank": self.batches_per_rank(epoch),
                "repeated_batches": 0,
            },
        ]

    def export(self, target: Path, fsdp: bool, step: int) -> None:
        """``exp_dir/final``: the trained model as a model dir."""
        from speechssl.models.io import (
            build_from_description,
            load_weights,
            model_description,
            save_model_dir,
        )
        from speechssl.train import checkpoint as ckpt

        state = ckpt.model_state(self.model, fsdp) if fsdp else None
        if not self.env.is_main:
            return
        model: Any = self.model
        if state is not None:
            model = build_from_description(model_description(self.model))  # type: ignore[arg-type]
            load_weights(model, state, str(target))
        info = {"exp_dir": str(self.cfg.trainer.exp_dir), "step": step, "data": self.cfg.data.dir}
        save_model_dir(model, target, overwrite=True, extra={"training": info})


__all__ = ["ImageTrainBatch", "ImageTrainTask", "check_modality"]
