"""WISE (Niu et al. 2025, "WISE: A World Knowledge-Informed Semantic Evaluation for Text-to-Image Generation",
github.com/PKU-YuanGroup/WISE), run the way its scripts run it.

Input: WISE's JSON files (``data/cultural_common_sense.json`` ...: a JSON list of records with ``prompt_id``,
``Prompt``, ``Explanation``, ``Category``, ``Subcategory``), or JSON lines of the same records (ShapeWorld's
``bench/wise.jsonl``, whose records add resolved ``requirements``). Output::

    OUT/<prompt_id>.png      one image per prompt (``gpt_eval.py`` reads IMAGE_DIR/<prompt_id>.png)
    OUT/results.jsonl        per prompt, as ``gpt_eval.py``'s scores file: prompt_id, Subcategory,
                             consistency, realism, aesthetic_quality; plus Category, wiscore, group,
                             sample_id, stratum, score
    OUT/summary.json         per-group and per-category mean WiScore and the overall

Scores (``Calculate.py``): WiScore = (0.7 consistency + 0.2 realism + 0.1 aesthetic quality) / 2 per image,
each part in [0, 2], so WiScore is in [0, 1]. WISE averages WiScore within six groups and weights the group
means: overall = 0.4 Cultural + 0.167 Time + 0.133 Space + 0.1 Biology + 0.1 Physics + 0.1 Chemistry (each
weight is the group's share of WISE's 1000 prompts). Groups come from ``prompt_id`` ranges in WISE's own
files (1-400, 401-567, 568-700, 701-800, 801-900, 901-1000); for records with resolved ``requirements`` (ours,
numbered from 0) they come from ``Category`` and ``Subcategory`` (Spatio-temporal subcategories naming time ->
Time, the others -> Space; Natural science by its subcategory). When a group has no records the remaining
weights are renormalised (stated in the summary as ``weights``). Per-category scores (WISE's three categories)
are plain means. Intervals: prompts resampled within each group.

Prompts the judge cannot score (a real WISE prompt under the ShapeWorld judge) are counted as ``unsupported``;
replies of a VLM judge without readable scores as ``judge_failed``; both are left out of the averages. An
unreachable judge stops the run (``JudgeUnavailable``).
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from arm.data.shapeworld.render import decode_png
from arm.eval.common import Run, Skipped, batched, read_records, write_png
from arm.eval.results import write_results
from arm.eval.stats import bootstrap_ci, mean_of, number, weighted_mean_of_means

WISE_WEIGHTS = {"CULTURE": 0.4, "TIME": 0.167, "SPACE": 0.133, "BIOLOGY": 0.1, "PHYSICS": 0.1, "CHEMISTRY": 0.1}
"""WISE's overall weights per group (``Calculate.py``)."""

WISE_ID_RANGES = {"CULTURE": (1, 400), "TIME": (401, 567), "SPACE": (568, 700), "BIOLOGY": (701, 800),
                  "PHYSICS": (801, 900), "CHEMISTRY": (901, 1000)}
"""The group of each ``prompt_id`` in WISE's own files (``Calculate.py``)."""


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    return (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2


def wise_group(record: dict) -> str:
    """One of ``WISE_WEIGHTS``' groups (see the module docstring); ValueError when none applies."""
    if "requirements" not in record:
        pid = int(record["prompt_id"])
        for group, (low, high) in WISE_ID_RANGES.items():
            if low <= pid <= high:
                return group
        raise ValueError(f"WISE prompt_id {pid} is outside WISE's 1-1000; records of other files need "
                         "`requirements` or ids in WISE's ranges")
    category, sub = record.get("Category", "").lower(), record.get("Subcategory", "").lower()
    if "cultur" in category:
        return "CULTURE"
    if "spatio" in category or "temporal" in category:
        return "TIME" if "time" in sub else "SPACE"
    for group in ("BIOLOGY", "PHYSICS", "CHEMISTRY"):
        if group.lower() in sub:
            return group
    raise ValueError(f"record {record.get('prompt_id')} has no WISE group (Category {record.get('Category')!r}, "
                     f"Subcategory {record.get('Subcategory')!r})")


def summarize(rows: list[dict], seed: int) -> dict:
    groups = [g for g in WISE_WEIGHTS if any(r["group"] == g for r in rows)]
    strata = [[r["wiscore"] for r in rows if r["group"] == g] for g in groups]
    weights = [WISE_WEIGHTS[g] for g in groups]
    categories = sorted({r["Category"] for r in rows})
    overall = bootstrap_ci(strata, weighted_mean_of_means(weights), seed, stratified=True) if groups \
        else (float("nan"), [float("nan")] * 2)
    total = sum(weights)
    return {
        "overall": number(*overall),
        "per_group": {g: number(*bootstrap_ci([s], mean_of, seed)) for g, s in zip(groups, strata)},
        "per_category": {c: number(*bootstrap_ci([[r["wiscore"] for r in rows if r["Category"] == c]], mean_of,
                                                 seed)) for c in categories},
        "weights": {g: w / total for g, w in zip(groups, weights)},
        "counts": {g: len(s) for g, s in zip(groups, strata)},
    }


def run_wise(run: Run, data: str | Path, out: str | Path) -> dict:
    """Generate one image per prompt, judge it, write the layout above; returns the summary."""
    data, out = Path(data), Path(out)
    records = read_records(data, run.limit)
    for i, record in enumerate(records):
        missing = [k for k in ("prompt_id", "Prompt", "Category", "Subcategory") if k not in record]
        if missing:
            raise ValueError(f"{data} record {i} lacks {missing}; WISE records need prompt_id, Prompt, "
                             "Explanation, Category and Subcategory")
    paths = [out / f"{r['prompt_id']}.png" for r in records]
    run.model.prepare("generate", [{"prompt": r["Prompt"], "scene": r.get("scene")} for r in records])
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    for chunk in tqdm(list(batched(todo)), desc="wise generate", unit="batch", disable=not run.progress):
        images = run.model.generate([records[i]["Prompt"] for i in chunk], 1, run.seed + chunk[0])
        for i, per_prompt in zip(chunk, images):
            write_png(paths[i], per_prompt[0])
    rows, skipped = [], Skipped()
    for record, path in tqdm(list(zip(records, paths)), desc="wise judge", unit="prompt", disable=not run.progress):
        image = decode_png(path.read_bytes())
        parts = skipped.judge(lambda: run.judge.wise(image, record), {"prompt_id": record["prompt_id"]})  # noqa: B023
        if parts is None:
            continue
        score = wiscore(parts["consistency"], parts["realism"], parts["aesthetic_quality"])
        group = wise_group(record)
        rows.append({
            "sample_id": str(record["prompt_id"]), "stratum": group, "score": score, "prompt_id": record["prompt_id"],
            "Category": record["Category"], "Subcategory": record["Subcategory"], "group": group,
            "consistency": parts["consistency"], "realism": parts["realism"],
            "aesthetic_quality": parts["aesthetic_quality"], "wiscore": score, "reason": parts.get("reason", ""),
            "image_path": str(path), "heldout": record.get("heldout"),
        })
    summary = {**run.stamp("wise"), "judge": run.judge.name, "records": len(records), **skipped.summary(),
               **summarize(rows, run.seed)}
    return write_results(out, rows, summary)
