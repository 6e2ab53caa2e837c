"""This process's selected frames as device tensors, streamed from the store or cached, with
the normalisation applied and every value checked finite on its first read."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from speechssl.errors import ItemError
from speechssl.features.store import FeatureStore
from speechssl.units.stream import Block, StoreStream


class FeatureValueError(ItemError):
    """A feature store holds a NaN or infinite value."""

    kind = "non-finite-features"


def rank_shards(store: FeatureStore, rank: int, world: int) -> list[int]:
    return [r for i, r in enumerate(store.ranks) if i % world == rank]


def check_finite(x: Tensor, block: Block, store: FeatureStore) -> None:
    """Raise a FeatureValueError naming the utterance and frame of the first NaN/inf row of
    ``x`` (the rows of ``block``). Cheap: one sum, a closer look only when it is not finite
    (which finite values can also give, by overflow)."""
    if bool(torch.isfinite(x.sum())):
        return
    bad = (~torch.isfinite(x)).any(1).nonzero().flatten()
    if bad.numel() == 0:
        return
    row = int(bad[0])
    value = x[row][~torch.isfinite(x[row])][0].item()
    seg = next(s for s in block.segments if s.start <= row < s.start + s.count)
    raise FeatureValueError(
        seg.utt,
        f"feature value {value} at frame {seg.frame0 + row - seg.start} in {store.root}; "
        "k-means needs finite features (fix or remove the utterance and dump them again)",
    )


def device_blocks(
    stream: StoreStream, device: torch.device
) -> Iterator[tuple[int, Tensor, Block | None]]:
    """``(row0, raw rows on device, block)`` of a stream, each checked finite."""
    for block in stream.blocks():
        x = torch.from_numpy(block.rows).to(device)
        check_finite(x, block, stream.store)
        yield block.row0, x, block


class FitData:
    """This rank's selected frames as device tensors: streamed, or cached after one pass.

    Every block is checked finite until one complete pass has read them all (later passes
    read the same bytes). ``mean``/``std`` (normalisation) or ``shift`` (centring while
    fitting) are applied by :meth:`normalized` and :meth:`blocks`.
    """

    def __init__(self, stream: StoreStream, device: torch.device, cache_bytes: float) -> None:
        self.stream = stream
        self.device = device
        nbytes = stream.num_frames * stream.dim * stream.np_dtype.itemsize
        self.cache_enabled = nbytes <= cache_bytes and stream.num_frames > 0
        self._cache: list[tuple[int, Tensor]] | None = None
        self._checked_all = False
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        # without normalisation the data are still centred on this shift while fitting
        # (distances do not change; see assign_nearest); centroids are shifted back at the end
        self.shift: Tensor | None = None

    def raw_blocks(self) -> Iterator[tuple[int, Tensor, Block | None]]:
        """``(row0, raw block on device, Block or None when cached)``."""
        if self._cache is not None:
            for row0, t in self._cache:
                yield row0, t, None
            return
        filling: list[tuple[int, Tensor]] | None = [] if self.cache_enabled else None
        for block in self.stream.blocks():
            t = torch.from_numpy(block.rows)
            if self.device.type == "cuda":
                t = t.pin_memory().to(self.device, non_blocking=True)
            if not self._checked_all:
                check_finite(t, block, self.stream.store)
            if filling is not None:
                filling.append((block.row0, t))
            yield block.row0, t, block
        self._checked_all = True
        if filling is not None:
            self._cache = filling

    def normalized(self, raw: Tensor) -> Tensor:
        x = raw.to(torch.float32)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        elif self.shift is not None:
            x = x - self.shift
        return x

    def blocks(self) -> Iterator[tuple[int, Tensor]]:
        for row0, raw, _ in self.raw_blocks():
            yield row0, self.normalized(raw)
