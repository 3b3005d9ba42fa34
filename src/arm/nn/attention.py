"""Multi-head self-attention with grouped-query attention (Ainslie et al. 2023, "GQA"), as in Qwen2/Llama.

``num_kv_heads`` key/value heads are shared by groups of ``num_heads // num_kv_heads`` query heads; query head
``h`` reads kv head ``h // group`` (the Hugging Face ``repeat_kv`` layout). Optional bias on q/k/v (Qwen2 has
it, Llama not), no bias on the output projection. Rotary embedding, when given, rotates q and k after the
projection. The product itself is ``torch.nn.functional.scaled_dot_product_attention``, except for bf16 on the
CPU without a cache (training under autocast), where two batched matmuls are ~2x faster (``matmul_attention``).

Masks: ``causal`` restricts position t to keys <= t; ``mask`` (B, T) marks real tokens (True) versus padding
(False) and hides padded keys; every query also sees its own key, so a padded query (e.g. the first slots of a
left-padded row) has a defined, ignorable output instead of an empty softmax. A prebuilt boolean mask
(B, 1, T, S) is used as given.

With a ``KVCache`` (``arm.nn.kv_cache``), keys and values are written into the cache's preallocated buffers and the
queries attend over the filled slice; ``mask`` must then be the cache's ``attention_mask`` (see ``KVCache`` for why
a decode step uses two plain matmuls instead of SDPA). Neither path copies the cache to repeat kv heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arm.nn.kv_cache import KVCache
from arm.nn.rope import apply_rotary

BF16_MATMUL_ATTENTION = True
"""Training/scoring path (no cache) under bf16 autocast on the CPU: rotate q/k in bf16 and attend with
``matmul_attention`` instead of SDPA. False restores the previous path (float32 rotary tables promote q and k, so
SDPA ran in float32); ``arm.ar.bench`` flips it to time both in one process."""


def padding_attention_mask(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, T) real-token mask -> (B, 1, T, T) boolean attention mask: valid keys (up to the query if ``causal``),
    plus each query's own key."""
    T = mask.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=mask.device)
    visible = mask[:, None, None, :].bool()  # (B, 1, 1, T) keys
    if causal:
        visible = visible & eye.cumsum(0).bool()  # lower triangle: key <= query
    return visible | eye


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query per row: ``q`` (B, H, 1, Dh) over ``k``, ``v`` (B, Hkv, S, Dh) with additive
    float ``bias`` (B, 1, 1, S). The ``H // Hkv`` query heads sharing a kv head become the rows of one matmul, so
    grouped-query attention needs no repeated keys. Scores and softmax in float32."""
    B, H, _, Dh = q.shape
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, H // Hkv, Dh) * Dh ** -0.5  # (B, Hkv, group, Dh)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() + bias  # (B, Hkv, group, S)
    weights = scores.softmax(-1).to(v.dtype)
    return torch.matmul(weights, v).reshape(B, H, 1, Dh)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     causal: bool = False) -> torch.Tensor:
    """Softmax attention as two batched matmuls, everything in ``q``'s dtype: ``q``, ``k``, ``v`` (B, H, T|S, Dh),
    ``mask`` a boolean (B or 1, 1, T, S) mask (True = visible) or None, ``causal`` for the lower triangle.

    The bf16 path on the CPU: SDPA's CPU flash kernel in bf16 took ~76 ms per layer forward + backward at
    16 x 4 heads x 256 x 64 on one core, these matmuls ~30-38 ms (its softmax computes in float32 internally
    and rounds its output to bf16, as Hugging Face's eager bf16 attention does before the product with v)."""
    B, H, T, Dh = q.shape
    S = k.shape[2]
    with torch.autocast(q.device.type, enabled=False):
        if causal:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]  # (1, 1, T, S)
        bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
            ~mask, float("-inf"))  # additive (B or 1, 1, T, S)
        if bias is None or bias.shape[0] == 1:  # one mask for every row: added inside the batched matmul
            scores = torch.baddbmm(bias.view(T, S).expand(B * H, T, S) if bias is not None else q.new_zeros(()).expand(
                B * H, T, S), q.reshape(B * H, T, Dh), k.reshape(B * H, S, Dh).transpose(1, 2),
                beta=0.0 if bias is None else 1.0, alpha=Dh ** -0.5).view(B, H, T, S)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) * Dh ** -0.5 + bias  # (B, H, T, S)
        return torch.matmul(scores.softmax(-1), v)  # (B, H, T, Dh)


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
                mask: torch.Tensor | None = None, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """``x`` (B, T, D); ``rope`` the (cos, sin) tables (T, Dh) or per row (B, 1, T, Dh); ``mask`` (B, T) bool,
        True = real token, or a prebuilt (B, 1, T, S) mask; ``cache``/``layer``: where this layer's keys go."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        v = self.v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, Dh)
        if rope is not None:
            cos, sin = rope
            if cache is None and BF16_MATMUL_ATTENTION:
                # Rotate in the projections' dtype (bf16 under autocast, as Hugging Face does): float32 tables
                # would promote q and k to float32 and send the whole attention down the float32 path.
                cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        group = self.num_heads // self.num_kv_heads
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, Hkv, S, Dh) views of the filled slice
            q = q.to(k.dtype)
            with torch.autocast(x.device.type, enabled=False):  # in the cache's dtype (see arm.nn.kv_cache)
                if T == 1:
                    y = decode_attention(q, k, v, mask)  # (B, H, 1, Dh)
                else:
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=group > 1)  # (B, H, T, Dh)
            return self.out(y.to(x.dtype).transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        if group > 1:
            k = k.repeat_interleave(group, dim=1)  # (B, H, T, Dh)
            v = v.repeat_interleave(group, dim=1)
        attn_mask, is_causal = None, self.causal
        if mask is not None:
            # SDPA takes either is_causal or a mask, not both: fold causality into the boolean mask.
            attn_mask = mask if mask.dim() == 4 else padding_attention_mask(mask, self.causal)  # (B, 1, T, T)
            is_causal = False
        if BF16_MATMUL_ATTENTION and q.device.type == "cpu" and q.dtype == torch.bfloat16:
            y = matmul_attention(q, k, v, attn_mask, is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)  # (B, H, T, Dh)
        return self.out(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
