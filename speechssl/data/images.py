"""Image batches and patch units: the image counterparts of ``AudioBatch`` and frame labels.

* :class:`ImageBatch` - what vision pretraining models take (``images [N, C, H, W]``, optional
  per-patch unit labels, image ids);
* :func:`write_patch_store` - raw patch vectors of a set of images written as a feature
  store (one "utterance" per image, one "frame" per patch), so ``speechssl.units`` k-means
  fits patch units exactly as it fits frame units;
* :func:`patch_unit_labels` - the nearest k-means unit of every patch, ``[N, P]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from speechssl.data.batch import LABEL_PAD
from speechssl.errors import ItemError
from speechssl.features.store import ShardWriter, StoreMeta, write_meta


class ImageError(ItemError):
    """An image is malformed (wrong shape, non-finite pixels)."""

    kind = "image"


@dataclass
class ImageBatch:
    """A batch of same-sized images.

    Attributes:
        images: ``[N, C, H, W]`` float32 pixels (already normalised as the model expects).
        labels: per-patch unit streams by name, ``[N, P]`` long (row-major patch order),
            ``LABEL_PAD`` (-100) where a patch has no label.
        image_ids: ids in batch order (errors name them).
    """

    images: Tensor
    labels: dict[str, Tensor] = field(default_factory=dict)
    image_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ImageError(
                "batch", f"images must be [N, C, H, W], got {tuple(self.images.shape)}"
            )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        return ImageBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            labels={k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
            image_ids=list(self.image_ids),
        )

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    def image_id(self, i: int) -> str:
        return self.image_ids[i] if i < len(self.image_ids) else f"batch image {i}"


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, (H/p) * (W/p), C * p * p]`` row-major non-overlapping patches
    (channel-major inside a patch). The one definition of the patch layout: the patch front
    end (:mod:`speechssl.frontends.vision`) embeds these vectors, k-means clusters them."""
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    n, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patch size {p} does not divide image size {h}x{w}")
    x = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def image_patches(images: Tensor, patch_size: int) -> Tensor:
    """Raw patch vectors ``[N, P, C * p * p]`` (:func:`patchify`)."""
    return patchify(images, patch_size)


def write_patch_store(
    root: str | os.PathLike[str],
    images: Tensor,
    image_ids: Sequence[str],
    patch_size: int,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> None:
    """Write every image's raw patches as one entry of a single-shard feature store.

    Images with non-finite pixels are skipped and recorded in the shard (``written +
    skipped == len(images)``); ids must be unique.
    """
    if len(image_ids) != images.shape[0]:
        raise ImageError("batch", f"{images.shape[0]} images but {len(image_ids)} ids")
    patches = image_patches(images.float(), patch_size)
    dim = int(patches.shape[-1])
    write_meta(
        root,
        StoreMeta(
            kind="patches",
            dim=dim,
            dtype=dtype,
            frame_rate=0.0,
            nshard=1,
            extractor={"patch_size": patch_size, "image_shape": list(images.shape[1:])},
        ),
        overwrite=overwrite,
    )
    with ShardWriter(root, 0, 1, dim=dim, dtype=dtype) as writer:
        for image_id, p in zip(image_ids, patches, strict=True):
            if not bool(torch.isfinite(p).all()):
                writer.skip(image_id, "non-finite pixels")
                continue
            writer.add(image_id, p.numpy())


def patch_unit_labels(kmeans: object, images: Tensor, patch_size: int) -> Tensor:
    """``[N, P]`` long: the nearest unit of each patch under ``kmeans`` (a
    :class:`speechssl.units.kmeans.KMeansModel`); images with non-finite pixels get
    ``LABEL_PAD`` everywhere."""
    patches = image_patches(images.float(), patch_size)
    n, p, d = patches.shape
    labels, _ = kmeans.assign(patches.reshape(n * p, d))  # type: ignore[attr-defined]
    labels = labels.view(n, p).long()
    bad = ~torch.isfinite(patches).all(dim=-1).all(dim=-1)
    return labels.masked_fill(bad.unsqueeze(1), LABEL_PAD)


def digits_images(scale: float = 16.0) -> tuple[Tensor, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits as ``([1797, 1, 8, 8] float32 in [0, 1],
    class labels)``; needs scikit-learn (a dev dependency)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / scale).unsqueeze(1)
    return images, digits.target


__all__ = [
    "ImageBatch",
    "ImageError",
    "digits_images",
    "image_patches",
    "patch_unit_labels",
    "patchify",
    "write_patch_store",
]
