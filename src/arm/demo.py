"""``make demo``: the ARM recipe on the embedded ShapeWorld default, as far as it has been built.

Stages run in order; each one's outputs are checked before it runs, so a rerun skips finished stages and an
interrupted stage starts again (every stage writes its files atomically). Stages so far:

1. ``world``      ShapeWorld shards + benchmark files (``arm data shapeworld``)
2. ``text_tok``   byte-level BPE on the world's text (``arm data text-tokenizer``)
3. ``figure``     a sample grid: scenes with captions, edits with instructions and masks
4. ``judge``      the built-in judge scores every GenEval benchmark record's ground-truth image

Coming with later issues: teacher -> tokenizer -> codes -> AR model -> RL -> eval -> figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEMO_WORLD = {"num_train": 20000, "num_val": 1000, "num_test": 1000, "resolution": 64}


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    run: Callable[[], dict]

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


def _git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _score_geneval_ground_truth(bench: Path) -> dict:
    from arm.data.shapeworld.judge import score_geneval_image, summarize_geneval
    from arm.data.shapeworld.render import decode_png

    results = []
    for line in (bench / "geneval.jsonl").read_text().splitlines():
        record = json.loads(line)
        verdict = score_geneval_image(decode_png((bench / record["image"]).read_bytes()), record)
        results.append({"tag": record["tag"], "correct": verdict["correct"]})
    return summarize_geneval(results)


def run_demo(out: str = "results/demo", seed: int = 0) -> dict:
    """Run every stage that has not finished yet; write ``OUT/summary.json`` and print a summary table."""
    from arm.data.shapeworld.figures import sample_grid
    from arm.data.shapeworld.writer import write_world
    from arm.data.text_tokenizer import build_text_tokenizer

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = out_dir / "world"
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"git": _git_hash(), "seed": seed})
    summary.setdefault("timings_s", {})

    stages = [
        Stage("world", [world / "world.json"], lambda: write_world(str(world), seed=seed, **DEMO_WORLD)),
        Stage("text_tok", [out_dir / "tokenizer.json"],
              lambda: build_text_tokenizer(str(world), str(out_dir / "tokenizer.json"))),
        Stage("figure", [out_dir / "figures" / "shapeworld_samples.png"],
              lambda: {"figure": str(sample_grid(world, out_dir / "figures" / "shapeworld_samples.png"))}),
        Stage("judge", [out_dir / "judge_ground_truth.json"], lambda: _judge_stage(world, out_dir)),
    ]
    for i, stage in enumerate(stages, 1):
        label = f"[{i}/{len(stages)}] {stage.name}"
        if stage.done():
            print(f"{label}: done already, skipped")
            continue
        print(f"{label}: running")
        started = time.perf_counter()
        result = stage.run()
        summary["timings_s"][stage.name] = round(time.perf_counter() - started, 2)
        summary[stage.name] = result
        _write_json(summary_path, summary)
    _print_table(summary)
    print("\nNext (later issues): teacher -> tokenizer -> codes -> AR model -> RL -> eval -> figures.")
    print(f"Summary: {summary_path}   Figure: {out_dir / 'figures' / 'shapeworld_samples.png'}")
    return summary


def _judge_stage(world: Path, out_dir: Path) -> dict:
    result = _score_geneval_ground_truth(world / "bench")
    _write_json(out_dir / "judge_ground_truth.json", result)
    return result


def _print_table(summary: dict) -> None:
    rows = [(name, f"{secs:.1f}s") for name, secs in summary.get("timings_s", {}).items()]
    world = summary.get("world", {})
    if world:
        rows.append(("world samples", str(sum(world.get("counts", {}).values()))))
    if "text_tok" in summary:
        rows.append(("text vocab", str(summary["text_tok"].get("vocab_size"))))
    if "judge" in summary:
        rows.append(("GenEval on ground truth", f'{summary["judge"].get("overall", float("nan")):.3f}'))
    width = max(len(r[0]) for r in rows) if rows else 10
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
