"""``make demo``: the ARM recipe on the embedded ShapeWorld default, as far as it has been built.

Stages run in order; each one's outputs are checked before it runs, so a rerun skips finished stages and an
interrupted stage starts again (every stage writes its files atomically). Stages so far:

1. ``world``      ShapeWorld shards + benchmark files (``arm data shapeworld``)
2. ``text_tok``   byte-level BPE on the world's text (``arm data text-tokenizer``)
3. ``figure``     a sample grid: scenes with captions, edits with instructions and masks
4. ``judge``      the built-in judge scores every GenEval benchmark record's ground-truth image
5. ``teacher``    the language-aligned teacher (``arm teacher fit``, experiments/teacher/shapeworld.yaml)
6. ``lm``         the small caption LM for L_cap (``arm lm fit``, experiments/lm/shapeworld.yaml)
7. ``tokenizer``  the discrete tokenizer with its four losses (``arm tokenizer fit``)
8. ``tokenizer_eval``  every tokenizer metric on val (``arm tokenizer eval``)
Training stages resume from their last checkpoint when cut off (``pipeline.run_fit``).

Coming with later issues: codes -> AR model -> RL -> eval -> figures.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arm.io import write_json_atomic

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


def _score_geneval_ground_truth(bench: Path) -> dict:
    from arm.data.shapeworld.judge import score_geneval_image, summarize_geneval
    from arm.data.shapeworld.render import decode_png

    results = []
    for line in (bench / "geneval.jsonl").read_text().splitlines():
        record = json.loads(line)
        verdict = score_geneval_image(decode_png((bench / record["image"]).read_bytes()), record)
        results.append({"tag": record["tag"], "correct": verdict["correct"]})
    return summarize_geneval(results)


def run_demo(out: str = "results/demo", seed: int = 0, until: str | None = None) -> dict:
    """Run every stage that has not finished yet (up to and including ``until``); write ``OUT/summary.json``."""
    from arm.data.shapeworld.figures import sample_grid
    from arm.data.shapeworld.writer import write_world
    from arm.data.text_tokenizer import build_text_tokenizer

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = out_dir / "world"
    tokenizer = out_dir / "tokenizer.json"
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
        Stage("teacher", [out_dir / "teacher" / "teacher" / "model.safetensors"],
              lambda: _fit_stage("teacher", out_dir / "teacher", model={"tokenizer_path": str(tokenizer)},
                                 data={"data_dir": str(world)})),
        Stage("lm", [out_dir / "lm" / "lm" / "model.safetensors"],
              lambda: _fit_stage("lm", out_dir / "lm", model={"tokenizer_path": str(tokenizer)},
                                 data={"data_dir": str(world)})),
        Stage("tokenizer", [out_dir / "tokenizer" / "tokenizer" / "model.safetensors"],
              lambda: _fit_stage("tokenizer", out_dir / "tokenizer",
                                 model={"teacher_dir": str(out_dir / "teacher" / "teacher"),
                                        "lm_dir": str(out_dir / "lm" / "lm")},
                                 data={"data_dir": str(world)})),
        Stage("tokenizer_eval", [out_dir / "tokenizer_eval.json"], lambda: _tokenizer_eval_stage(world, out_dir)),
    ]
    if until is not None:
        names = [s.name for s in stages]
        if until not in names:
            raise ValueError(f"unknown demo stage {until!r}; expected one of {names}")
        stages = stages[: names.index(until) + 1]
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
        write_json_atomic(summary_path, summary)
    _print_table(summary)
    print("\nNext (later issues): codes -> AR model -> RL -> eval -> figures.")
    print(f"Summary: {summary_path}   Figure: {out_dir / 'figures' / 'shapeworld_samples.png'}")
    return summary


def _fit_stage(stage: str, run_dir: Path, model: dict, data: dict) -> dict:
    """Fit one LightningCLI stage with its embedded-default YAML; returns its last validation metrics."""
    from arm.pipeline import last_scalars, run_fit

    seconds = run_fit(stage, f"experiments/{stage}/shapeworld.yaml", run_dir, model, data)
    return {"seconds": round(seconds, 1), **last_scalars(run_dir / "tb")}


def _tokenizer_eval_stage(world: Path, out_dir: Path) -> dict:
    import argparse

    from arm.tokenizer.tools import run_eval

    ns = argparse.Namespace(ckpt=str(out_dir / "tokenizer" / "tokenizer"), data=str(world),
                            out=str(out_dir / "tokenizer_eval.json"), num_val=1000, num_probe_train=2000,
                            recon_images=256, steps=10, cfg=1.0, batch_size=64)
    run_eval(ns)
    report = json.loads((out_dir / "tokenizer_eval.json").read_text())
    keys = ("psnr", "semantic_recon_acc", "code_usage", "zero_shot_acc", "probe_acc", "fd_teacher", "rfid")
    return {k: report[k] for k in keys if k in report}


def _judge_stage(world: Path, out_dir: Path) -> dict:
    result = _score_geneval_ground_truth(world / "bench")
    write_json_atomic(out_dir / "judge_ground_truth.json", result)
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
    for key, value in summary.get("tokenizer_eval", {}).items():
        rows.append((f"tokenizer {key}", json.dumps(value) if isinstance(value, dict) else f"{value:.3f}"))
    width = max(len(r[0]) for r in rows) if rows else 10
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
