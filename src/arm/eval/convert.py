"""Converters from ShapeWorld's bench files to the real formats where ours differ, so the protocols only ever
read the real ones.

- MME: ``bench/mme.jsonl`` (JSON lines with ``category``) -> one tab-separated subtask file per category,
  ``image<TAB>question<TAB>Yes|No`` with absolute image paths (MME's ``eval_tool`` layout).
- POPE: POPE asks "Is there a <object> in the image?" with balanced yes/no labels; ``bench/vqa.jsonl``'s
  ``exists`` questions are exactly that, so they become POPE lines ``{question_id, image, text, label}``.
- Captions: the world's test shards hold each scene's caption; the first ``limit`` become ``{id, image,
  caption, scene}`` lines with their images written beside them (the scene scores generated captions).
GenEval's, WISE's (JSON lines instead of a JSON list: the reader takes both) and GEdit's files need no
conversion.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from arm.eval.common import read_records, write_png
from arm.eval.results import write_jsonl
from arm.io import write_atomic


def mme_from_bench(mme_jsonl: str | Path, out_dir: str | Path) -> Path:
    mme_jsonl, out_dir = Path(mme_jsonl), Path(out_dir)
    lines: dict[str, list[str]] = defaultdict(list)
    for r in read_records(mme_jsonl):
        image = (mme_jsonl.parent / r["image"]).resolve()
        lines[r.get("category", "mme")].append(f"{image}\t{r['question']}\t{r['answer']}")
    for category, text in lines.items():
        write_atomic(out_dir / f"{category}.txt", ("\n".join(text) + "\n").encode())
    return out_dir


def pope_from_vqa(vqa_jsonl: str | Path, out_path: str | Path) -> Path:
    vqa_jsonl, out_path = Path(vqa_jsonl), Path(out_path)
    rows = [{"question_id": r["question_id"], "image": str((vqa_jsonl.parent / r["image"]).resolve()),
             "text": r["question"], "label": r["answer"].lower()}
            for r in read_records(vqa_jsonl) if r.get("type") == "exists"]
    if not rows:
        raise ValueError(f"{vqa_jsonl} has no `exists` questions to build POPE lines from")
    write_jsonl(out_path, rows)
    return out_path


def captions_from_world(world_dir: str | Path, out_dir: str | Path, limit: int = 250) -> Path:
    from arm.data.shapeworld.figures import read_samples

    shards = sorted((Path(world_dir) / "test").glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no test shards in {world_dir}/test to take captions from")
    samples = []
    for shard in shards:
        samples += read_samples(shard, limit - len(samples))
        if len(samples) >= limit:
            break
    out_dir = Path(out_dir)
    rows = []
    for s in samples:
        key = s["meta"]["key"]
        write_png(out_dir / "images" / f"{key}.png", s["image"])
        rows.append({"id": key, "image": f"images/{key}.png", "caption": s["meta"]["caption"],
                     "scene": s["meta"].get("scene")})
    write_jsonl(out_dir / "captions.jsonl", rows)
    return out_dir / "captions.jsonl"
