"""Throughput of the AR stage (ARM §2) at issue 4's reference config, all figures from one process side by side.

Reference config: 6 layers, d=256, 4 heads (4 kv heads), SwiGLU 704, total vocabulary 4,096 ids (1,008 text +
16 special + 3,072 image codes), batch 16, random weights.

- ``bench_ar_training``: training tokens/s at sequence 256 (forward + backward + AdamW step) through the real
  training path (``arm.ar.module.token_nll`` for the two heads' cross-entropies, the AdamW of ``arm.optim``), in fp32, bf16 autocast, and bf16 autocast with ``compile_for_training`` (the fast configuration;
  under bf16 the no-cache attention is ``arm.nn.attention.matmul_attention``), plus the previous bf16 path
  (``BF16_MATMUL_ATTENTION`` off: float32 rotary and SDPA) eager for the ratio; MFU against fp32 and bf16 matmul peaks
  measured in the same run. FLOPs per token = 6 N + 12 L d T (PaLM, Chowdhery et al. 2022, appendix B): N the
  non-embedding body parameters plus the head each target uses (text or image, weighted by their share of targets;
  embedding lookups are free), L layers, d width, T sequence length (the attention term ignores causal masking).
- ``bench_ar_sampling``: generated tokens/s of ``sample_image_codes`` for 16 rows x 256 image tokens with CFG 1.5
  (temperature 1, no top-k/top-p), counting 16 x 256 tokens (the 16 unconditional rows are the price of CFG), for
  each of ``SAMPLING_SETTINGS`` (the fast one: bf16 packed weights + bf16 cache + each step one compiled graph;
  the same with only the attention compiled; the exact fp32 one; the previous path under bf16 autocast, for the
  ratios); and the KV cache against full recomputation
  (``kv_cache=False``, the same sampler) at a reduced batch of 4 prompts (8 rows with CFG), since recomputing
  32 rows x 256 steps takes minutes.

Timings are the best of a few repeats after warm-up, at ``torch.get_num_threads()``. Run under the glibc allocator
settings of ``../shared/stack.md`` (``make bench`` does) and say so next to the figures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from arm.ar.model import ARConfig, ARDecoder, compile_for_training

REFERENCE = ARConfig(text_vocab_size=1008, num_special_tokens=16, num_image_codes=3072, dim=256, num_layers=6,
                     num_heads=4, num_kv_heads=4, mlp_hidden=704, max_seq_len=1024)
"""Issue 4's reference size (total vocabulary 4,096)."""


def _autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)


def _best_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """GFLOP/s of an n x n x n matmul in ``dtype`` (best of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / _best_seconds(lambda: a @ b, 1, repeats) / 1e9


def training_flops_per_token(config: ARConfig, seq_len: int, image_target_share: float) -> float:
    """6 N + 12 L d T, N = body parameters (no embeddings) + the target's head (see the module docstring)."""
    d, L = config.dim, config.num_layers
    attn = d * d * (2 + 2 * config.num_kv_heads / config.num_heads) + (3 * d if config.qkv_bias else 0)
    body = L * (attn + 3 * d * config.mlp_hidden + 2 * d) + d
    head = d * (image_target_share * config.num_image_codes + (1 - image_target_share) * config.num_text_and_special)
    return 6 * (body + head) + 12 * L * d * seq_len


def _t2i_batch(config: ARConfig, batch: int, seq_len: int, prompt_len: int, seed: int = 0):
    """A text-to-image-shaped batch: ``prompt_len`` text ids then image ids, every target scored."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, config.num_text_and_special, (batch, prompt_len), generator=g)
    image = torch.randint(config.image_token_offset, config.vocab_size, (batch, seq_len + 1 - prompt_len), generator=g)
    ids = torch.cat([text, image], 1)  # (B, T+1): T inputs, T targets
    return ids, torch.ones_like(ids, dtype=torch.bool)


def _training_rate(config: ARConfig, ids: torch.Tensor, loss_mask: torch.Tensor, dtype: torch.dtype,
                   compiled: bool, repeats: int, previous: bool = False) -> tuple[float, float]:
    """(tokens/s, seconds of the first step) of training steps through the real loss and optimiser; ``previous``
    switches ``BF16_MATMUL_ATTENTION`` off for these steps (float32 rotary and SDPA under bf16)."""
    import arm.nn.attention as attention
    from arm.ar.module import token_nll
    from arm.optim import adamw_warmup_cosine

    torch.manual_seed(0)
    model = ARDecoder(config)
    opt = adamw_warmup_cosine(model.parameters(), 1e-4, 0.0, (0.9, 0.95), 0, None)["optimizer"]
    if compiled:
        compile_for_training(model)

    def step() -> None:
        attention.BF16_MATMUL_ATTENTION = not previous
        try:
            opt.zero_grad(set_to_none=True)
            with _autocast(dtype):
                nll = token_nll(model, ids, loss_mask)
                loss = nll["image"].mean() + nll["text"].mean()
            loss.backward()
            opt.step()
        finally:
            attention.BF16_MATMUL_ATTENTION = True

    start = time.perf_counter()
    step()  # the first step pays for compilation (and optimizer state allocation)
    first = time.perf_counter() - start
    return ids.shape[0] * (ids.shape[1] - 1) / _best_seconds(step, 1, repeats), first


def bench_ar_training(config: ARConfig = REFERENCE, batch: int = 16, seq_len: int = 256, prompt_len: int = 32,
                      repeats: int = 3, compile_blocks: bool = True) -> dict:
    """Training tokens/s and MFU in fp32, bf16 autocast and (``compile_blocks``) bf16 + compiled blocks."""
    ids, loss_mask = _t2i_batch(config, batch, seq_len, prompt_len)
    peaks = {"float32": matmul_peak_gflops(torch.float32), "bfloat16": matmul_peak_gflops(torch.bfloat16)}
    flops = training_flops_per_token(config, seq_len, image_target_share=(seq_len + 1 - prompt_len) / seq_len)
    runs = [("fp32", torch.float32, False, False), ("bf16", torch.bfloat16, False, False),
            ("previous_bf16", torch.bfloat16, False, True)]
    if compile_blocks:
        runs.append(("bf16_compiled", torch.bfloat16, True, False))
    out = {"batch": batch, "seq_len": seq_len, "flops_per_token": flops, "matmul_peak_gflops": peaks,
           "settings": "bf16 = autocast with bf16 rotary and matmul attention; previous_bf16 = "
                       "float32 rotary and SDPA (the path before); bf16_compiled = bf16 + compile_for_training"}
    for name, dtype, compiled, previous in runs:
        try:
            rate, first = _training_rate(config, ids, loss_mask, dtype, compiled, repeats, previous)
        except Exception as error:  # compilation can fail on a machine without a working C++ toolchain
            if not compiled:
                raise
            out[name] = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
            continue
        peak = peaks["float32" if dtype == torch.float32 else "bfloat16"]
        out[name] = {"tokens_per_s": rate, "first_step_s": first,
                     "mfu_vs_fp32_peak": rate * flops / 1e9 / peaks["float32"],
                     "mfu_vs_bf16_peak": rate * flops / 1e9 / peaks["bfloat16"],
                     "mfu_vs_own_dtype_peak": rate * flops / 1e9 / peak}
    out["bf16_over_fp32"] = out["bf16"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    out["bf16_over_previous_bf16"] = out["bf16"]["tokens_per_s"] / out["previous_bf16"]["tokens_per_s"]
    if compile_blocks and "tokens_per_s" in out["bf16_compiled"]:
        out["compiled_over_eager_bf16"] = out["bf16_compiled"]["tokens_per_s"] / out["bf16"]["tokens_per_s"]
    return out


SAMPLING_SETTINGS = {
    "fp32": {"autocast": None, "fast": True, "decode_dtype": torch.float32, "compile_attention": False},
    "bf16": {"autocast": None, "fast": True, "decode_dtype": torch.bfloat16, "compile_attention": True,
             "compile_step": True},
    "bf16_compiled_attention": {"autocast": None, "fast": True, "decode_dtype": torch.bfloat16,
                                "compile_attention": True, "compile_step": False},
    "previous_bf16_autocast": {"autocast": torch.bfloat16, "fast": False, "decode_dtype": None,
                               "compile_attention": False},
}
"""The sampler settings timed: ``fp32`` packed float32 weights, float32 cache, eager attention (the exact path);
``bf16`` (the fast configuration, used by RL rollouts) packed bf16 weights, bf16 cache, every decode step one
``torch.compile``d graph (``arm.nn.decode.decode_step``); ``bf16_compiled_attention`` the same with only the
attention compiled (the fast configuration before, for the ratio); ``previous_bf16_autocast`` the model's own
cached forward under bf16 autocast (the path before ``arm.nn.decode``), for the ratio."""


def bench_ar_sampling(config: ARConfig = REFERENCE, batch: int = 16, num_tokens: int = 256, prompt_len: int = 16,
                      cfg_scale: float = 1.5, recompute_batch: int = 4, repeats: int = 2) -> dict:
    """Generated image tokens/s with CFG per ``SAMPLING_SETTINGS`` and the cache's speed-up over recomputation."""
    from arm.ar.sampling import SamplingConfig, sample_image_codes

    torch.manual_seed(0)
    model = ARDecoder(config).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, config.num_text_and_special, (batch, prompt_len), generator=g).tolist()
    uncond = [row[-3:] for row in prompts]  # an "empty prompt": only the <boi> and grid tokens stay
    sampling = SamplingConfig(cfg_scale=cfg_scale)

    def rate(setting: str, rows: int, kv_cache: bool = True, reps: int = repeats) -> tuple[float, float]:
        """(tokens/s, seconds of the first call, which includes compilation)."""
        options = dict(SAMPLING_SETTINGS[setting])
        autocast = options.pop("autocast")
        if not kv_cache:  # recomputation runs the model's own forward: give it the setting's dtype by autocast
            autocast = autocast or options["decode_dtype"]

        def run() -> None:
            with _autocast(autocast or torch.float32):
                sample_image_codes(model, prompts[:rows], num_tokens, sampling, uncond=uncond[:rows],
                                   generator=torch.Generator().manual_seed(0), kv_cache=kv_cache, **options)
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        return rows * num_tokens / _best_seconds(run, 0, reps), first

    out = {"batch": batch, "num_tokens": num_tokens, "prompt_len": prompt_len, "cfg_scale": cfg_scale,
           "forward_rows": 2 * batch, "settings": {k: {n: str(v) for n, v in o.items()}
                                                  for k, o in SAMPLING_SETTINGS.items()}}
    for setting in SAMPLING_SETTINGS:
        tokens_per_s, first = rate(setting, batch)
        out[f"{setting}_tokens_per_s"] = tokens_per_s
        out[f"{setting}_first_call_s"] = first
    out["bf16_over_previous"] = out["bf16_tokens_per_s"] / out["previous_bf16_autocast_tokens_per_s"]
    out["bf16_over_compiled_attention"] = out["bf16_tokens_per_s"] / out["bf16_compiled_attention_tokens_per_s"]
    fast = "bf16" if out["bf16_tokens_per_s"] > out["fp32_tokens_per_s"] else "fp32"
    cached = rate(fast, recompute_batch)[0]
    recomputed = rate(fast, recompute_batch, kv_cache=False, reps=1)[0]
    out["cache_vs_recompute"] = {"setting": fast, "batch": recompute_batch,
                                 "cached_tokens_per_s": cached, "recomputed_tokens_per_s": recomputed,
                                 "speedup": cached / recomputed}
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="AR training and sampling throughput at issue 4's reference config.")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled bf16 training run")
    args = parser.parse_args(argv)
    print(json.dumps({"training": bench_ar_training(compile_blocks=not args.no_compile),
                      "sampling": bench_ar_sampling()}, indent=2))


if __name__ == "__main__":
    main()
