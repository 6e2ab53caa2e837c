"""Masking for masked-prediction SSL: 1-D spans over time, channels, and 2-D blocks over grids.

Everything here is vectorised over the batch (no Python loop over utterances) and takes an
optional ``torch.Generator`` so masks are reproducible. Semantics follow wav2vec 2.0 /
HuBERT (fairseq ``compute_mask_indices`` with ``mask_type="static"``):

* each sequence of ``L`` real frames gets ``num_spans = floor(mask_prob * L / span + u)``
  spans (``u ~ U[0, 1)`` gives probabilistic rounding), at least ``min_masks``;
* span starts are distinct and uniformly chosen among the positions where a whole span
  fits; spans may overlap, so the masked fraction is below ``mask_prob``;
* padding is never masked;
* with ``require_same_masks`` every sequence of the batch ends with the same number of
  masked frames (the smallest count; extra masked frames are unmasked at random), as
  fairseq does by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechssl.errors import ConfigError


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    # sample on the generator's device, then move: a CPU generator then gives the same masks
    # on every device
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _rank_within_rows(scores: Tensor) -> Tensor:
    """``[N, S]`` rank of each entry within its row by descending score (0 = largest)."""
    order = scores.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def keep_random_subset(
    mask: Tensor, counts: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Keep ``counts[n]`` randomly chosen True entries of each row of ``mask`` (``[N, S]``).

    Rows with fewer True entries than ``counts[n]`` are returned unchanged.
    """
    scores = _rand(tuple(mask.shape), generator, mask.device)
    scores = torch.where(mask, scores, torch.full_like(scores, -1.0))
    return mask & (_rank_within_rows(scores) < counts.unsqueeze(1))


def fill_to_count(
    mask: Tensor,
    counts: Tensor,
    allowed: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Add randomly chosen entries (within ``allowed``) to rows of ``mask`` until each row has
    ``counts[n]`` True entries (or every allowed entry is True)."""
    need = (counts - mask.sum(dim=1)).clamp(min=0)
    free = ~mask if allowed is None else (~mask & allowed)
    return mask | keep_random_subset(free, need, generator)


def compute_span_mask(
    shape: tuple[int, int],
    mask_prob: float,
    span_length: int,
    *,
    min_masks: int = 0,
    padding_mask: Tensor | None = None,
    require_same_masks: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random span mask over time.

    Args:
        shape: ``(N, S)`` batch size and number of frames.
        mask_prob: fraction of frames to mask before overlaps (0.65 wav2vec 2.0, 0.8 HuBERT).
        span_length: frames per span (10 in both papers).
        min_masks: minimum number of spans per sequence (2 in fairseq's pretraining).
        padding_mask: ``[N, S]`` bool, True at padding; padding is never masked.
        require_same_masks: equalise the masked count over the batch (fairseq default).
        generator: RNG for reproducible masks.
        device: device of the result (default: that of ``padding_mask`` or CPU).

    Returns:
        ``[N, S]`` bool, True where the frame is masked.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ConfigError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span_length < 1:
        raise ConfigError(f"mask span length must be >= 1, got {span_length}")
    n, s = shape
    if device is None:
        device = padding_mask.device if padding_mask is not None else torch.device("cpu")
    device = torch.device(device)
    if padding_mask is None:
        lengths = torch.full((n,), s, dtype=torch.long, device=device)
    else:
        if tuple(padding_mask.shape) != (n, s):
            raise ValueError(f"padding_mask {tuple(padding_mask.shape)} does not match {shape}")
        lengths = (~padding_mask.to(device)).sum(dim=1)
    if n == 0 or s == 0 or (mask_prob == 0.0 and min_masks == 0):
        return torch.zeros((n, s), dtype=torch.bool, device=device)

    # a span fits at starts 0 .. L - span; sequences shorter than a span get one clipped span
    num_starts = (lengths - span_length + 1).clamp(min=1)
    jitter = _rand((n,), generator, device)
    num_spans = torch.floor(mask_prob * lengths.double() / span_length + jitter.double()).long()
    num_spans = num_spans.clamp(min=min_masks)
    num_spans = torch.minimum(num_spans, num_starts)
    num_spans = torch.where(lengths > 0, num_spans, torch.zeros_like(num_spans))

    positions = torch.arange(s, device=device)
    start_ok = positions.unsqueeze(0) < num_starts.unsqueeze(1)
    starts = keep_random_subset(start_ok, num_spans, generator)

    # dilate starts into spans: frame t is masked if a start lies in (t - span, t]
    csum = torch.nn.functional.pad(starts.long().cumsum(dim=1), (1, 0))
    lo = (positions + 1 - span_length).clamp(min=0)
    covered = csum[:, positions + 1] - csum[:, lo]
    mask = (covered > 0) & (positions.unsqueeze(0) < lengths.unsqueeze(1))

    if require_same_masks and n > 1:
        counts = mask.sum(dim=1)
        target = counts.min().expand(n)
        mask = keep_random_subset(mask, target, generator)
    return mask


def compute_channel_mask(
    shape: tuple[int, int],
    mask_prob: float,
    span_length: int,
    *,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random span mask over feature channels, one per sequence: ``[N, D]`` bool.

    Broadcast over time by the caller (``x.masked_fill(mask[:, None, :], 0)``), as in
    wav2vec 2.0 fine-tuning's channel masking.
    """
    return compute_span_mask(
        shape,
        mask_prob,
        span_length,
        min_masks=min_masks,
        require_same_masks=False,
        generator=generator,
        device=device,
    )


def compute_block_mask(
    batch_size: int,
    grid: tuple[int, int],
    mask_prob: float,
    *,
    block_size: tuple[int, int] = (3, 3),
    exact_count: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random 2-D block mask over an ``H x W`` patch grid, flattened row-major: ``[N, H*W]``.

    Block top-left corners are drawn uniformly among positions where a ``block_size`` block
    fits, ``mask_prob * H * W / (bh * bw)`` of them per image (probabilistic rounding), and
    dilated into rectangles (the 2-D analogue of span masking). With ``exact_count`` every
    image ends with exactly ``round(mask_prob * H * W)`` masked patches: overlaps are
    topped up with patches adjacent to existing blocks first, then anywhere, and excess
    is removed at random, so a batch can be packed without padding.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ConfigError(f"mask_prob must be in [0, 1], got {mask_prob}")
    h, w = grid
    bh, bw = min(block_size[0], h), min(block_size[1], w)
    if bh < 1 or bw < 1:
        raise ConfigError(f"block_size must be positive, got {block_size}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    n = batch_size
    target = round(mask_prob * h * w)
    if n == 0 or target == 0:
        return torch.zeros((n, h * w), dtype=torch.bool, device=device)

    rows_ok = torch.arange(h, device=device) <= h - bh
    cols_ok = torch.arange(w, device=device) <= w - bw
    corner_ok = (rows_ok[:, None] & cols_ok[None, :]).reshape(1, -1).expand(n, -1)
    num_corners = int(corner_ok[0].sum())
    jitter = _rand((n,), generator, device)
    num_blocks = torch.floor(mask_prob * h * w / (bh * bw) + jitter).long().clamp(max=num_corners)
    corners = keep_random_subset(corner_ok, num_blocks, generator).view(n, 1, h, w)

    # a block covers (r, c) .. (r + bh - 1, c + bw - 1): dilate corners down and right
    padded = torch.nn.functional.pad(corners.float(), (bw - 1, 0, bh - 1, 0))
    mask = torch.nn.functional.max_pool2d(padded, (bh, bw), stride=1).view(n, h * w) > 0
    if exact_count:
        counts = torch.full((n,), target, dtype=torch.long, device=device)
        grown = (
            torch.nn.functional.max_pool2d(
                mask.view(n, 1, h, w).float(), 3, stride=1, padding=1
            ).view(n, h * w)
            > 0
        )
        mask = fill_to_count(mask, counts, allowed=grown, generator=generator)
        mask = fill_to_count(mask, counts, generator=generator)
        mask = keep_random_subset(mask, counts, generator)
    return mask


def expected_masked_fraction(mask_prob: float, span_length: int, num_frames: int) -> float:
    """Expected fraction of masked frames for span masking without padding (overlaps
    included), ignoring boundary effects: ``1 - (1 - p / span) ** span``."""
    if num_frames <= 0:
        return 0.0
    return 1.0 - math.pow(1.0 - mask_prob / span_length, span_length)


@dataclass(kw_only=True)
class SpanMaskConfig:
    """Time and channel masking applied to encoder inputs during pretraining."""

    mask_prob: float = 0.65
    """Fraction of frames chosen as span starts times span length (before overlaps)."""
    mask_length: int = 10
    """Frames per masked span."""
    min_masks: int = 2
    """Minimum number of spans per utterance."""
    require_same_masks: bool = True
    """Equalise the masked count over the batch (fairseq's default)."""
    channel_prob: float = 0.0
    """Channel (feature) masking probability; 0 disables it."""
    channel_length: int = 10
    """Channels per masked channel span."""


class SpanMasker(nn.Module):
    """Replaces masked frames with a learned embedding and zeroes masked channels.

    Args:
        dim: feature dimension of the frames it masks.
        config: mask settings.
    """

    def __init__(self, dim: int, config: SpanMaskConfig) -> None:
        super().__init__()
        self.config = config
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())

    def compute_mask(
        self, x: Tensor, padding_mask: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[N, S]`` time mask for ``x`` (``[N, S, D]``)."""
        c = self.config
        return compute_span_mask(
            (x.shape[0], x.shape[1]),
            c.mask_prob,
            c.mask_length,
            min_masks=c.min_masks,
            padding_mask=padding_mask,
            require_same_masks=c.require_same_masks,
            generator=generator,
            device=x.device,
        )

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mask ``x`` (``[N, S, D]``); returns ``(masked x, time mask [N, S])``.

        A given ``mask`` is used as is (for parity tests and teacher-forced masks).
        """
        if mask is None:
            mask = self.compute_mask(x, padding_mask, generator)
        x = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        c = self.config
        if c.channel_prob > 0 and self.training:
            channel = compute_channel_mask(
                (x.shape[0], x.shape[2]),
                c.channel_prob,
                c.channel_length,
                generator=generator,
                device=x.device,
            )
            x = x.masked_fill(channel.unsqueeze(1), 0.0)
        return x, mask


@dataclass(kw_only=True)
class BlockMaskConfig:
    """2-D block masking of patch grids (the image counterpart of :class:`SpanMaskConfig`)."""

    mask_prob: float = 0.6
    """Fraction of the grid's patches to mask (exactly, with ``exact_count``)."""
    block_size: tuple[int, int] = (2, 2)
    """Height and width of each masked block, in patches."""
    exact_count: bool = True
    """Mask exactly ``round(mask_prob * H * W)`` patches per image."""

    def __post_init__(self) -> None:
        self.block_size = tuple(int(v) for v in self.block_size)  # type: ignore[assignment]
        if len(self.block_size) != 2 or min(self.block_size) < 1:
            raise ConfigError(f"block_size must be two positive ints, got {self.block_size}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ConfigError(f"mask_prob must be in [0, 1], got {self.mask_prob}")


class BlockMasker(nn.Module):
    """Replaces the patches of random 2-D blocks with a learned embedding.

    Args:
        dim: feature dimension of the patch frames.
        config: mask settings.
    """

    def __init__(self, dim: int, config: BlockMaskConfig) -> None:
        super().__init__()
        self.config = config
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())

    def compute_mask(
        self,
        batch_size: int,
        grid: tuple[int, int],
        device: torch.device,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[N, H * W]`` bool mask, True = masked."""
        c = self.config
        return compute_block_mask(
            batch_size,
            grid,
            c.mask_prob,
            block_size=c.block_size,
            exact_count=c.exact_count,
            generator=generator,
            device=device,
        )

    def forward(
        self,
        x: Tensor,
        grid: tuple[int, int],
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mask ``x [N, H * W, D]`` (row-major patches); returns ``(masked x, mask [N, H * W])``."""
        if x.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{x.shape[1]} patches do not form a {grid[0]}x{grid[1]} grid")
        if mask is None:
            mask = self.compute_mask(x.shape[0], grid, x.device, generator)
        x = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(x.dtype), x)
        return x, mask
