"""The trainable projection between frozen encoder features and FSQ codes (ARM paper §1).

``encode``: features (B, N, F) -> linear to width -> bidirectional transformer blocks -> linear to ``d`` -> FSQ.
``decode``: codes (B, N, d) -> linear to width -> bidirectional transformer blocks -> linear to F, giving z_q, the
tensor every tokenizer loss (L_cap, L_pix, L_sig, L_feat) reads. The two halves are symmetric but do not share
weights. The paper uses a stack of 6 blocks (?) down to 16 dims x 2 levels.

Choices and simplifications:
- Positions: the blocks use rotary embedding over the raster order of the N tokens when ``config.rope`` is on
  (the default), and nothing when it is off. No learned absolute position table: the frozen encoder's features
  already carry its own position embedding, and rotary needs no maximum length, so any grid size works.
- ``config.causal`` is overridden to False: a token's code may depend on the whole image.
- The transformer ends with its own RMSNorm before the final linear, so the pre-quantization ``z`` has a
  controlled scale when it enters the tanh bound of FSQ.
- Mixed precision: that final linear and FSQ run in fp32 with autocast disabled, so FSQ's input and output are fp32
  under ``bf16-mixed`` (``fsq.py`` explains why); the transformers run in the autocast dtype.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arm.nn import Transformer, TransformerConfig
from arm.tokenizer.fsq import FSQ


class CodeProjection(nn.Module):
    """Features (B, N, feature_dim) <-> FSQ codes (B, N, code_dim), with ``len(levels) == code_dim``.

    ``pixel_dim > 0`` adds a second input to the encoder half: a linear map of each token's own pixel patch
    (B, N, pixel_dim), added to the linear map of its features (``encode(features, pixels)``). It is zero-initialised,
    so a fresh projection computes what it would without it. Our addition, not in ARM: the frozen encoder's
    features drop the edges a reconstruction needs (``SemanticTokenizer``'s ``pixel_input`` says why).
    """

    def __init__(self, feature_dim: int, code_dim: int, levels: Sequence[int], config: TransformerConfig,
                 pixel_dim: int = 0) -> None:
        super().__init__()
        if len(levels) != code_dim:
            raise ValueError(f"code_dim={code_dim} but {len(levels)} FSQ levels given: pass one level per code dim")
        self.feature_dim, self.code_dim = feature_dim, code_dim
        self.config = dataclasses.replace(config, causal=False)
        width = self.config.dim
        self.enc_in = nn.Linear(feature_dim, width)
        self.pixel_dim = pixel_dim
        self.pix_in = nn.Linear(pixel_dim, width, bias=False) if pixel_dim > 0 else None
        if self.pix_in is not None:
            nn.init.zeros_(self.pix_in.weight)
        self.encoder = Transformer(self.config)
        self.enc_out = nn.Linear(width, code_dim)
        self.fsq = FSQ(levels)
        self.dec_in = nn.Linear(code_dim, width)
        self.decoder = Transformer(self.config)
        self.dec_out = nn.Linear(width, feature_dim)

    @property
    def codebook_size(self) -> int:
        return self.fsq.codebook_size

    def encode(self, features: torch.Tensor, pixels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features`` (B, N, F) and, when built with ``pixel_dim``, ``pixels`` (B, N, pixel_dim) -> (z (B, N, d)
        pre-quantization, codes (B, N, d) float32, indices (B, N) int64)."""
        if features.shape[-1] != self.feature_dim:
            raise ValueError(f"features have last dim {features.shape[-1]} but CodeProjection was built with "
                             f"feature_dim={self.feature_dim}: set feature_dim={features.shape[-1]} "
                             f"(the teacher's width)")
        x = self.enc_in(features)  # (B, N, W)
        if self.pix_in is not None:
            if pixels is None or pixels.shape != (*features.shape[:-1], self.pixel_dim):
                got = None if pixels is None else tuple(pixels.shape)
                raise ValueError(f"this projection reads each token's pixel patch beside its features: pass pixels "
                                 f"of shape {(*features.shape[:-1], self.pixel_dim)}, got {got}")
            x = x + self.pix_in(pixels.to(x.dtype))
        h = self.encoder(x)  # (B, N, W)
        # The last linear and FSQ run in fp32 with autocast off: under bf16 autocast z would carry 8 mantissa bits,
        # too few to place values against FSQ's rounding boundaries (a few thousand MACs per token: no speed cost).
        with torch.autocast(device_type=h.device.type, enabled=False):
            w, b = self.enc_out.weight, self.enc_out.bias
            z = F.linear(h.float(), w.float(), b.float())  # (B, N, d) float32 whatever the parameters' dtype
            codes = self.fsq(z)  # (B, N, d) float32, straight-through
        return z, codes, self.fsq.codes_to_indices(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` (B, N, d) -> z_q (B, N, F)."""
        if codes.shape[-1] != self.code_dim:
            raise ValueError(f"codes have last dim {codes.shape[-1]} but CodeProjection was built with "
                             f"code_dim={self.code_dim}: pass codes from this module's FSQ")
        return self.dec_out(self.decoder(self.dec_in(codes)))  # (B, N, F)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, N) -> z_q (B, N, F): the path from AR-generated tokens back to features."""
        return self.decode(self.fsq.indices_to_codes(indices))

    def forward(self, features: torch.Tensor, pixels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features`` (B, N, F) [and ``pixels``, as ``encode``] -> (z_q (B, N, F), codes (B, N, d), indices (B, N))."""
        _, codes, indices = self.encode(features, pixels)
        return self.decode(codes), codes, indices
