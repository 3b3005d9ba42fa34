"""Throughput of the tokenizer's trainable parts on this machine (ARM paper §1: projection + Pixel DiT).

``bench_pixel_decoder`` times one training step (forward + backward + AdamW) and ``sample`` of a ``PixelDiT``;
``bench_projection`` times forward + backward of a ``CodeProjection``; ``bench_tokenizer_parts`` runs a small grid
of candidate embedded defaults in fp32 and bf16 autocast and returns one row per (config, dtype);
``bench_module_precision`` times whole ``TokenizerModule`` training steps (all four losses, AdamW) in fp32 and
under bf16 autocast (what Lightning's ``bf16-mixed`` runs on the CPU), alternating the two so that a loaded
machine slows both alike. Numbers are
wall-clock medians over a few timed repeats after warm-up, at the current ``torch.get_num_threads()``. For stable
figures run under ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=17179869184``
(see the stack notes) on an otherwise idle machine.

Run: ``python -m arm.tokenizer.bench`` (parts), ``python -m arm.tokenizer.bench --module-precision`` (fp32 vs bf16).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from arm.nn import TransformerConfig, compile_blocks
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
                        dtype: torch.dtype = torch.float32, warmup: int = 1, repeats: int = 3,
                        compiled: bool = False) -> dict:
    """Train and sample images/s of one ``PixelDiT``. ``cond_tokens`` defaults to the number of patches.
    ``compiled``: the training step runs torch.compile'd blocks (``arm.nn.compile_blocks``, as the tokenizer's
    ``compile_blocks`` option; the first warm-up call pays the compile); sampling stays eager either way."""
    torch.manual_seed(0)
    model = PixelDiT(cond_dim, config)
    if compiled:
        compile_blocks(model, dynamic=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = config.num_patches if cond_tokens is None else cond_tokens
    images = torch.rand(batch, config.channels, config.image_size, config.image_size)
    cond = torch.randn(batch, n, cond_dim)

    def train_step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with _autocast(dtype):
            loss = model.loss(images, cond, cond_drop_prob=0.1)
        loss.backward()
        opt.step()

    def sample() -> None:
        model.eval()  # as the tokenizer samples: eager blocks (``PixelDiT.compiled_blocks`` serve training only)
        with _autocast(dtype):
            model.sample(cond, steps=sample_steps, cfg_scale=cfg_scale)

    train_s = _median_seconds(train_step, warmup, repeats)
    sample_s = _median_seconds(sample, warmup, max(1, repeats - 1))
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "tokens": config.num_patches,
            "train_img_s": batch / train_s, "sample_img_s": batch / sample_s, "sample_steps": sample_steps,
            "cfg_scale": cfg_scale, "dtype": str(dtype).replace("torch.", ""), "batch": batch, "compiled": compiled}


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


def bench_module_precision(workdir: str, text_tokenizer: str, rounds: int = 5, batch: int = 32,
                           experiments: str = "experiments") -> dict:
    """Median seconds of a ``TokenizerModule`` training step, fp32 vs bf16 autocast, at the embedded default's sizes.

    Sizes come from ``<experiments>/{teacher,lm,tokenizer}/shapeworld.yaml``; the teacher and caption LM are
    randomly initialised exports written under ``workdir``; images are uniform noise at the decoder's size and the
    captions ShapeWorld-like. Round 0 is warm-up; then each round runs one fp32 and one bf16 step.
    """
    import os

    import yaml

    from arm.ar.lm_module import save_lm
    from arm.ar.model import ARConfig, ARDecoder
    from arm.data.text_tokenizer import TextTokenizer
    from arm.teacher.model import DualEncoder, TeacherConfig, save_teacher
    from arm.tokenizer.module import TokenizerModule

    def model_section(stage: str) -> dict:
        with open(os.path.join(experiments, stage, "shapeworld.yaml")) as f:
            return yaml.safe_load(f)["model"]

    torch.manual_seed(0)
    vocab = TextTokenizer.from_file(text_tokenizer).vocab_size
    teacher_config = TeacherConfig(**model_section("teacher")["config"], vocab_size=vocab)
    save_teacher(DualEncoder(teacher_config), teacher_config, os.path.join(workdir, "teacher"), text_tokenizer)
    lm = ARDecoder(ARConfig(text_vocab_size=vocab, **model_section("lm")["config"]))
    save_lm(lm, os.path.join(workdir, "lm"), text_tokenizer)
    tok = model_section("tokenizer")
    weights = {k: tok[k] for k in ("levels", "w_cap", "w_pix", "w_sig", "w_feat") if k in tok}
    module = TokenizerModule(os.path.join(workdir, "teacher"), os.path.join(workdir, "lm"),
                             projection=TransformerConfig(**tok["projection"]),
                             decoder=PixelDiTConfig(**tok["decoder"]), **weights).train()
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-4)
    size = module.model.config.decoder.image_size
    images = torch.rand(batch, 3, size, size)
    captions = [f"a red circle above {i % 4 + 1} blue squares" for i in range(batch)]

    def step(bf16: bool) -> float:
        opt.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            parts, _, _ = module.losses(images, captions)
            loss = module._total(parts)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds + 1):
        for bf16 in (False, True):
            seconds = step(bf16)
            if round_:
                times[bf16].append(seconds)
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    return {"batch": batch, "rounds": rounds, "threads": torch.get_num_threads(), "fp32_step_s": fp32,
            "bf16_step_s": bf16, "fp32_over_bf16": fp32 / bf16}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Tokenizer part throughput at 64x64 (fp32 and bf16 autocast).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--module-precision", action="store_true",
                        help="instead: TokenizerModule training step, fp32 vs bf16 autocast, embedded-default sizes")
    parser.add_argument("--text-tokenizer", default="results/demo/tokenizer.json",
                        help="text tokenizer for --module-precision (written by `arm demo`)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"threads={torch.get_num_threads()} torch={torch.__version__}")
    if args.module_precision:
        import tempfile

        with tempfile.TemporaryDirectory() as workdir:
            row = bench_module_precision(workdir, args.text_tokenizer, rounds=args.repeats)
        print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        return
    for row in bench_tokenizer_parts(repeats=args.repeats):
        print("  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
