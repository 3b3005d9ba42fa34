"""Plain ``nn.Module`` building blocks shared by every stage: RMSNorm, RoPE, GQA attention, SwiGLU, transformer,
KV cache."""

from arm.nn.attention import Attention
from arm.nn.kv_cache import KVCache
from arm.nn.mlp import SwiGLU
from arm.nn.norm import RMSNorm
from arm.nn.rope import RotaryEmbedding, apply_rotary, rotate_half
from arm.nn.transformer import (
    Transformer,
    TransformerBlock,
    TransformerConfig,
    compile_blocks,
    uncompile_blocks,
)

__all__ = ["Attention", "KVCache", "RMSNorm", "RotaryEmbedding", "SwiGLU", "Transformer", "TransformerBlock",
           "TransformerConfig", "apply_rotary", "compile_blocks", "rotate_half", "uncompile_blocks"]
