"""``make table8``: ARM's Table 8 (cross-task synergy of the RL recipes, paper §3) on the embedded default.

Starting from the demo's SFT export (``make demo`` writes ``results/demo/ar/ar``), it trains the four recipes of
Table 8 with their YAMLs, chained as in the paper: text-to-image only and edit only start from SFT, "T2I -> Edit"
continues the text-to-image policy on edits, "T2I -> Edit -> Joint" continues that one on a 50/50 mixture; the
two chained recipes export a weight interpolation toward SFT (``merge_alpha`` in their YAMLs, ``merge_base`` = the
SFT export: ``GRPOModule``). Each
export is evaluated with every protocol of ``arm eval all`` on the world's test bench (the SFT evaluation of the
demo is reused when it exists), then ``arm eval synergy`` pairs every recipe with SFT sample by sample and writes
``results/table8.json``; ``results/table8.md`` holds our rows with 95% intervals beside the paper's.

Like ``make demo`` it skips finished recipes and evaluations and resumes a cut-off recipe from its last checkpoint.
Simplification: one image per GenEval prompt (the demo's setting), to fit the issue's 60-minute budget.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from arm.io import write_atomic, write_json_atomic
from arm.pipeline import ROOT, arm_command, eval_all, model_settings, run_fit

RECIPES = (
    # (Table 8 row key, recipe YAML under experiments/rl/, the row whose export it starts from)
    ("t2i", "shapeworld_t2i", "sft"),
    ("edit", "shapeworld_edit", "sft"),
    ("t2i_edit", "shapeworld_t2i_edit", "t2i"),
    ("t2i_edit_joint", "shapeworld_t2i_edit_joint", "t2i_edit"),
)
EVAL_N = 1
"""Images per GenEval prompt (as ``make demo``)."""


TINY_MIXTURES = {"t2i": {"t2i": 1.0}, "edit": {"edit": 1.0}, "t2i_edit": {"edit": 1.0},
                 "t2i_edit_joint": {"t2i": 0.5, "edit": 0.5}}
"""Each recipe's task mixture, for the ``tiny`` profile where every recipe runs ``experiments/rl/tiny.yaml``."""


def recipe_merge_alpha(recipe: str) -> float:
    """The ``model.merge_alpha`` a recipe YAML under experiments/rl/ sets (else ``GRPOModule``'s default)."""
    from arm.rl.module import GRPOModule

    return float(model_settings(GRPOModule, ROOT / "experiments" / "rl" / f"{recipe}.yaml")["merge_alpha"])


def run_table8(out: str = "results", demo: str = "results/demo", seed: int = 0, profile: str = "shapeworld",
               eval_limit: int | None = None) -> dict:
    """Train, evaluate and tabulate every recipe; returns Table 8's JSON (also written to ``OUT/table8.json``).

    ``profile="tiny"`` (tests) runs every recipe with ``experiments/rl/tiny.yaml`` and its own task mixture on a
    tiny demo folder; ``eval_limit`` keeps the first K records of each bench file."""
    if profile not in ("shapeworld", "tiny"):
        raise ValueError(f"unknown profile {profile!r}; expected 'shapeworld' or 'tiny'")
    from arm.eval.figures_tables import table8_markdown

    out_dir, demo_dir = Path(out), Path(demo)
    world, sft = demo_dir / "world", demo_dir / "ar" / "ar"
    if not (sft / "model.safetensors").is_file():
        raise FileNotFoundError(f"no SFT export at {sft}: run `make demo` (stage ar) first")
    work = out_dir / "table8"
    exports = {"sft": sft}
    evals = {"sft": demo_dir / "eval" / "sft"}
    timings: dict[str, float] = {}
    if not (evals["sft"] / "summary.json").exists():
        evals["sft"] = work / "eval" / "sft"
    for name, recipe, parent in RECIPES:
        run_dir = work / "rl" / name
        exports[name] = run_dir / "ar"
        if not (exports[name] / "model.safetensors").exists():
            print(f"[table8] {name}: GRPO from {parent} ({recipe}.yaml)")
            started = time.perf_counter()
            data = {"data_dir": str(world)}
            if profile == "tiny":
                recipe, data["mixture"] = "tiny", TINY_MIXTURES[name]
            # merge_base: the chained recipes interpolate their export toward SFT (merge_alpha in their YAMLs)
            run_fit("rl", f"experiments/rl/{recipe}.yaml", run_dir,
                    {"init_from": str(exports[parent]), "merge_base": str(sft)}, data, checkpoint_every=10)
            timings[f"rl_{name}"] = round(time.perf_counter() - started, 1)
        evals[name] = work / "eval" / name
    for name, folder in evals.items():
        if not (folder / "summary.json").exists():
            print(f"[table8] eval {name}")
            started = time.perf_counter()
            eval_all(exports[name], world / "bench", folder, seed, EVAL_N, eval_limit)
            timings[f"eval_{name}"] = round(time.perf_counter() - started, 1)
    table_path = out_dir / "table8.json"
    if table_path.exists():  # a resumed run keeps the timings of the stages it skipped
        try:
            timings = {**json.loads(table_path.read_text()).get("timings_s", {}), **timings}
        except (json.JSONDecodeError, AttributeError):
            pass  # an unreadable table is rewritten below
    recipes = [arg for name, _, _ in RECIPES for arg in ("--recipe", f"{name}={evals[name]}")]
    arm_command("eval", "synergy", "--sft", str(evals["sft"]), *recipes, "--out", str(work / "synergy"),
                "--table8", str(table_path), "--seed", str(seed))
    table = json.loads(table_path.read_text())
    table["timings_s"] = timings
    table["merge_alpha"] = {name: recipe_merge_alpha("tiny" if profile == "tiny" else recipe)
                            for name, recipe, _ in RECIPES}
    write_json_atomic(table_path, table)
    write_atomic(out_dir / "table8.md", (table8_markdown(table) + "\n").encode())
    print(f"wrote {table_path} and {out_dir / 'table8.md'}")
    return table


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="arm rl table8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results", help="writes OUT/table8.{json,md} and OUT/table8/ (runs)")
    parser.add_argument("--demo", default="results/demo", help="the demo folder (SFT export, world, SFT eval)")
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    run_table8(ns.out, ns.demo, ns.seed)
    return 0
