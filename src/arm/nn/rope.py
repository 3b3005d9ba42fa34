"""Rotary position embedding (Su et al. 2021, "RoFormer"), in the Qwen2/Llama "rotate_half" convention.

A head vector is split into two halves ``(x1, x2)``; channel ``i`` of the first half and channel ``i`` of the
second half form a pair rotated by angle ``pos * theta^(-2i/d)``. This is the layout of Hugging Face Qwen2/Llama
weights (not the interleaved even/odd layout of the original paper), so imported checkpoints work unchanged.

``RotaryEmbedding`` keeps a cos/sin cache that grows on demand; ``offset`` shifts positions so that a KV-cache
decoder can rotate the new token at its absolute position.
"""

from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, Dh) by per-position angles given as ``cos``/``sin`` (T, Dh)."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary embedding of head dimension ``head_dim`` with base ``theta``."""

    def __init__(self, head_dim: int, theta: float = 10000.0, max_positions: int = 2048) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (Dh/2,)
        # Buffers are not persistent: they are a pure function of (head_dim, theta), never checkpoint state.
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("cos_cached", torch.empty(0), persistent=False)
        self.register_buffer("sin_cached", torch.empty(0), persistent=False)
        self._build(max_positions)

    def _build(self, length: int) -> None:
        pos = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(pos, self.inv_freq)  # (L, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (L, Dh): same angle for channel i and i + Dh/2
        self.cos_cached = emb.cos()
        self.sin_cached = emb.sin()

    def forward(self, length: int, offset: int = 0, dtype: torch.dtype = torch.float32
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, each (length, Dh), for positions ``offset .. offset + length - 1``."""
        end = offset + length
        if end > self.cos_cached.shape[0]:
            self._build(max(end, 2 * self.cos_cached.shape[0]))
        return self.cos_cached[offset:end].to(dtype), self.sin_cached[offset:end].to(dtype)
