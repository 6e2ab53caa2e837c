"""Patch-embedding front end for images -> the same `Frames` the speech front ends emit.

An image ``[C, H, W]`` is cut into non-overlapping ``p x p`` patches in row-major order
(:func:`patchify`: ``[H/p * W/p, C * p * p]``, channel-major inside a patch); each patch is
projected linearly to the encoder dim (the ViT patch embedding, a conv with kernel = stride
= ``p`` written as a matrix product). Positions (fixed 2-D sine-cosine or learned) are added
by :meth:`PatchFrontend.add_positions` *after* masking, as in BEiT/MAE: a masked patch is the
mask embedding plus its position, so the encoder (which runs without its convolutional
position embedding) knows where each masked patch is. The raw patch vectors are returned
too: they are what k-means clusters into patch units (HuBERT's targets, applied to images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechssl.core.frames import Frames
from speechssl.core.positions import sincos_2d
from speechssl.data.images import patchify  # the patch layout is defined with the image data
from speechssl.errors import ConfigError

POSITIONS = ("sincos", "learned", "none")


@dataclass(kw_only=True)
class PatchEmbeddingConfig:
    """Image geometry and patch embedding."""

    image_size: tuple[int, int] = (224, 224)
    """Height and width of the input images."""
    channels: int = 3
    """Image channels."""
    patch_size: int = 16
    """Side of a square patch, in pixels (must divide the image size)."""
    position: str = "sincos"
    """``sincos`` (fixed 2-D), ``learned`` (one vector per patch) or ``none``."""

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        if len(self.image_size) != 2 or self.patch_size < 1:
            raise ConfigError(
                f"image_size must be (H, W) and patch_size >= 1: {self.image_size}, {self.patch_size}"
            )
        if any(s % self.patch_size for s in self.image_size):
            raise ConfigError(
                f"patch_size {self.patch_size} does not divide image_size {self.image_size}"
            )
        if self.position not in POSITIONS:
            raise ConfigError(f"position must be one of {POSITIONS}, got {self.position!r}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size * self.patch_size


def unpatchify(patches: Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`."""
    n = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(n, gh, gw, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, channels, gh * p, gw * p)


@dataclass
class PatchFrontendOutput:
    """What the patch front end hands the rest of the model.

    Attributes:
        frames: embedded patches ``[N, P, D]`` without positions (no padding:
            ``padding_mask`` is None); mask them, then call ``add_positions``.
        patches: raw patch vectors ``[N, P, C * p * p]`` (k-means input).
        grid: ``(H / p, W / p)``.
    """

    frames: Frames
    patches: Tensor
    grid: tuple[int, int]


class PatchFrontend(nn.Module):
    """Images ``[N, C, H, W]`` -> patch frames (see the module docstring)."""

    def __init__(
        self, config: PatchEmbeddingConfig, out_dim: int, dropout_input: float = 0.0
    ) -> None:
        super().__init__()
        self.config = config
        self.projection = nn.Linear(config.patch_dim, out_dim)
        self.dropout_input = nn.Dropout(dropout_input)
        self.position: nn.Parameter | None = None
        if config.position == "learned":
            self.position = nn.Parameter(torch.zeros(config.num_patches, out_dim))
            nn.init.normal_(self.position, std=0.02)
        elif config.position == "sincos":
            self.register_buffer(
                "fixed_position", sincos_2d(config.grid, out_dim), persistent=False
            )

    fixed_position: Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    def forward(self, images: Tensor) -> PatchFrontendOutput:
        c = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, *c.image_size):
            raise ValueError(
                f"images must be [N, {c.channels}, {c.image_size[0]}, {c.image_size[1]}], "
                f"got {tuple(images.shape)}"
            )
        patches = patchify(images, c.patch_size)
        return PatchFrontendOutput(
            frames=Frames(self.projection(patches), None), patches=patches, grid=c.grid
        )

    def add_positions(self, x: Tensor) -> Tensor:
        """``[N, P, D]`` (masked or not) plus the position of each patch, then input dropout."""
        if self.position is not None:
            x = x + self.position.to(x.dtype)
        elif self.config.position == "sincos":
            x = x + self.fixed_position.to(x.dtype)
        return self.dropout_input(x)


__all__ = [
    "PatchEmbeddingConfig",
    "PatchFrontend",
    "PatchFrontendOutput",
    "patchify",
    "unpatchify",
]
