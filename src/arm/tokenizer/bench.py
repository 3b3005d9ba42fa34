"""Throughput of the tokenizer's trainable parts on this machine (ARM paper §1: projection + Pixel DiT).

``bench_pixel_decoder`` times one training step (forward + backward + AdamW) and ``sample`` of a ``PixelDiT``;
``bench_projection`` times forward + backward of a ``CodeProjection``; ``bench_tokenizer_parts`` runs a small grid
of candidate embedded defaults in fp32 and bf16 autocast and returns one row per (config, dtype). Numbers are
wall-clock medians over a few timed repeats after warm-up, at the current ``torch.get_num_threads()``. For stable
figures run under ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184``
(see the stack notes) on an otherwise idle machine.

Run: ``python -m arm.tokenizer.bench``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from arm.nn import TransformerConfig
from arm.tokenizer.pixel_decoder import PixelDiT, PixelDiTConfig
from arm.tokenizer.projection import CodeProjection


def _autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def _median_seconds(fn: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_pixel_decoder(config: PixelDiTConfig, cond_dim: int = 128, cond_tokens: int | None = None,
                        batch: int = 32, sample_steps: int = 10, cfg_scale: float = 1.0,
                        dtype: torch.dtype = torch.float32, warmup: int = 1, repeats: int = 3) -> dict:
    """Train and sample images/s of one ``PixelDiT``. ``cond_tokens`` defaults to the number of patches."""
    torch.manual_seed(0)
    model = PixelDiT(cond_dim, config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = config.num_patches if cond_tokens is None else cond_tokens
    images = torch.rand(batch, config.channels, config.image_size, config.image_size)
    cond = torch.randn(batch, n, cond_dim)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(dtype):
            loss = model.loss(images, cond, cond_drop_prob=0.1)
        loss.backward()
        opt.step()

    def sample() -> None:
        with _autocast(dtype):
            model.sample(cond, steps=sample_steps, cfg_scale=cfg_scale)

    train_s = _median_seconds(train_step, warmup, repeats)
    sample_s = _median_seconds(sample, warmup, max(1, repeats - 1))
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "tokens": config.num_patches,
            "train_img_s": batch / train_s, "sample_img_s": batch / sample_s, "sample_steps": sample_steps,
            "cfg_scale": cfg_scale, "dtype": str(dtype).replace("torch.", ""), "batch": batch}


def bench_projection(feature_dim: int = 128, tokens: int = 64, levels: tuple[int, ...] = (2,) * 16,
                     config: TransformerConfig | None = None, batch: int = 32,
                     dtype: torch.dtype = torch.float32, warmup: int = 1, repeats: int = 3) -> dict:
    """Images/s of forward + backward through encode and decode of a ``CodeProjection``."""
    torch.manual_seed(0)
    config = config or TransformerConfig(dim=128, num_layers=2, num_heads=4, causal=False)
    model = CodeProjection(feature_dim, len(levels), levels, config)
    feats = torch.randn(batch, tokens, feature_dim)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with _autocast(dtype):
            z_q, _, _ = model(feats)
        z_q.float().pow(2).mean().backward()

    seconds = _median_seconds(step, warmup, repeats)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "train_img_s": batch / seconds,
            "dtype": str(dtype).replace("torch.", ""), "batch": batch}


def bench_tokenizer_parts(candidates: dict[str, PixelDiTConfig] | None = None, cond_dim: int = 128,
                          cond_tokens: int = 64, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
                          **kwargs) -> list[dict]:
    """One row per (candidate, dtype) at 64x64; the condition is the teacher grid (8x8 = 64 tokens by default)."""
    if candidates is None:
        candidates = {
            "p8_d192_l4": PixelDiTConfig(patch_size=8, dim=192, num_layers=4, num_heads=4),
            "p8_d256_l4": PixelDiTConfig(patch_size=8, dim=256, num_layers=4, num_heads=4),
            "p8_d256_l6": PixelDiTConfig(patch_size=8, dim=256, num_layers=6, num_heads=4),
            "p4_d128_l4": PixelDiTConfig(patch_size=4, dim=128, num_layers=4, num_heads=4),
        }
    rows = []
    for name, cfg in candidates.items():
        for dtype in dtypes:
            row = bench_pixel_decoder(cfg, cond_dim=cond_dim, cond_tokens=cond_tokens, dtype=dtype, **kwargs)
            rows.append({"name": name, **row})
    for dtype in dtypes:
        rows.append({"name": "projection_d128_l2x2", **bench_projection(cond_dim, cond_tokens, dtype=dtype)})
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Tokenizer part throughput at 64x64 (fp32 and bf16 autocast).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    for row in bench_tokenizer_parts(repeats=args.repeats):
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
