"""Multi-head self-attention with grouped-query attention (Ainslie et al. 2023, "GQA"), as in Qwen2/Llama.

``num_kv_heads`` key/value heads are shared by groups of ``num_heads // num_kv_heads`` query heads; query head
``h`` reads kv head ``h // group`` (the Hugging Face ``repeat_kv`` layout). Optional bias on q/k/v (Qwen2 has
it, Llama not), no bias on the output projection. Rotary embedding, when given, rotates q and k after the
projection. The product itself is ``torch.nn.functional.scaled_dot_product_attention``.

Masks: ``causal`` restricts position t to keys <= t; ``mask`` (B, T) marks real tokens (True) versus padding
(False) and hides padded keys. A query row whose keys are all hidden would be undefined; with right padding and a
causal mask that never happens for real tokens, and padded positions' outputs are meant to be ignored.

Simplification: no KV cache yet; ``offset`` only shifts rotary positions (the AR stage adds the cache).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arm.nn.rope import apply_rotary


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, qkv_bias: bool = False,
                 causal: bool = True) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} must divide num_heads {num_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.q = nn.Linear(dim, num_heads * self.head_dim, bias=qkv_bias)
        self.k = nn.Linear(dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v = nn.Linear(dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.out = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, T, D); ``rope`` the (cos, sin) tables (T, Dh); ``mask`` (B, T) bool, True = real token."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)  # (B, H, T, Dh)
            v = v.repeat_interleave(group, dim=1)
        attn_mask, is_causal = None, self.causal
        if mask is not None:
            # SDPA takes either is_causal or a mask, not both: fold causality into the boolean mask.
            attn_mask = mask[:, None, None, :].bool()  # (B, 1, 1, T) keys
            if self.causal:
                tri = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                attn_mask = attn_mask & tri  # (B, 1, T, T)
            is_causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
