"""Patch units: images clustered into k-means units exactly like audio frames.

* :func:`write_patch_store` - raw patch vectors of a set of images written as a feature
  store (one "utterance" per image, one "frame" per patch), so :func:`fit_kmeans
  <speechssl.units.kmeans.fit_kmeans>` fits patch units exactly as it fits frame units;
* :func:`patch_unit_labels` - the nearest k-means unit of every patch, ``[N, P]``.

The patch layout itself is :func:`speechssl.data.images.patchify`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from speechssl.data.batch import LABEL_PAD
from speechssl.data.images import ImageError, image_patches
from speechssl.features.store import ShardWriter, StoreMeta, write_meta
from speechssl.units.kmeans.model import KMeansModel


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


def patch_unit_labels(kmeans: KMeansModel, images: Tensor, patch_size: int) -> Tensor:
    """``[N, P]`` long: the nearest unit of each patch under ``kmeans``; images with
    non-finite pixels get ``LABEL_PAD`` everywhere."""
    patches = image_patches(images.float(), patch_size)
    n, p, d = patches.shape
    labels, _ = kmeans.assign(patches.reshape(n * p, d))
    labels = labels.view(n, p).long()
    bad = ~torch.isfinite(patches).all(dim=-1).all(dim=-1)
    return labels.masked_fill(bad.unsqueeze(1), LABEL_PAD)


__all__ = ["patch_unit_labels", "write_patch_store"]
