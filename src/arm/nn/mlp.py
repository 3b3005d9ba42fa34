"""SwiGLU feed-forward (Shazeer 2020, "GLU Variants Improve Transformer"): ``down(silu(gate(x)) * up(x))``.

The Qwen2/Llama MLP: three bias-free linears named ``gate``, ``up`` and ``down`` so a key map from Hugging Face
(``gate_proj``/``up_proj``/``down_proj``) stays one-to-one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.down(F.silu(self.gate(x)) * self.up(x))
