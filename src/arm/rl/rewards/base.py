"""What every reward shares: the call convention, image conversion, and the weighted sum a run optimises.

A reward is a class whose ``__call__(images, records)`` returns per-sample values: ``"reward"`` (its own total,
in [0, 1] for the built-in ones) and every component it is built from, each a float tensor (B,). Images are
``(B, 3, H, W)`` float tensors in [0, 1] (what the tokenizer's decoder returns) or a sequence of uint8
``(H, W, 3)`` arrays; ``records`` are the rollout records (``arm.rl.rollout``): ``task`` ("t2i" or "edit"),
``text`` and the task's ground truth.

A reward scores the tasks in its ``tasks``; rows of other tasks get NaN (so a mean over a batch with ``nanmean``
counts only the rows it applies to) and contribute nothing to the total. ``RewardSet`` adds the rewards a YAML
chose, each times its ``weight``: ``total = sum_i weight_i * reward_i`` over the rewards that apply to the row.
Rows of one GRPO group share a prompt, hence a task, hence the same set of rewards, so the group-normalised
advantage never compares sums of different terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

Images = torch.Tensor | Sequence[np.ndarray]


def as_uint8_images(images: Images) -> list[np.ndarray]:
    """``(B, 3, H, W)`` floats in [0, 1], or uint8 arrays ``(H, W, 3)``, -> a list of uint8 ``(H, W, 3)`` arrays."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"reward images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1) * 255 + 0.5).to(torch.uint8)
        return list(pixels.cpu().numpy())
    out = [np.asarray(image) for image in images]
    for image in out:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"reward images must be uint8 (H, W, 3) arrays, got {image.dtype} {image.shape}")
    return out


def as_float_images(images: Images) -> torch.Tensor:
    """Either image form -> ``(B, 3, H, W)`` float32 in [0, 1]."""
    if isinstance(images, torch.Tensor):
        return images.detach().float().clamp(0, 1)
    return torch.from_numpy(np.stack(as_uint8_images(images))).permute(0, 3, 1, 2).float() / 255.0


class Reward:
    """Base class: subclasses set ``name`` and ``tasks`` and implement ``score`` on the rows they apply to.

    Args:
        weight: multiplier of this reward's ``"reward"`` in the run's total (``RewardSet``).
    """

    name = "reward"
    tasks: tuple[str, ...] = ("t2i", "edit")
    wants_uint8 = True
    """Whether ``score`` gets uint8 arrays (detector-based rewards) or the images as passed (tensor rewards)."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    def setup(self, policy, builder) -> None:
        """Called by ``GRPOModule`` before the first rollout; rewards that read the policy keep it here."""

    def score(self, images: list[np.ndarray], records: list[Mapping]) -> dict[str, list[float]]:
        """``{"reward": [...], component: [...]}`` for rows this reward applies to (uint8 images)."""
        raise NotImplementedError

    def applies(self, record: Mapping) -> bool:
        return record.get("task") in self.tasks

    def __call__(self, images: Images, records: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Per-sample ``"reward"`` and components (B,), NaN on rows of tasks this reward does not score."""
        if len(records) != len(images):
            raise ValueError(f"{len(images)} images but {len(records)} records: give one record per image")
        rows = [i for i, record in enumerate(records) if self.applies(record)]
        out: dict[str, torch.Tensor] = {"reward": torch.full((len(records),), float("nan"))}
        if not rows:
            return out
        picked = images[rows] if isinstance(images, torch.Tensor) else [images[i] for i in rows]
        scores = self.score(as_uint8_images(picked) if self.wants_uint8 else picked, [records[i] for i in rows])
        for key, values in scores.items():
            column = out.setdefault(key, torch.full((len(records),), float("nan")))
            column[rows] = torch.as_tensor(values, dtype=torch.float32)
        return out


class RewardSet:
    """The weighted sum of several rewards, and every component under ``"<reward name>/<component>"``."""

    def __init__(self, rewards: Sequence[Reward]) -> None:
        if not rewards:
            raise ValueError("configure at least one reward (model.rewards: a list of class_path/init_args)")
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique, got {names}; give each reward its own name")
        self.rewards = list(rewards)

    def setup(self, policy, builder) -> None:
        for reward in self.rewards:
            reward.setup(policy, builder)

    def __call__(self, images: Images, records: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``{"total": (B,), "<name>/reward": (B,), "<name>/<component>": (B,) ...}``."""
        total = torch.zeros(len(records))
        covered = torch.zeros(len(records), dtype=torch.bool)
        out: dict[str, torch.Tensor] = {}
        for reward in self.rewards:
            parts = reward(images, records)
            value = parts["reward"]
            applies = ~torch.isnan(value)
            total += torch.where(applies, reward.weight * value, torch.zeros_like(value))
            covered |= applies
            out.update({f"{reward.name}/{key}": v for key, v in parts.items()})
        if not bool(covered.all()):
            tasks = sorted({str(r.get("task")) for r, c in zip(records, covered.tolist()) if not c})
            raise ValueError(f"no configured reward scores task(s) {tasks}; add a reward for them or drop them "
                             f"from data.mixture")
        return {"total": total, **out}
