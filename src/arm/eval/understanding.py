"""Understanding protocols: VQA accuracy per question type, MME, POPE and caption perplexity.

- VQA (VQAv2, Goyal et al. 2017): records with ``question_id``, ``image``, ``question`` and ``answer`` (ours)
  or ``answers`` (VQAv2's ten human answers), and a type (``type``, ``question_type`` or ``answer_type``).
  Answers are normalised as VQAv2's evaluation does in essence (lower case, punctuation and articles removed,
  number words as digits; its full contraction table is not reproduced). With ten answers the accuracy is
  VQAv2's: the mean over the ten leave-one-out subsets of min(1, matches / 3); with one, exact match.
  Reported per type and overall (over all questions), beside two readings of what the model does without the
  image: ``prior_accuracy``, the accuracy of answering every question with the most frequent answer of its type
  (VQA's "per Q-type prior" baseline, Antol et al. 2015, here taken from the benchmark's own answers so that
  evaluation reads no training file), and ``top_replies``, each type's three most frequent (normalised) replies
  with their share; a model near its prior that gives one reply to most questions of a type is not reading the
  image for that type.
- MME (Fu et al. 2023, ``eval_tool/calculation.py``): tab-separated ``image<TAB>question<TAB>Yes|No`` lines, one
  file per subtask (the file's stem names it), two questions per image. A reply reads as yes / no when it is
  that word or its first four characters contain it (else "other", wrong). Per subtask acc = correct questions
  / questions, acc+ = images with both questions right / images, score = 100 (acc + acc+); the total is the sum
  of subtask scores; ``acc`` and ``acc_plus`` pooled over every image are the headline; ``yes_ratio``, the share
  of replies read as yes (half the questions are), shows an answer bias. Results are written as
  ``OUT/<subtask>.txt`` with the reply as a fourth column, the layout ``calculation.py`` reads.
- POPE (Li et al. 2023): JSON lines with ``question_id``, ``image``, ``text``, ``label`` (yes/no). A reply is
  "no" when its first sentence holds the word no, No or not, else "yes" (LLaVA's ``eval_pope.py``);
  accuracy, precision, recall and F1 of "yes", and the share of yes replies. Replies go to ``OUT/answers.jsonl``.
- Caption perplexity: records with ``image`` and ``caption``; ``loglikelihood`` of each caption given its image
  and ``CAPTION_QUESTION``; perplexity per word (whitespace-separated) and per UTF-8 byte, exp(-sum log p / sum
  units): units that do not depend on any model's tokenizer, as lm-evaluation-harness reports them.
- Generated captions (our addition; captioning benchmarks such as COCO score what a model writes, where we score
  it exactly instead of by n-gram overlap with references): where the records also hold the ShapeWorld ``scene``,
  each image is described by the model (``EvalModel.describe``), the objects the caption claims are read back by
  ``arm.data.shapeworld.text.caption_objects`` (exact on the world's own captions), and compared with the scene's
  as multisets of (colour, class): per image precision, recall and F1 (2 matches / (claimed + present); an empty
  caption of an empty scene is 1), ``exact`` (the multisets equal) and ``count_exact`` (as many objects claimed as
  present). Sizes and places are not scored. Simplification: a caption outside the world's grammar claims nothing.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from arm.eval.common import Run, batched, load_image, read_records
from arm.eval.results import write_jsonl, write_results
from arm.eval.stats import bootstrap_ci, mean_of, number, sum_of_means
from arm.io import write_atomic

CAPTION_QUESTION = "Describe the image."
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def _ask(run: Run, base: Path, records: list[dict], question_field: str, desc: str) -> list[str]:
    """The model's replies to ``records`` (images loaded relative to ``base``), in batches."""
    replies: list[str] = []
    for chunk in tqdm(list(batched(records)), desc=desc, unit="batch", disable=not run.progress):
        images = [load_image(base, r["image"]) for r in chunk]
        run.model.prepare("answer", [{"question": r[question_field], "image": im, "answer": r.get("answer",
                                      r.get("label"))} for r, im in zip(chunk, images)])
        replies.extend(run.model.answer(images, [r[question_field] for r in chunk]))
    return replies


# -------------------------------------------------------------------------------------------------- VQA


def normalize_answer(text: str) -> str:
    words = re.sub(r"[^\w\s]", " ", str(text).lower()).split()
    return " ".join(_NUMBERS.get(w, w) for w in words if w not in ("a", "an", "the"))


def _human_answers(record: dict) -> list[str]:
    """VQAv2's ten human answers of ``record``, normalised (plain strings or ``{"answer": ...}`` dicts)."""
    return [normalize_answer(a["answer"] if isinstance(a, dict) else a) for a in record["answers"]]


def vqa_accuracy(reply: str, record: dict) -> float:
    """VQAv2's accuracy with ten human answers, else exact match with the one answer."""
    pred = normalize_answer(reply)
    if "answers" in record:
        humans = _human_answers(record)
        return float(np.mean([min(1.0, sum(h == pred for j, h in enumerate(humans) if j != i) / 3)
                              for i in range(len(humans))]))
    return float(pred == normalize_answer(record["answer"]))


def _truth(record: dict) -> str:
    """A record's reference answer, normalised: its one ``answer``, or the most frequent of VQAv2's ten."""
    if "answers" in record:
        return Counter(_human_answers(record)).most_common(1)[0][0]
    return normalize_answer(record["answer"])


def prior_scores(records: list[dict], types: list[str]) -> list[float]:
    """Each record's VQA accuracy when answered with the most frequent reference answer of its type (ties: the
    answer first seen), the per-question-type prior baseline."""
    majority = {t: Counter(_truth(r) for r, k in zip(records, types) if k == t).most_common(1)[0][0]
                for t in set(types)}
    return [vqa_accuracy(majority[k], r) for r, k in zip(records, types)]


def top_replies(replies: list[str], k: int = 3) -> dict[str, float]:
    """The ``k`` most frequent normalised replies and their share of ``replies``."""
    counts = Counter(normalize_answer(r) for r in replies)
    return {reply: round(n / len(replies), 4) for reply, n in counts.most_common(k)}


def run_vqa(run: Run, data: str | Path, out: str | Path) -> dict:
    data, out = Path(data), Path(out)
    records = read_records(data, run.limit)
    replies = _ask(run, data.parent, records, "question", "vqa")
    rows = []
    for record, reply in zip(records, replies):
        kind = record.get("type", record.get("question_type", record.get("answer_type", "all")))
        score = vqa_accuracy(reply, record)
        rows.append({"sample_id": str(record["question_id"]), "stratum": kind, "score": score,
                     "question_id": record["question_id"], "question": record["question"], "answer": reply,
                     "reference": _truth(record),
                     "type": kind, "accuracy": score, "heldout": record.get("heldout")})
    types = sorted({r["type"] for r in rows})
    prior = prior_scores(records, [r["type"] for r in rows])
    summary = {**run.stamp("vqa"), "records": len(records),
               "accuracy": number(*bootstrap_ci([[r["score"] for r in rows]], mean_of, run.seed)),
               "per_type": {t: number(*bootstrap_ci([[r["score"] for r in rows if r["type"] == t]], mean_of,
                                                    run.seed)) for t in types},
               "counts": {t: sum(r["type"] == t for r in rows) for t in types},
               "prior_accuracy": float(np.mean(prior)),
               "prior_per_type": {t: float(np.mean([p for p, r in zip(prior, rows) if r["type"] == t]))
                                  for t in types},
               "top_replies": {t: top_replies([r["answer"] for r in rows if r["type"] == t]) for t in types}}
    return write_results(out, rows, summary)


# -------------------------------------------------------------------------------------------------- MME


def read_mme(path: str | Path) -> list[dict]:
    """MME question lines from a subtask file or a folder of them: ``{subtask, image, question, answer, base}``."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"no MME subtask files at {str(path)!r} (tab-separated image, question, Yes/No)")
    records = []
    for f in files:
        for number_, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 3 or cols[2].strip() not in ("Yes", "No"):
                raise ValueError(f"{f}:{number_} is not an MME line (image<TAB>question<TAB>Yes|No)")
            records.append({"subtask": f.stem, "image": cols[0], "question": cols[1], "answer": cols[2].strip(),
                            "base": f.parent})
    return records


def parse_yes_no(reply: str) -> str:
    """MME's reading of a reply: "yes", "no" or "other"."""
    text = reply.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def _mme_image(record: dict) -> str:
    """MME keeps a subtask's images beside its file, in a folder named after it, or in that folder's images/."""
    base, name = Path(record["base"]), record["image"]
    for candidate in (base / name, base / record["subtask"] / name, base / record["subtask"] / "images" / name):
        if candidate.is_file():
            return str(candidate.resolve())
    return str((base / name).resolve())


def run_mme(run: Run, data: str | Path, out: str | Path) -> dict:
    out = Path(out)
    records = read_mme(data)[: run.limit] if run.limit is not None else read_mme(data)
    asked = [{**r, "image": _mme_image(r)} for r in records]
    replies = _ask(run, Path("/"), asked, "question", "mme")
    per_image: dict[tuple[str, str], list[bool]] = defaultdict(list)
    rows, lines = [], defaultdict(list)
    for i, (record, reply) in enumerate(zip(records, replies)):
        correct = parse_yes_no(reply) == record["answer"].lower()
        per_image[(record["subtask"], record["image"])].append(correct)
        reply_line = " ".join(reply.split())
        lines[record["subtask"]].append(f"{record['image']}\t{record['question']}\t{record['answer']}\t{reply_line}")
        rows.append({"sample_id": f"{record['subtask']}/{record['image']}#{len(per_image[(record['subtask'], record['image'])])}",
                     "stratum": record["subtask"], "score": float(correct), "subtask": record["subtask"],
                     "image": record["image"], "question": record["question"], "gt_ans": record["answer"],
                     "pred_ans": reply, "index": i})
    for subtask, text in lines.items():
        write_atomic(out / f"{subtask}.txt", ("\n".join(text) + "\n").encode())
    subtasks = sorted(lines)
    # Per image: the share of its questions answered right, and whether all were (acc+).
    frac = {s: [float(np.mean(v)) for (t, _), v in per_image.items() if t == s] for s in subtasks}
    both = {s: [float(all(v)) for (t, _), v in per_image.items() if t == s] for s in subtasks}
    per_subtask = {}
    for s in subtasks:
        acc, acc_plus = number(*bootstrap_ci([frac[s]], mean_of, run.seed)), number(*bootstrap_ci([both[s]],
                                                                                                 mean_of, run.seed))
        score = [100 * (f + b) for f, b in zip(frac[s], both[s])]
        per_subtask[s] = {"acc": acc, "acc_plus": acc_plus, "score": number(*bootstrap_ci([score], mean_of, run.seed))}
    all_frac, all_both = sum(frac.values(), []), sum(both.values(), [])
    summary = {**run.stamp("mme"), "records": len(records), "images": len(per_image),
               "acc": number(*bootstrap_ci([all_frac], mean_of, run.seed)),
               "acc_plus": number(*bootstrap_ci([all_both], mean_of, run.seed)),
               "total_score": number(*bootstrap_ci([[100 * (f + b) for f, b in zip(frac[s], both[s])]
                                                    for s in subtasks], sum_of_means, run.seed, stratified=True)),
               "per_subtask": per_subtask,
               # MME asks one yes and one no question per image: a yes share far from 0.5 is an answer bias
               "yes_ratio": number(*bootstrap_ci([[float(parse_yes_no(r) == "yes") for r in replies]], mean_of,
                                                 run.seed)),
               "unpaired_images": sum(len(v) != 2 for v in per_image.values())}
    return write_results(out, rows, summary)


# ------------------------------------------------------------------------------------------------- POPE


def pope_reply(reply: str) -> str:
    """LLaVA's ``eval_pope.py`` reading: "no" if the first sentence has the word no / No / not, else "yes"."""
    text = reply.split(".")[0] if "." in reply else reply
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def _pope_statistic(name: str):
    def statistic(pred: np.ndarray, label: np.ndarray, axis: int = -1) -> np.ndarray:
        tp = np.sum(pred * label, axis=axis)
        fp = np.sum(pred * (1 - label), axis=axis)
        fn = np.sum((1 - pred) * label, axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision, recall = tp / (tp + fp), tp / (tp + fn)
            values = {"accuracy": np.mean(pred == label, axis=axis), "precision": precision, "recall": recall,
                      "f1": 2 * precision * recall / (precision + recall), "yes_ratio": np.mean(pred, axis=axis)}
        return np.nan_to_num(values[name]) if name != "accuracy" else values[name]

    return statistic


def run_pope(run: Run, data: str | Path, out: str | Path) -> dict:
    data, out = Path(data), Path(out)
    records = read_records(data, run.limit)
    for i, r in enumerate(records):
        if not {"question_id", "image", "text", "label"} <= r.keys() or str(r["label"]).lower() not in ("yes", "no"):
            raise ValueError(f"{data} record {i} is not a POPE line (question_id, image, text, label yes/no)")
    replies = _ask(run, data.parent, records, "text", "pope")
    write_jsonl(out / "answers.jsonl", [{"question_id": r["question_id"], "prompt": r["text"], "text": a}
                                        for r, a in zip(records, replies)])
    pred = np.array([pope_reply(a) == "yes" for a in replies], float)
    label = np.array([str(r["label"]).lower() == "yes" for r in records], float)
    rows = [{"sample_id": str(r["question_id"]), "stratum": r.get("category", "all"), "score": float(p == y),
             "question_id": r["question_id"], "image": r["image"], "text": r["text"], "label": r["label"],
             "answer": a, "pred": "yes" if p else "no"} for r, a, p, y in zip(records, replies, pred, label)]
    metrics = {name: number(*bootstrap_ci([pred, label], _pope_statistic(name), run.seed, paired=True))
               for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    summary = {**run.stamp("pope"), "records": len(records), **metrics}
    return write_results(out, rows, summary)


# -------------------------------------------------------------------------------------- caption perplexity


def _perplexity(loglik: np.ndarray, units: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(-np.sum(loglik, axis=axis) / np.sum(units, axis=axis))


def caption_object_scores(claimed: list[tuple[str, str]], present: list[tuple[str, str]]) -> dict[str, float]:
    """Precision, recall, F1, exact and count_exact of the (colour, class) objects a caption ``claimed`` against
    those ``present`` in the scene, as multisets (see the module docstring)."""
    matched = sum((Counter(claimed) & Counter(present)).values())
    both = len(claimed) + len(present)
    return {"object_precision": matched / len(claimed) if claimed else float(not present),
            "object_recall": matched / len(present) if present else float(not claimed),
            "object_f1": 2 * matched / both if both else 1.0,
            "exact": float(Counter(claimed) == Counter(present)),
            "count_exact": float(len(claimed) == len(present))}


CAPTION_OBJECT_KEYS = ("object_f1", "object_precision", "object_recall", "exact", "count_exact")


def _caption_scores(said: str, scene: dict) -> dict:
    """The model's caption ``said`` with its object scores against the scene json (``CAPTION_OBJECT_KEYS``)."""
    from arm.data.shapeworld.scene import Scene
    from arm.data.shapeworld.text import caption_objects

    present = [(o.color, o.cls) for o in Scene.from_json(scene).objects]
    claimed = [(colour, cls) for _, colour, cls in caption_objects(said)]
    return {"generated": said, **caption_object_scores(claimed, present)}


def run_caption(run: Run, data: str | Path, out: str | Path) -> dict:
    """Caption perplexity of the references, and, where the records hold scenes, the model's own captions scored."""
    data, out = Path(data), Path(out)
    records = read_records(data, run.limit)
    scored = bool(records) and all(r.get("scene") is not None for r in records)
    loglik: list[float] = []
    generated: list[dict] = []
    for chunk in tqdm(list(batched(records)), desc="caption", unit="batch", disable=not run.progress):
        images = [load_image(data.parent, r["image"]) for r in chunk]
        loglik.extend(run.model.loglikelihood(images, [CAPTION_QUESTION] * len(chunk), [r["caption"] for r in chunk]))
        if scored:
            run.model.prepare("describe", [{"image": im, "caption": r["caption"]} for r, im in zip(chunk, images)])
            generated += [_caption_scores(said, r["scene"]) for r, said in zip(chunk, run.model.describe(images))]
    words = np.array([max(len(r["caption"].split()), 1) for r in records], float)
    nbytes = np.array([max(len(r["caption"].encode()), 1) for r in records], float)
    ll = np.array(loglik, float)
    if not records or not np.isfinite(ll).all():
        raise ValueError("caption perplexity needs finite log-likelihoods for at least one record")
    rows = [{"sample_id": str(r.get("id", i)), "stratum": "all", "score": float(x / w), "caption": r["caption"],
             "loglikelihood": float(x), "words": int(w), "bytes": int(b)}
            for i, (r, x, w, b) in enumerate(zip(records, ll, words, nbytes))]
    summary = {**run.stamp("caption"), "records": len(records),
               "word_perplexity": number(*bootstrap_ci([ll, words], _perplexity, run.seed, paired=True)),
               "byte_perplexity": number(*bootstrap_ci([ll, nbytes], _perplexity, run.seed, paired=True)),
               "mean_loglikelihood_per_word": number(*bootstrap_ci([ll / words], mean_of, run.seed))}
    if scored:
        summary["generated"] = {"records": len(generated), **{
            key: number(*bootstrap_ci([[g[key] for g in generated]], mean_of, run.seed)) for key in CAPTION_OBJECT_KEYS}}
        summary["object_f1"] = summary["generated"]["object_f1"]
        rows = [{**row, **extra} for row, extra in zip(rows, generated)]
    return write_results(out, rows, summary)
