"""Pre-norm transformer blocks and stacks shared by every stage (teacher towers, tokenizer projection, AR model).

A block is ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` with RMSNorm and a SwiGLU MLP: the Qwen2/Llama block
(paper §2 initialises the AR model from Qwen2.5). ``Transformer`` stacks blocks on top of input embeddings the
caller provides (token embedding, patch embedding...) and ends with a final norm; it owns the rotary tables so
every block rotates with the same positions.

With a ``KVCache`` the stack decodes incrementally: each call appends its tokens to the cache, rotates them at
per-row positions counted from the cache (so left-padded rows match unpadded ones) and attends over the filled
slice; the per-call mask and positions are built once here, not per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from arm.nn.attention import Attention
from arm.nn.kv_cache import KVCache
from arm.nn.mlp import SwiGLU
from arm.nn.norm import RMSNorm
from arm.nn.rope import RotaryEmbedding


@dataclass
class TransformerConfig:
    """Size and behaviour of a transformer stack.

    Attributes:
        dim: model (residual stream) width.
        num_layers: number of blocks.
        num_heads: query heads; ``dim`` must be divisible by it.
        num_kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``. ``None`` = num_heads.
        mlp_hidden: SwiGLU hidden width. ``None`` = the Llama rule, 8/3 * dim rounded up to a multiple of 8.
        qkv_bias: bias on the q/k/v projections (Qwen2: yes, Llama: no).
        rope: rotate q/k with rotary position embedding; off for towers with learned absolute positions.
        rope_theta: rotary base (Qwen2: 1e6, Llama 2: 1e4).
        norm_eps: RMSNorm epsilon.
        causal: each position attends only to itself and earlier ones (decoders); False = bidirectional.
        max_positions: initial size of the rotary cache (it grows on demand).
    """

    dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    mlp_hidden: int | None = None
    qkv_bias: bool = False
    rope: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    causal: bool = True
    max_positions: int = 2048

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return -(-(8 * self.dim // 3) // 8) * 8


class TransformerBlock(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config.dim, config.num_heads, config.num_kv_heads, config.qkv_bias, config.causal)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache: KVCache | None = None, layer: int = 0
                ) -> torch.Tensor:  # (B, T, D)
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """``num_layers`` blocks and a final RMSNorm over input embeddings (B, T, D)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.rotary = (RotaryEmbedding(config.dim // config.num_heads, config.rope_theta, config.max_positions)
                       if config.rope else None)
        # Optional replacements of the blocks' calls on the no-cache (training) path, e.g. torch.compile'd blocks
        # (see ``compile_blocks``); a plain list, so no parameters are registered twice.
        self.compiled_blocks: list | None = None

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty ``KVCache`` for this stack (dtype and device default to the parameters')."""
        c, p = self.config, self.norm.weight
        return KVCache(c.num_layers, batch, c.num_kv_heads or c.num_heads, c.dim // c.num_heads, max_len,
                       dtype or p.dtype, device or p.device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, offset: int = 0,
                cache: KVCache | None = None) -> torch.Tensor:
        """``x`` (B, T, D) embeddings; ``mask`` (B, T) True for real tokens; ``offset`` the first position.

        With ``cache``, ``x`` continues the cached tokens (``offset`` must be 0: positions come from the cache) and
        its keys/values are appended; left-pad a batch of prompts (``mask`` False on the pads) so that every row's
        next token lands in the same slot.
        """
        if cache is None:
            rope = self.rotary(x.shape[1], offset, x.dtype) if self.rotary is not None else None
            for block in self.compiled_blocks or self.blocks:
                x = block(x, rope, mask)
            return self.norm(x)  # (B, T, D)
        if offset:
            raise ValueError("offset must be 0 with a KV cache: positions are counted by the cache")
        if not self.config.causal:
            raise ValueError("a KV cache only makes sense for a causal transformer")
        B, T, _ = x.shape
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        positions = cache.append_mask(real)  # (B, T)
        attn_mask = cache.attention_mask(T)  # (B, 1, T, S)
        rope = None
        if self.rotary is not None:
            self.rotary(cache.length + T)  # grows the tables if needed (positions never exceed slots)
            rope = (self.rotary.cos_cached[positions].to(x.dtype)[:, None],  # (B, 1, T, Dh)
                    self.rotary.sin_cached[positions].to(x.dtype)[:, None])
        for i, block in enumerate(self.blocks):
            x = block(x, rope, attn_mask, cache, i)
        cache.advance(T)
        return self.norm(x)  # (B, T, D)


def compile_blocks(stack: nn.Module, dynamic: bool | None = None) -> nn.Module:
    """Compile each of ``stack.blocks`` with ``torch.compile`` into ``stack.compiled_blocks`` (regional compilation,
    as torchtitan does), in place; works for any stack that reads its blocks through a ``compiled_blocks`` list
    (``Transformer``, ``arm.tokenizer.pixel_decoder.PixelDiT``). The parameters stay registered once, in
    ``stack.blocks``, so the state dict is unchanged.

    Identical blocks share one compiled graph, so the cost is one block's compile (~10-60 s on 2 busy cores) plus a
    recompile when an input shape first changes (``dynamic=None`` lets torch switch to a dynamic-shape graph then).
    On a machine where compilation fails (no C++ compiler, unsupported op) the first call raises; ``uncompile_blocks``
    goes back to eager. Applying it before FSDP2 sharding is untested.
    """
    stack.compiled_blocks = [torch.compile(block, dynamic=dynamic) for block in stack.blocks]
    return stack


def uncompile_blocks(stack: nn.Module) -> nn.Module:
    """Undo ``compile_blocks``: the stack runs its eager blocks again."""
    stack.compiled_blocks = None
    return stack
