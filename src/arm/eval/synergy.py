"""Cross-task synergy (ARM Table 8): the change each RL recipe brings on every benchmark, against SFT.

Reads only results folders of ``arm eval all`` (``DIR/<protocol>/results.jsonl``, the per-sample scores keyed by
``sample_id``). For each benchmark the two runs are matched unit by unit and the headline's difference is
bootstrapped over the matched units: a paired bootstrap, since each resample draws the same units for both runs,
so what the units share (a prompt's difficulty) cancels.

Every headline here is linear in its per-unit scores (a mean, an unweighted mean of stratum means, WISE's
weighted mean of group means), so recipe minus SFT equals the same statistic of the per-unit differences: the
bootstrap resamples those differences (within each stratum where the headline is built from strata, the way the
protocol's own interval is). The unit is what the benchmark draws independently: a GenEval prompt (its images
averaged), a WISE prompt, a GEdit sample (in the headline language), a VQA / POPE question, an MME image (acc:
the share of its two questions answered right; acc+: both right). With every unit matched, the point estimate is
exactly the difference of the two summaries; units present in one run only are left out and counted.

A change is flagged significant when its 95 % interval excludes 0. Nothing corrects for the many comparisons
(recipes x benchmarks): read a lone flag among many with that in mind.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arm.eval.figures_io import pyplot, save_figure
from arm.eval.results import SAMPLES_FILE, git_hash, read_jsonl
from arm.eval.stats import NUM_RESAMPLES, bootstrap_ci, mean_of, mean_of_means, number, weighted_mean_of_means
from arm.io import write_atomic, write_json_atomic


@dataclass(frozen=True)
class Benchmark:
    """One headline number and how to rebuild it from ``results.jsonl`` rows."""

    label: str
    protocol: str
    metric: str  # its key in the protocol's summary.json
    field: str = "score"  # per-row score
    combine: str = "pooled"  # pooled mean | strata (unweighted mean of stratum means) | wise (WISE's weights)
    unit: Callable[[dict], str] = lambda row: str(row["sample_id"])
    reduce: Callable[[list[float]], float] = lambda scores: float(np.mean(scores))


def _gedit(field: str, label: str, metric: str) -> Benchmark:
    return Benchmark(label, "gedit", metric, field=field, combine="strata")


BENCHMARKS: dict[str, Benchmark] = {
    "gedit_overall": _gedit("overall_score", "GEdit O (0-10)", "overall"),
    "gedit_sc": _gedit("semantics_score", "GEdit SC (0-10)", "sc"),
    "gedit_pq": _gedit("quality_score", "GEdit PQ (0-10)", "pq"),
    "gedit_success": Benchmark("Edit success", "gedit", "edit_success", field="target_match"),
    "geneval": Benchmark("GenEval", "geneval", "overall", combine="strata",
                         unit=lambda row: str(row["sample_id"]).split("/")[0]),
    "wise": Benchmark("WISE", "wise", "overall", combine="wise"),
    "vqa": Benchmark("VQA acc", "vqa", "accuracy"),
    "mme_acc": Benchmark("MME acc", "mme", "acc", unit=lambda row: str(row["sample_id"]).rsplit("#", 1)[0]),
    "mme_acc_plus": Benchmark("MME acc+", "mme", "acc_plus", unit=lambda row: str(row["sample_id"]).rsplit("#", 1)[0],
                              reduce=lambda scores: float(min(scores))),
    "pope_acc": Benchmark("POPE acc", "pope", "accuracy"),
}
"""Every benchmark the synergy analysis compares, by the key its tables use."""

RECIPE_LABELS = {"sft": "SFT", "t2i": "T2I RL", "edit": "Edit RL", "t2i_edit": "T2I → Edit",
                 "t2i_edit_joint": "T2I → Edit → Joint"}
"""The paper's Table 8 recipes by the short names ``--recipe NAME=DIR`` and table8.json use; other names show as
given."""


def recipe_label(name: str) -> str:
    return RECIPE_LABELS.get(name, name)


def headline_language(rows: list[dict]) -> str | None:
    """GEdit's headline language: English when present, else the first (``arm.eval.gedit.summarize``'s rule)."""
    languages = sorted({r.get("instruction_language") for r in rows}, key=lambda lang: (lang != "en", str(lang)))
    return languages[0] if languages else None


def read_units(folder: str | Path, bench: Benchmark, language: str | None = None,
               keep: Callable[[dict], bool] | None = None) -> dict[str, tuple[str, float]]:
    """``unit -> (stratum, score)`` for one benchmark of one ``arm eval all`` folder, from the rows ``keep``
    accepts (all by default); FileNotFoundError when the protocol's results.jsonl is missing."""
    path = Path(folder) / bench.protocol / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {path}")
    rows = read_jsonl(path)
    if bench.protocol == "gedit":
        rows = [r for r in rows if r.get("instruction_language") == (language or headline_language(rows))]
    if keep is not None:
        rows = [r for r in rows if keep(r)]
    if any(bench.field not in r for r in rows):  # e.g. edit success from a judge that does not parse scenes
        raise FileNotFoundError(f"{path} rows have no {bench.field!r}")
    grouped: dict[str, tuple[str, list[float]]] = {}
    for row in rows:
        stratum, scores = grouped.setdefault(bench.unit(row), (str(row["stratum"]), []))
        scores.append(float(row[bench.field]))
    return {unit: (stratum, bench.reduce(scores)) for unit, (stratum, scores) in grouped.items()}


def combine_strata(strata: Mapping[str, list[float]], combine: str = "pooled", seed: int = 0
                   ) -> tuple[float, list[float]]:
    """A headline and its bootstrap 95 % interval from per-unit numbers grouped by stratum, combined as the
    benchmark combines them (``Benchmark.combine``); NaN when there are none."""
    names = sorted(n for n in strata if strata[n])
    if not names:
        return math.nan, [math.nan, math.nan]
    if combine == "pooled":
        return bootstrap_ci([[d for name in names for d in strata[name]]], mean_of, seed)
    if combine == "strata":
        return bootstrap_ci([strata[n] for n in names], mean_of_means, seed, stratified=True)
    if combine == "wise":
        from arm.eval.wise import WISE_WEIGHTS

        unknown = set(names) - WISE_WEIGHTS.keys()
        if unknown:
            raise ValueError(f"WISE rows with groups {sorted(unknown)} outside {sorted(WISE_WEIGHTS)}")
        return bootstrap_ci([strata[n] for n in names], weighted_mean_of_means([WISE_WEIGHTS[n] for n in names]),
                            seed, stratified=True)
    raise ValueError(f"unknown combine {combine!r}; use pooled, strata or wise")


def paired_difference(sft: Mapping[str, tuple[str, float]], recipe: Mapping[str, tuple[str, float]],
                      combine: str = "pooled", seed: int = 0) -> dict:
    """The headline's change from ``sft`` to ``recipe`` over units in both with the same stratum:
    ``{"delta": {"value", "ci95"}, "significant", "matched", "unmatched_sft", "unmatched_recipe"}``."""
    matched = sorted(u for u in sft.keys() & recipe.keys() if sft[u][0] == recipe[u][0])
    strata: dict[str, list[float]] = {}
    for unit in matched:
        strata.setdefault(sft[unit][0], []).append(recipe[unit][1] - sft[unit][1])
    value, ci = combine_strata(strata, combine, seed)
    return {"delta": number(value, ci), "significant": bool(ci[0] > 0 or ci[1] < 0),
            "matched": len(matched), "unmatched_sft": len(sft) - len(matched),
            "unmatched_recipe": len(recipe) - len(matched)}


def _summary_value(folder: Path, bench: Benchmark) -> float | None:
    """The protocol's own headline value (for the table beside the change), None when unreadable."""
    try:
        return json.loads((folder / bench.protocol / "summary.json").read_text())[bench.metric]["value"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def synergy(sft: str | Path, recipes: Mapping[str, str | Path], seed: int = 0,
            benchmarks: Mapping[str, Benchmark] = BENCHMARKS) -> dict:
    """Every recipe's change on every benchmark against ``sft`` (all ``arm eval all`` folders). A benchmark that
    a folder lacks is recorded as ``{"skipped": reason}``, never an error."""
    sft = Path(sft)
    if not sft.is_dir():
        raise FileNotFoundError(f"no SFT results folder at {str(sft)!r}; write it with `arm eval all --out DIR`")
    rows: dict[str, dict] = {}
    for name, folder in recipes.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no results folder for recipe {name!r} at {str(folder)!r}")
        rows[name] = {}
        for key, bench in benchmarks.items():
            try:
                base = read_units(sft, bench)
                language = None
                if bench.protocol == "gedit":
                    language = headline_language(read_jsonl(sft / "gedit" / SAMPLES_FILE))
                other = read_units(folder, bench, language)
            except FileNotFoundError as err:
                rows[name][key] = {"skipped": str(err)}
                continue
            rows[name][key] = {"sft": _summary_value(sft, bench), "recipe": _summary_value(folder, bench),
                               **paired_difference(base, other, bench.combine, seed)}
    return {"sft": str(sft), "recipes": {k: str(v) for k, v in recipes.items()},
            "benchmarks": {k: {"label": b.label, "protocol": b.protocol, "metric": b.metric}
                           for k, b in benchmarks.items()},
            "rows": rows, "seed": seed, "num_resamples": NUM_RESAMPLES, "git": git_hash(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _signed(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def markdown(result: Mapping) -> str:
    """Rows = recipes, columns = benchmarks; each cell the change [95 % interval], ``*`` when it excludes 0."""
    keys = [k for k in result["benchmarks"] if any("delta" in r.get(k, {}) for r in result["rows"].values())]
    lines = ["# Cross-task synergy: change against SFT (paired bootstrap 95 % interval; * = excludes 0)", "",
             "| recipe | " + " | ".join(result["benchmarks"][k]["label"] for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for name, row in result["rows"].items():
        cells = []
        for k in keys:
            cell = row.get(k, {})
            if "delta" not in cell:
                cells.append("–")
                continue
            lo, hi = cell["delta"]["ci95"]
            cells.append(f"{_signed(cell['delta']['value'])} [{_signed(lo)}, {_signed(hi)}]"
                         + (" *" if cell["significant"] else ""))
        lines.append(f"| {recipe_label(name)} | " + " | ".join(cells) + " |")
    skipped = sorted({k for r in result["rows"].values() for k, c in r.items() if "skipped" in c})
    lines += ["", f"SFT: `{result['sft']}`; {result['num_resamples']} resamples, seed {result['seed']}, "
              f"git {str(result['git'])[:10]}, {result['date']}. No correction for multiple comparisons."]
    if skipped:
        lines.append(f"Not compared (missing results): {', '.join(skipped)}.")
    return "\n".join(lines) + "\n"


def synergy_figsize(num_benchmarks: int, num_recipes: int) -> tuple[float, float]:
    """Inches of the synergy chart: up to four benchmark panels a row, each tall enough for its recipes' bars."""
    cols = min(4, max(num_benchmarks, 1))
    rows = math.ceil(max(num_benchmarks, 1) / cols)
    return 3.2 * cols, rows * (0.9 + 0.35 * max(num_recipes, 1)) + 0.5


def plot_synergy(result: Mapping, png: str | Path) -> list[Path]:
    """One panel per benchmark, one bar per recipe: the change with its interval; solid = significant."""
    plt = pyplot()
    keys = [k for k in result["benchmarks"] if any("delta" in r.get(k, {}) for r in result["rows"].values())]
    if not keys:
        raise ValueError("no benchmark was compared (every results.jsonl missing); nothing to draw")
    recipes = list(result["rows"])
    labels = [recipe_label(name) for name in recipes]
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=synergy_figsize(len(keys), len(recipes)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, key in zip(axes.flat, keys):
        for i, name in enumerate(recipes):
            cell = result["rows"][name].get(key, {})
            value = (cell.get("delta") or {}).get("value")
            if value is None:
                continue
            lo, hi = cell["delta"]["ci95"]
            solid = cell["significant"]
            ax.barh(i, value, color=colors(i % 10) if solid else "white", edgecolor=colors(i % 10),
                    hatch=None if solid else "///", height=0.6)
            ax.errorbar(value, i, xerr=[[value - lo], [hi - value]], color="black", capsize=3, lw=1)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(recipes)), labels)
        ax.invert_yaxis()
        ax.set_title(result["benchmarks"][key]["label"])
        ax.set_xlabel("change vs SFT")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("Cross-task synergy: change against SFT, 95 % paired-bootstrap interval (solid = excludes 0)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, png)


def write_synergy(result: Mapping, out: str | Path) -> list[Path]:
    """``OUT/synergy.json``, ``OUT/synergy.md`` and the chart ``OUT/synergy.{png,pdf}``; returns the paths."""
    out = Path(out)
    write_json_atomic(out / "synergy.json", result)
    write_atomic(out / "synergy.md", markdown(result).encode())
    written = [out / "synergy.json", out / "synergy.md"]
    if any("delta" in c for r in result["rows"].values() for c in r.values()):
        written += plot_synergy(result, out / "synergy.png")
    return written
