"""RL reward curves read from TensorBoard event files (``tensorboard``'s ``EventAccumulator``; no TensorFlow).

Every folder under the results root that holds ``events.out.tfevents.*`` is a run; its training reward scalars
(tags starting with ``train/reward`` or ``reward/``: the GRPO module's mean reward and its parts, e.g.
``reward/total``) are drawn against the step, one panel per tag, one line per run, each with a light raw line
and a moving average over ``SMOOTH`` logged points. Validation rewards (``val/...``) and per-group breakdowns
(``reward_tag/...``) are left out: one panel each would bury the curves that matter.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from arm.eval.figures_io import pyplot, save_figure

REWARD_PREFIXES = ("train/reward", "reward/")
SMOOTH = 10


def event_dirs(root: str | Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold TensorBoard event files."""
    return sorted({p.parent for p in Path(root).rglob("events.out.tfevents.*")})


def read_scalars(log_dir: str | Path, prefixes: tuple[str, ...] = REWARD_PREFIXES
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``tag -> (steps, values)`` of every scalar tag starting with one of ``prefixes`` in one event folder, every point
    kept (no reservoir sampling), sorted by step; a step logged twice (a resumed run) keeps its last value."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith(prefixes):
            by_step = {e.step: e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.wall_time)}
            steps = np.array(sorted(by_step), dtype=np.int64)
            out[tag] = (steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return out


def run_label(log_dir: Path, root: Path) -> str:
    """A run's name: its folder relative to ``root`` without Lightning's ``logs/version_N`` tail."""
    rel = log_dir.relative_to(root).as_posix() if log_dir != root else root.name
    return re.sub(r"(/(logs|lightning_logs|tensorboard))?(/version_\d+)?$", "", rel) or rel


def moving_average(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing mean over up to ``window`` points (shorter at the start), same length as ``values``."""
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[start]) / (idx - start)


def reward_curves(runs: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], png: str | Path) -> list[Path]:
    """One panel per reward tag, one line per run (raw faint, smoothed solid)."""
    tags = sorted({t for scalars in runs.values() for t in scalars},
                  key=lambda t: (t not in ("train/reward", "reward/total"), t))
    if not tags:
        raise ValueError(f"no {' or '.join(REWARD_PREFIXES)}* scalars in the event files")
    plt = pyplot()
    cols = min(3, len(tags))
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows + 0.4), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, tag in zip(axes.flat, tags):
        for i, (name, scalars) in enumerate(sorted(runs.items())):
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps, values, color=colors(i % 10), alpha=0.25, lw=0.8)
                ax.plot(steps, moving_average(values), color=colors(i % 10), lw=1.6, label=name)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    fig.suptitle(f"RL rewards (solid: moving average over {SMOOTH} logged points)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    return save_figure(fig, png)
