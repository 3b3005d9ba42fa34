"""Rollout throughput for ``make bench``: images sampled, decoded and scored per second by ``arm.rl.rollout``.

``bench_rollouts`` times whole rollout batches of text-to-image prompts (GenEval-phrased ShapeWorld records, one
per GenEval tag in turn) with the settings of ``experiments/rl/shapeworld_t2i.yaml`` (group size, temperature,
top-k, CFG, decoder steps, rewards) and reports the best of ``repeats`` timed batches after one warm-up. The caller builds the policy and image tokenizer (random
weights are fine: the cost does not depend on them). For stable figures run under the ``GLIBC_TUNABLES`` setting
of the stack notes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
import yaml

from arm.data.shapeworld.geneval import sample_geneval_record
from arm.data.shapeworld.world import GENEVAL_TAGS
from arm.rl.rewards import RewardSet
from arm.rl.rollout import RolloutConfig, rollout

RECIPE = Path(__file__).resolve().parents[3] / "experiments" / "rl" / "shapeworld_t2i.yaml"


def recipe_settings(path: str | Path = RECIPE) -> tuple[RolloutConfig, RewardSet, int]:
    """(rollout config, rewards, prompts per batch) of a recipe YAML, built as LightningCLI would."""
    import importlib

    config = yaml.safe_load(Path(path).read_text())
    model = config["model"]
    rewards = []
    for spec in model["rewards"]:
        module, name = spec["class_path"].rsplit(".", 1)
        rewards.append(getattr(importlib.import_module(module), name)(**spec.get("init_args", {})))
    return RolloutConfig(**model["rollout"]), RewardSet(rewards), int(config["data"]["batch_size"])


def bench_rollouts(policy, builder, tokenizer_bundle, repeats: int = 2, recipe: str | Path = RECIPE,
                   seed: int = 0) -> dict:
    """``{"rollouts_per_s", "seconds_per_batch", "images_per_batch", "group_size", "decode_steps"}``."""
    config, rewards, prompts = recipe_settings(recipe)
    rewards.setup(policy, builder)
    rng = random.Random(seed)
    records = []
    for i in range(prompts):
        record, _ = sample_geneval_record(rng, GENEVAL_TAGS[i % len(GENEVAL_TAGS)], allow_heldout=False)
        records.append({"task": "t2i", "key": str(i), "text": record["prompt"], "geneval": record,
                        "tag": record["tag"]})
    generator = torch.Generator().manual_seed(seed)
    rollout(policy, builder, tokenizer_bundle, records, config, rewards, generator)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = rollout(policy, builder, tokenizer_bundle, records, config, rewards, generator)
        times.append(time.perf_counter() - start)
    best, images = min(times), len(out.records)
    return {"rollouts_per_s": images / best, "seconds_per_batch": best, "images_per_batch": images,
            "group_size": config.group_size, "decode_steps": config.decode_steps}
