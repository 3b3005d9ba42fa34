"""FSQ (Mentzer et al. 2023): grid, level counts, index round trips, straight-through gradient, fp32 under autocast."""

from __future__ import annotations

import itertools

import pytest
import torch

from arm.tokenizer.fsq import FSQ

SMALL = [[2], [3], [4], [5], [2, 3], [8, 5, 5], [4, 3, 2, 6]]


def _grid(levels: list[int]) -> list[torch.Tensor]:
    """The allowed normalised values of each channel, built independently of the module."""
    return [torch.tensor([(k - L // 2) / (L // 2) for k in range(L)]) for L in levels]


def test_codebook_size_presets():
    assert FSQ([2] * 16).codebook_size == 65_536
    assert FSQ([8, 8, 8, 5, 5, 5]).codebook_size == 64_000
    with pytest.raises(ValueError):
        FSQ([1, 4])


@pytest.mark.parametrize("levels", SMALL)
def test_all_indices_round_trip(levels):
    fsq = FSQ(levels)
    idx = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(idx)  # (K, d)
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    # every code is distinct and on the grid, so the index map is a bijection onto the product grid
    assert len({tuple(c.tolist()) for c in codes}) == fsq.codebook_size
    expected = torch.tensor(list(itertools.product(*reversed(_grid(levels)))))  # last channel most significant
    assert torch.equal(codes, expected.flip(-1))


@pytest.mark.parametrize("levels", [[2] * 16, [8, 8, 8, 5, 5, 5], [7, 5, 5, 5, 5]])
def test_random_indices_and_codes_round_trip(levels):
    torch.manual_seed(0)
    fsq = FSQ(levels)
    idx = torch.randint(0, fsq.codebook_size, (4, 333))
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(idx)), idx)
    codes = fsq(torch.randn(4, 333, len(levels)) * 3)  # (4, 333, d)
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(codes)), codes)


@pytest.mark.parametrize("levels", [[2] * 16, [8, 8, 8, 5, 5, 5], [3, 4, 6, 7]])
def test_values_on_grid_and_level_counts(levels):
    torch.manual_seed(1)
    fsq = FSQ(levels)
    sweep = torch.linspace(-12, 12, 4001)[:, None].expand(-1, len(levels))  # (S, d)
    random = torch.randn(2000, len(levels)) * 4
    for z in (sweep, random):
        codes = fsq(z)
        assert codes.dtype == torch.float32 and codes.abs().max() <= 1
        for i, grid in enumerate(_grid(levels)):
            assert torch.isin(codes[:, i], grid).all(), f"channel {i} off the grid"
    for i, L in enumerate(levels):
        assert fsq(sweep)[:, i].unique().numel() == L
    # bound(0) == 0: zero input maps to the zero code for odd levels and to 0 (the upper middle) for even ones
    assert torch.equal(fsq(torch.zeros(1, len(levels))), torch.zeros(1, len(levels)))


def test_straight_through_gradient_equals_bound_gradient():
    torch.manual_seed(2)
    levels = [8, 5, 2, 3]
    fsq = FSQ(levels)
    z = (torch.randn(6, 7, 4) * 2).requires_grad_()
    w = torch.randn(6, 7, 4)
    (g_ste,) = torch.autograd.grad((fsq(z) * w).sum(), z)
    half_width = torch.tensor([L // 2 for L in levels], dtype=torch.float32)
    (g_bound,) = torch.autograd.grad((fsq.bound(z) / half_width * w).sum(), z)
    torch.testing.assert_close(g_ste, g_bound, rtol=0, atol=0)
    assert g_ste.abs().min() > 0  # the STE passes gradient everywhere, unlike round()


def test_fp32_exact_under_bf16_autocast():
    torch.manual_seed(3)
    fsq = FSQ([8, 8, 8, 5, 5, 5])
    z = torch.randn(3, 50, 6) * 2
    ref = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsq(z)
        # a bf16 input (from an autocast linear) is promoted, not quantized in bf16
        out_bf16_in = fsq(z.bfloat16())
    assert out.dtype == torch.float32 and out_bf16_in.dtype == torch.float32
    assert torch.equal(out, ref)
    assert torch.equal(out_bf16_in, fsq(z.bfloat16().float()))


def test_wrong_dim_raises():
    with pytest.raises(ValueError, match="expects last dim 3"):
        FSQ([2, 2, 2])(torch.randn(2, 4))
