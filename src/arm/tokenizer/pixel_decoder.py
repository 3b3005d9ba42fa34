"""The "Pixel DiT" detokenizer of the ARM tokenizer (ARM paper §1, L_pix): a rectified-flow decoder in pixel
space conditioned on z_q, trained jointly with the projection.

Rectified flow (Liu et al. 2022, "Flow Straight and Fast"), in the convention of Esser et al. 2024 (SD3):
x0 ~ N(0, I) is noise, x1 the image mapped to [-1, 1], x_t = (1 - t) x0 + t x1, and the network predicts the
velocity v = x1 - x0 from (x_t, t, z_q); L_pix is the mean squared error on v. Sampling integrates dx/dt = v with
Euler steps from t = 0 (noise) to t = 1 (image).

Network: a small DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"). x_t is cut into
p x p patches, embedded linearly, and given a fixed 2-D sin-cos position embedding. The timestep goes through a
sinusoidal embedding and an MLP and modulates every block by adaLN-Zero (shift, scale and a zero-initialised
gate before each residual branch); a final adaLN + zero-initialised linear maps tokens back to patches.

Conditioning on z_q (B, N, F): projected to the width, then
- ADDED to the image tokens when N equals the number of patches (the usual case: tokenizer grid == patch grid),
- otherwise PREPENDED as N extra tokens (with a learned type embedding and a 1-D sin-cos position) that the image
  tokens attend to; their outputs are discarded.
Decoder-side classifier-free guidance: during training each sample's projected condition is replaced, with
probability ``cond_drop_prob``, by one learned null vector (broadcast over the N tokens);
``sample(cfg_scale=s)`` then uses v_uncond + s (v_cond - v_uncond), both branches in one batched forward.

Choices and simplifications:
- Images enter ``loss`` and leave ``sample`` in [0, 1] (the suite's convention); [-1, 1] is internal.
- t is drawn from a logit-normal(``time_mean``, ``time_std``) (SD3's default (0, 1): more weight on mid-trajectory
  times, where the velocity is hardest to predict; JiT uses (-0.8, 0.8), towards noise, where the condition
  matters most); ``time_sampling="uniform"`` is available.
- Attention is ``arm.nn.Attention`` (bidirectional, no rotary: positions come from the additive embedding), the
  MLP is ``arm.nn.SwiGLU``; the adaLN norms are LayerNorms without affine parameters, as in DiT.
- The timestep embedding and adaLN are the only time conditioning; z_q is not pooled into adaLN.
- Plain Euler with uniform steps; no timestep shift, no higher-order solver.
- Optional edge term (``edge_weight``, not in ARM; our addition): L_pix adds ``edge_weight`` times the mean squared
  horizontal and vertical finite differences of the velocity error, the gradient difference loss of Mathieu et al.
  2016 ("Deep multi-scale video prediction beyond mean square error"). The plain MSE spends its gradient on areas
  and colours, where most pixels are; the difference term is non-zero only where the error changes from one pixel
  to the next, i.e. along outlines and corners, which is where a decoder trained on MSE alone draws a square as a
  rounded blob. With x-prediction the velocity error is the clean-image error over 1 - t, so the term weighs time
  steps as the MSE does. Measured on the embedded default in experiments/LOG.md (2026-12-05, ninth session).
- Optional share of times at exactly t = 0 (``zero_time_prob``, not in ARM; our addition). The sampler's first step
  is always at t = 0, pure noise, where only z_q can say what the image is; a logit-normal(-0.8, 0.8) draws t < 0.02
  about once in 16,000 draws, and from any later t the decoder reads a flat background's colour off x_t (thousands of
  pixels average the noise away). So nothing asks the codes to carry what x_t gives away later, and the first step
  guesses it from the prior. At t = 0 the loss is the plain autoencoder MSE of x_hat (an x-network's velocity error
  there is x_hat - x1), so these draws ask the codes for the whole image. Measured NEGATIVE on the embedded default
  (experiments/LOG.md, thirty-first session): at 0.1 and 0.5 the codes still carry no background colour (a linear
  read-out of it from a plain background patch's pre-rounding z stays at chance) and semantic reconstruction falls
  (0.605 -> 0.586 / 0.493); off (0) in every YAML.
- Optional re-injection of the condition (``cond_every_block``, not in ARM; our addition): before every block after
  the first, the projected condition goes through a zero-initialised linear map of that block's and is added to the
  tokens it first went to, so deeper blocks see z_q at full strength next to x_t, whose patch embedding dominates at
  late times (the reconstructions lose small stars and crosses to blobs, and decoder CFG applied at late steps only
  recovers part of them: experiments/LOG.md, thirty-third session). Measured NEUTRAL there on the embedded default
  (semantic reconstruction 0.670 against 0.685, within the ~0.02 two fits of one config differ by; fd_teacher 0.185
  -> 0.120; small stars / crosses 0.20 / 0.46 against 0.23 / 0.44), and the AR recipe on its codes lost POPE at
  seed 0 (-0.076, beyond its interval; GenEval -0.006); off in every YAML.
- Width rule: keep ``dim >= channels * patch_size**2``. The velocity contains the noise x0, which the network can
  only recover from x_t if the patch embedding does not squeeze a patch below its pixel count (measured on an
  overfitting test: a 48-value patch into width 32 plateaus at ~0.6 of the initial loss, 12 into 32 reaches ~0.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arm.nn import Attention, SwiGLU

X_PRED_MIN_GAP = 0.05
"""Smallest 1 - t used to turn an x-prediction into a velocity."""


@dataclass
class PixelDiTConfig:
    """Size of the pixel decoder.

    Attributes:
        image_size: square image side in pixels; must be a multiple of ``patch_size``.
        patch_size: side of a patch; (image_size / patch_size)^2 image tokens.
        channels: image channels.
        dim: transformer width.
        num_layers: number of DiT blocks.
        num_heads: attention heads; must divide ``dim``.
        mlp_hidden: SwiGLU hidden width; ``None`` = 8/3 * dim rounded up to a multiple of 8.
        time_sampling: "logit_normal" (SD3) or "uniform" training distribution of t.
        time_mean, time_std: location and scale of the logit-normal: t = sigmoid(time_mean + time_std * n),
            n ~ N(0, 1). A negative mean trains more on noisy inputs, where only the condition z_q can say what the
            image is, so the codes get more of the pixel loss's gradient.
        prediction: what the network outputs: "v", the velocity itself, or "x", the clean image, from which the
            velocity is derived as (x_hat - x_t) / (1 - t) (Li & He 2025, "Back to Basics: Let Denoising
            Generative Models Denoise"); the loss is on the velocity either way. With patches as wide as the
            model ("width rule" above) a v-network must carry the noise through itself; an x-network need not.
        time_freq_dim: width of the sinusoidal timestep features before the MLP.
        edge_weight: weight of the edge term of L_pix (module docstring): the squared finite differences of the
            velocity error, next to its plain mean squared error; 0 is the plain rectified-flow loss.
        zero_time_prob: probability that a training draw's t is exactly 0 instead of a draw from
            ``time_sampling`` (module docstring): the time of the sampler's first step; 0 turns it off.
        cond_every_block: also add a zero-initialised linear map of the projected condition to the tokens before
            every block after the first (module docstring); False adds it at the input only.
    """

    image_size: int = 64
    patch_size: int = 8
    channels: int = 3
    dim: int = 192
    num_layers: int = 4
    num_heads: int = 4
    mlp_hidden: int | None = None
    time_sampling: str = "logit_normal"
    time_mean: float = 0.0
    time_std: float = 1.0
    prediction: str = "x"
    time_freq_dim: int = 256
    edge_weight: float = 0.0
    zero_time_prob: float = 0.0
    cond_every_block: bool = False

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def hidden(self) -> int:
        return self.mlp_hidden if self.mlp_hidden is not None else -(-(8 * self.dim // 3) // 8) * 8


def sincos_1d(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (L, dim) of real-valued ``positions`` (L,): [cos | sin] over geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.float()[:, None] * freqs[None]  # (L, half)
    emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))  # odd dim: one zero channel


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D position embedding (grid*grid, dim) in raster order: half the channels row, half column."""
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = coords.repeat_interleave(grid), coords.repeat(grid)  # (P,), (P,)
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim - dim // 2)], dim=-1)  # (P, dim)


def edge_loss(error: torch.Tensor) -> torch.Tensor:
    """Mean squared horizontal plus mean squared vertical finite difference of ``error`` (..., H, W): the gradient
    difference loss (Mathieu et al. 2016) between a prediction and its target when ``error`` is their difference.
    Zero for an error that is constant over the image."""
    dx = error[..., :, 1:] - error[..., :, :-1]
    dy = error[..., 1:, :] - error[..., :-1, :]
    return dx.square().mean() + dy.square().mean()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x`` (B, T, D) normalised, then scaled by (1 + scale) and shifted; shift/scale are (B, D)."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation from a conditioning vector c (B, D)."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, causal=False)
        self.mlp = SwiGLU(dim, hidden)
        self.ada = nn.Linear(dim, 6 * dim)
        # adaLN-Zero: gates start at 0, so every block starts as the identity (DiT §3.2).
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # x (B, T, D), c (B, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)  # each (B, D)
        x = x + gate1[:, None] * self.attn(modulate(x, shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(x, shift2, scale2))


class PixelDiT(nn.Module):
    """Rectified-flow pixel decoder: predicts v = x1 - x0 from (x_t (B, C, H, W), t (B,), z_q (B, N, cond_dim))."""

    def __init__(self, cond_dim: int, config: PixelDiTConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        if config.prediction not in ("v", "x"):
            raise ValueError(f"prediction must be 'v' or 'x', got {config.prediction!r}")
        if config.time_std <= 0:
            raise ValueError(f"time_std must be > 0 (the logit-normal's scale), got {config.time_std}")
        if config.edge_weight < 0:
            raise ValueError(f"edge_weight must be >= 0 (0 turns the edge term off), got {config.edge_weight}")
        if not 0.0 <= config.zero_time_prob < 1.0:
            raise ValueError(f"zero_time_prob must be in [0, 1) (the share of training times at t = 0), "
                             f"got {config.zero_time_prob}")
        if config.time_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"time_sampling must be 'logit_normal' or 'uniform', got {config.time_sampling!r}")
        self.config, self.cond_dim = config, cond_dim
        d, patch_dim = config.dim, config.channels * config.patch_size**2
        self.patch_embed = nn.Linear(patch_dim, d)
        self.register_buffer("pos", sincos_2d(config.grid, d), persistent=False)  # (P, D), fixed
        self.cond_proj = nn.Linear(cond_dim, d)
        self.null_cond = nn.Parameter(torch.randn(d) * 0.02)  # the "no condition" token, for CFG
        self.cond_type = nn.Parameter(torch.zeros(d))  # marks prepended condition tokens (N != P case)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(d, config.num_heads, config.hidden) for _ in range(config.num_layers))
        # torch.compile'd blocks for the training pass (``arm.nn.compile_blocks``); a plain list, not registered.
        self.compiled_blocks: list | None = None
        # cond_every_block: one map a block after the first, zero at init (the plain decoder's function)
        self.cond_inject = nn.ModuleList(nn.Linear(d, d) for _ in range(config.num_layers - 1)) \
            if config.cond_every_block else None
        for layer in self.cond_inject or ():
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.final_ada = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, patch_dim)
        for layer in (self.final_ada, self.final):  # zero output at init: the initial velocity guess is 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- patches ----
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, P, C*p*p) in raster order of patches."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, C*p*p) -> (B, C, H, W)."""
        B, C, p, g = x.shape[0], self.config.channels, self.config.patch_size, self.config.grid
        x = x.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
        return x.reshape(B, C, g * p, g * p)

    # ---- network ----
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, C, H, W). ``drop`` (B,) bool: True replaces that sample's condition by the null vector."""
        if cond.shape[-1] != self.cond_dim:
            raise ValueError(f"cond has last dim {cond.shape[-1]} but PixelDiT was built with "
                             f"cond_dim={self.cond_dim}: set cond_dim={cond.shape[-1]}")
        h = self.patch_embed(self.patchify(x_t)) + self.pos  # (B, P, D)
        c_tok = self.cond_proj(cond)  # (B, N, D)
        if drop is not None:
            c_tok = torch.where(drop[:, None, None], self.null_cond.to(c_tok.dtype).expand_as(c_tok), c_tok)
        num_patches, n = h.shape[1], c_tok.shape[1]
        if n == num_patches:
            h = h + c_tok  # same grid: the condition token of a patch sits on that patch
        else:
            cpos = sincos_1d(torch.arange(n, device=h.device), h.shape[-1])  # (N, D)
            h = torch.cat([c_tok + self.cond_type + cpos, h], dim=1)  # (B, N + P, D)
        c = self.time_mlp(sincos_1d(t * 1000.0, self.config.time_freq_dim))  # (B, D); DiT's t in [0, 1000]
        # Compiled blocks serve training only: sampling and evaluation change the batch (CFG doubles it, the last
        # chunk is short) and run without gradients, and each change would cost a recompile.
        blocks = self.compiled_blocks if (self.compiled_blocks and self.training) else self.blocks
        for i, block in enumerate(blocks):
            if i and self.cond_inject is not None:  # the condition again, on the tokens it first went to
                extra = self.cond_inject[i - 1](c_tok)
                h = h + extra if n == num_patches else torch.cat([h[:, :n] + extra, h[:, n:]], dim=1)
            h = block(h, c)
        h = h[:, -num_patches:]  # (B, P, D): drop prepended condition tokens, if any
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        return self.unpatchify(self.final(modulate(h, shift, scale)))  # (B, C, H, W)

    # ---- training ----
    def sample_t(self, batch: int, device: torch.device, generator: torch.Generator | None = None,
                 logit_normal: tuple[float, float] | None = None) -> torch.Tensor:
        """Training times (B,) in [0, 1): ``time_sampling``'s draws, each set to 0 with ``zero_time_prob``.
        ``logit_normal`` (mean, std) replaces the configured distribution for this call (the tokenizer's decoder
        phase trains at its own times)."""
        cfg = self.config
        if logit_normal is None and cfg.time_sampling == "uniform":
            t = torch.rand(batch, device=device, generator=generator)
        else:
            mean, std = logit_normal if logit_normal is not None else (cfg.time_mean, cfg.time_std)
            t = torch.sigmoid(mean + std * torch.randn(batch, device=device, generator=generator))
        if cfg.zero_time_prob > 0:
            t = torch.where(torch.rand(batch, device=device, generator=generator) < cfg.zero_time_prob, 0.0, t)
        return t

    def loss(self, images: torch.Tensor, cond: torch.Tensor, cond_drop_prob: float = 0.0,
             generator: torch.Generator | None = None, logit_normal: tuple[float, float] | None = None) -> torch.Tensor:
        """L_pix: MSE between predicted and true velocity, plus ``edge_weight`` x ``edge_loss`` of that error.
        ``images`` (B, C, H, W) in [0, 1]; ``cond`` (B, N, F); ``logit_normal`` as ``sample_t``."""
        error = self.velocity_error(images, cond, cond_drop_prob, generator, logit_normal)
        loss = error.square().mean()
        if self.config.edge_weight > 0:
            loss = loss + self.config.edge_weight * edge_loss(error)
        return loss

    def velocity_error(self, images: torch.Tensor, cond: torch.Tensor, cond_drop_prob: float = 0.0,
                       generator: torch.Generator | None = None,
                       logit_normal: tuple[float, float] | None = None) -> torch.Tensor:
        """Predicted minus true velocity (B, C, H, W), fp32, at noise and times drawn from ``generator``."""
        x1 = images.float() * 2 - 1  # (B, C, H, W) in [-1, 1]
        B, device = x1.shape[0], x1.device
        x0 = torch.randn(x1.shape, device=device, generator=generator)
        t = self.sample_t(B, device, generator, logit_normal)  # (B,)
        tt = t[:, None, None, None]
        x_t = (1 - tt) * x0 + tt * x1
        drop = None
        if cond_drop_prob > 0:
            drop = torch.rand(B, device=device, generator=generator) < cond_drop_prob  # (B,)
        v = self.predict_velocity(x_t, t, cond, drop)
        return v.float() - (x1 - x0)

    def predict_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                         drop: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity (B, C, H, W) under the configured parameterisation (see ``PixelDiTConfig.prediction``)."""
        out = self(x_t, t, cond, drop)
        if self.config.prediction == "v":
            return out
        # 1 - t is floored so the division stays bounded as t -> 1 (t is never 1 in training or sampling).
        return (out.float() - x_t.float()) / (1 - t.float()).clamp_min(X_PRED_MIN_GAP)[:, None, None, None]

    # ---- sampling ----
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cfg_scale: float = 1.0) -> torch.Tensor:
        """Guided velocity v_uncond + s (v_cond - v_uncond); s == 1 runs the conditional branch only."""
        if cfg_scale == 1.0:
            return self.predict_velocity(x, t, cond)
        B = x.shape[0]
        drop = torch.arange(2 * B, device=x.device) >= B  # first half conditional, second half null
        v = self.predict_velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]), drop)
        v_cond, v_uncond = v[:B], v[B:]
        return v_uncond + cfg_scale * (v_cond - v_uncond)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, steps: int = 8, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from z_q ``cond`` (B, N, F) by ``steps`` Euler steps from t = 0 to 1."""
        cfgc = self.config
        B, device = cond.shape[0], cond.device
        x = torch.randn(B, cfgc.channels, cfgc.image_size, cfgc.image_size, device=device, generator=generator)
        ts = torch.linspace(0.0, 1.0, steps + 1, device=device)
        for i in range(steps):
            v = self.velocity(x, ts[i].expand(B), cond, cfg_scale)
            x = x + (ts[i + 1] - ts[i]) * v.float()
        return ((x.clamp(-1, 1) + 1) / 2).float()
