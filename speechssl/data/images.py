"""Image batches and the patch layout: the image counterparts of ``AudioBatch`` and frames.

* :class:`ImageBatch` - what vision pretraining models take (``images [N, C, H, W]``, optional
  per-patch unit labels, image ids);
* :func:`patchify` / :func:`image_patches` - the one definition of the patch layout;
* :func:`digits_images` - scikit-learn's bundled 8x8 digits as a tiny image corpus;
* :func:`load_image_folder` - an image-folder layout (one subdirectory per class, as
  ``torchvision.datasets.ImageFolder`` reads it) or the bundled digits (``builtin:digits``)
  as one ``[N, C, H, W]`` tensor at a model's geometry;
* :class:`ImageViewsConfig` / :func:`augment_views` - the random views of the
  joint-embedding methods (SimCLR, VICReg, Barlow Twins, DINO), drawn per image from a
  ``torch.Generator`` and applied with ``torchvision.transforms.v2.functional``.

Patch *units* (patches written as a feature store, k-means labels per patch) live in
:mod:`speechssl.units.patches`, above the feature store.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechssl.errors import ConfigError, ItemError


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


# --------------------------------------------------------------------------- image folders

BUILTIN_DIGITS = "builtin:digits"
#: file suffixes read from an image folder (what Pillow decodes); others are refused
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Images loaded at one geometry.

    Attributes:
        images: ``[N, C, H, W]`` float32 in [0, 1].
        image_ids: ``<class>/<file name>`` (or ``digit0000``...), unique.
        classes: ``[N]`` long class index (sorted class-folder order).
        class_names: the class folders in index order.
    """

    images: Tensor
    image_ids: list[str]
    classes: Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)


def _read_image(path: Path, channels: int, size: tuple[int, int]) -> Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    try:
        with Image.open(path) as opened:
            pixels = TF.pil_to_tensor(opened.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(str(path), f"cannot decode the image ({exc})") from None
    if channels not in (1, 3):
        raise ConfigError(f"image folders give 1 (grey) or 3 (RGB) channels, the model takes {channels}")  # fmt: skip
    x = pixels.float() / 255.0
    if tuple(x.shape[1:]) != size:
        x = TF.resize(x, list(size), antialias=True).clamp(0.0, 1.0)
    return x


def load_image_folder(
    source: str | os.PathLike[str], channels: int, size: tuple[int, int]
) -> ImageSet:
    """Read every image of ``source`` at ``channels`` x ``size``.

    ``source`` is a directory with one subdirectory per class holding image files (the
    ``ImageFolder`` layout; class indices follow the sorted folder names), or
    ``builtin:digits`` (scikit-learn's 1797 8x8 grey digits). Images are converted to grey
    (``channels=1``) or RGB (3) and resized (antialiased) when their size differs.

    Raises:
        ImageError: the folder is missing, has no class subdirectory or no image; a file
            with an unknown suffix or that cannot be decoded (each named).
    """
    size = (int(size[0]), int(size[1]))
    if str(source) == BUILTIN_DIGITS:
        images, target = digits_images()
        if channels != 1 or size != (8, 8):
            raise ConfigError(
                f"{BUILTIN_DIGITS} are 1x8x8 grey images; the model takes {channels}x"
                f"{size[0]}x{size[1]} (use an 8x8 grey preset such as simclr_vision_tiny)"
            )
        digit_ids = [f"digit{i:04d}" for i in range(len(images))]
        names = [str(c) for c in range(10)]
        return ImageSet(images, digit_ids, torch.from_numpy(np.asarray(target)).long(), names)
    root = Path(source)
    if not root.is_dir():
        raise ImageError(str(root), f"not an image folder (a directory), nor {BUILTIN_DIGITS}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ImageError(
            str(root), "no class subdirectory (the image-folder layout is ROOT/<class>/<image>)"
        )
    tensors: list[Tensor] = []
    ids: list[str] = []
    classes: list[int] = []
    for index, class_dir in enumerate(class_dirs):
        for path in sorted(p for p in class_dir.iterdir() if not p.name.startswith(".")):
            if path.is_dir():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageError(
                    str(path),
                    f"not an image file (suffix {path.suffix or 'none'}; expected one of "
                    f"{' '.join(IMAGE_SUFFIXES)})",
                )
            tensors.append(_read_image(path, channels, size))
            ids.append(f"{class_dir.name}/{path.name}")
            classes.append(index)
    if not tensors:
        raise ImageError(str(root), "no image in its class subdirectories")
    return ImageSet(torch.stack(tensors), ids, torch.tensor(classes), [d.name for d in class_dirs])


# --------------------------------------------------------------------------- augmented views


@dataclass(kw_only=True)
class ImageViewsConfig:
    """Random views of an image for the joint-embedding methods (SimCLR's recipe, scaled
    down: crop, flip, colour jitter, blur)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    """Area fraction range of the random resized crop (SimCLR/BYOL: 0.08-1)."""
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect-ratio range of the crop."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip (0 for images whose meaning flips, e.g. digits)."""
    jitter_prob: float = 0.8
    """Probability of brightness/contrast jitter."""
    brightness: float = 0.4
    """Brightness factor drawn from [1 - b, 1 + b]."""
    contrast: float = 0.4
    """Contrast factor drawn from [1 - c, 1 + c]."""
    blur_prob: float = 0.0
    """Probability of a Gaussian blur (sigma 0.1-2, kernel about a tenth of the side)."""

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)  # type: ignore[assignment]
        lo, hi = self.crop_scale
        if len(self.crop_scale) != 2 or not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_scale}")  # fmt: skip
        if len(self.crop_ratio) != 2 or not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must be (lo, hi) with 0 < lo <= hi, got {self.crop_ratio}")  # fmt: skip
        for name in ("flip_prob", "jitter_prob", "blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.brightness < 1.0 or not 0.0 <= self.contrast < 1.0:
            raise ConfigError("brightness and contrast must be in [0, 1)")


def _uniform(g: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _crop_box(
    height: int, width: int, config: ImageViewsConfig, g: torch.Generator | None
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random resized crop (10 tries, then the whole image)."""
    area = height * width
    log_lo, log_hi = math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])
    for _ in range(10):
        target = area * _uniform(g, *config.crop_scale)
        ratio = math.exp(_uniform(g, log_lo, log_hi))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=g))
            left = int(torch.randint(0, width - w + 1, (), generator=g))
            return top, left, h, w
    return 0, 0, height, width


def augment_views(
    images: Tensor,
    config: ImageViewsConfig,
    num_views: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``num_views`` random views of every image: ``[V, N, C, H, W]`` (same size as the input).

    Each view of each image draws its own crop, flip, jitter and blur from ``generator`` (the
    global RNG if None), so a seeded generator gives the same views on every device.
    """
    from torchvision.transforms.v2 import functional as TF

    n, c, h, w = images.shape
    views = []
    for _ in range(num_views):
        out = []
        for i in range(n):
            x = images[i]
            top, left, ch, cw = _crop_box(h, w, config, generator)
            x = TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=True)
            if float(torch.rand((), generator=generator)) < config.flip_prob:
                x = TF.horizontal_flip(x)
            if float(torch.rand((), generator=generator)) < config.jitter_prob:
                b = _uniform(generator, 1 - config.brightness, 1 + config.brightness)
                k = _uniform(generator, 1 - config.contrast, 1 + config.contrast)
                x = TF.adjust_brightness(x, b)
                x = TF.adjust_contrast(x, k) if c in (1, 3) else x
            if float(torch.rand((), generator=generator)) < config.blur_prob:
                kernel = max(3, (min(h, w) // 10) | 1)
                sigma = _uniform(generator, 0.1, 2.0)
                x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
            out.append(x.clamp(0.0, 1.0))
        views.append(torch.stack(out))
    return torch.stack(views)


__all__ = [
    "BUILTIN_DIGITS",
    "ImageBatch",
    "ImageError",
    "ImageSet",
    "ImageViewsConfig",
    "augment_views",
    "digits_images",
    "image_patches",
    "load_image_folder",
    "patchify",
]
