"""One-token decode steps over a ``KVCache`` with the weights of a ``Transformer`` packed for speed.

A decode step feeds one token per row, so every linear is a (rows x D) matmul and per-op overhead (dispatch,
autocast's casts, views, separate q/k/v and gate/up launches) weighs as much as the arithmetic. ``PackedDecoder``
is a snapshot of a ``Transformer``'s weights taken once per sampling call:

- q, k, v become one matrix (one matmul instead of three) and gate, up another;
- the matrices are stored in ``dtype`` (bf16 is the fast path on this CPU: it halves the weight bytes every step
  reads, with no per-step cast as autocast would do), while the residual stream, RMSNorm, rotary and the attention
  over the cache stay float32 as in the eager path under autocast (the cache is float32 on the CPU, see
  ``arm.nn.kv_cache``);
- the step reuses the cache's bookkeeping (``append_mask``, ``attention_mask``, ``write``, ``advance``), so a
  prefill through ``Transformer.forward(..., cache=...)`` and steps from here mix freely.

Simplifications: a snapshot, not a view: it must be rebuilt after the weights change (the samplers build one per
call, ~10 ms for the 7M-parameter model, which is nothing next to 256 steps). Causal transformers with rotary only.
In float32 the results equal the eager cached path up to the summation order of the fused matmuls (~1e-6).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from arm.nn.attention import decode_attention
from arm.nn.kv_cache import KVCache
from arm.nn.rope import rotate_half
from arm.nn.transformer import Transformer


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of a float32 ``x`` with a float32 gain (the formula of ``arm.nn.norm.RMSNorm``)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention of one query per row as reductions, for ``torch.compile``: ``q`` (R, Hkv, group, Dh) float32,
    ``k``, ``v`` (R, Hkv, S, Dh) in the cache's dtype, ``bias`` (R, 1, 1, S) additive float32; returns
    (R, Hkv, group, Dh) float32. Compiled, the products never materialise: one loop reads each bf16 key and value
    once and accumulates in float32, while eager bf16 matmuls copy the strided cache slices every step. Measured
    on one busy core, 6 layers x 32 rows x 4 heads x 150-272 slots: ~4 ms compiled over a bf16 cache against
    ~8.4-8.8 ms for the eager float32 matmuls (the decode step is bound by reading the cache)."""
    scores = (q[:, :, :, None, :] * k[:, :, None].float()).sum(-1) * q.shape[-1] ** -0.5 + bias  # (R, Hkv, G, S)
    return (scores.softmax(-1)[..., None] * v[:, :, None].float()).sum(-2)


_COMPILED: dict[str, object] = {}


def compiled_attend_one():
    """``attend_one`` compiled once per process with dynamic shapes (the filled length grows every step)."""
    if "attend_one" not in _COMPILED:
        _COMPILED["attend_one"] = torch.compile(attend_one, dynamic=True)
    return _COMPILED["attend_one"]


class PackedDecoder:
    """Decode steps of ``body`` with its matrices packed (q|k|v, gate|up) and cast to ``dtype``."""

    @torch.no_grad()
    def __init__(self, body: Transformer, dtype: torch.dtype = torch.float32, compile_attention: bool = False
                 ) -> None:
        c = body.config
        if not c.causal or body.rotary is None:
            raise ValueError("PackedDecoder needs a causal transformer with rotary positions")
        self.body, self.dtype, self.eps = body, dtype, c.norm_eps
        self.num_heads, self.num_kv_heads = c.num_heads, c.num_kv_heads or c.num_heads
        self.head_dim = c.dim // c.num_heads
        self.layers = []
        for block in body.blocks:
            a, m = block.attn, block.mlp
            qkv_bias = (torch.cat([a.q.bias, a.k.bias, a.v.bias]).to(dtype) if a.q.bias is not None else None)
            self.layers.append((block.attn_norm.weight.float(),
                                torch.cat([a.q.weight, a.k.weight, a.v.weight]).to(dtype), qkv_bias,
                                a.out.weight.to(dtype), block.mlp_norm.weight.float(),
                                torch.cat([m.gate.weight, m.up.weight]).to(dtype), m.down.weight.to(dtype)))
        self.final_norm = body.norm.weight.float()
        self.attend = compiled_attend_one() if compile_attention else None

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """A head matrix in the snapshot's dtype (for the caller's output heads)."""
        return weight.detach().to(self.dtype)

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Final-norm hidden states (R, D) float32 of one new token per row, ``x`` (R, D) its embeddings."""
        R = x.shape[0]
        H, Hkv, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        positions = cache.append_mask(torch.ones(R, 1, dtype=torch.bool, device=x.device))  # (R, 1)
        bias = cache.attention_mask(1)  # (R, 1, 1, S) additive float32
        self.body.rotary(cache.length + 1)  # grows the tables if needed
        cos = self.body.rotary.cos_cached[positions][:, None]  # (R, 1, 1, Dh)
        sin = self.body.rotary.sin_cached[positions][:, None]
        x = x.float()
        for i, (n1, w_qkv, b_qkv, w_out, n2, w_gu, w_down) in enumerate(self.layers):
            qkv = F.linear(_rms(x, n1, self.eps).to(self.dtype), w_qkv, b_qkv).float()  # (R, (H + 2 Hkv) Dh)
            q, k, v = qkv.view(R, H + 2 * Hkv, 1, Dh).split((H, Hkv, Hkv), dim=1)  # (R, heads, 1, Dh)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            keys, values = cache.write(i, k, v)  # (R, Hkv, S, Dh)
            y = None
            if self.attend is not None:
                try:
                    y = self.attend(q.view(R, Hkv, H // Hkv, Dh), keys, values, bias)  # (R, Hkv, group, Dh)
                except Exception as error:  # no working compiler here: fall back to eager, same results
                    warnings.warn(f"compiled decode attention failed ({type(error).__name__}); using the eager "
                                  "matmuls (slower over a bf16 cache)", stacklevel=2)
                    self.attend = None
            if y is None:
                y = decode_attention(q.to(keys.dtype), keys, values, bias)  # (R, H, 1, Dh)
            x = x + F.linear(y.reshape(R, H * Dh).to(self.dtype), w_out).float()
            gate, up = F.linear(_rms(x, n2, self.eps).to(self.dtype), w_gu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w_down).float()
        cache.advance(1)
        return _rms(x, self.final_norm, self.eps)
