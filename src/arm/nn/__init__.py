"""Plain ``nn.Module`` building blocks shared by every stage: RMSNorm, RoPE, GQA attention, SwiGLU, transformer."""

from arm.nn.attention import Attention
from arm.nn.mlp import SwiGLU
from arm.nn.norm import RMSNorm
from arm.nn.rope import RotaryEmbedding, apply_rotary, rotate_half
from arm.nn.transformer import Transformer, TransformerBlock, TransformerConfig

__all__ = ["Attention", "RMSNorm", "RotaryEmbedding", "SwiGLU", "Transformer", "TransformerBlock",
           "TransformerConfig", "apply_rotary", "rotate_half"]
