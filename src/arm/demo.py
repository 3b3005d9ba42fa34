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
8. ``tokenizer_eval``  every tokenizer metric on val (``arm tokenizer eval``), and Table 7's row of this recipe
9. ``codes``      code shards of train/val/test and their code colour tables (``arm tokenizer encode``)
10. ``ar``        the unified AR model, SFT on understanding, text-to-image and editing (``arm ar fit``)
11. ``eval_sft``  every benchmark protocol on the test bench files (``arm eval all``)
12. ``cfg_grid``  the SFT model's AR-side x decoder-side CFG grid, ARM's figure 4 (``arm figures cfg-grid``)
13. ``rl_t2i``    GRPO on text-to-image from the SFT export (``arm rl fit``, experiments/rl/shapeworld_t2i.yaml)
14. ``eval_rl_t2i``  the same benchmarks for the RL policy
15. ``synergy``   change of every benchmark against SFT with paired-bootstrap intervals; Table 8's JSON
16. ``figures``   every figure and table that the results allow (``arm figures``); Table 7 with the demo's one
    row (``make table7`` trains all four variants, its own 30 minutes)
Training stages resume from their last checkpoint when cut off (``pipeline.run_fit``).

Demo budgets: the stages' own YAMLs carry each issue's full budget (teacher + LM + tokenizer <= 12 min, AR <= 15
min, RL <= 10 min); the whole demo must fit 30 minutes on 2 cores, so the ``Profile`` shortens the tokenizer (650
of its YAML's 1,100 steps), AR and RL runs, validates the AR run once (at its
end: each validation costs ~15-25 s of greedy VQA and sample grids), samples one image per GenEval prompt and
evaluates with images sampled and decoded in bf16 (``pipeline.eval_all``). The summary records what was run. Only
the text-to-image RL recipe runs here; ``make table8`` runs all four.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arm.io import write_json_atomic
from arm.pipeline import arm_command, eval_all
from arm.tokenizer.code_colours import CODE_COLOURS_FILE


@dataclass(frozen=True)
class Profile:
    """What a demo run uses: the world's size, the stages' YAML name, step budgets and eval settings.

    ``steps`` shortens the tokenizer, AR and RL runs (their YAMLs carry each issue's full budget, which together do
    not fit the demo's 30 minutes); ``steps["tokenizer_decoder"]`` pixel-decoder steps on the frozen codes follow the
    ``steps["tokenizer"]`` joint ones (the tokenizer's ``decoder_steps``); ``eval_n`` is images per GenEval prompt;
    ``eval_limit`` keeps only the first K records of each bench file (None = all)."""

    world: dict
    config: str
    steps: dict
    eval_n: int = 1
    eval_limit: int | None = None


PROFILES = {
    # AR: 2,000 of the YAML's 4,800 batch-16 steps, about the time of the 1,200 batch-32 steps it ran before (a step
    # of 16 costs 0.12 s against 0.195 s for 32, back to back; experiments/LOG.md, nineteenth session); 277 s in a
    # full demo on a fresh clone (twentieth session).
    # Tokenizer: 650 joint steps, then 600 of the decoder alone (~0.135 s a step against ~0.22 s a joint one).
    "shapeworld": Profile({"num_train": 20000, "num_val": 1000, "num_test": 1000, "resolution": 64}, "shapeworld",
                          {"tokenizer": 650, "tokenizer_decoder": 600, "ar": 2000, "rl": 40}),
    # The whole pipeline in about a minute, for the test suite: tiny world, every stage's tiny YAML.
    "tiny": Profile({"num_train": 64, "num_val": 32, "num_test": 32, "resolution": 64, "shard_size": 32,
                     "workers": 1}, "tiny", {"tokenizer": 4, "tokenizer_decoder": 2, "ar": 4, "rl": 2}, eval_n=1, eval_limit=4),
}
DEMO_WORLD = PROFILES["shapeworld"].world


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    run: Callable[[], dict]

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


def _score_geneval_ground_truth(bench: Path) -> dict:
    from arm.data.shapeworld.judge import score_geneval_image, summarize_geneval
    from arm.data.shapeworld.render import decode_png

    results = []
    for line in (bench / "geneval.jsonl").read_text().splitlines():
        record = json.loads(line)
        verdict = score_geneval_image(decode_png((bench / record["image"]).read_bytes()), record)
        results.append({"tag": record["tag"], "correct": verdict["correct"]})
    return summarize_geneval(results)


def run_demo(out: str = "results/demo", seed: int = 0, until: str | None = None, profile: str = "shapeworld"
             ) -> dict:
    """Run every stage that has not finished yet (up to and including ``until``); write ``OUT/summary.json``."""
    if profile not in PROFILES:
        raise ValueError(f"unknown demo profile {profile!r}; expected one of {sorted(PROFILES)}")
    prof = PROFILES[profile]
    from arm.data.shapeworld.figures import sample_grid
    from arm.data.shapeworld.writer import write_world
    from arm.data.text_tokenizer import build_text_tokenizer
    from arm.eval.results import git_hash

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = out_dir / "world"
    tokenizer = out_dir / "tokenizer.json"
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"git": git_hash(), "seed": seed, "profile": profile})
    summary.setdefault("timings_s", {})

    stages = [
        Stage("world", [world / "world.json"], lambda: write_world(str(world), seed=seed, **prof.world)),
        Stage("text_tok", [out_dir / "tokenizer.json"],
              lambda: build_text_tokenizer(str(world), str(out_dir / "tokenizer.json"))),
        Stage("figure", [out_dir / "figures" / "shapeworld_samples.png"],
              lambda: {"figure": str(sample_grid(world, out_dir / "figures" / "shapeworld_samples.png"))}),
        Stage("judge", [out_dir / "judge_ground_truth.json"], lambda: _judge_stage(world, out_dir)),
        Stage("teacher", [out_dir / "teacher" / "teacher" / "model.safetensors"],
              lambda: _fit_stage("teacher", out_dir / "teacher", prof, model={"tokenizer_path": str(tokenizer)},
                                 data={"data_dir": str(world)})),
        Stage("lm", [out_dir / "lm" / "lm" / "model.safetensors"],
              lambda: _fit_stage("lm", out_dir / "lm", prof, model={"tokenizer_path": str(tokenizer)},
                                 data={"data_dir": str(world)})),
        Stage("tokenizer", [out_dir / "tokenizer" / "tokenizer" / "model.safetensors"],
              lambda: _tokenizer_stage(world, out_dir, prof)),
        Stage("tokenizer_eval", [out_dir / "tokenizer_eval.json", out_dir / "table7.json"],
              lambda: _tokenizer_eval_stage(world, out_dir, prof, seed)),
        Stage("codes", [out_dir / "codes" / split / name for split in ("train", "val", "test")
                        for name in ("done.json", CODE_COLOURS_FILE)],
              lambda: _codes_stage(world, out_dir)),
        Stage("ar", [out_dir / "ar" / "ar" / "model.safetensors"],
              lambda: _fit_stage("ar", out_dir / "ar", prof,
                                 model={"tokenizer_path": str(tokenizer),
                                        "tokenizer_export": str(out_dir / "tokenizer" / "tokenizer"),
                                        "code_colours": str(out_dir / "codes" / "train" / CODE_COLOURS_FILE)},
                                 data={"data_dir": str(out_dir / "codes")},
                                 trainer={"max_steps": prof.steps["ar"], "val_check_interval": prof.steps["ar"]})),
        Stage("eval_sft", [out_dir / "eval" / "sft" / "summary.json"],
              lambda: _eval_stage(out_dir / "ar" / "ar", world, out_dir / "eval" / "sft", seed, prof)),
        Stage("cfg_grid", [out_dir / "cfg" / "sft" / "done.json"],
              lambda: _cfg_grid_stage(out_dir / "ar" / "ar", world, out_dir / "cfg" / "sft")),
        Stage("rl_t2i", [out_dir / "rl_t2i" / "ar" / "model.safetensors"],
              lambda: _fit_stage("rl", out_dir / "rl_t2i", prof, model={"init_from": str(out_dir / "ar" / "ar")},
                                 data={"data_dir": str(world)}, trainer={"max_steps": prof.steps["rl"]},
                                 config=f"experiments/rl/{'tiny' if profile == 'tiny' else 'shapeworld_t2i'}.yaml")),
        Stage("eval_rl_t2i", [out_dir / "eval" / "rl_t2i" / "summary.json"],
              lambda: _eval_stage(out_dir / "rl_t2i" / "ar", world, out_dir / "eval" / "rl_t2i", seed, prof)),
        Stage("synergy", [out_dir / "synergy" / "synergy.json", out_dir / "table8.json"],
              lambda: arm_command("eval", "synergy", "--sft", str(out_dir / "eval" / "sft"), "--recipe",
                           f"t2i={out_dir / 'eval' / 'rl_t2i'}", "--out", str(out_dir / "synergy"),
                           "--table8", str(out_dir / "table8.json"))),
        Stage("figures", [out_dir / "figures" / "report.json"],
              lambda: _figures_stage(out_dir)),
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
    _collect(summary)
    write_json_atomic(summary_path, summary)
    _print_table(summary)
    print(f"\nSummary: {summary_path}   Figures: {out_dir / 'figures'}")
    return summary


def _fit_stage(stage: str, run_dir: Path, prof: Profile, model: dict, data: dict, trainer: dict | None = None,
               config: str | None = None) -> dict:
    """Fit one LightningCLI stage with the profile's YAML; returns its last validation metrics."""
    from arm.pipeline import last_scalars, run_fit

    seconds = run_fit(stage, config or f"experiments/{stage}/{prof.config}.yaml", run_dir, model, data, trainer)
    return {"seconds": round(seconds, 1), **last_scalars(run_dir / "tb")}


def _tokenizer_stage(world: Path, out_dir: Path, prof: Profile) -> dict:
    """The tokenizer YAML at the profile's budget: ``tokenizer`` joint steps, then ``tokenizer_decoder`` steps of the
    pixel decoder alone; validated halfway and at the end."""
    decoder = prof.steps.get("tokenizer_decoder", 0)
    total = prof.steps["tokenizer"] + decoder
    return _fit_stage("tokenizer", out_dir / "tokenizer", prof,
                      model={"teacher_dir": str(out_dir / "teacher" / "teacher"), "lm_dir": str(out_dir / "lm" / "lm"),
                             "decoder_steps": decoder},
                      data={"data_dir": str(world)},
                      trainer={"max_steps": total, "val_check_interval": max(1, total // 2)})


def _codes_stage(world: Path, out_dir: Path) -> dict:
    """Code shards for every split; ``done.json`` marks a finished split (a cut-off split is encoded again)."""
    counts = {}
    for split in ("train", "val", "test"):
        target = out_dir / "codes" / split
        if (target / "done.json").exists() and (target / CODE_COLOURS_FILE).exists():
            continue  # (folders encoded before the colour table existed are encoded again)
        arm_command("tokenizer", "encode", "--ckpt", str(out_dir / "tokenizer" / "tokenizer"), "--shards",
             str(world / split), "--out", str(target), "--precision", "bf16")
        counts[split] = len(list(target.glob("*.tar")))
        write_json_atomic(target / "done.json", {"shards": counts[split]})
    return {"shards": counts}


def _eval_stage(ckpt: Path, world: Path, out: Path, seed: int, prof: Profile) -> dict:
    """``arm eval all`` on the world's test bench files, reduced to the summary shape of ``make demo``."""
    return eval_all(ckpt, world / "bench", out, seed, prof.eval_n, prof.eval_limit)


def _cfg_grid_stage(ckpt: Path, world: Path, out: Path) -> dict:
    """ARM's figure 4 for the SFT export: the first GenEval prompt of four tags at AR-side x decoder-side CFG
    1 / 1.5 / 3 (36 images); ``done.json`` marks it finished (the command keeps images already drawn)."""
    arm_command("figures", "cfg-grid", "--ckpt", str(ckpt), "--bench", str(world / "bench"), "--out", str(out))
    drawn = len(list((out / "cfg_grid").rglob("*.png")))
    write_json_atomic(out / "done.json", {"images": drawn})
    return {"images": drawn}


def _figures_stage(out_dir: Path) -> dict:
    arm_command("figures", "--results", str(out_dir), "--out", str(out_dir / "figures"))
    written = sorted(str(p.relative_to(out_dir)) for p in (out_dir / "figures").rglob("*.png"))
    write_json_atomic(out_dir / "figures" / "report.json", {"figures": written})
    return {"figures": written}


def _tokenizer_eval_stage(world: Path, out_dir: Path, prof: Profile, seed: int) -> dict:
    """``arm tokenizer eval`` on val (reconstructions beside it in ``OUT/recon`` for the figures), and
    ``OUT/table7.json`` with this recipe's row of Table 7 (``arm.tokenizer.table7.demo_table7``)."""
    from arm.pipeline import ROOT
    from arm.tokenizer.table7 import demo_table7

    arm_command("tokenizer", "eval", "--ckpt", str(out_dir / "tokenizer" / "tokenizer"), "--data", str(world), "--out",
         str(out_dir / "tokenizer_eval.json"), "--num-val", "1000", "--num-probe-train", "2000", "--recon-images",
         "256", "--batch-size", "64")
    report = json.loads((out_dir / "tokenizer_eval.json").read_text())
    demo_table7(report, ROOT / "experiments" / "tokenizer" / f"{prof.config}.yaml", out_dir / "table7.json", seed)
    keys = ("psnr", "semantic_recon_acc", "code_usage", "zero_shot_acc", "probe_acc", "fd_teacher", "rfid")
    out = {k: report[k] for k in keys if k in report}
    if "geneval_recon" in report:  # the generation ceiling through these codes
        out["geneval_recon_overall"] = report["geneval_recon"]["overall"]
    return out


def _judge_stage(world: Path, out_dir: Path) -> dict:
    result = _score_geneval_ground_truth(world / "bench")
    write_json_atomic(out_dir / "judge_ground_truth.json", result)
    return result


def _collect(summary: dict) -> None:
    """The issue's top-level summary blocks: tokenizer metrics, SFT and per-recipe benchmark results."""
    if "tokenizer_eval" in summary:
        summary["tokenizer"] = summary["tokenizer_eval"]
    if "eval_sft" in summary:
        summary["sft"] = summary["eval_sft"]
    recipes = {name[len("eval_rl_"):]: block for name, block in summary.items() if name.startswith("eval_rl_")}
    if recipes:
        summary["rl"] = recipes


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
    for name, block in [("sft", summary.get("sft"))] + sorted(summary.get("rl", {}).items()):
        if not block:
            continue
        for bench, key in (("geneval", "overall"), ("wise", "overall"), ("gedit", "overall"), ("vqa", "accuracy"),
                           ("mme", "acc_plus")):
            value = block.get(bench, {}).get(key)
            rows.append((f"{name} {bench} {key}", "n/a" if value is None else f"{value:.3f}"))
    width = max(len(r[0]) for r in rows) if rows else 10
    print("\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
