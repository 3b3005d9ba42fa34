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
  prefill through ``Transformer.forward(..., cache=...)`` and steps from here mix freely;
- ``compile_step``: the whole step (every layer: norms, rotary, attention over the cache, MLP, final norm) is one
  ``torch.compile``d graph, ``decode_step``, instead of ~20 eager ops per layer, so Python dispatch vanishes and
  inductor fuses the pointwise work around the matmuls. One graph serves every step: the filled length is a
  dynamic size, and the graph only reads the cache (the new token attends to its own key, merged into the
  softmax; ``KVCache.append_token`` writes it afterwards). ``compile_attention`` alone compiles only the attention.

Measured side by side in one process (reference config of ``arm.ar.bench``: 6 layers, d=256, 16 x 256 tokens with
CFG, so 32 rows, bf16, 2-core CPU): with 2 threads on an idle machine ~2,900-3,300 against ~2,000-2,260 tokens/s
for compiled attention alone (1.35-1.5x); with 1 thread 1.2-1.3x. What is left of a 2-thread step (~5.3 ms) is
the 25 small matmuls (~2.9 ms; bf16 at 32 rows barely gains from the second thread) and reading the cache
(~2.1 ms, near the memory's streaming rate). ``mode="max-autotune-no-cudagraphs"`` was slower (~9.1-9.7 against
~8.0 ms a step, 1 thread), and so was a static graph attending over all the cache's slots under its mask (~8.8
against ~8.0 ms): the step is bound by the bytes it reads, which a static length nearly doubles on average.

Simplifications: a snapshot, not a view: it must be rebuilt after the weights change (the samplers build one per
call, ~10 ms for the 7M-parameter model, which is nothing next to 256 steps). Causal transformers with rotary only.
In float32 the results equal the eager cached path up to the summation order of the fused matmuls (~1e-6), the
compiled step's too (its float32 draws equalled the eager path's in all 16 x 256 tokens, measured at temperature 1
and 0). In bf16 the summation orders differ (fused kernels, the merged softmax) and a 1-ulp change of a bf16
activation moves a draw (the random reference model's distribution is nearly flat over 3,072 codes), so its draws
differ from the compiled-attention path's about as much as either differs from float32's.
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


def attend_with_self(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """``attend_one`` over the filled slots ``keys``, ``values`` (R, Hkv, S, Dh) plus the new token's own ``k``,
    ``v`` (R, Hkv, Dh), which are not in the cache yet: one softmax over S + 1 scores, its normaliser merged from
    the two parts (the max and sum of flash attention's online softmax, Dao et al. 2022, "FlashAttention", §3.1)
    so that the cache is only read. ``q`` (R, Hkv, group, Dh) float32, ``bias`` (R, 1, 1, S); returns
    (R, Hkv, group, Dh) float32."""
    scale = q.shape[-1] ** -0.5
    old = (q[:, :, :, None, :] * keys[:, :, None].float()).sum(-1) * scale + bias  # (R, Hkv, G, S)
    own = (q * k[:, :, None].float()).sum(-1, keepdim=True) * scale  # (R, Hkv, G, 1)
    top = torch.maximum(old.amax(-1, keepdim=True), own)  # a finite max: the token always sees itself
    p_old, p_own = (old - top).exp(), (own - top).exp()
    y = (p_old[..., None] * values[:, :, None].float()).sum(-2) + p_own * v[:, :, None].float()  # (R, Hkv, G, Dh)
    return y / (p_old.sum(-1, keepdim=True) + p_own)


def decode_step(x: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                bias: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, layers: list[tuple],
                final_norm: torch.Tensor, eps: float, num_heads: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step of every layer as a pure function, for ``torch.compile`` to turn into one graph.

    ``x`` (R, D) embeddings of the new tokens, ``positions`` (R,) their rotary positions, ``keys``, ``values``
    (L, R, Hkv, S, Dh) and ``bias`` (R, S) the filled slots (``KVCache.filled``), ``layers`` as in
    ``PackedDecoder``. Returns the final-norm hidden states (R, D) float32 and the new token's keys and values
    (L, R, Hkv, Dh) in the cache's dtype, for the caller to append (``KVCache.append_token``): the graph writes
    nothing, since writing into a graph input at a position that changes every step either recompiles
    (a Python-int slot) or makes the compiled graph copy the whole cache back (a tensor slot; ~6x slower, measured).
    """
    R, H, Hkv, Dh = x.shape[0], num_heads, keys.shape[2], keys.shape[-1]
    cos, sin = cos_table[positions][:, None], sin_table[positions][:, None]  # (R, 1, Dh)
    bias = bias[:, None, None, :]  # (R, 1, 1, S)
    new_keys, new_values = [], []
    for i, (n1, w_qkv, b_qkv, w_out, n2, w_gu, w_down) in enumerate(layers):
        dtype = w_qkv.dtype
        qkv = F.linear(_rms(x, n1, eps).to(dtype), w_qkv, b_qkv).float().view(R, H + 2 * Hkv, Dh)
        q, k, v = qkv.split((H, Hkv, Hkv), dim=1)  # (R, heads, Dh)
        q = (q * cos + rotate_half(q) * sin).view(R, Hkv, H // Hkv, Dh)
        k = (k * cos + rotate_half(k) * sin).to(keys.dtype)  # rounded as the cache will hold it
        v = v.to(values.dtype)
        new_keys.append(k)
        new_values.append(v)
        y = attend_with_self(q, k, v, keys[i], values[i], bias)  # (R, Hkv, group, Dh)
        x = x + F.linear(y.reshape(R, H * Dh).to(dtype), w_out).float()
        gate, up = F.linear(_rms(x, n2, eps).to(dtype), w_gu).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, w_down).float()
    return _rms(x, final_norm, eps), torch.stack(new_keys), torch.stack(new_values)


_COMPILED: dict[str, object] = {}


def compiled_attend_one():
    """``attend_one`` compiled once per process with dynamic shapes (the filled length grows every step)."""
    if "attend_one" not in _COMPILED:
        _COMPILED["attend_one"] = torch.compile(attend_one, dynamic=True)
    return _COMPILED["attend_one"]


def compiled_decode_step():
    """``decode_step`` compiled once per process. Only the filled length is marked dynamic (by the caller, on its
    inputs): other sizes are specialised on first use and made dynamic by torch's automatic dynamic shapes only
    if they change (another batch size: one recompilation). The weights are graph inputs, not constants, so a
    new snapshot (new weights, same shapes) reuses the graph. ``emulate_precision_casts`` keeps the bf16 roundings
    of the eager ops inside fused kernels (inductor would otherwise carry float32 through them): no slower, and
    closer to the other paths' draws (31% against 24% of tokens equal to the compiled-attention path's, measured
    at the bench's config; exact equality is out of reach, see the module docstring)."""
    if "decode_step" not in _COMPILED:
        _COMPILED["decode_step"] = torch.compile(decode_step, options={"emulate_precision_casts": True})
    return _COMPILED["decode_step"]


class PackedDecoder:
    """Decode steps of ``body`` with its matrices packed (q|k|v, gate|up) and cast to ``dtype``; the attention
    (``compile_attention``) or the whole step (``compile_step``) compiled, falling back to eager with a warning
    where compilation fails."""

    @torch.no_grad()
    def __init__(self, body: Transformer, dtype: torch.dtype = torch.float32, compile_attention: bool = False,
                 compile_step: bool = False) -> None:
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
        self.graph = compiled_decode_step() if compile_step else None

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """A head matrix in the snapshot's dtype (for the caller's output heads)."""
        return weight.detach().to(self.dtype)

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Final-norm hidden states (R, D) float32 of one new token per row, ``x`` (R, D) its embeddings."""
        if self.graph is not None and cache.length > 0:  # (the graph reduces over the filled slots)
            hidden = self._graph_step(x, cache)
            if hidden is not None:
                return hidden
        return self._eager_step(x, cache)

    def _graph_step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
        """The step as one compiled graph (``decode_step``), then the cache's bookkeeping; None (and eager from
        then on) if compilation fails. The cache is untouched until the graph has run, so a failure leaves it as
        the eager step expects it."""
        keys, values, bias = cache.filled()
        for view in (keys, values):
            torch._dynamo.maybe_mark_dynamic(view, 3)  # the filled length: one graph for every step
        torch._dynamo.maybe_mark_dynamic(bias, 1)
        self.body.rotary(cache.length + 1)  # grows the tables if needed
        try:
            hidden, new_keys, new_values = self.graph(
                x.float(), cache.num_real, keys, values, bias, self.body.rotary.cos_cached,
                self.body.rotary.sin_cached, self.layers, self.final_norm, self.eps, self.num_heads)
        except Exception as error:  # no working compiler here: the eager step computes the same function
            warnings.warn(f"compiled decode step failed ({type(error).__name__}); using the eager step",
                          stacklevel=3)
            self.graph = None
            return None
        cache.append_token(new_keys, new_values)
        return hidden

    def _eager_step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
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
