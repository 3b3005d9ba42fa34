"""GenEval (Ghosh et al. 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment",
github.com/djghosh13/geneval), run the way its scripts run it.

Input: the metadata JSONL (``prompts/evaluation_metadata.jsonl``: one record per line with ``tag``, ``include``,
``exclude``?, ``prompt``; ShapeWorld's ``bench/geneval.jsonl`` adds fields GenEval ignores).
Output layout (``generation/diffusers_generate.py``)::

    OUT/00000/metadata.jsonl        the record, one JSON object (GenEval reads it with json.load)
    OUT/00000/samples/0000.png ...  N images per prompt
    OUT/results.jsonl               per image (``evaluation/evaluate_images.py``): filename, tag, prompt,
                                    correct, reason, metadata (the record as a JSON string), details
                                    (detections as a JSON string); plus sample_id "00000/0000", stratum, score
    OUT/summary.json                ``evaluation/summary_scores.py``: images, prompts, share of correct images
                                    and of prompts with any correct image, accuracy per tag, and overall =
                                    the unweighted mean of the tag accuracies

Every prompt is generated, so the folder can also go through GenEval's own detector; only records the judge
supports are scored, the others are listed under ``unsupported`` and counted. Images already on disk are kept
(a cut-off run resumes). Intervals: prompts are resampled within each tag (a prompt's N images share its
difficulty, so the prompt is the independent unit), and the overall's interval resamples every tag at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from arm.data.shapeworld.judge import UnsupportedRecord
from arm.data.shapeworld.render import decode_png
from arm.data.shapeworld.world import GENEVAL_TAGS
from arm.eval.common import Run, batched, read_records, write_png, write_quick
from arm.eval.results import write_results
from arm.eval.stats import bootstrap_ci, mean_of, mean_of_means, number

GENEVAL_FIELDS = ("tag", "include", "exclude", "prompt")


def _core(record: dict) -> dict:
    """The record as GenEval knows it (our extra fields dropped), for the per-image ``metadata`` string."""
    return {k: record[k] for k in GENEVAL_FIELDS if k in record}


def generate_images(run: Run, records: list[dict], out: Path, n: int) -> list[list[Path]]:
    """Write the GenEval folder layout; returns each prompt's sample paths. Existing complete folders are kept."""
    paths = [[out / f"{i:05d}" / "samples" / f"{k:04d}.png" for k in range(n)] for i in range(len(records))]
    todo = [i for i in range(len(records)) if not all(p.is_file() for p in paths[i])]
    run.model.prepare("generate", [{"prompt": r["prompt"], "scene": r.get("scene")} for r in records])
    bar = tqdm(total=len(todo), desc="geneval generate", unit="prompt", disable=not run.progress)
    for chunk in batched(todo):
        # The seed depends on the first prompt's index, so resuming reproduces the same images.
        images = run.model.generate([records[i]["prompt"] for i in chunk], n, run.seed + chunk[0])
        for i, per_prompt in zip(chunk, images):
            if len(per_prompt) != n:
                raise ValueError(f"the model returned {len(per_prompt)} images for prompt {i}, expected {n}")
            write_quick(out / f"{i:05d}" / "metadata.jsonl", (json.dumps(records[i]) + "\n").encode())
            for path, image in zip(paths[i], per_prompt):
                write_png(path, image)
        bar.update(len(chunk))
    bar.close()
    return paths


def summarize(rows: list[dict], seed: int) -> dict:
    """GenEval's summary of per-image rows (tag, correct, sample_id "PPPPP/SSSS") with intervals."""
    by_prompt: dict[str, list[bool]] = {}
    tag_of: dict[str, str] = {}
    for row in rows:
        prompt = row["sample_id"].split("/")[0]
        by_prompt.setdefault(prompt, []).append(bool(row["correct"]))
        tag_of[prompt] = row["tag"]
    tags = [t for t in GENEVAL_TAGS if t in tag_of.values()] + sorted(set(tag_of.values()) - set(GENEVAL_TAGS))
    per_prompt = {t: [float(np.mean(v)) for p, v in by_prompt.items() if tag_of[p] == t] for t in tags}
    per_tag = {t: number(*bootstrap_ci([per_prompt[t]], mean_of, seed)) for t in tags}
    overall = number(*bootstrap_ci([per_prompt[t] for t in tags], mean_of_means, seed, stratified=True)) if tags \
        else number(float("nan"), [float("nan")] * 2)
    images = [float(r["correct"]) for r in rows]
    any_correct = [float(any(v)) for v in by_prompt.values()]
    return {
        "overall": overall,
        "per_tag": per_tag,
        "counts": {t: sum(len(by_prompt[p]) for p in by_prompt if tag_of[p] == t) for t in tags},
        "images": len(rows),
        "prompts": len(by_prompt),
        "correct_images": number(*bootstrap_ci([images], mean_of, seed)) if images else None,
        "correct_prompts": number(*bootstrap_ci([any_correct], mean_of, seed)) if any_correct else None,
    }


def run_geneval(run: Run, data: str | Path, out: str | Path, n: int = 4) -> dict:
    """Generate N images per prompt of ``data``, judge them, write the layout above; returns the summary."""
    data, out = Path(data), Path(out)
    records = read_records(data, run.limit)
    for i, record in enumerate(records):
        missing = [k for k in ("tag", "include", "prompt") if k not in record]
        if missing:
            raise ValueError(f"{data} record {i} lacks {missing}; GenEval records need tag, include and prompt")
    paths = generate_images(run, records, out, n)
    rows, unsupported = [], []
    for i, record in enumerate(tqdm(records, desc="geneval judge", unit="prompt", disable=not run.progress)):
        for k, path in enumerate(paths[i]):
            try:
                verdict = run.judge.geneval(decode_png(path.read_bytes()), record)
            except UnsupportedRecord as err:
                unsupported.append({"index": i, "prompt": record["prompt"], "reason": str(err)})
                break
            rows.append({
                "sample_id": f"{i:05d}/{k:04d}", "stratum": record["tag"], "score": float(verdict["correct"]),
                "filename": str(path), "tag": record["tag"], "prompt": record["prompt"],
                "correct": bool(verdict["correct"]), "reason": verdict["reason"],
                "metadata": json.dumps(_core(record)), "details": json.dumps(verdict["details"]),
                "heldout": record.get("heldout"),
            })
    summary = {**run.stamp("geneval"), "judge": run.judge.name, "n": n, "records": len(records),
               "unsupported": len(unsupported), "unsupported_records": unsupported, **summarize(rows, run.seed)}
    return write_results(out, rows, summary)
