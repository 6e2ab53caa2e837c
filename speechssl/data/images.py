"""Image batches and the patch layout: the image counterparts of ``AudioBatch`` and frames.

* :class:`ImageBatch` - what vision pretraining models take (``images [N, C, H, W]``, optional
  per-patch unit labels, image ids);
* :func:`patchify` / :func:`image_patches` - the one definition of the patch layout;
* :func:`digits_images` - scikit-learn's bundled 8x8 digits as a tiny image corpus.

Patch *units* (patches written as a feature store, k-means labels per patch) live in
:mod:`speechssl.units.patches`, above the feature store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from speechssl.errors import ItemError


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
    "patchify",
]
