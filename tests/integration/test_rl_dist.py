"""The tiny GRPO recipe on 2 CPU processes (gloo): under DDP and under FSDP2 (``ModelParallelStrategy``) it trains
and writes an AR export of the moved policy (a smoke test: no comparison with a one-process run).

Each rank reads its own half of the prompts (``ShapeWorldStream`` splits samples over ranks) and rolls out its
own groups, so rollouts are split across ranks; gradients are averaged by DDP's all-reduce or FSDP2's
reduce-scatter.
"""

from __future__ import annotations

import pytest
import torch

from arm.ar.module import load_ar_bundle
from tests.integration.fsdp_runs import FSDP2_STRATEGY, ROOT, run_two_ranks
from tests.integration.test_rl_fit import sft_export  # noqa: F401  (the tiny SFT export)

pytestmark = pytest.mark.dist

TINY = str(ROOT / "experiments/rl/tiny.yaml")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_tiny_recipe_on_two_processes(tiny_world, sft_export, tmp_path, strategy):  # noqa: F811
    out = tmp_path / strategy
    args = ["fit", "--config", TINY, "--model.init_from", str(sft_export), "--data.data_dir",
            str(tiny_world / "world"), "--trainer.default_root_dir", str(out), "--trainer.devices", "2",
            "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"]
    args += ["--trainer.strategy", "ddp"] if strategy == "ddp" else FSDP2_STRATEGY
    run_two_ranks("arm.rl.cli", [args], tmp_path / f"{strategy}.log")
    exported = load_ar_bundle(str(out / "ar"), image_tokenizer=False).model.state_dict()
    sft = load_ar_bundle(str(sft_export), image_tokenizer=False).model.state_dict()
    assert exported.keys() == sft.keys()
    assert any(not torch.equal(exported[k], sft[k]) for k in sft)  # the policy trained
