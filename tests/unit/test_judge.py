"""GenEval's per-image rules, the tag summary, scene comparison, edit diffs, preservation and wrong-scene
perturbation, each checked against hand-computed answers."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from arm.data.shapeworld.judge import (
    UnsupportedRecord,
    evaluate_geneval,
    match_objects,
    objects_recovered,
    perturb_for_record,
    preservation,
    scene_detections,
    scene_diff,
    scenes_match,
    score_geneval_image,
    summarize_geneval,
)
from arm.data.shapeworld.render import render
from arm.data.shapeworld.scene import ObjectSpec, Scene, ShapeObject, boxes_clear, place


def det(cls: str, bbox, color: str = "red", score: float = 0.9) -> dict:
    return {"class": cls, "color": color, "bbox": list(bbox), "score": score}


def verdict(detections, record, **kw) -> tuple[bool, str]:
    out = evaluate_geneval(detections, record, **kw)
    return out["correct"], out["reason"]


# -------------------------------------------------------------------------------------------- GenEval rules

COUNT_3 = {"tag": "counting", "prompt": "a photo of three circles",
           "include": [{"class": "circle", "count": 3}], "exclude": [{"class": "circle", "count": 4}]}
BOXES = [(2, 2, 16, 16), (20, 2, 34, 16), (40, 2, 54, 16), (2, 30, 16, 44)]


def test_counting_with_exclude():
    assert verdict([det("circle", b) for b in BOXES[:3]], COUNT_3) == (True, "")
    assert verdict([det("circle", b) for b in BOXES[:2]], COUNT_3) == (False, "expected circle>=3, found 2")
    assert verdict([det("circle", b) for b in BOXES], COUNT_3) == (False, "expected circle<4, found 4")
    # Other classes neither help nor hurt a count.
    assert verdict([det("circle", b) for b in BOXES[:3]] + [det("square", BOXES[3])], COUNT_3)[0]


def test_keep_threshold_drops_low_scores():
    dets = [det("circle", b) for b in BOXES[:2]] + [det("circle", BOXES[2], score=0.3)]
    assert verdict(dets, COUNT_3) == (False, "expected circle>=3, found 2")
    assert verdict(dets, COUNT_3, threshold=0.2)[0]


def test_colour_is_checked_on_the_first_count_objects_by_score():
    record = {"tag": "colors", "prompt": "a photo of a red circle", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    blue_first = [det("circle", BOXES[0], "blue", 0.95), det("circle", BOXES[1], "red", 0.8)]
    assert verdict(blue_first, record) == (False, "expected red circle>=1, found 0 red; and 1 blue")
    red_first = [det("circle", BOXES[0], "blue", 0.7), det("circle", BOXES[1], "red", 0.8)]
    assert verdict(red_first, record) == (True, "")


COLOR_ATTR = {"tag": "color_attr", "prompt": "a photo of a red square and a blue star",
              "include": [{"class": "square", "count": 1, "color": "red"}, {"class": "star", "count": 1, "color": "blue"}]}


def test_color_attr_needs_both_bindings():
    assert verdict([det("square", BOXES[0], "red"), det("star", BOXES[1], "blue")], COLOR_ATTR)[0]
    swapped = [det("square", BOXES[0], "blue"), det("star", BOXES[1], "red")]
    correct, reason = verdict(swapped, COLOR_ATTR)
    assert not correct and reason.count("\n") == 1  # both requirements fail, one line each


def position_record(rel: str) -> dict:
    # GenEval's convention: the reference object first, the positioned one second with [relation, 0].
    return {"tag": "position", "prompt": f"a photo of a circle {rel} a square",
            "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": [rel, 0]}]}


def test_position_clear_case():
    square, circle = det("square", (40, 30, 54, 44)), det("circle", (10, 30, 24, 44))
    assert verdict([square, circle], position_record("left of")) == (True, "")
    assert verdict([square, circle], position_record("right of")) == (False, "expected circle right of target, found left of target")


def test_position_margin_makes_a_near_diagonal_pair_fail():
    # Centre offset of the circle from the square: (-10, -15), |offset| = 18.03. Without GenEval's margin,
    # dx = -10 / 18.03 = -0.555 < -0.5 would mean "left of"; the margin 0.1 * (14 + 14) = 2.8 shrinks it to
    # -7.2 / 18.03 = -0.399, so only "above" (dy = -12.2 / 18.03 = -0.677) holds.
    square, circle = det("square", (40, 40, 54, 54)), det("circle", (30, 25, 44, 39))
    assert verdict([square, circle], position_record("left of")) == (False, "expected circle left of target, found above target")
    assert verdict([square, circle], position_record("above"))[0]


def test_position_with_a_missing_target_group():
    correct, reason = verdict([det("circle", (10, 30, 24, 44))], position_record("left of"))
    assert not correct
    assert reason == "expected square>=1, found 0\nno target for circle to be left of"


def test_position_checks_every_object_against_every_target():
    record = {"tag": "position", "prompt": "two circles left of a square",
              "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 2, "position": ["left of", 0]}]}
    square = det("square", (40, 30, 54, 44))
    left, also_left, below = det("circle", (5, 30, 19, 44)), det("circle", (5, 5, 19, 19)), det("circle", (40, 48, 54, 62))
    assert verdict([square, left, also_left], record)[0]
    assert not verdict([square, left, below], record)[0]


def test_exclude_alone():
    record = {"tag": "counting", "prompt": "no stars", "include": [], "exclude": [{"class": "star", "count": 1}]}
    assert verdict([det("circle", BOXES[0])], record) == (True, "")
    assert verdict([det("star", BOXES[0])], record) == (False, "expected star<1, found 1")


@pytest.mark.parametrize("record", [
    {"tag": "single_object", "prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]},
    {"tag": "counting", "prompt": "x", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "giraffe", "count": 3}]},
    {"tag": "colors", "prompt": "x", "include": [{"class": "circle", "count": 1, "color": "teal"}]},
])
def test_unsupported_records_raise(record):
    with pytest.raises(UnsupportedRecord):
        evaluate_geneval([], record)
    with pytest.raises(UnsupportedRecord):
        score_geneval_image(np.full((64, 64, 3), 128, np.uint8), record)


def test_summarize_averages_tags_without_weighting_by_record_count():
    results = [{"tag": "single_object", "correct": c} for c in (True, True, True, False)]
    results += [{"tag": "counting", "correct": c} for c in (False, True)]
    summary = summarize_geneval(results)
    assert summary["per_tag"] == {"single_object": 0.75, "counting": 0.5}
    assert summary["counts"] == {"single_object": 4, "counting": 2}
    assert summary["overall"] == pytest.approx(0.625)  # record-weighted would be 4 / 6 = 0.667
    assert math.isnan(summarize_geneval([])["overall"])


# ---------------------------------------------------------------------------------------- scene comparison


def obj(cls, color, size, box) -> ShapeObject:
    return ShapeObject(cls, color, size, tuple(box))


def test_scenes_match_tolerance_and_attributes():
    a = Scene([obj("circle", "red", "small", (10, 10, 24, 24)), obj("square", "blue", "large", (30, 30, 52, 52))])
    shifted = Scene([obj("square", "blue", "large", (32, 28, 54, 50)), obj("circle", "red", "small", (8, 12, 22, 26))])
    assert scenes_match(a, shifted)  # order-free, every coordinate within 2 px
    too_far = Scene([obj("circle", "red", "small", (13, 10, 27, 24)), obj("square", "blue", "large", (30, 30, 52, 52))])
    assert not scenes_match(a, too_far) and scenes_match(a, too_far, box_tol=3)
    recoloured = Scene([obj("circle", "pink", "small", (10, 10, 24, 24)), obj("square", "blue", "large", (30, 30, 52, 52))])
    assert not scenes_match(a, recoloured)
    assert not scenes_match(a, Scene(a.objects[:1]))
    assert not scenes_match(a, Scene(list(a.objects), background="khaki"))


def test_objects_recovered_asks_class_and_place_only():
    """Per truth object: found when some object of its class sits within the box tolerance, whatever its colour or
    size word; a class swap or a move beyond the tolerance is a miss; extra found objects change nothing."""
    truth = Scene([obj("star", "red", "small", (10, 10, 24, 24)), obj("cross", "blue", "large", (30, 30, 52, 52)),
                   obj("circle", "green", "small", (40, 2, 54, 16))])
    found = Scene([obj("star", "pink", "large", (12, 8, 26, 22)),       # recoloured, resized word, 2 px off: found
                   obj("circle", "blue", "large", (30, 30, 52, 52)),    # the cross come back as a circle: missed
                   obj("circle", "green", "small", (43, 2, 57, 16)),    # 3 px off: missed at 2, found at 3
                   obj("square", "red", "small", (2, 40, 16, 54))], background="khaki")
    assert objects_recovered(truth, found) == [True, False, False]
    assert objects_recovered(truth, found, box_tol=3) == [True, False, True]
    assert objects_recovered(truth, Scene([])) == [False, False, False]
    assert objects_recovered(Scene([]), found) == []


def test_match_objects_pairs_by_position_and_attributes():
    a = Scene([obj("circle", "red", "small", (10, 10, 24, 24)), obj("square", "blue", "small", (40, 40, 54, 54))])
    b = Scene([obj("square", "blue", "small", (41, 40, 55, 54)), obj("circle", "red", "small", (10, 12, 24, 26))])
    assert match_objects(a, b) == [(0, 1), (1, 0)]
    assert match_objects(a, Scene([])) == []


def test_scene_diff_lists_added_removed_changed_and_background():
    before = Scene([obj("circle", "red", "small", (10, 10, 24, 24)), obj("square", "blue", "small", (40, 10, 54, 24)),
                    obj("star", "white", "small", (10, 44, 24, 58))])
    after = Scene([obj("circle", "green", "small", (10, 10, 24, 24)), obj("square", "blue", "small", (40, 20, 54, 34)),
                   obj("triangle", "yellow", "large", (30, 38, 52, 60))], background="khaki")
    diff = scene_diff(before, after)
    changed = {d["before"]["class"]: d["changed"] for d in diff["changed"]}
    assert changed == {"circle": ["color"], "square": ["position"]}
    # The star (bottom left) and the new yellow triangle (bottom right) differ in class, colour, size and place.
    assert [o["class"] for o in diff["removed"]] == ["star"]
    assert [o["class"] for o in diff["added"]] == ["triangle"]
    assert diff["background"] == {"before": "gray", "after": "khaki"}


def test_scene_diff_of_identical_scenes_is_empty():
    scene = Scene([obj("cross", "black", "large", (5, 5, 27, 27))])
    assert scene_diff(scene, scene.copy()) == {"added": [], "removed": [], "changed": [], "background": None}


def test_scene_diff_resize_in_place_is_a_size_change_only():
    before = Scene([obj("diamond", "pink", "small", (20, 20, 34, 34))])
    after = Scene([obj("diamond", "pink", "large", (16, 16, 38, 38))])  # same centre (27, 27)
    assert [d["changed"] for d in scene_diff(before, after)["changed"]] == [["size"]]


# --------------------------------------------------------------------------------------------- preservation


def test_preservation_on_hand_made_arrays():
    source = np.zeros((4, 4, 3), np.uint8)
    edited = source.copy()
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    edited[:2, :2] = 100  # inside the mask: allowed, ignored
    edited[3, 3, 0] = 30  # outside: one channel off by 30
    edited[2, 0] = 5  # outside: all channels off by 5 (under the tolerance of 8)
    out = preservation(source, edited, mask)
    # 12 outside pixels x 3 channels = 36 values; |error| sums to 30 + 3 * 5 = 45.
    assert out["mae"] == pytest.approx(45 / 36)
    assert out["psnr"] == pytest.approx(10 * math.log10(255**2 / ((30**2 + 3 * 5**2) / 36)))
    assert out["changed_fraction"] == pytest.approx(1 / 12)
    assert out["num_pixels"] == 12


def test_preservation_identical_and_shape_errors():
    image = render(Scene([obj("circle", "red", "small", (10, 10, 24, 24))]))
    same = preservation(image, image.copy(), np.zeros(image.shape[:2], bool))
    assert same["mae"] == 0 and same["psnr"] == math.inf and same["changed_fraction"] == 0
    with pytest.raises(ValueError):
        preservation(image, image, np.zeros((3, 3), bool))


# ------------------------------------------------------------------------------------------- wrong scenes

RECORDS = {
    "single_object": ({"tag": "single_object", "prompt": "a photo of a star", "include": [{"class": "star", "count": 1}]},
                      [ObjectSpec("star", "green", "large")], []),
    "two_object": ({"tag": "two_object", "prompt": "a photo of a circle and a cross",
                    "include": [{"class": "circle", "count": 1}, {"class": "cross", "count": 1}]},
                   [ObjectSpec("circle", "red", "small"), ObjectSpec("cross", "blue", "large")], []),
    "counting": ({"tag": "counting", "prompt": "a photo of three squares",
                  "include": [{"class": "square", "count": 3}], "exclude": [{"class": "square", "count": 4}]},
                 [ObjectSpec("square", c, "small") for c in ("red", "blue", "white")], []),
    "colors": ({"tag": "colors", "prompt": "a photo of a pink diamond",
                "include": [{"class": "diamond", "count": 1, "color": "pink"}]},
               [ObjectSpec("diamond", "pink", "large")], []),
    "position": (position_record("left of"),
                 [ObjectSpec("square", "yellow", "small"), ObjectSpec("circle", "purple", "small")], [(1, "left of", 0)]),
    "color_attr": (COLOR_ATTR, [ObjectSpec("square", "red", "large"), ObjectSpec("star", "blue", "small")], []),
}


@pytest.mark.parametrize("tag", sorted(RECORDS))
def test_perturbed_scenes_are_rejected_by_the_scorer(tag):
    record, specs, relations = RECORDS[tag]
    for trial in range(3):
        scene = place(random.Random(f"{tag}/{trial}"), specs, relations=relations, allow_heldout=True, robust=True)
        assert scene is not None
        assert evaluate_geneval(scene_detections(scene), record)["correct"]
        assert score_geneval_image(render(scene), record)["correct"]  # the scorer accepts the right image
        wrong = perturb_for_record(scene, record, np.random.default_rng(trial))
        assert not evaluate_geneval(scene_detections(wrong), record)["correct"]
        assert not score_geneval_image(render(wrong), record)["correct"]
        assert scene_diff(scene, wrong) != scene_diff(scene, scene)  # something did change ...
        for i, a in enumerate(wrong.objects):  # ... and the scene is still a legal ShapeWorld scene
            assert 0 <= min(a.bbox) and max(a.bbox) <= wrong.resolution
            assert all(boxes_clear(a.bbox, b.bbox) for b in wrong.objects[i + 1:])


def test_perturb_leaves_the_input_scene_alone():
    record, specs, _ = RECORDS["colors"]
    scene = place(random.Random(0), specs, allow_heldout=True)
    before = scene.to_json()
    perturb_for_record(scene, record, random.Random(1))
    assert scene.to_json() == before


def test_perturb_an_exclude_only_record_adds_the_excluded_class():
    record = {"tag": "counting", "prompt": "fewer than two stars", "include": [], "exclude": [{"class": "star", "count": 2}]}
    scene = Scene([obj("circle", "red", "small", (10, 10, 24, 24))])
    wrong = perturb_for_record(scene, record, random.Random(3))
    assert sum(o.cls == "star" for o in wrong.objects) == 2
    assert not score_geneval_image(render(wrong), record)["correct"]
