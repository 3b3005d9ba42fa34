"""Verifiable rewards on ShapeWorld: GenEval adherence, edit consistency and visual quality, all from the detector.

ARM §3 rewards text-to-image RL for object presence, attributes and spatial relations, and edit RL for instruction
following, preservation of what should not change, and overall quality, each judged by a large model. ShapeWorld
makes all three exact (``arm.data.shapeworld.detector`` parses an image back into its scene):

- ``GenevalReward`` (t2i): ``(1 - dense_share) * correct + dense_share * dense``. ``correct`` is GenEval's
  verdict (Ghosh et al. 2023; ``judge.score_geneval_image``). ``dense`` is the share of the record's checks met,
  so an image that gets most of a prompt right earns more than a blank one: per include requirement of ``count``
  objects, taken as GenEval takes them (the ``count`` most confident kept detections of the class), the checks
  are count (``min(taken, count) / count``), colour when asked (taken objects of that colour / ``count``) and
  position when asked (share of (taken object, target-group object) pairs in the relation, against the objects
  the target requirement took); each exclude requirement is one check (met when fewer than ``count``).
  ``dense == 1`` exactly when ``correct``.
- ``EditConsistencyReward`` (edit): ``match_weight * match + facts_weight * (success + kept) / 2 +
  pixels_weight * preserved`` (weights normalised to sum 1). ``match`` = the detected scene equals the target
  scene (``judge.scenes_match``: same background, same objects, boxes within 2 px); ``success`` / ``kept`` =
  the GEdit ShapeWorld judge's fact scores (``arm.eval.judges.edit_facts_scores``: share of the intended
  changes made, share of the facts that should stay that did); ``preserved`` = 1 - the share of pixels outside
  the change mask changed by more than 8 (``judge.preservation``).
- ``QualityReward`` (both): ``arm.eval.quality.quality_score`` = ``palette x parse x stray``: the share of pixels
  with a colour the renderer can produce, how well the foreground parses as shapes (template IoU), and how little
  foreground no detected shape explains. It rewards a clean render, whatever it shows: noise, smudges,
  off-palette colours, broken shapes and stray blobs cost; wrong content does not.
- Edits, both rewards above: multiplied by ``presence`` = min(1, objects detected in the edited image / objects in
  the target scene) (1 when the target has none). Without it an empty image of the source's background out-earned
  every real attempt (quality 1, most pixels outside the mask unchanged, the background a kept fact), and the edit
  recipe learnt to delete every object (experiments/LOG.md, eleventh session).

These are the scorers the evaluation uses (GenEval's rules, the GEdit ShapeWorld judge's facts, the quality
proxy). Rewarding the evaluation's own judge is what verifiable-reward RL does (X-Omni, SimpleAR); it means the
held-out test prompts, not the scorer, keep the measurement honest.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from arm.data.shapeworld.detector import detect, detect_scene
from arm.data.shapeworld.judge import (
    KEEP_THRESHOLD,
    _kept_by_class,  # GenEval's keep-and-sort rule, shared so the dense part takes objects as `correct` does
    evaluate_geneval,
    preservation,
    scenes_match,
    validate_record,
)
from arm.data.shapeworld.scene import Scene, relative_position
from arm.eval.quality import quality_parts
from arm.rl.rewards.base import Reward


def geneval_checks(detections: list[Mapping], record: Mapping, threshold: float = KEEP_THRESHOLD) -> list[float]:
    """Each check of ``record`` (see the module docstring) scored in [0, 1], in record order."""
    validate_record(record)
    found = _kept_by_class(detections, threshold)
    checks: list[float] = []
    taken_groups: list[list[Mapping]] = []
    for req in record.get("include", []):
        count = int(req["count"])
        taken = found.get(req["class"], [])[:count]
        taken_groups.append(taken)
        checks.append(min(len(taken), count) / count)
        if "color" in req:
            checks.append(sum(d["color"] == req["color"] for d in taken) / count)
        if "position" in req:
            relation, target = req["position"][0], taken_groups[int(req["position"][1])]
            pairs = [(a, b) for a in taken for b in target]
            held = sum(relation in relative_position(a["bbox"], b["bbox"]) for a, b in pairs)
            checks.append(held / len(pairs) if pairs else 0.0)
    for req in record.get("exclude", []):
        checks.append(float(len(found.get(req["class"], [])) < int(req["count"])))
    return checks


class GenevalReward(Reward):
    """GenEval adherence for text-to-image: exact verdict plus the share of checks met (module docstring).

    Args:
        weight: multiplier in the run's total.
        dense_share: weight of the dense part; ``1 - dense_share`` goes to GenEval's all-or-nothing verdict.
        threshold: detections below this template IoU are ignored (GenEval's keep threshold).
    """

    name = "geneval"
    tasks = ("t2i",)

    def __init__(self, weight: float = 1.0, dense_share: float = 0.5, threshold: float = KEEP_THRESHOLD) -> None:
        super().__init__(weight)
        if not 0.0 <= dense_share <= 1.0:
            raise ValueError(f"dense_share must lie in [0, 1], got {dense_share}")
        self.dense_share, self.threshold = float(dense_share), float(threshold)

    def score(self, images: list[np.ndarray], records: list[Mapping]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"reward": [], "correct": [], "dense": []}
        for image, record in zip(images, records):
            geneval = record.get("geneval")
            if not geneval:
                raise ValueError(f"t2i record {record.get('key', '?')} has no `geneval` requirements; the GenEval "
                                 f"reward needs ShapeWorld prompts (sample json `geneval`)")
            detections = detect(image)
            correct = float(evaluate_geneval(detections, geneval, self.threshold)["correct"])
            checks = geneval_checks(detections, geneval, self.threshold)
            dense = float(np.mean(checks)) if checks else correct
            out["correct"].append(correct)
            out["dense"].append(dense)
            out["reward"].append((1.0 - self.dense_share) * correct + self.dense_share * dense)
        return out


def presence(found: int, target: Scene) -> float:
    """min(1, ``found`` objects detected in the edited image / objects in the target scene); 1 for an empty target."""
    return 1.0 if not target.objects else min(1.0, found / len(target.objects))


class EditConsistencyReward(Reward):
    """Edit consistency: target-scene match, intended facts changed and kept, pixels outside the mask preserved.

    Args:
        weight: multiplier in the run's total.
        match_weight: share of the exact target-scene match.
        facts_weight: share of the mean of the fact scores (changes made, facts kept).
        pixels_weight: share of the preserved pixels outside the change mask.
        tol: a pixel counts as changed when some channel moved by more than this (0-255).
    """

    name = "edit"
    tasks = ("edit",)

    def __init__(self, weight: float = 1.0, match_weight: float = 0.4, facts_weight: float = 0.4,
                 pixels_weight: float = 0.2, tol: int = 8) -> None:
        super().__init__(weight)
        parts = (match_weight, facts_weight, pixels_weight)
        if min(parts) < 0 or sum(parts) <= 0:
            raise ValueError(f"edit reward weights must be >= 0 with a positive sum, got {parts}")
        self.shares = [p / sum(parts) for p in parts]
        self.tol = tol

    def score(self, images: list[np.ndarray], records: list[Mapping]) -> dict[str, list[float]]:
        from arm.eval.judges import edit_facts_scores

        out: dict[str, list[float]] = {k: [] for k in ("reward", "match", "success", "kept", "preserved", "presence")}
        for image, record in zip(images, records):
            missing = [k for k in ("source_scene", "target_scene", "source_image") if record.get(k) is None]
            if missing:
                raise ValueError(f"edit record {record.get('key', '?')} lacks {missing}; the edit reward needs "
                                 f"ShapeWorld edit samples")
            source, target = Scene.from_json(record["source_scene"]), Scene.from_json(record["target_scene"])
            edited = detect_scene(image)
            match = float(scenes_match(edited, target))
            facts = edit_facts_scores(source, target, edited)
            mask = record.get("mask")  # None: no mask known, preservation is not scored (as the GEdit judge)
            preserved = 1.0 if mask is None else \
                1.0 - preservation(record["source_image"], image, np.asarray(mask, bool), self.tol)["changed_fraction"]
            w_match, w_facts, w_pixels = self.shares
            out["match"].append(match)
            out["success"].append(facts["success"])
            out["kept"].append(facts["kept"])
            out["preserved"].append(preserved)
            out["presence"].append(presence(len(edited.objects), target))
            out["reward"].append(out["presence"][-1] * (w_match * match + w_facts * (facts["success"] + facts["kept"])
                                                         / 2 + w_pixels * preserved))
        return out


class QualityReward(Reward):
    """Visual quality: ``arm.eval.quality.quality_score`` (palette x parse x stray; module docstring); on edits,
    scaled by ``presence`` (an empty background is a perfectly clean render).

    Args:
        weight: multiplier in the run's total.
        tasks: the tasks it scores (default both).
    """

    name = "quality"

    def __init__(self, weight: float = 1.0, tasks: tuple[str, ...] = ("t2i", "edit")) -> None:
        super().__init__(weight)
        self.tasks = tuple(tasks)

    def score(self, images: list[np.ndarray], records: list[Mapping]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"reward": [], "palette": [], "parse": [], "stray": []}
        for image, record in zip(images, records):
            detections = detect(image)  # once: the quality parts and the edit's presence both read them
            parts = quality_parts(image, detections)
            for key in ("palette", "parse", "stray"):
                out[key].append(parts[key])
            score = parts["palette"] * parts["parse"] * parts["stray"]  # = quality_score, one detection
            if record.get("task") == "edit" and record.get("target_scene") is not None:
                score *= presence(len(detections), Scene.from_json(record["target_scene"]))
            out["reward"].append(score)
        return out
