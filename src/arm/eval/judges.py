"""Pluggable judges: the built-in ShapeWorld judge (exact, programmatic) and a VLM judge over a chat endpoint.

A judge answers three questions, one per generation protocol; a record it cannot score raises
``UnsupportedRecord`` (from ``arm.data.shapeworld.judge``), which the protocol counts and skips:

- ``geneval(image, record) -> {"correct", "reason", "details"}``: GenEval's verdict (Ghosh et al. 2023).
- ``wise(image, record) -> {"consistency", "realism", "aesthetic_quality", "reason"}``: WISE's three parts, each
  in [0, 2] (Niu et al. 2025).
- ``gedit(source, edited, record, mask) -> {"instruction_success", "no_overediting", "naturalness",
  "no_artifacts", "reason"}``: GEdit-Bench's four VIEScore sub-scores, each in [0, 10] (Liu et al. 2025,
  Step1X-Edit; Ku et al. 2024, VIEScore); the protocol takes SC = min of the first two, PQ = min of the last two.

ShapeWorld judge, and how its numbers map onto each benchmark's scale:
- GenEval: ``score_geneval_image`` (detector + GenEval's rules, see ``arm.data.shapeworld.judge``).
- WISE, for records with resolved ``requirements`` (our knowledge prompts): consistency 2 when the requirements
  hold by GenEval's rules, 1 when every required class is present in the required number but an attribute,
  relation or exclusion fails, 0 otherwise; realism = 2 x ``quality_score``; aesthetic quality = 2 x the
  quality proxy's ``palette`` part. Parts are continuous, not rounded to WISE's integers.
- GEdit, for records with ``source_scene`` and ``target_scene``: scenes become facts (the background; each
  object's class, colour, size and centre). The intended change is the target's facts missing from the source
  ("new") and the source's facts missing from the target ("gone"); the edited image's detected facts are
  assigned one-to-one to the target's and the gone ones (equal attributes, centres within ``POSITION_TOL`` of
  the image side, closest first; ``edit_facts_scores``). instruction_success = 10 x (new facts found + gone facts
  not found x the share of new facts found) / (new + gone), or, for an edit with no new fact (a removal), 10 x the
  share of gone facts not found. A gone fact counts only as far as its replacement is drawn: VIEScore asks whether
  the instruction was carried out, and a recoloured, moved or replaced object that is simply deleted was not (the
  plain share let an empty image of the source's background score GEdit 4.7 on the test bench, above every
  model, and RL on this reward learnt to delete: experiments/LOG.md, eleventh session);
  no_overediting = 10 x min(kept facts found / (kept facts + unexplained detections), 1 - share of pixels
  outside the edit mask changed by more than 8 (``preservation``)); naturalness = 10 x ``palette``;
  no_artifacts = 10 x ``parse`` x ``stray`` (``arm.eval.quality``). ``target_match`` (issue 4's edit success, not a
  GEdit score): 1 when the edited image parses to the target scene at these facts' tolerance (every intended
  change made, every kept fact found, nothing unexplained), else 0.
Simplification: a moved or added object must land within ``POSITION_TOL`` of where the reference edit put it,
though the instruction names only a region or direction.

VLM judge: the prompts are ours, written from the two benchmarks' published criteria (WISE's 0-2 rubric for
consistency, realism and aesthetic quality given the prompt and its explanation; VIEScore's 0-10 editing
success / over-editing on the source and edited images, and naturalness / artifacts on the edited image). A reply
whose scores cannot be read is reported as ``judge_failed`` and left out of the averages, counted.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from arm.data.shapeworld.detector import detect, detect_scene
from arm.data.shapeworld.judge import (
    KEEP_THRESHOLD,
    UnsupportedRecord,
    evaluate_geneval,
    preservation,
    score_geneval_image,
    validate_record,
)
from arm.data.shapeworld.scene import Scene
from arm.eval.openai_client import ChatClient, image_part, text_part
from arm.eval.quality import quality_parts

POSITION_TOL = 1 / 8
"""Centres of two matching object facts may differ by this fraction of the image side per axis (8 px at 64)."""


class JudgeReplyError(ValueError):
    """A VLM judge replied, but without readable scores."""


# ------------------------------------------------------------------------------------------ ShapeWorld judge


def _facts(scene: Scene) -> list[tuple]:
    return [("background", scene.background)] + [
        ("object", o.cls, o.color, o.size, *o.center) for o in scene.objects
    ]


def _distance(p: tuple, q: tuple) -> float:
    """Chebyshev distance between the centres of two equal facts (0 for backgrounds); inf when they differ."""
    if p[:4] != q[:4]:
        return math.inf
    return 0.0 if p[0] == "background" else max(abs(p[4] - q[4]), abs(p[5] - q[5]))


def _assign(a: list[tuple], b: list[tuple], tol: float) -> list[tuple[int, int]]:
    """One-to-one pairs of equal facts with centres within ``tol`` px per axis: as many pairs as possible, and
    among those the closest (Hungarian method)."""
    if not a or not b:
        return []
    distance = np.array([[_distance(p, q) for q in b] for p in a])
    feasible = distance <= tol
    # A large bonus per feasible pair makes the count of pairs come first, closeness second.
    cost = np.where(feasible, distance - 1e6, 0.0)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if feasible[i, j]]


def edit_facts_scores(source: Scene, target: Scene, edited: Scene) -> dict:
    """Instruction success and kept-facts share of an edit, both in [0, 1] (see the module docstring).

    The intended change compares source and target exactly (same attributes, same centre): target facts without
    an exact source partner are "new", source facts without an exact target partner are "gone". The edited
    image's facts are then assigned, within ``POSITION_TOL``, to the target's facts and the gone facts together,
    closest first, so an object left where it was is credited to its old place, not to its new one.
    """
    src, tgt, out = _facts(source), _facts(target), _facts(edited)
    kept_pairs = _assign(src, tgt, 0.0)
    kept = {j for _, j in kept_pairs}
    new = [j for j in range(len(tgt)) if j not in kept]
    gone = [src[i] for i in range(len(src)) if i not in {i for i, _ in kept_pairs}]
    pairs = _assign(tgt + gone, out, POSITION_TOL * source.resolution)
    assigned = {i for i, _ in pairs}
    unexplained = len(out) - len(pairs)
    changes = len(new) + len(gone)
    new_found = sum(j in assigned for j in new)
    gone_found = sum(len(tgt) + k in assigned for k in range(len(gone)))
    removed = len(gone) - gone_found
    if changes == 0:
        success = 1.0
    elif not new:  # a removal: the gone facts are the whole change
        success = removed / len(gone)
    else:  # a removed fact counts only as far as what should replace it is there (module docstring)
        success = (new_found + removed * new_found / len(new)) / changes
    denominator = len(kept) + unexplained
    kept_share = 1.0 if denominator == 0 else sum(j in assigned for j in kept) / denominator
    return {"success": success, "kept": kept_share, "new": len(new), "gone": len(gone), "unexplained": unexplained}


class ShapeWorldJudge:
    """The built-in judge: ShapeWorld's detector and exact scenes (no network, no weights)."""

    name = "shapeworld"

    def geneval(self, image: np.ndarray, record: Mapping) -> dict:
        verdict = score_geneval_image(image, record)
        return {"correct": verdict["correct"], "reason": verdict["reason"], "details": verdict["detections"]}

    def wise(self, image: np.ndarray, record: Mapping) -> dict:
        requirements = record.get("requirements")
        if not requirements:
            raise UnsupportedRecord("no resolved `requirements` (a real WISE prompt): score it with --judge openai")
        validate_record(requirements)
        detections = detect(image)
        verdict = evaluate_geneval(detections, requirements)
        if verdict["correct"]:
            consistency = 2.0
        else:
            kept = [d for d in detections if float(d.get("score", 1.0)) >= KEEP_THRESHOLD]
            present = all(sum(d["class"] == req["class"] for d in kept) >= int(req["count"])
                          for req in requirements.get("include", []))
            consistency = 1.0 if present else 0.0
        parts = quality_parts(image, detections)
        return {"consistency": consistency, "realism": 2.0 * parts["palette"] * parts["parse"] * parts["stray"],
                "aesthetic_quality": 2.0 * parts["palette"], "reason": verdict["reason"]}

    def gedit(self, source: np.ndarray, edited: np.ndarray, record: Mapping, mask: np.ndarray | None) -> dict:
        if "source_scene" not in record or "target_scene" not in record:
            raise UnsupportedRecord("no `source_scene`/`target_scene` (a real GEdit record): score it with "
                                    "--judge openai")
        source_scene, target_scene = Scene.from_json(record["source_scene"]), Scene.from_json(record["target_scene"])
        detections = detect(edited)
        edited_scene = detect_scene(edited)
        facts = edit_facts_scores(source_scene, target_scene, edited_scene)
        pixels = 1.0 if mask is None else 1.0 - preservation(source, edited, mask)["changed_fraction"]
        parts = quality_parts(edited, detections)
        return {
            "instruction_success": 10.0 * facts["success"],
            "no_overediting": 10.0 * min(facts["kept"], pixels),
            "naturalness": 10.0 * parts["palette"],
            "no_artifacts": 10.0 * parts["parse"] * parts["stray"],
            "target_match": float(facts["success"] == 1.0 and facts["kept"] == 1.0),
            "reason": json.dumps({**facts, "pixels_kept": pixels, **parts}, sort_keys=True),
        }


# ---------------------------------------------------------------------------------------------- VLM judge

_WISE_RUBRIC = """You judge an image made by a text-to-image model for a prompt that needs world knowledge.
Score three things, each 0, 1 or 2, strictly:
Consistency: does the image show exactly what the prompt asks for (the explanation says what that is)? 0 = key
elements missing or contradicted, 1 = partly right, 2 = every element right.
Realism: 0 = clearly implausible or broken, 1 = noticeable flaws, 2 = flawless and physically plausible.
Aesthetic Quality: 0 = unappealing, 1 = acceptable composition and colour, 2 = exceptional.
Reply with exactly three lines:
Consistency: <0-2>
Realism: <0-2>
Aesthetic Quality: <0-2>"""

_GEDIT_SC = """You judge an instruction-based image edit. The first image is the source, the second the edited
result. Instruction: "{instruction}"
Give two scores from 0 to 10: the first, how well the edit follows the instruction (0 = not at all, 10 =
perfectly); the second, how little was changed beyond what the instruction asks (0 = the image was redone,
10 = nothing else changed).
Reply with JSON only: {{"score": [<success>, <no over-editing>], "reasoning": "<one sentence>"}}"""

_GEDIT_PQ = """You judge the visual quality of an image. Give two scores from 0 to 10: the first for how natural
it looks (lighting, colours, plausibility; 10 = fully natural), the second for the absence of artifacts
(distortion, noise, blur, broken shapes; 10 = none at all).
Reply with JSON only: {"score": [<naturalness>, <no artifacts>], "reasoning": "<one sentence>"}"""


def parse_wise_reply(text: str) -> dict[str, float]:
    """The three WISE scores from a reply ("Consistency: 2" lines, Markdown bold allowed)."""
    found = {}
    for name, value in re.findall(r"(consistency|realism|aesthetic[ _]quality)\W{0,4}([0-2](?:\.\d+)?)", text,
                                  flags=re.IGNORECASE):
        found.setdefault(name.lower().replace(" ", "_"), float(value))
    if set(found) != {"consistency", "realism", "aesthetic_quality"}:
        raise JudgeReplyError(f"WISE reply lacks scores: {text[:200]!r}")
    return found


def parse_score_pair(text: str, top: float = 10.0) -> tuple[float, float]:
    """The first two numbers of the reply's ``"score": [a, b]``, each checked to lie in [0, top]."""
    match = re.search(r'"?score"?\s*:\s*\[\s*([0-9.]+)\s*,\s*([0-9.]+)', text)
    if not match:
        raise JudgeReplyError(f"reply has no score pair: {text[:200]!r}")
    a, b = float(match.group(1)), float(match.group(2))
    if not (0 <= a <= top and 0 <= b <= top):
        raise JudgeReplyError(f"scores {a}, {b} are outside [0, {top}]")
    return a, b


class VLMJudge:
    """A VLM behind an OpenAI-compatible chat endpoint (``ChatClient``), for real WISE and GEdit prompts."""

    name = "openai"

    def __init__(self, client: ChatClient):
        self.client = client

    def geneval(self, image: np.ndarray, record: Mapping) -> dict:
        raise UnsupportedRecord("GenEval is scored by detection rules, not a VLM: use --judge shapeworld, or "
                                "GenEval's own evaluate_images.py on the image folder")

    def wise(self, image: np.ndarray, record: Mapping) -> dict:
        question = f'{_WISE_RUBRIC}\nPROMPT: "{record["Prompt"]}"\nEXPLANATION: "{record.get("Explanation", "")}"'
        reply = self.client.complete([{"role": "user", "content": [text_part(question), image_part(image)]}])
        return {**parse_wise_reply(reply), "reason": reply}

    def gedit(self, source: np.ndarray, edited: np.ndarray, record: Mapping, mask: np.ndarray | None) -> dict:
        sc_reply = self.client.complete([{"role": "user", "content": [
            text_part(_GEDIT_SC.format(instruction=record["instruction"])), image_part(source), image_part(edited)]}])
        pq_reply = self.client.complete([{"role": "user", "content": [text_part(_GEDIT_PQ), image_part(edited)]}])
        success, no_overediting = parse_score_pair(sc_reply)
        naturalness, no_artifacts = parse_score_pair(pq_reply)
        return {"instruction_success": success, "no_overediting": no_overediting, "naturalness": naturalness,
                "no_artifacts": no_artifacts, "reason": json.dumps({"sc": sc_reply, "pq": pq_reply})}


def make_judge(name: str, url: str | None = None, model: str = "default") -> ShapeWorldJudge | VLMJudge:
    """``shapeworld`` or ``openai`` (which needs ``url``)."""
    if name == "shapeworld":
        return ShapeWorldJudge()
    if name == "openai":
        if not url:
            raise ValueError("--judge openai needs --judge-url (the endpoint's base URL, e.g. http://host:8000/v1)")
        return VLMJudge(ChatClient(url, model=model))
    raise ValueError(f"unknown judge {name!r}; expected shapeworld or openai")
