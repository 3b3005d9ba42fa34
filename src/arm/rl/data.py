"""Prompts for GRPO: ShapeWorld samples as rollout records, one task per batch, drawn with mixture weights.

Reads the ShapeWorld shards themselves (not the code shards): a record needs the exact ground truth the rewards
check (the GenEval requirements, the source and target scenes, the change mask and the source pixels), and the
source image of an edit is encoded into codes by the policy's own image tokenizer at rollout time.

Records (plain dicts; ``arm.rl.rewards`` reads them):

- ``t2i``: ``task``, ``key``, ``text`` (the sample's GenEval-style prompt), ``geneval`` (its requirements),
  ``tag`` (the GenEval tag);
- ``edit``: ``task``, ``key``, ``text`` (the instruction), ``edit_type``, ``source_image`` (uint8 (H, W, 3)),
  ``mask`` (bool (H, W), True where the edit may change pixels), ``source_scene``, ``target_scene``.

Both also carry the sample's understanding material for the optional SFT anchor (``arm.rl.anchor``):
``understanding`` (its VQA and MME items ``{"task", "question", "answer"}``) and ``caption``; a t2i record adds
``scene_image`` (uint8 (H, W, 3), the scene its prompt describes; an edit's is its ``source_image``).

Every batch holds ONE task, drawn per batch from ``mixture`` with a generator seeded by (seed, epoch, batch
index): every rank draws the same task for the same step, so sharded ranks run the same sampling calls, and a
group never mixes tasks. Splitting over ranks, shuffling, epochs and corrupt-sample counting are the
``ShapeWorldStream``'s (``arm.data.datamodule``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np

from arm.data.codes import check_mixture
from arm.data.datamodule import ShapeWorldDataModule, ShapeWorldStream, SkipCounter
from arm.data.samples import _member, decode_json
from arm.data.shapeworld.render import decode_png

RL_TASKS = ("t2i", "edit")


def check_rl_mixture(mixture: dict[str, float]) -> dict[str, float]:
    """The AR stage's mixture check, restricted to the tasks a rollout can draw."""
    unknown = sorted(set(mixture) - set(RL_TASKS))
    if unknown:
        raise ValueError(f"unknown RL task(s) {unknown} in data.mixture; expected some of {list(RL_TASKS)}")
    return check_mixture(mixture)


def prompt_record(raw: dict, task: str) -> dict | None:
    """The rollout record of one raw ShapeWorld sample for ``task`` (module docstring); ``None`` when the sample
    has no material for it (a scene no GenEval record describes exactly has ``geneval: null``)."""
    meta = decode_json(_member(raw, "json"))
    understanding = {"understanding": [{"task": t, "question": item["question"], "answer": str(item["answer"])}
                                       for t in ("vqa", "mme") for item in meta.get(t) or []],
                     "caption": meta.get("caption")}
    if task == "t2i":
        geneval = meta.get("geneval")
        if not geneval or not geneval.get("prompt"):
            return None
        return {"task": "t2i", "key": raw["__key__"], "text": geneval["prompt"], "geneval": geneval,
                "tag": geneval.get("tag"), "scene_image": decode_png(_member(raw, "png")), **understanding}
    edit = meta.get("edit")
    if not edit or not edit.get("instruction"):
        return None
    return {"task": "edit", "key": raw["__key__"], "text": edit["instruction"], "edit_type": edit["type"],
            "source_image": decode_png(_member(raw, "png")),
            "mask": np.asarray(decode_png(_member(raw, "mask.png"))[..., 0] > 127),
            "source_scene": meta["scene"], "target_scene": edit["target_scene"], **understanding}


class PromptStream(ShapeWorldStream):
    """Batches ``{"record": [record, ...]}`` of one task each; see the module docstring."""

    def __init__(self, shards: list[str], mixture: dict[str, float], batch_size: int, train: bool,
                 shuffle_buffer: int, seed: int, max_samples: int | None, rank: int | None,
                 world_size: int | None) -> None:
        super().__init__(shards, "scene", batch_size, train, shuffle_buffer, seed, max_samples, rank, world_size)
        self.mixture = check_rl_mixture(dict(mixture))

    def batch_task(self, epoch: int, batch: int) -> str:
        tasks = list(self.mixture)
        return random.Random(f"rl/{self.seed}/{epoch}/{batch}").choices(tasks, [self.mixture[t] for t in tasks])[0]

    def _built(self, raws: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
        epoch = self.epoch if self.train else 0
        made = 0  # the parent cuts a batch every batch_size items, so item `made` belongs to batch made // size
        for raw in raws:
            try:
                record = prompt_record(raw, self.batch_task(epoch, made // self.batch_size))
            except Exception as error:  # any decode failure: skip and count, never stop the epoch
                counter.skip(raw.get("__key__", "<unknown>"), error)
                continue
            if record is None:  # a valid sample without this batch's task: not corrupt, just not usable here
                continue
            made += 1
            yield {"record": record}


class PromptDataModule(ShapeWorldDataModule):
    """ShapeWorld shards as batches of GRPO prompts (records), one task per batch."""

    def __init__(self, data_dir: str | None = None, train_shards: str | list[str] | None = None,
                 val_shards: str | list[str] | None = None, mixture: dict[str, float] | None = None,
                 batch_size: int = 4, num_workers: int = 0, shuffle_buffer: int = 1000, seed: int = 0,
                 val_samples: int | None = 32) -> None:
        """
        Args:
            data_dir: ShapeWorld root with ``train/`` and ``val/`` shard folders (``arm data shapeworld``).
            train_shards: train shards (directory, glob, brace pattern or list); overrides ``data_dir/train``.
            val_shards: validation shards, as ``train_shards``.
            mixture: task -> weight, tasks ``t2i`` and ``edit`` (default text-to-image only).
            batch_size: prompts per batch and process (each becomes ``model.group_size`` rollouts).
            num_workers: DataLoader workers per process.
            shuffle_buffer: train sample shuffle buffer.
            seed: seed of shard order, shuffling and the per-batch task draw.
            val_samples: use only the first N validation samples.
        """
        super().__init__(data_dir, train_shards, val_shards, None, "scene", batch_size, num_workers,
                         shuffle_buffer, seed, val_samples)
        self.mixture = check_rl_mixture(dict(mixture or {"t2i": 1.0}))

    def stream(self, split: str) -> PromptStream:
        train = split == "train"
        rank, world_size = self._rank()
        return PromptStream(self.shards(split), self.mixture, self.batch_size, train, self.shuffle_buffer,
                            self.seed, None if train else self.val_samples, rank, world_size)
