"""``make bench``: throughput of the suite's hot paths, with ratios measured side by side in one run.

Absolute times on a shared 2-core machine are noisy; each entry therefore also reports a ratio against a
baseline timed in the same process, right next to it. ``make bench`` runs this under the glibc allocator settings
of ``../shared/stack.md`` (see the Makefile) so decode loops do not fault pages back in each step.

Entries:
- world generation: samples/s with 1 and 2 worker processes (ratio = parallel speed-up);
- PNG encoding: the hand-written encoder against PIL's at the same zlib level (ratio = speed-up);
- detector: images/s on clean test scenes;
- tokenizer (embedded-default sizes, random weights): encode and decode images/s, pixel-DiT training images/s in
  fp32, bf16 autocast and bf16 with compiled blocks (ratios against fp32);
- AR model (issue 4's reference config, ``arm.ar.bench``): training tokens/s at sequence 256 in fp32, bf16 and
  bf16 with compiled blocks, with MFU against matmul peaks measured in the same run; sampling tokens/s of 16 rows x
  256 image tokens with CFG 1.5, and the KV cache's speed-up over full recomputation;
- RL rollouts/s (sampled, decoded and scored images) with the text-to-image recipe's settings, on the demo's SFT
  export when it exists (skipped with a note otherwise).
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _rate(fn, n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` items per second of ``fn()``, which processes ``n`` items."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def bench_world(num: int = 4000) -> dict:
    from arm.data.shapeworld.writer import write_world

    rates = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_world(tmp, num_train=num, num_val=0, num_test=0, shard_size=max(num // 8, 1), workers=workers,
                        bench=False, progress=False)
            rates[workers] = num / (time.perf_counter() - start)
    return {"samples_per_s_1_worker": rates[1], "samples_per_s_2_workers": rates[2],
            "parallel_speedup": rates[2] / rates[1]}


def bench_png(num: int = 2000) -> dict:
    import numpy as np
    from PIL import Image

    from arm.data.shapeworld.render import encode_png, render
    from arm.data.shapeworld.scene import scene_for

    images = [render(scene_for(0, "train", i)) for i in range(num)]

    def ours():
        for im in images:
            encode_png(im)

    def pil():
        for im in images:
            Image.fromarray(im).save(io.BytesIO(), format="PNG", compress_level=1)

    r_ours, r_pil = _rate(ours, num), _rate(pil, num)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(images[0])))), images[0])
    return {"ours_img_per_s": r_ours, "pil_img_per_s": r_pil, "speedup": r_ours / r_pil}


def bench_detector(num: int = 1000) -> dict:
    from arm.data.shapeworld.detector import detect
    from arm.data.shapeworld.render import render
    from arm.data.shapeworld.scene import scene_for

    images = [render(scene_for(7, "test", i)) for i in range(num)]
    return {"img_per_s": _rate(lambda: [detect(im) for im in images], num, repeats=2)}


def bench_tokenizer(batch: int = 64, decode_steps: int = 10) -> dict:
    """The embedded-default tokenizer's sizes (from the shipped YAMLs) with random weights: encode img/s
    (teacher patch features + projection + FSQ), decode img/s (``decode_steps`` Euler steps of the pixel DiT),
    and the pixel DiT's training img/s (fwd + bwd + AdamW, the tokenizer step's largest cost) in fp32, bf16 and
    bf16 with compiled blocks (the tokenizer's ``compile_blocks``), with each one's speed-up over fp32."""
    import torch
    import yaml

    from arm.nn import TransformerConfig
    from arm.teacher.model import DualEncoder, TeacherConfig
    from arm.tokenizer.bench import bench_pixel_decoder
    from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig
    from arm.tokenizer.pixel_decoder import PixelDiTConfig

    root = Path(__file__).resolve().parents[2] / "experiments"
    teacher_cfg = yaml.safe_load((root / "teacher" / "shapeworld.yaml").read_text())["model"]["config"]
    tok = yaml.safe_load((root / "tokenizer" / "shapeworld.yaml").read_text())["model"]
    teacher = DualEncoder(TeacherConfig(**{**teacher_cfg, "vocab_size": 1024})).eval()
    config = TokenizerConfig(levels=tok["levels"], projection=TransformerConfig(**tok["projection"]),
                             decoder=PixelDiTConfig(**tok["decoder"]), feature_dim=teacher.config.image_dim,
                             text_embed_dim=teacher.config.embed_dim)
    model = SemanticTokenizer(config).eval()
    images = torch.rand(batch, 3, config.decoder.image_size, config.decoder.image_size)
    with torch.no_grad():
        indices = model.quantize(teacher.patch_features(images), images)[1]
    encode = _rate(lambda: model.quantize(teacher.patch_features(images), images), batch)
    decode = _rate(lambda: model.decode_indices(indices, steps=decode_steps), batch, repeats=2)
    train = {name: bench_pixel_decoder(config.decoder, cond_dim=config.feature_dim, batch=32, dtype=dtype,
                                       compiled=compiled)
             for name, dtype, compiled in (("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False),
                                           ("bfloat16_compiled", torch.bfloat16, True))}
    for row in train.values():
        row["speedup_over_fp32"] = row["train_img_s"] / train["float32"]["train_img_s"]
    return {"encode_img_per_s": encode, "decode_img_per_s": decode, "decode_steps": decode_steps,
            "pixel_decoder_train": train, "codebook_size": config.codebook_size}


def bench_rl_rollouts(export: str = "results/demo/ar/ar") -> dict:
    """RL rollouts/s (images sampled, decoded and scored) with the t2i recipe's settings, on the demo's SFT export.

    Rollout cost depends on sizes, not weights, but a rollout needs a whole AR export (policy, image tokenizer,
    text tokenizer); without one this entry says so instead of building random exports."""
    if not (Path(export) / "model.safetensors").is_file():
        return {"skipped": f"no AR export at {export}: run `make demo` (stage ar) first"}
    from arm.ar.module import load_ar_bundle
    from arm.rl.bench import bench_rollouts

    bundle = load_ar_bundle(export)
    return {"export": export, **bench_rollouts(bundle.model, bundle.builder, bundle.image_tokenizer)}


def cpu_model() -> dict:
    """The CPU's model name and whether it has AMX bf16 tiles (Linux ``/proc/cpuinfo``; empty elsewhere). The bf16
    matmul peak, and with it every bf16 figure, differs several-fold between CPUs with and without AMX (2,274
    against ~420 GFLOP/s on two cores; experiments/LOG.md, twelfth session), so the report says which it ran on."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"cpu_model": fields.get("model name", ""), "amx_bf16": "amx_bf16" in fields.get("flags", "").split()}


def run_bench(out: str = "results/bench.json") -> dict:
    import torch

    from arm.ar.bench import bench_ar_sampling, bench_ar_training

    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), **cpu_model(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")},
        "world": bench_world(),
        "png": bench_png(),
        "detector": bench_detector(),
        "tokenizer": bench_tokenizer(),
        "ar_training": bench_ar_training(),
        "ar_sampling": bench_ar_sampling(),
        "rl_rollouts": bench_rl_rollouts(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report
