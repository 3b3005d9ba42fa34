"""The optimiser every stage uses: AdamW with decoupled weight decay on matrices only, linear warm-up, cosine decay.

ARM §2 trains with AdamW, betas (0.9, 0.95); warm-up then cosine is the usual schedule around it. The cosine runs
to zero at ``trainer.max_steps``; with no step budget (a streaming loader has no length) the rate stays constant
after warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch


def warmup_cosine_factor(warmup_steps: int, total_steps: int | None):
    """The learning-rate multiplier as a function of the step: linear warm-up, then cosine to zero at total."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total_steps is None or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def two_phase_factor(warmup_steps: int, first_steps: int, total_steps: int,
                     second_scale: float = 1.0) -> Callable[[int], float]:
    """``warmup_cosine_factor`` over steps [0, first_steps), then again, from a fresh warm-up, over [first_steps,
    total_steps), times ``second_scale``: the first phase is scheduled exactly as a run of ``first_steps`` alone
    would be, and a second phase that trains only some of the parameters (a decoder alone on frozen codes) gets its
    own warm-up, cosine and peak rate."""
    if not 0 < first_steps < total_steps:
        raise ValueError(f"the first phase must end inside the run: got {first_steps} of {total_steps} steps")
    if second_scale <= 0:
        raise ValueError(f"the second phase's rate scale must be > 0, got {second_scale}")
    first = warmup_cosine_factor(warmup_steps, first_steps)
    second = warmup_cosine_factor(warmup_steps, total_steps - first_steps)
    return lambda step: first(step) if step < first_steps else second_scale * second(step - first_steps)


def adamw_warmup_cosine(
    params: Iterable[torch.nn.Parameter] | Iterable[tuple[Iterable[torch.nn.Parameter], float]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup_steps: int,
    total_steps: int | None,
    factor: Callable[[int], float] | None = None,
) -> dict[str, Any]:
    """``configure_optimizers``'s return value: decay on tensors with >= 2 dims (not norms, biases, scalars).

    ``params`` is either parameters, all at ``lr``, or ``(parameters, lr_scale)`` pairs, each part at ``lr x
    lr_scale`` under the same warm-up and cosine (a parameter listed twice is an error). ``factor``: a step ->
    multiplier schedule (e.g. ``two_phase_factor``) in place of the warm-up and cosine."""
    items = list(params)
    parts = items if items and isinstance(items[0], tuple) else [(items, 1.0)]
    groups, seen = [], set()
    for part, scale in parts:
        if scale <= 0:
            raise ValueError(f"a learning-rate scale must be > 0, got {scale}")
        part = [p for p in part if p.requires_grad]
        if seen & {id(p) for p in part}:
            raise ValueError("a parameter appears in two learning-rate groups")
        seen |= {id(p) for p in part}
        for decay in (True, False):
            chosen = [p for p in part if (p.ndim >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale})
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    from arm.parallel import is_sharded, materialize_optimizer_state

    if is_sharded(params):  # FSDP2: a distributed checkpoint needs state for every parameter (see there)
        materialize_optimizer_state(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor or warmup_cosine_factor(warmup_steps, total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer_total_steps(module) -> int | None:
    """``trainer.max_steps`` when the module is attached to a trainer with a step budget, else ``None``."""
    trainer = getattr(module, "_trainer", None)
    return trainer.max_steps if trainer is not None and trainer.max_steps and trainer.max_steps > 0 else None
