"""``scripts/bench_gpu.py`` (``make bench-gpu``): fails fast without CUDA; its FLOP count matches the model."""

import importlib.util
from pathlib import Path

import torch
from torch import nn

from arm.ar.model import ARConfig, ARDecoder

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_stops_with_one_line(monkeypatch, tmp_path, capsys):
    bench = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "run", lambda args: (_ for _ in ()).throw(AssertionError("built something")))
    out = tmp_path / "bench_gpu.json"
    assert bench.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench-gpu: error:") and "needs a CUDA GPU" in err and "\n" not in err
    assert not out.exists()


def test_flops_per_token_counts_the_model_matmuls():
    """6 x (the block Linear weights, counted on a real ARDecoder, + one head per token) + 12 L d T."""
    bench = _load()
    config = ARConfig(text_vocab_size=10, num_image_codes=6, num_special_tokens=2, dim=8, num_layers=2, num_heads=2,
                      num_kv_heads=1, mlp_hidden=16, tie_embeddings=False)
    model = ARDecoder(config)
    block_weights = sum(m.weight.numel() for m in model.body.modules() if isinstance(m, nn.Linear))
    assert block_weights == 2 * (8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16)  # q, k, v (1 kv head of 4), o, SwiGLU
    head_per_token = 0.5 * model.text_head.weight.numel() + 0.5 * model.image_head.weight.numel()
    seq = 10
    expected = 6 * (block_weights + head_per_token) + 12 * config.num_layers * config.dim * seq
    assert bench.model_flops_per_token(config, seq) == expected


def test_git_hash_takes_arm_git_hash_for_a_tree_without_git(monkeypatch):
    """The GPU machine gets the working tree without .git: the runner passes the commit in ARM_GIT_HASH."""
    from arm.eval.results import git_hash

    bench = _load()
    commit = f"{int(torch.randint(0, 2**62, ()).item()):040x}"
    monkeypatch.setenv("ARM_GIT_HASH", commit)
    assert git_hash() == commit
    assert bench.git_hash is git_hash  # the script stamps its report with the suite's one helper
    monkeypatch.delenv("ARM_GIT_HASH")
    assert git_hash() != commit
