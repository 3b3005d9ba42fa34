"""GEdit-Bench (Liu et al. 2025, "Step1X-Edit: A Practical Framework for General Image Editing",
github.com/stepfun-ai/Step1X-Edit, ``GEdit-Bench/``), run the way its scripts run it.

Input: records with ``task_type``, ``key``, ``instruction``, ``instruction_language`` (en / cn) and the source
image ``input_image`` (a path relative to the file; the Hugging Face release stores it inline, export it to files
first), as JSON lines or a JSON list. ShapeWorld's ``bench/gedit.jsonl`` adds ``source_scene``,
``target_scene`` and ``mask`` (pixels the edit may change). Output (``generate_image_example.py``)::

    OUT/fullset/<task_type>/<en|cn>/<key>.png          the edited image
    OUT/fullset/<task_type>/<en|cn>/<key>_SRCIMG.png   the source image
    OUT/results.jsonl   per sample, as the scoring script's CSV rows: source_image, edited_image, instruction,
                        semantics_score (SC), quality_score (PQ), instruction_language; plus overall_score, the
                        four sub-scores, task_type, key, sample_id, stratum, score
    OUT/summary.json    per language: per task type mean SC, PQ, O; and each averaged over task types

Scores (VIEScore, Ku et al. 2024, as GEdit uses it): per sample SC = min(instruction success, no over-editing)
and PQ = min(naturalness, no artifacts), each 0-10, and O = sqrt(SC x PQ) (``calculate_statistics.py``
recomputes O per sample, then averages); the benchmark's numbers are the unweighted means over task types of the
per-type means, per instruction language. The headline ``overall``, ``sc``, ``pq`` are those of English (GEdit-
Bench-EN, which the ARM paper reports) when present, else of the first language. Intervals: samples resampled
within each task type. How the ShapeWorld judge fills the four sub-scores: ``arm.eval.judges``.
Not GEdit's, ours: with a judge that parses scenes (the ShapeWorld judge), ``edit_success`` is the share of edits
whose image parses to the target scene (``target_match`` per row; a plain mean over edits, and per task type).
Not reproduced: GEdit's separate "intersection" subset (records flagged ``Intersection_exist``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from arm.data.shapeworld.render import decode_png
from arm.eval.common import Run, Skipped, batched, load_image, read_records, write_png
from arm.eval.results import write_results
from arm.eval.stats import bootstrap_ci, mean_of, mean_of_means, number


def _resize_like(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """GEdit's scorer resizes the edited image to the source's size before judging."""
    if image.shape[:2] == like.shape[:2]:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((like.shape[1], like.shape[0]), Image.BICUBIC))


def summarize_language(rows: list[dict], seed: int) -> dict:
    types = sorted({r["task_type"] for r in rows})
    out = {}
    for name, field in (("sc", "semantics_score"), ("pq", "quality_score"), ("overall", "overall_score")):
        strata = [[r[field] for r in rows if r["task_type"] == t] for t in types]
        out[name] = number(*bootstrap_ci(strata, mean_of_means, seed, stratified=True))
    out["per_type"] = {t: {name: number(*bootstrap_ci([[r[field] for r in rows if r["task_type"] == t]], mean_of,
                                                       seed))
                           for name, field in (("sc", "semantics_score"), ("pq", "quality_score"),
                                               ("overall", "overall_score"))} for t in types}
    out["counts"] = {t: sum(r["task_type"] == t for r in rows) for t in types}
    if rows and all(r.get("target_match") is not None for r in rows):
        out["edit_success"] = number(*bootstrap_ci([[r["target_match"] for r in rows]], mean_of, seed))
        for t in types:
            out["per_type"][t]["edit_success"] = number(*bootstrap_ci(
                [[r["target_match"] for r in rows if r["task_type"] == t]], mean_of, seed))
    return out


def summarize(rows: list[dict], seed: int) -> dict:
    languages = sorted({r["instruction_language"] for r in rows}, key=lambda lang: (lang != "en", lang))
    per_language = {lang: summarize_language([r for r in rows if r["instruction_language"] == lang], seed)
                    for lang in languages}
    headline = per_language[languages[0]] if languages else {
        k: number(math.nan, [math.nan, math.nan]) for k in ("sc", "pq", "overall")}
    extra = {"edit_success": headline["edit_success"]} if "edit_success" in headline else {}
    return {"overall": headline["overall"], "sc": headline["sc"], "pq": headline["pq"], **extra,
            "per_type": headline.get("per_type", {}), "headline_language": languages[0] if languages else None,
            "per_language": per_language}


def run_gedit(run: Run, data: str | Path, out: str | Path) -> dict:
    """Edit each source image, judge the pair, write the layout above; returns the summary."""
    data, out = Path(data), Path(out)
    records = read_records(data, run.limit)
    for i, record in enumerate(records):
        missing = [k for k in ("task_type", "key", "instruction", "instruction_language", "input_image")
                   if k not in record]
        if missing:
            raise ValueError(f"{data} record {i} lacks {missing}; GEdit records need task_type, key, instruction, "
                             "instruction_language and input_image")
    folder = [out / "fullset" / r["task_type"] / r["instruction_language"] for r in records]
    edited_paths = [f / f"{r['key']}.png" for f, r in zip(folder, records)]
    source_paths = [f / f"{r['key']}_SRCIMG.png" for f, r in zip(folder, records)]
    todo = [i for i in range(len(records)) if not (edited_paths[i].is_file() and source_paths[i].is_file())]
    for chunk in tqdm(list(batched(todo)), desc="gedit edit", unit="batch", disable=not run.progress):
        sources = [load_image(data.parent, records[i]["input_image"]) for i in chunk]
        run.model.prepare("edit", [{"instruction": records[i]["instruction"], "image": s,
                                    "target": records[i].get("target_scene")} for i, s in zip(chunk, sources)])
        edited = run.model.edit(sources, [records[i]["instruction"] for i in chunk], run.seed + chunk[0])
        for i, source, image in zip(chunk, sources, edited):
            write_png(source_paths[i], source)
            write_png(edited_paths[i], image)
    rows, skipped = [], Skipped()
    for i, record in enumerate(tqdm(records, desc="gedit judge", unit="sample", disable=not run.progress)):
        source = decode_png(source_paths[i].read_bytes())
        edited = _resize_like(decode_png(edited_paths[i].read_bytes()), source)
        mask = load_image(data.parent, record["mask"])[..., 0] > 127 if record.get("mask") else None
        parts = skipped.judge(lambda: run.judge.gedit(source, edited, record, mask), {"key": record["key"]})  # noqa: B023
        if parts is None:
            continue
        sc = min(parts["instruction_success"], parts["no_overediting"])
        pq = min(parts["naturalness"], parts["no_artifacts"])
        overall = math.sqrt(sc * pq)
        rows.append({
            "sample_id": str(record["key"]), "stratum": record["task_type"], "score": overall,
            "key": record["key"], "task_type": record["task_type"], "instruction": record["instruction"],
            "instruction_language": record["instruction_language"], "source_image": str(source_paths[i]),
            "edited_image": str(edited_paths[i]), "semantics_score": sc, "quality_score": pq,
            "overall_score": overall, **{k: parts[k] for k in ("instruction_success", "no_overediting",
                                                               "naturalness", "no_artifacts")},
            "reason": parts.get("reason", ""), "heldout": record.get("heldout"),
            **({"target_match": parts["target_match"]} if "target_match" in parts else {}),
        })
    summary = {**run.stamp("gedit"), "judge": run.judge.name, "records": len(records), **skipped.summary(),
               **summarize(rows, run.seed)}
    return write_results(out, rows, summary)
