"""Edits: each type changes what its instruction says and nothing else, outside-mask pixels never change, targets
are valid and respect the held-out policy, and referring expressions pick out exactly one object."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest

from arm.data.shapeworld import edits
from arm.data.shapeworld.render import render
from arm.data.shapeworld.scene import Scene, ShapeObject, boxes_clear, heldout_combinations, scene_for
from arm.data.shapeworld.world import BACKGROUNDS, CLASSES, COLORS, MAX_OBJECTS, MIN_GAP_PX, SIZES, size_px

RES = 64


def obj(cls: str, color: str, box: tuple[int, int, int, int], size: str = "small") -> ShapeObject:
    return ShapeObject(cls, color, size, box)


def region_of(box, res: int = RES) -> str:
    """3 x 3 region of a box centre, computed independently of ``text.region``."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    row = ("top", "", "bottom")[min(2, int(cy * 3 / res))]
    col = ("left", "", "right")[min(2, int(cx * 3 / res))]
    return " ".join(w for w in (row, col) if w) or "centre"


def phrase_region(phrase: str) -> str | None:
    """The region a location phrase names ("in the top left corner" -> "top left")."""
    for name in ("top left", "top right", "bottom left", "bottom right"):
        if name in phrase:
            return name
    for word, name in (("top", "top"), ("bottom", "bottom"), ("centre", "centre"), ("middle", "centre"),
                       ("left", "left"), ("right", "right")):
        if re.search(rf"\b{word}\b", phrase):
            return name
    return None


def resolve(phrase: str, scene: Scene) -> list[int]:
    """Indices of the objects a referring expression (without "the") matches, read word by word."""
    words = phrase.split()
    if words[-1] in ("shape", "object"):
        return [i for i, o in enumerate(scene.objects) if o.color == words[0]]
    cls_at = next(k for k, w in enumerate(words) if w in CLASSES)
    cls, mods, loc = words[cls_at], words[:cls_at], " ".join(words[cls_at + 1:])
    hits = [i for i, o in enumerate(scene.objects) if o.cls == cls]
    for m in mods:
        if m in COLORS:
            hits = [i for i in hits if scene.objects[i].color == m]
        elif m in SIZES:
            hits = [i for i in hits if scene.objects[i].size == m]
        else:  # an extreme: keep the object whose centre is furthest that way
            key = {"leftmost": lambda b: b[0] + b[2], "rightmost": lambda b: -(b[0] + b[2]),
                   "top": lambda b: b[1] + b[3], "highest": lambda b: b[1] + b[3], "topmost": lambda b: b[1] + b[3],
                   "bottom": lambda b: -(b[1] + b[3]), "lowest": lambda b: -(b[1] + b[3]),
                   "bottommost": lambda b: -(b[1] + b[3])}[m]
            best = min(key(scene.objects[i].bbox) for i in hits)
            hits = [i for i in hits if key(scene.objects[i].bbox) == best]
    if loc:
        hits = [i for i in hits if region_of(scene.objects[i].bbox) == phrase_region(loc)]
    return hits


def world_scenes(n: int, split: str = "train") -> list[Scene]:
    return [scene_for(2, split, i) for i in range(n)]


def assert_valid(scene: Scene) -> None:
    scene.validate()
    assert len(scene.objects) >= 1 and len(scene.objects) <= MAX_OBJECTS
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        assert 0 <= x0 < x1 <= RES and 0 <= y0 < y1 <= RES
        assert x1 - x0 == y1 - y0 == size_px(o.size, RES)
    for a, b in itertools.combinations(scene.objects, 2):
        assert boxes_clear(a.bbox, b.bbox, MIN_GAP_PX)


def changed(source: Scene, target: Scene) -> list[tuple[ShapeObject, ShapeObject]]:
    return [(a, b) for a, b in zip(source.objects, target.objects) if a != b]


def check_semantics(source: Scene, edit: edits.Edit) -> None:
    """What each edit type promises, read off the two scenes and the instruction."""
    target, text = edit.target, edit.instruction
    if edit.type != "background":
        assert target.background == source.background
    if edit.type in ("recolor", "replace", "move", "resize"):
        assert len(target.objects) == len(source.objects)
        ((a, b),) = changed(source, target)
        if edit.type == "recolor":
            assert (a.cls, a.size, a.bbox) == (b.cls, b.size, b.bbox) and a.color != b.color and b.color in text
        elif edit.type == "replace":
            assert (a.color, a.size, a.bbox) == (b.color, b.size, b.bbox) and a.cls != b.cls
            assert re.search(rf"\b{b.cls}$", text)
        elif edit.type == "move":
            assert (a.cls, a.color, a.size) == (b.cls, b.color, b.size) and a.bbox != b.bbox
            dx, dy = b.bbox[0] - a.bbox[0], b.bbox[1] - a.bbox[1]
            place = text.rsplit(" the ", 1)[1]  # the referring expression may hold location words itself
            if place.endswith("corner") or place in ("centre", "middle"):
                assert region_of(b.bbox) != region_of(a.bbox) and region_of(b.bbox) == phrase_region(place)
            else:
                direction = re.search(r"\b(left|right|up|down|top|bottom)(?:wards)?$", text)
                expect = {"left": dx < 0 == dy, "right": dx > 0 == dy, "up": dy < 0 == dx, "top": dy < 0 == dx,
                          "down": dy > 0 == dx, "bottom": dy > 0 == dx}[direction.group(1)]
                assert expect and max(abs(dx), abs(dy)) >= 0.15 * RES - 0.5, (text, a, b)
        else:
            assert (a.cls, a.color) == (b.cls, b.color) and a.size != b.size
            grows = any(w in text for w in ("larger", "bigger", "enlarge", "scale up"))
            assert grows == (b.size == "large")
    elif edit.type == "add":
        assert target.objects[:-1] == source.objects
        new = target.objects[-1]
        assert f"{new.size} {new.color} {new.cls}" in text
        assert phrase_region(text.split(new.cls, 1)[1]) == region_of(new.bbox)
    elif edit.type == "remove":
        assert len(target.objects) == len(source.objects) - 1
        (gone,) = [i for i, o in enumerate(source.objects) if o not in target.objects]
        ref = re.sub(r"^(remove|delete|take away|erase|get rid of) the ", "", text)
        assert resolve(ref, source) == [gone], (text, source)
    elif edit.type == "background":
        assert target.objects == source.objects and target.background != source.background
        assert target.background in text
    else:
        raise AssertionError(edit.type)


@pytest.mark.parametrize("edit_type", edits.EDIT_TYPES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_edit_type_on_world_scenes(edit_type, split):
    allow = split == "test"
    made = 0
    for i, scene in enumerate(world_scenes(80, split)):
        before = scene.to_json()
        edit = edits.sample_edit(scene, random.Random(f"{split}/{i}"), allow_heldout=allow, edit_type=edit_type)
        assert scene.to_json() == before  # the source is never modified
        assert edit.type in edits.EDIT_TYPES
        made += edit.type == edit_type
        assert_valid(edit.target)
        if not allow:
            assert heldout_combinations(edit.target) == []
        assert edit.mask.dtype == bool and edit.mask.shape == (RES, RES) and edit.mask.any()
        a, b = render(scene), render(edit.target)
        assert np.array_equal(a[~edit.mask], b[~edit.mask]), (edit.type, edit.instruction)
        assert not np.array_equal(a, b)  # every edit changes the picture
        check_semantics(scene, edit)
    assert made >= 50  # fallbacks are the exception (remove from one object, add to a full scene)


def test_masks():
    scene = Scene([obj("square", "red", (10, 10, 24, 24)), obj("circle", "blue", (40, 40, 54, 54))])
    edit = edits.sample_edit(scene, random.Random(0), False, "recolor")
    (box,) = [b.bbox for a, b in changed(scene, edit.target)]
    expected = np.zeros((RES, RES), bool)
    expected[box[1] - 1: box[3] + 1, box[0] - 1: box[2] + 1] = True
    assert np.array_equal(edit.mask, expected)
    edit = edits.sample_edit(scene, random.Random(0), False, "background")
    assert not edit.mask[10:24, 10:24].any()  # the square covers its box fully: its pixels keep their colour
    assert edit.mask[40, 40] and not edit.mask[47, 47]  # circle: its box corner shows background, its centre not
    assert edit.mask[0, 0] and edit.mask[30, 30]


def test_referring_expressions_are_unique():
    rng = random.Random(9)
    named = 0
    for scene in world_scenes(300) + world_scenes(100, "test"):
        for i in range(len(scene.objects)):
            ref = edits.referring_expression(scene, i, rng)
            if ref is not None:
                named += 1
                assert resolve(ref, scene) == [i], (ref, scene)
    assert named > 500


def test_ambiguous_class_is_qualified():
    scene = Scene([obj("circle", "red", (4, 25, 18, 39)), obj("circle", "blue", (44, 25, 58, 39))])
    for s in range(40):
        edit = edits.sample_edit(scene, random.Random(s), False, "recolor")
        assert not re.search(r"the circle\b(?! (in|on|at|near))", edit.instruction), edit.instruction


def test_fallbacks_are_deterministic():
    one = Scene([obj("star", "blue", (20, 20, 34, 34))])
    edit = edits.sample_edit(one, random.Random(0), False, "remove")
    assert edit.type == "replace"  # the next type in EDIT_TYPES: a scene is never emptied
    full = Scene([obj("star", "blue", (2, 2, 16, 16)), obj("circle", "red", (40, 2, 54, 16)),
                  obj("square", "white", (2, 40, 16, 54)), obj("diamond", "black", (40, 40, 54, 54))])
    assert edits.sample_edit(full, random.Random(0), False, "add").type == "remove"
    for scene in world_scenes(20):
        for t in edits.EDIT_TYPES:
            e1 = edits.sample_edit(scene, random.Random(5), False, t)
            e2 = edits.sample_edit(scene, random.Random(5), False, t)
            assert (e1.type, e1.instruction, e1.target.to_json()) == (e2.type, e2.instruction, e2.target.to_json())
            assert np.array_equal(e1.mask, e2.mask)
    with pytest.raises(ValueError, match="unknown edit type"):
        edits.sample_edit(one, random.Random(0), False, "rotate")


def test_heldout_sources():
    # A held-out object with allow_heldout=False: only edits that get rid of it are legal.
    scene = Scene([obj("circle", "green", (20, 20, 34, 34))])
    for s in range(20):
        edit = edits.sample_edit(scene, random.Random(s), False)
        assert edit.type in ("recolor", "replace") and heldout_combinations(edit.target) == []
    types = {edits.sample_edit(scene, random.Random(s), True).type for s in range(60)}
    assert types == set(edits.EDIT_TYPES) - {"remove"}


def test_random_types_cover_all_and_backgrounds_change():
    scenes = world_scenes(200)
    types = [edits.sample_edit(s, random.Random(i), False).type for i, s in enumerate(scenes)]
    assert set(types) == set(edits.EDIT_TYPES)
    for i, s in enumerate(scenes[:30]):
        edit = edits.sample_edit(s, random.Random(i), False, "background")
        assert edit.target.background in BACKGROUNDS and edit.target.background != s.background
