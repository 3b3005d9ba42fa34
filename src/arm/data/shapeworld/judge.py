"""Scoring rules for ShapeWorld: GenEval's per-image verdicts, scene comparison, edit diffs, preservation, and
wrong scenes (``perturb_for_record``) that check a scorer rejects what it should.

GenEval (Ghosh et al. 2023, §3 and ``evaluation/evaluate_images.py``; ``../shared/paper.md`` §4) judges an image
against a record ``{"tag", "include": [{"class", "count", "color"?, "position"?: [relation, index]}],
"exclude"?: [{"class", "count"}], "prompt"}``:
- detections of each class are kept above a confidence threshold and sorted by confidence;
- for each include requirement in order, the first ``count`` detections of its class are taken; fewer than
  ``count`` fails; with ``color``, at least ``count`` of the taken ones must have that colour; with
  ``position = [rel, i]`` (checked only if the requirement matched so far), every taken object must stand in
  ``rel`` (GenEval's rule, ``scene.relative_position``) to every object of the group include ``i`` matched,
  and a failed group ``i`` fails this requirement ("no target"); matched groups are remembered by index;
- each exclude requirement fails when its class has ``>= count`` detections.
``summarize_geneval`` follows GenEval's ``summary_scores.py``: accuracy per tag, overall = unweighted tag mean.

Deliberate simplifications against GenEval:
- Confidence is our detector's template IoU, not Mask2Former's class score, so GenEval's thresholds (0.3, and
  0.9 for ``counting``) do not carry over. One keep-threshold, ``KEEP_THRESHOLD = 0.5``, serves every tag: on
  2000 test scenes (4500 objects) clean renders score ~0.998 and, under noise, JPEG, blur or jitter, every
  object scores >= 0.56 (99 % >= 0.68), so a higher bar would start dropping real objects. The price: a crude
  blob can pass (a 40 x 14 bar scores 0.59 as a cross), as a weak Mask2Former box passes 0.3. GenEval's stricter counting bar removes duplicate boxes a learned detector
  emits for one object; ours emits one detection per connected component, so there are none to remove.
- Colour comes from the detector (nearest palette colour), not from CLIP zero-shot classification of the crop.
- No NMS (components never overlap); at most ``MAX_OBJECTS_PER_CLASS`` (GenEval's 16) detections per class.
- Kept means ``score >= threshold`` (GenEval: strictly greater); the difference is measure-zero for IoU scores.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from arm.data.shapeworld.detector import as_rgb_array, detect
from arm.data.shapeworld.scene import Scene, ShapeObject, boxes_clear, relative_position
from arm.data.shapeworld.world import CLASSES, COLORS, GENEVAL_TAGS, RELATIONS, size_px

KEEP_THRESHOLD = 0.5
"""Detections with a template IoU below this are ignored by the GenEval rules (see the module docstring)."""

MAX_OBJECTS_PER_CLASS = 16


class UnsupportedRecord(ValueError):
    """A record names a class, colour or relation ShapeWorld does not have; callers count and skip these."""


# --------------------------------------------------------------------------------------------- GenEval rules


def validate_record(record: Mapping) -> None:
    """Raise ``UnsupportedRecord`` when the record asks for something outside ShapeWorld's vocabulary."""
    includes, excludes = record.get("include", []), record.get("exclude", [])
    for req in list(includes) + list(excludes):
        if req.get("class") not in CLASSES:
            raise UnsupportedRecord(f"class {req.get('class')!r} is not a ShapeWorld class {list(CLASSES)}")
        if "color" in req and req["color"] not in COLORS:
            raise UnsupportedRecord(f"colour {req['color']!r} is not one of {list(COLORS)}")
    for index, req in enumerate(includes):
        if "position" in req:
            relation, target = req["position"]
            if relation not in RELATIONS:
                raise UnsupportedRecord(f"relation {relation!r} is not one of {list(RELATIONS)}")
            if not 0 <= int(target) < index:
                raise UnsupportedRecord(f"position target {target} must name an earlier include requirement")


def _kept_by_class(detections: Iterable[Mapping], threshold: float) -> dict[str, list[Mapping]]:
    by_class: dict[str, list[Mapping]] = {}
    for det in sorted(detections, key=lambda d: -float(d.get("score", 1.0))):
        if float(det.get("score", 1.0)) >= threshold:
            by_class.setdefault(det["class"], []).append(det)
    return {cls: dets[:MAX_OBJECTS_PER_CLASS] for cls, dets in by_class.items()}


def evaluate_geneval(detections: Iterable[Mapping], record: Mapping, threshold: float = KEEP_THRESHOLD) -> dict:
    """GenEval's verdict for one image's detections (dicts with class, color, bbox, score): ``{correct, reason}``.

    Raises ``UnsupportedRecord`` for records outside ShapeWorld's vocabulary.
    """
    validate_record(record)
    found = _kept_by_class(detections, threshold)
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Mapping] | None] = []
    for req in record.get("include", []):
        cls, count = req["class"], int(req["count"])
        taken = found.get(cls, [])[:count]
        matched = True
        if len(taken) < count:
            matched = False
            reasons.append(f"expected {cls}>={count}, found {len(taken)}")
        else:
            if "color" in req:
                colors = [d["color"] for d in taken]
                if colors.count(req["color"]) < count:
                    matched = False
                    others = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
                    reasons.append(
                        f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])} "
                        f"{req['color']}; and {others}"
                    )
            if "position" in req and matched:
                relation, target = req["position"][0], int(req["position"][1])
                if matched_groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {cls} to be {relation}")
                else:
                    failure = _position_failure(taken, matched_groups[target], relation)
                    if failure is not None:
                        matched = False
                        reasons.append(f"expected {cls} {relation} target, found {' and '.join(sorted(failure))} target")
        correct &= matched
        matched_groups.append(taken if matched else None)
    for req in record.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        if len(found.get(cls, [])) >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {len(found[cls])}")
    return {"correct": bool(correct), "reason": "\n".join(reasons)}


def _position_failure(objects: Sequence[Mapping], targets: Sequence[Mapping], relation: str) -> set[str] | None:
    """The relations actually found for the first (object, target) pair lacking ``relation``; None if all hold."""
    for obj in objects:
        for target in targets:
            found = relative_position(obj["bbox"], target["bbox"])
            if relation not in found:
                return found
    return None


def score_geneval_image(
    image: np.ndarray | Image.Image, record: Mapping, threshold: float = KEEP_THRESHOLD
) -> dict:
    """Detect, then judge: ``{correct, reason, tag, detections}``. Raises ``UnsupportedRecord`` first, before any
    detection work, for records outside ShapeWorld's vocabulary."""
    validate_record(record)
    detections = detect(as_rgb_array(image))
    verdict = evaluate_geneval(detections, record, threshold)
    return {**verdict, "tag": record.get("tag"), "detections": detections}


def summarize_geneval(results: Iterable[Mapping]) -> dict:
    """Per-tag accuracy and ``overall`` = the unweighted mean over tags (GenEval's ``summary_scores.py``).

    ``results`` are dicts with ``tag`` and ``correct``. Returns ``{"per_tag", "counts", "overall"}``; GenEval's
    six tags come first, in GenEval's order, then any others; ``overall`` is NaN when there are no results.
    """
    hits: dict[str, list[bool]] = {}
    for result in results:
        hits.setdefault(result["tag"], []).append(bool(result["correct"]))
    order = [t for t in GENEVAL_TAGS if t in hits] + sorted(t for t in hits if t not in GENEVAL_TAGS)
    per_tag = {t: sum(hits[t]) / len(hits[t]) for t in order}
    overall = sum(per_tag.values()) / len(per_tag) if per_tag else math.nan
    return {"per_tag": per_tag, "counts": {t: len(hits[t]) for t in order}, "overall": overall}


def scene_detections(scene: Scene) -> list[dict]:
    """A scene's objects as detections with score 1 (ground truth, for judging scenes without rendering)."""
    return [{**o.to_json(), "score": 1.0} for o in scene.objects]


# ----------------------------------------------------------------------------------------- scene comparison


def _boxes_close(a: Sequence[int], b: Sequence[int], tol: int) -> bool:
    return all(abs(int(u) - int(v)) <= tol for u, v in zip(a, b))


def objects_recovered(truth: Scene, found: Scene, box_tol: int = 2) -> list[bool]:
    """For each object of ``truth``: does ``found`` hold an object of its class whose box agrees within ``box_tol``
    px on every coordinate? Colour and size are not asked, so a miss is a shape lost or drawn as another class (a
    star come back as a blob), the failure ``scenes_match`` folds into one bit."""
    return [any(q.cls == p.cls and _boxes_close(p.bbox, q.bbox, box_tol) for q in found.objects)
            for p in truth.objects]


def scenes_match(a: Scene, b: Scene, box_tol: int = 2) -> bool:
    """Same background and a one-to-one pairing of objects with equal class, colour and size whose boxes agree
    within ``box_tol`` px on every coordinate."""
    if a.background != b.background or len(a.objects) != len(b.objects):
        return False
    if not a.objects:
        return True
    mismatch = np.array(
        [
            [0.0 if (p.cls, p.color, p.size) == (q.cls, q.color, q.size) and _boxes_close(p.bbox, q.bbox, box_tol)
             else 1.0 for q in b.objects]
            for p in a.objects
        ]
    )
    rows, cols = linear_sum_assignment(mismatch)
    return float(mismatch[rows, cols].sum()) == 0.0


ATTRIBUTE_COST = 0.5
"""Matching cost per differing attribute (class, colour, size), in units of the image side."""

MAX_MATCH_COST = 1.0
"""Pairs costlier than this stay unmatched (one removed, one added): e.g. two attributes differ and the centre
moved by more than half the image, or all three differ."""


def match_objects(a: Scene, b: Scene, max_cost: float = MAX_MATCH_COST) -> list[tuple[int, int]]:
    """One-to-one pairs ``(index in a, index in b)`` minimising centre distance (as a fraction of the image side)
    plus ``ATTRIBUTE_COST`` per differing attribute (Hungarian method); pairs above ``max_cost`` are left out."""
    n, m = len(a.objects), len(b.objects)
    if n == 0 or m == 0:
        return []
    side = max(a.resolution, 1)
    cost = np.zeros((n, m))
    for i, p in enumerate(a.objects):
        for j, q in enumerate(b.objects):
            (px, py), (qx, qy) = p.center, q.center
            differing = (p.cls != q.cls) + (p.color != q.color) + (p.size != q.size)
            cost[i, j] = math.hypot(px - qx, py - qy) / side + ATTRIBUTE_COST * differing
    # Dummy rows and columns at max_cost let the assignment leave an object unmatched instead of forcing a pair.
    big = max_cost + 1.0 + float(cost.max())
    padded = np.full((n + m, m + n), big)
    padded[:n, :m] = cost
    padded[:n, m:] = np.where(np.eye(n, dtype=bool), max_cost, big)
    padded[n:, :m] = np.where(np.eye(m, dtype=bool), max_cost, big)
    padded[n:, m:] = 0.0
    rows, cols = linear_sum_assignment(padded)
    return sorted((int(i), int(j)) for i, j in zip(rows, cols) if i < n and j < m and cost[i, j] <= max_cost)


def scene_diff(before: Scene, after: Scene, box_tol: int = 2) -> dict:
    """What an edit did: ``added`` and ``removed`` objects (JSON form), ``changed`` pairs with the attributes that
    differ (``class``, ``color``, ``size``, ``position`` = centre moved by more than ``box_tol`` px on an axis),
    and ``background`` (``None`` or ``{"before", "after"}``)."""
    pairs = match_objects(before, after)
    changed = []
    for i, j in pairs:
        p, q = before.objects[i], after.objects[j]
        attrs = [name for name, x, y in (("class", p.cls, q.cls), ("color", p.color, q.color), ("size", p.size, q.size))
                 if x != y]
        if max(abs(p.center[0] - q.center[0]), abs(p.center[1] - q.center[1])) > box_tol:
            attrs.append("position")
        if attrs:
            changed.append({"before": p.to_json(), "after": q.to_json(), "changed": attrs})
    matched_before, matched_after = {i for i, _ in pairs}, {j for _, j in pairs}
    background = None
    if before.background != after.background:
        background = {"before": before.background, "after": after.background}
    return {
        "added": [o.to_json() for j, o in enumerate(after.objects) if j not in matched_after],
        "removed": [o.to_json() for i, o in enumerate(before.objects) if i not in matched_before],
        "changed": changed,
        "background": background,
    }


def preservation(
    source_img: np.ndarray | Image.Image,
    edited_img: np.ndarray | Image.Image,
    change_mask: np.ndarray,
    tol: int = 8,
) -> dict:
    """How well an edit left alone what it should: over pixels OUTSIDE ``change_mask`` (bool (H, W), True = may
    change), ``mae`` (mean absolute error, 0-255 units, over pixels and channels), ``psnr`` (dB, peak 255; inf
    when identical), ``changed_fraction`` (share of those pixels with some channel off by more than ``tol``) and
    ``num_pixels``. With no outside pixels: mae 0, psnr inf, changed_fraction 0."""
    src = as_rgb_array(source_img).astype(np.float64)
    edit = as_rgb_array(edited_img).astype(np.float64)
    mask = np.asarray(change_mask, bool)
    if src.shape != edit.shape or mask.shape != src.shape[:2]:
        raise ValueError(f"shapes differ: source {src.shape}, edited {edit.shape}, mask {mask.shape}")
    outside = ~mask
    count = int(outside.sum())
    if count == 0:
        return {"mae": 0.0, "psnr": math.inf, "changed_fraction": 0.0, "num_pixels": 0}
    err = np.abs(src - edit)[outside]  # (count, 3)
    mse = float((err**2).mean())
    return {
        "mae": float(err.mean()),
        "psnr": math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse),
        "changed_fraction": float((err.max(axis=1) > tol).mean()),
        "num_pixels": count,
    }


# --------------------------------------------------------------------------------------------- wrong scenes


def perturb_for_record(scene: Scene, record: Mapping, rng: random.Random | np.random.Generator) -> Scene:
    """A copy of ``scene`` with one prompt-relevant attribute changed so that ``record`` no longer holds, to
    check that a scorer rejects wrong images.

    By the record's kind: a position requirement -> the scene mirrored along the relation's axis (every
    relation flips; gaps and borders are kept); a colour requirement -> that class's objects of that colour
    get another colour; a count (an exclude, or count > 1) -> one object of the counted class added (placed
    with ``MIN_GAP_PX`` clearance) or removed; otherwise, or when those fail, one required class's objects
    become a class the record does not mention. The result is verified on ground-truth detections; raises
    ``ValueError`` if no perturbation breaks the record (e.g. a record with no include requirement).
    """
    validate_record(record)
    rnd = rng if isinstance(rng, random.Random) else random.Random(int(rng.integers(2**63)))
    includes = list(record.get("include", []))
    strategies = []
    if any("position" in req for req in includes):
        strategies.append(_mirror)
    if any("color" in req for req in includes):
        strategies.append(_recolor)
    if record.get("exclude") or any(int(req["count"]) > 1 for req in includes):
        strategies.append(_recount)
    strategies.append(_reclass)
    for strategy in strategies:
        for _ in range(10):
            perturbed = strategy(scene.copy(), record, rnd)
            if perturbed is not None and not evaluate_geneval(scene_detections(perturbed), record)["correct"]:
                return perturbed
    raise ValueError(f"found no perturbation of the scene that breaks record {record.get('prompt', record)!r}")


def _mirror(scene: Scene, record: Mapping, rnd: random.Random) -> Scene | None:
    relation = next(req["position"][0] for req in record["include"] if "position" in req)
    res = scene.resolution
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        o.bbox = (res - x1, y0, res - x0, y1) if relation in ("left of", "right of") else (x0, res - y1, x1, res - y0)
    return scene


def _recolor(scene: Scene, record: Mapping, rnd: random.Random) -> Scene | None:
    req = rnd.choice([req for req in record["include"] if "color" in req])
    new_color = rnd.choice([c for c in COLORS if c != req["color"]])
    targets = [o for o in scene.objects if o.cls == req["class"] and o.color == req["color"]]
    for o in targets:
        o.color = new_color
    return scene if targets else None


def _recount(scene: Scene, record: Mapping, rnd: random.Random) -> Scene | None:
    """Remove or add one object of an included class, or add objects of an excluded class up to its count."""
    reqs = [(req, False) for req in record.get("include", [])] + [(req, True) for req in record.get("exclude", [])]
    req, excluded = rnd.choice(reqs)
    same = [o for o in scene.objects if o.cls == req["class"]]
    if not excluded and same and rnd.random() < 0.5:
        scene.objects.remove(rnd.choice(same))
        return scene
    size = same[0].size if same else rnd.choice(["small", "large"])
    for _ in range(max(1, int(req["count"]) - len(same)) if excluded else 1):
        box = _free_box(scene, size_px(size, scene.resolution), rnd)
        if box is None:
            return None
        scene.objects.append(ShapeObject(req["class"], req.get("color") or rnd.choice(list(COLORS)), size, box))
    return scene


def _reclass(scene: Scene, record: Mapping, rnd: random.Random) -> Scene | None:
    includes = list(record.get("include", []))
    if not includes:
        return None
    req = rnd.choice(includes)
    mentioned = {r["class"] for r in includes} | {r["class"] for r in record.get("exclude", [])}
    unused = [c for c in CLASSES if c not in mentioned]
    if not unused:
        return None
    new_class = rnd.choice(unused)
    for o in scene.objects:
        if o.cls == req["class"]:
            o.cls = new_class
    return scene


def _free_box(scene: Scene, side: int, rnd: random.Random, tries: int = 200) -> tuple[int, int, int, int] | None:
    """A random box of ``side`` px, 1 px inside the border, clear of every object by ``MIN_GAP_PX`` (as ``place``)."""
    res = scene.resolution
    if res - side - 1 < 1:
        return None
    for _ in range(tries):
        x0, y0 = rnd.randint(1, res - side - 1), rnd.randint(1, res - side - 1)
        box = (x0, y0, x0 + side, y0 + side)
        if all(boxes_clear(box, o.bbox) for o in scene.objects):
            return box
    return None
