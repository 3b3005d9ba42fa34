"""Instruction edits of ShapeWorld scenes: an instruction, the exact target scene and the region allowed to change.

Imitates GEdit-Bench (Step1X-Edit, Liu et al. 2025): a source image, a natural-language instruction and a task
type; our types map onto GEdit's color_alter, subject-add, subject-remove, subject-replace and background_change,
plus ``move`` and ``resize``, which GEdit does not have. Simplifications: GEdit scores edits with a VLM judge
(semantic consistency, perceptual quality); here the target scene is exact, and ``mask`` marks every pixel an
edit may change, so an editor is also scored on leaving the rest of the image untouched.

Rules every edit keeps: the instruction names its object so that exactly one object of the source matches (by
class, colour, size, region or an extreme position); the target is a valid scene (boxes inside the image, 1 px
from its border like ``scene.place``, ``MIN_GAP_PX`` apart, at most ``MAX_OBJECTS``, never empty); without
``allow_heldout`` it holds no held-out combination. Pixels outside ``mask`` are identical in ``render(source)``
and ``render(target)``: for an object edit the mask is the union of the object's old and new boxes grown by 1 px,
for a background edit it is every pixel not fully covered by an object.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from arm.data.shapeworld.geneval import with_article
from arm.data.shapeworld.render import object_coverage
from arm.data.shapeworld.scene import (
    HELDOUT_RELATIONS_BOTH_WAYS,
    Scene,
    ShapeObject,
    boxes_clear,
    heldout_combinations,
    random_spec,
    relative_position,
)
from arm.data.shapeworld.text import LOCATION_PHRASES, REGION_NAMES, region
from arm.data.shapeworld.world import BACKGROUNDS, CLASSES, COLORS, HELDOUT_COLOR_SHAPE, MAX_OBJECTS, size_px

EDIT_TYPES = ("recolor", "add", "remove", "replace", "move", "resize", "background")
MARGIN = 1
"""Pixels kept free along the image border, as ``scene.place`` does."""
MIN_MOVE_FRACTION = 0.15
"""A move shifts an object by at least this fraction of the image side (10 px at 64), so it is visible."""
EXTREME_GAP_PX = 4
""""The leftmost circle" needs its centre this much further left than every other circle."""

Box = tuple[int, int, int, int]


@dataclass
class Edit:
    """``mask`` is bool ``(H, W)``, True where the image may change."""

    type: str
    instruction: str
    target: Scene
    mask: np.ndarray


_RECOLOR = ("make the {ref} {new}", "change the colour of the {ref} to {new}", "change the color of the {ref} to {new}",
            "paint the {ref} {new}", "recolour the {ref} {new}", "turn the {ref} {new}")
_ADD = ("add {obj} {loc}", "put {obj} {loc}", "place {obj} {loc}", "draw {obj} {loc}", "insert {obj} {loc}")
_REMOVE = ("remove the {ref}", "delete the {ref}", "take away the {ref}", "erase the {ref}", "get rid of the {ref}")
_REPLACE = ("turn the {ref} into {new}", "change the {ref} into {new}", "replace the {ref} with {colored}",
            "swap the {ref} for {colored}")
_MOVE = {
    "left": ("move the {ref} to the left", "shift the {ref} left", "move the {ref} leftwards", "slide the {ref} left"),
    "right": ("move the {ref} to the right", "shift the {ref} right", "move the {ref} rightwards",
              "slide the {ref} right"),
    "up": ("move the {ref} up", "shift the {ref} upwards", "move the {ref} towards the top", "slide the {ref} up"),
    "down": ("move the {ref} down", "shift the {ref} downwards", "move the {ref} towards the bottom",
             "slide the {ref} down"),
}
_MOVE_TO = ("move the {ref} to the {place}", "put the {ref} in the {place}", "move the {ref} into the {place}")
_MOVE_PLACES = {"top left": "top left corner", "top right": "top right corner", "bottom left": "bottom left corner",
                "bottom right": "bottom right corner", "centre": "centre"}
"""Region moves go to a corner or the centre; an edge region ("left") would read like a direction move."""
_REGION_INDEX = {name: (r, c) for r, row in enumerate(REGION_NAMES) for c, name in enumerate(row)}
_RESIZE = {"large": ("make the {ref} larger", "make the {ref} bigger", "enlarge the {ref}", "scale up the {ref}"),
           "small": ("make the {ref} smaller", "shrink the {ref}", "scale down the {ref}", "make the {ref} small")}
_BACKGROUND = ("change the background to {new}", "make the background {new}", "turn the background {new}",
               "replace the {old} background with a {new} one", "paint the background {new}")


# ------------------------------------------------------------------------------------------------ helpers


def _box_mask(resolution: int, *boxes: Box) -> np.ndarray:
    """Union of boxes grown by 1 px (anti-aliased edges stay inside their box; the margin is for safety)."""
    mask = np.zeros((resolution, resolution), bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, y0 - 1):min(resolution, y1 + 1), max(0, x0 - 1):min(resolution, x1 + 1)] = True
    return mask


def _background_mask(scene: Scene) -> np.ndarray:
    """Every pixel not fully inside an object: exactly the pixels whose value depends on the background."""
    mask = np.ones((scene.resolution, scene.resolution), bool)
    for o in scene.objects:
        mask &= object_coverage(o, scene.resolution) < 1.0
    return mask


def _replaced(scene: Scene, i: int, new: ShapeObject | None) -> Scene:
    objects = [o for j, o in enumerate(scene.objects) if j != i]
    if new is not None:
        objects.insert(i, new)
    return Scene(objects=objects, background=scene.background, resolution=scene.resolution)


def _fits(box: Box, others: list[ShapeObject], resolution: int) -> bool:
    return (box[0] >= MARGIN and box[1] >= MARGIN and box[2] <= resolution - MARGIN and box[3] <= resolution - MARGIN
            and all(boxes_clear(box, o.bbox) for o in others))


_HELDOUT_CLASS_PAIRS = frozenset((a, b) for a, _, b in HELDOUT_RELATIONS_BOTH_WAYS)


def _legal(scene: Scene, allow_heldout: bool) -> bool:
    """``allow_heldout or not heldout_combinations(scene)``, testing positions only for class pairs that can form
    a held-out relation (a third of the cost of the full check)."""
    if allow_heldout:
        return True
    objs = scene.objects
    if any((o.color, o.cls) in HELDOUT_COLOR_SHAPE for o in objs):
        return False
    for a in objs:
        for b in objs:
            if (a.cls, b.cls) in _HELDOUT_CLASS_PAIRS and any(
                (a.cls, r, b.cls) in HELDOUT_RELATIONS_BOTH_WAYS for r in relative_position(a.bbox, b.bbox)
            ):
                return False
    return True


def _center2(box: Box) -> tuple[int, int]:
    """Twice the box centre, in integers."""
    return box[0] + box[2], box[1] + box[3]


def referring_expression(scene: Scene, i: int, rng: random.Random) -> str | None:
    """A noun phrase (without "the") that only object ``i`` matches, or None when there is none."""
    objs, res = scene.objects, scene.resolution
    o = objs[i]
    others = [p for j, p in enumerate(objs) if j != i]
    options = []
    if all(p.cls != o.cls for p in others):
        options.append(o.cls)
    if all(p.color != o.color for p in others):
        options.append(f"{o.color} {rng.choice(('shape', 'object'))}")
    if all((p.color, p.cls) != (o.color, o.cls) for p in others):
        options.append(f"{o.color} {o.cls}")
    if all((p.size, p.cls) != (o.size, o.cls) for p in others):
        options.append(f"{o.size} {o.cls}")
    same = [p for p in others if p.cls == o.cls]
    where = region(o.bbox, res)
    if all(region(p.bbox, res) != where for p in same):
        options.append(f"{o.cls} {rng.choice(LOCATION_PHRASES[where])}")
    if same:
        cx, cy = _center2(o.bbox)
        gap = 2 * EXTREME_GAP_PX
        centers = [_center2(p.bbox) for p in same]
        if all(cx + gap <= px for px, _ in centers):
            options.append(f"leftmost {o.cls}")
        if all(cx - gap >= px for px, _ in centers):
            options.append(f"rightmost {o.cls}")
        if all(cy + gap <= py for _, py in centers):
            options.append(f"{rng.choice(('top', 'highest', 'topmost'))} {o.cls}")
        if all(cy - gap >= py for _, py in centers):
            options.append(f"{rng.choice(('bottom', 'lowest', 'bottommost'))} {o.cls}")
    return rng.choice(options) if options else None


def _referable_order(scene: Scene, rng: random.Random) -> Iterator[tuple[int, str]]:
    """Object indices in random order, each with a unique referring expression (unreferable ones skipped).
    A generator: most edits succeed on the first object, so the others are never named."""
    order = list(range(len(scene.objects)))
    rng.shuffle(order)
    for i in order:
        ref = referring_expression(scene, i, rng)
        if ref is not None:
            yield i, ref


# ------------------------------------------------------------------------------------------------ editors


def _recolor(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    for i, ref in _referable_order(scene, rng):
        o = scene.objects[i]
        colors = [k for k in COLORS if k != o.color and (allow_heldout or (k, o.cls) not in HELDOUT_COLOR_SHAPE)]
        new = rng.choice(colors)
        target = _replaced(scene, i, ShapeObject(o.cls, new, o.size, o.bbox))
        if _legal(target, allow_heldout):
            return Edit("recolor", rng.choice(_RECOLOR).format(ref=ref, new=new), target,
                        _box_mask(scene.resolution, o.bbox))
    return None


def _add(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    res = scene.resolution
    if len(scene.objects) >= MAX_OBJECTS:
        return None
    spec = random_spec(rng, allow_heldout)
    size = spec.size
    for attempt in range(40):
        if attempt == 20:  # a crowded scene may have no room for a large object: try a small one
            size = "small"
        side = size_px(size, res)
        x0, y0 = rng.randint(MARGIN, res - side - MARGIN), rng.randint(MARGIN, res - side - MARGIN)
        box = (x0, y0, x0 + side, y0 + side)
        if not _fits(box, scene.objects, res):
            continue
        new = ShapeObject(spec.cls, spec.color, size, box)
        target = Scene(objects=[*scene.objects, new], background=scene.background, resolution=res)
        if _legal(target, allow_heldout):
            obj = with_article(f"{size} {spec.color} {spec.cls}")
            loc = rng.choice(LOCATION_PHRASES[region(box, res)])
            return Edit("add", rng.choice(_ADD).format(obj=obj, loc=loc), target, _box_mask(res, box))
    return None


def _remove(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    if len(scene.objects) < 2:  # an empty scene has no caption, question or GenEval record: keep one object
        return None
    for i, ref in _referable_order(scene, rng):
        target = _replaced(scene, i, None)
        if _legal(target, allow_heldout):
            return Edit("remove", rng.choice(_REMOVE).format(ref=ref), target,
                        _box_mask(scene.resolution, scene.objects[i].bbox))
    return None


def _replace(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    for i, ref in _referable_order(scene, rng):
        o = scene.objects[i]
        classes = [c for c in CLASSES if c != o.cls and (allow_heldout or (o.color, c) not in HELDOUT_COLOR_SHAPE)]
        new = rng.choice(classes)
        target = _replaced(scene, i, ShapeObject(new, o.color, o.size, o.bbox))
        if _legal(target, allow_heldout):
            text = rng.choice(_REPLACE).format(ref=ref, new=with_article(new),
                                               colored=with_article(f"{o.color} {new}"))
            return Edit("replace", text, target, _box_mask(scene.resolution, o.bbox))
    return None


def _region_range(index: int, side: int, resolution: int) -> range:
    """Box starts whose centre lies in third ``index`` of an axis and whose box keeps the border margin."""
    lo = max(MARGIN, -(-(2 * index * resolution - 3 * side) // 6))  # ceil(index * res / 3 - side / 2)
    hi = min(resolution - side - MARGIN, -(-(2 * (index + 1) * resolution - 3 * side) // 6) - 1)
    return range(lo, hi + 1)


def _move(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    res = scene.resolution
    min_shift = max(2, round(MIN_MOVE_FRACTION * res))
    for i, ref in _referable_order(scene, rng):
        o = scene.objects[i]
        others = [p for j, p in enumerate(scene.objects) if j != i]
        x0, y0, x1, y1 = o.bbox
        side = x1 - x0
        moves: list[tuple[Box, str]] = []
        if rng.random() < 0.3:  # to a corner or the centre
            here = region(o.bbox, res)
            for name in rng.sample(sorted(_MOVE_PLACES), len(_MOVE_PLACES)):
                if name == here:
                    continue
                row, col = _REGION_INDEX[name]
                xs, ys = _region_range(col, side, res), _region_range(row, y1 - y0, res)
                if xs and ys:
                    nx, ny = rng.choice(xs), rng.choice(ys)
                    text = rng.choice(_MOVE_TO).format(ref=ref, place=_MOVE_PLACES[name])
                    moves.append(((nx, ny, nx + side, ny + y1 - y0), text))
        else:
            room = {"left": x0 - MARGIN, "right": res - MARGIN - x1, "up": y0 - MARGIN, "down": res - MARGIN - y1}
            step = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
            for d in rng.sample(sorted(room), 4):
                if room[d] >= min_shift:
                    s = rng.randint(min_shift, room[d])
                    dx, dy = step[d][0] * s, step[d][1] * s
                    moves.append(((x0 + dx, y0 + dy, x1 + dx, y1 + dy), rng.choice(_MOVE[d]).format(ref=ref)))
        for box, text in moves:
            if _fits(box, others, res):
                target = _replaced(scene, i, ShapeObject(o.cls, o.color, o.size, box))
                if _legal(target, allow_heldout):
                    return Edit("move", text, target, _box_mask(res, o.bbox, box))
    return None


def _resize(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    res = scene.resolution
    for i, ref in _referable_order(scene, rng):
        o = scene.objects[i]
        others = [p for j, p in enumerate(scene.objects) if j != i]
        size = "small" if o.size == "large" else "large"
        side = size_px(size, res)
        cx, cy = _center2(o.bbox)
        # Keep the centre (to half a pixel), then try small shifts when a neighbour or the border is in the way.
        base_x, base_y = (cx - side) // 2, (cy - side) // 2
        reach = abs(side - (o.bbox[2] - o.bbox[0]))
        shifts = [(0, 0)] + [(rng.randint(-reach, reach), rng.randint(-reach, reach)) for _ in range(8)]
        for dx, dy in shifts:
            nx = min(max(base_x + dx, MARGIN), res - side - MARGIN)
            ny = min(max(base_y + dy, MARGIN), res - side - MARGIN)
            box = (nx, ny, nx + side, ny + side)
            if _fits(box, others, res):
                target = _replaced(scene, i, ShapeObject(o.cls, o.color, size, box))
                if _legal(target, allow_heldout):
                    text = rng.choice(_RESIZE[size]).format(ref=ref)
                    return Edit("resize", text, target, _box_mask(res, o.bbox, box))
    return None


def _background(scene: Scene, rng: random.Random, allow_heldout: bool) -> Edit | None:
    new = rng.choice([b for b in BACKGROUNDS if b != scene.background])
    target = Scene(objects=list(scene.objects), background=new, resolution=scene.resolution)
    if not _legal(target, allow_heldout):
        return None
    text = rng.choice(_BACKGROUND).format(new=new, old=scene.background)
    return Edit("background", text, target, _background_mask(scene))


_EDITORS: dict[str, Callable[[Scene, random.Random, bool], Edit | None]] = {
    "recolor": _recolor, "add": _add, "remove": _remove, "replace": _replace, "move": _move, "resize": _resize,
    "background": _background,
}


def sample_edit(scene: Scene, rng: random.Random, allow_heldout: bool, edit_type: str | None = None) -> Edit:
    """An edit of ``edit_type`` (a random type when None).

    When that type is impossible for the scene (remove from one object, add to a full scene, no unambiguous
    object, no legal target), the next types of ``EDIT_TYPES`` are tried in order, wrapping around; ``Edit.type``
    says which one was made. Raises ``ValueError`` only when no type gives a legal target, which happens when
    the source holds a held-out combination and ``allow_heldout`` is False.
    """
    if edit_type is None:
        start = rng.randrange(len(EDIT_TYPES))
    elif edit_type in EDIT_TYPES:
        start = EDIT_TYPES.index(edit_type)
    else:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
    for k in range(len(EDIT_TYPES)):
        edit = _EDITORS[EDIT_TYPES[(start + k) % len(EDIT_TYPES)]](scene, rng, allow_heldout)
        if edit is not None:
            return edit
    raise ValueError(f"no edit keeps this scene free of held-out combinations ({heldout_combinations(scene)}); "
                     "pass allow_heldout=True for test-split scenes")
