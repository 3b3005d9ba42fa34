"""``make bench-gpu``: training throughput of a ~1B AR model on one CUDA GPU, bf16 autocast, FSDP2, with MFU.

What it does, in one process on one GPU:
1. measures the GPU's bf16 matmul peak (TFLOP/s of a large square ``torch.mm``, best of several timed runs);
2. builds an ``ARDecoder`` of about 1B parameters (``BENCH_CONFIG``: 16 layers, width 2048, GQA 16/8 heads,
   SwiGLU 5632, 32,000 text ids + 16,384 image codes), shards it with ``arm.parallel.parallelize`` on a 1-GPU
   mesh (the FSDP2 code path of the cluster YAMLs; with one rank nothing is actually split), AdamW (foreach);
   ``--param-dtype bf16`` makes FSDP2 gather parameters in bf16 (torchtitan's mixed-precision policy) instead of
   keeping fp32 parameters that autocast casts at every matmul (Lightning's ``bf16-mixed``, the YAMLs' default);
3. trains on random token sequences (first half text ids scored by the text head, second half image codes scored
   by the image head), ``--warmup`` untimed steps then ``--steps`` timed ones;
4. writes tokens/s, model TFLOP/s and MFU = model FLOP/s / measured peak to ``--out`` (JSON, with the device,
   config, git hash and date) and prints them.

FLOPs per token (``model_flops_per_token``), the PaLM convention (Chowdhery et al. 2022, app. B):
6 x (matmul weights a token passes through) + 12 x layers x width x sequence (attention scores and values, not
halved for causality). A token passes through every block, and through one head: the text head for the first
half of the sequence, the image head for the second. Recomputation under ``--activation-checkpointing`` is not
counted (MFU, not hardware FLOP utilisation).

Simplifications: synthetic data (no loader in the loop), no ``torch.compile``, one GPU only.
Without CUDA it stops at once with a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time

import torch
import torch.nn.functional as F

from arm.ar.model import ARConfig, ARDecoder
from arm.eval.results import git_hash
from arm.io import write_json_atomic

BENCH_CONFIG = ARConfig(text_vocab_size=32000, num_image_codes=16384, num_special_tokens=64, dim=2048, num_layers=16,
                        num_heads=16, num_kv_heads=8, mlp_hidden=5632, qkv_bias=True, rope_theta=1e6,
                        tie_embeddings=False, max_seq_len=4096)
NO_CUDA = ("bench-gpu needs a CUDA GPU and torch.cuda.is_available() is False: run it on a GPU machine "
           "(`make bench` measures the CPU)")


def model_flops_per_token(config: ARConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) by the PaLM convention; see the module docstring."""
    d, L, dh = config.dim, config.num_layers, config.head_dim
    attn = d * dh * (config.num_heads + 2 * config.num_kv_heads) + config.num_heads * dh * d  # q, k, v, o
    mlp = 3 * d * config.mlp_hidden
    heads = 0.5 * d * config.num_text_and_special + 0.5 * d * config.num_image_codes  # each token uses one head
    return 6.0 * (L * (attn + mlp) + heads) + 12.0 * L * d * seq_len


def bf16_matmul_peak(n: int = 8192, repeats: int = 20, trials: int = 5) -> float:
    """Best measured TFLOP/s of an n x n x n bf16 matmul on the current GPU."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12)
    return best


def _single_rank_mesh():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=0, world_size=1)
    return init_device_mesh("cuda", (1,))


def train_step(model: ARDecoder, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> torch.Tensor:
    """One AdamW step on ``ids`` (B, T): text ids in the first half, image ids in the second."""
    half = ids.shape[1] // 2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hidden = model(ids)  # (B, T, D)
        text = model.text_logits(hidden[:, : half - 1])  # (B, T/2 - 1, V_text)
        image = model.image_logits(hidden[:, half - 1: -1])  # (B, T/2, V_image)
    loss = (F.cross_entropy(text.flatten(0, 1).float(), ids[:, 1:half].flatten())
            + F.cross_entropy(image.flatten(0, 1).float(), model.image_codes(ids[:, half:]).flatten()))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def random_batch(config: ARConfig, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    half = seq_len // 2
    text = torch.randint(0, config.text_vocab_size, (batch, half), generator=generator)
    codes = torch.randint(0, config.num_image_codes, (batch, seq_len - half), generator=generator)
    return torch.cat([text, codes + config.image_token_offset], dim=1).cuda(non_blocking=True)


def run(args: argparse.Namespace) -> dict:
    from arm.parallel import parallelize

    peak = bf16_matmul_peak()
    mesh = _single_rank_mesh()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ARDecoder(BENCH_CONFIG)
    num_params = sum(p.numel() for p in model.parameters())
    param_dtype = {"fp32": None, "bf16": torch.bfloat16}[args.param_dtype]
    parallelize(model, mesh, model.body.blocks, args.activation_checkpointing, param_dtype=param_dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # foreach, as the stages use
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.warmup):
        train_step(model, optimizer, random_batch(BENCH_CONFIG, args.batch, args.seq_len, gen))
    batches = [random_batch(BENCH_CONFIG, args.batch, args.seq_len, gen) for _ in range(min(args.steps, 8))]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(args.steps):
        loss = train_step(model, optimizer, batches[step % len(batches)])
        if (step + 1) % 50 == 0:  # progress; the .item() syncs, which costs one step's pipelining per 50 steps
            print(f"step {step + 1}/{args.steps}: loss {loss.item():.3f}, "
                  f"{(step + 1) * args.batch * args.seq_len / (time.perf_counter() - start):,.0f} tokens/s", flush=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens_per_s = args.steps * args.batch * args.seq_len / seconds
    model_tflops = tokens_per_s * model_flops_per_token(BENCH_CONFIG, args.seq_len) / 1e12
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "git": git_hash(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {**vars(args), "parameters": num_params, "model": dataclasses.asdict(BENCH_CONFIG)},
        "bf16_matmul_peak_tflops": peak, "tokens_per_s": tokens_per_s, "model_tflops": model_tflops,
        "mfu": model_tflops / peak, "final_loss": float(loss), "timed_seconds": seconds,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    parser.add_argument("--param-dtype", choices=("fp32", "bf16"), default="fp32",
                        help="FSDP2 compute dtype of parameters: fp32 + autocast (bf16-mixed) or gathered in bf16")
    parser.add_argument("--out", default="results/bench_gpu.json", help="JSON report")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():  # before anything is built or measured
        print(f"bench-gpu: error: {NO_CUDA}", file=sys.stderr)
        return 2
    report = run(args)
    write_json_atomic(args.out, report)
    print(f"{report['device']}: {report['tokens_per_s']:,.0f} tokens/s, {report['model_tflops']:.1f} model TFLOP/s, "
          f"MFU {report['mfu']:.1%} of a measured bf16 matmul peak of {report['bf16_matmul_peak_tflops']:.0f} "
          f"TFLOP/s ({report['config']['parameters'] / 1e9:.2f}B parameters, parameters in {args.param_dtype}, "
          f"peak memory {report['peak_memory_gib']:.1f} GiB) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
