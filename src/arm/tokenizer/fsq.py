"""Finite Scalar Quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple",
arXiv 2309.15505), the quantizer of the ARM tokenizer (ARM paper §1: 16 dims x 2 levels = 65,536 codes).

Each of the ``d`` channels is bounded with a shifted, scaled tanh so that rounding yields exactly ``levels[i]``
integer values, rounded with a straight-through estimator, and divided by ``levels[i] // 2`` so that codes lie
in [-1, 1]. There is no learned codebook: the codebook is the product grid, ``prod(levels)`` codes, and a code's
index is its mixed-radix number (channel 0 the least significant digit).

Bounding, for a channel with ``L`` levels (FSQ paper, App. A.1):
    half_l = (L - 1) (1 + eps) / 2,   offset = 0.5 if L is even else 0,   shift = atanh(offset / half_l)
    bound(z) = tanh(z + shift) * half_l - offset
For odd ``L`` the range (-half_l, half_l) rounds to {-(L-1)/2 .. (L-1)/2}. For even ``L`` the half-step offset
moves it to (-L/2 - e, L/2 - 1 + e), which rounds to {-L/2 .. L/2 - 1}: still ``L`` values, so the grid of an
even level is not symmetric (2 levels give codes {-1, 0}). ``shift`` makes ``bound(0) == 0``.

Deliberate choices:
- ``(1 + eps)`` with ``atanh`` for the shift (the form of the widely used PyTorch port), rather than the
  reference's ``(1 - eps)`` with ``tan``: ``bound(0) = 0`` exactly and both extreme levels stay reachable.
- Everything runs in float32 with autocast disabled: bf16 cannot represent the rounding boundaries finely
  enough, and codes must be bit-identical however the surrounding model is cast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_EPS = 1e-3


class FSQ(nn.Module):
    """Quantize (..., d) to the product grid given by ``levels`` (one entry per channel, each >= 2)."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        levels = [int(v) for v in levels]
        if not levels or min(levels) < 2:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 2, got {levels}")
        self.levels = levels
        self.dim = len(levels)
        self.codebook_size = math.prod(levels)
        lv = torch.tensor(levels, dtype=torch.float32)
        half_l = (lv - 1) * (1 + _EPS) / 2
        offset = torch.where(lv.remainder(2) == 0, 0.5, 0.0)
        # Buffers are pure functions of ``levels``: not persistent, never checkpoint state.
        self.register_buffer("_half_l", half_l, persistent=False)  # (d,)
        self.register_buffer("_offset", offset, persistent=False)  # (d,)
        self.register_buffer("_shift", torch.atanh(offset / half_l), persistent=False)  # (d,)
        self.register_buffer("_half_width", torch.floor(lv / 2), persistent=False)  # (d,)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)  # (d,)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), dim=0)
        self.register_buffer("_basis", basis, persistent=False)  # (d,) mixed-radix place values

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"FSQ with {self.dim} levels expects last dim {self.dim}, got {x.shape[-1]}")

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """The tanh bound (before rounding), in level units: channel i spans about ``levels[i]`` integers."""
        self._check(z)
        return torch.tanh(z.float() + self._shift) * self._half_l - self._offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (..., d) any float dtype -> normalised codes (..., d) float32 in [-1, 1]."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            bounded = self.bound(z.float())  # (..., d)
            # Straight-through: value = the rounded grid point, gradient = bound's. Written as
            # round(b) + (b - b.detach()) rather than b + (round(b) - b).detach() because x - x is exactly 0 in
            # floating point, while b + (r - b) can miss r by an ulp and leave the code off the grid.
            quantized = torch.round(bounded).detach() + (bounded - bounded.detach())
            return quantized / self._half_width

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised codes (..., d) on the grid -> code indices (...) int64 in [0, codebook_size)."""
        self._check(codes)
        digits = torch.round(codes.float() * self._half_width + self._half_width).long()  # (..., d) in [0, L)
        return (digits * self._basis).sum(dim=-1)

    def indices_to_digits(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (...) integer -> each channel's level (..., d) int64, channel i in [0, levels[i])."""
        return (indices.long().unsqueeze(-1) // self._basis) % self._levels

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (...) integer -> normalised codes (..., d) float32."""
        return (self.indices_to_digits(indices).float() - self._half_width) / self._half_width

    def extra_repr(self) -> str:
        return f"levels={self.levels}, codebook_size={self.codebook_size}"
