import pytest
import torch

from speechssl.core.masking import (
    SpanMaskConfig,
    SpanMasker,
    compute_block_mask,
    compute_channel_mask,
    compute_span_mask,
    expected_masked_fraction,
)
from speechssl.errors import ConfigError


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of runs of True in a 1-D bool tensor."""
    runs, cur = [], 0
    for v in row.tolist():
        if v:
            cur += 1
        elif cur:
            runs.append(cur)
            cur = 0
    if cur:
        runs.append(cur)
    return runs


def test_span_mask_fraction_matches_expectation():
    gen = torch.Generator().manual_seed(1)
    mask = compute_span_mask((64, 2000), 0.65, 10, require_same_masks=False, generator=gen)
    expected = expected_masked_fraction(0.65, 10, 2000)
    assert abs(mask.float().mean().item() - expected) < 0.02
    # spans are whole: every run of masked frames is at least one span long
    assert min(min(_runs(r)) for r in mask) >= 10


def test_span_mask_respects_padding_and_equalises_counts():
    gen = torch.Generator().manual_seed(2)
    lengths = torch.tensor([300, 120, 57, 300])
    padding = torch.arange(300).unsqueeze(0) >= lengths.unsqueeze(1)
    mask = compute_span_mask((4, 300), 0.8, 10, min_masks=2, padding_mask=padding, generator=gen)
    assert not (mask & padding).any()
    counts = mask.sum(dim=1)
    assert (counts == counts[0]).all() and counts[0] > 0
    free = compute_span_mask(
        (4, 300), 0.8, 10, padding_mask=padding, require_same_masks=False, generator=gen
    )
    assert not (free & padding).any()
    assert free.sum(dim=1)[0] > free.sum(dim=1)[2]  # longer utterances get more masking


def test_min_masks_and_short_sequences():
    gen = torch.Generator().manual_seed(3)
    mask = compute_span_mask(
        (8, 100), 0.0, 10, min_masks=2, require_same_masks=False, generator=gen
    )
    assert (mask.sum(dim=1) >= 10).all()
    # sequences shorter than a span get a clipped span, never out of range
    padding = torch.arange(20).unsqueeze(0) >= torch.tensor([[4], [20]])
    short = compute_span_mask(
        (2, 20), 0.5, 10, min_masks=1, padding_mask=padding, require_same_masks=False, generator=gen
    )
    assert short[0, :4].all() and not short[0, 4:].any()
    empty = compute_span_mask((3, 0), 0.5, 10)
    assert empty.shape == (3, 0)


def test_span_mask_reproducible_with_generator():
    a = compute_span_mask((4, 500), 0.65, 10, generator=torch.Generator().manual_seed(7))
    b = compute_span_mask((4, 500), 0.65, 10, generator=torch.Generator().manual_seed(7))
    c = compute_span_mask((4, 500), 0.65, 10, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_mask_config_is_a_config_error():
    with pytest.raises(ConfigError):
        compute_span_mask((2, 10), 1.5, 10)
    with pytest.raises(ConfigError):
        compute_span_mask((2, 10), 0.5, 0)


def test_channel_mask_shape_and_spans():
    gen = torch.Generator().manual_seed(4)
    mask = compute_channel_mask((16, 256), 0.3, 16, generator=gen)
    assert mask.shape == (16, 256) and mask.any()
    assert min(min(_runs(r)) for r in mask if r.any()) >= 16


def test_block_mask_exact_count_and_rectangles():
    gen = torch.Generator().manual_seed(5)
    mask = compute_block_mask(8, (14, 14), 0.4, block_size=(3, 4), generator=gen)
    assert mask.shape == (8, 196)
    assert (mask.sum(dim=1) == round(0.4 * 196)).all()
    raw = compute_block_mask(8, (14, 14), 0.4, block_size=(3, 4), exact_count=False, generator=gen)
    grid = raw.view(8, 14, 14)
    # every masked patch lies in a fully masked 3x4 rectangle
    for img in grid:
        for r, c in img.nonzero().tolist():
            found = any(
                img[r0 : r0 + 3, c0 : c0 + 4].all()
                and img[r0 : r0 + 3, c0 : c0 + 4].shape == (3, 4)
                for r0 in range(max(0, r - 2), r + 1)
                for c0 in range(max(0, c - 3), c + 1)
            )
            assert found


def test_span_masker_replaces_only_masked_frames():
    masker = SpanMasker(8, SpanMaskConfig(mask_prob=0.5, mask_length=3, min_masks=1))
    x = torch.randn(2, 30, 8)
    out, mask = masker(x, None, generator=torch.Generator().manual_seed(0))
    assert mask.any()
    assert torch.equal(out[~mask], x[~mask])
    assert torch.allclose(out[mask], masker.mask_embedding.expand(int(mask.sum()), 8))
    out.sum().backward()
    assert masker.mask_embedding.grad is not None
