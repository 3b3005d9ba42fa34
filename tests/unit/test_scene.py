"""Scene geometry, GenEval's position rule, placement and the split policy."""

import random

import pytest

from arm.data.shapeworld.scene import (
    ObjectSpec,
    Scene,
    ShapeObject,
    boxes_clear,
    heldout_combinations,
    place,
    relative_position,
    robust_relations,
    scene_for,
)
from arm.data.shapeworld.world import HELDOUT_COLOR_SHAPE, HELDOUT_RELATIONS, MIN_GAP_PX


def test_relative_position_hand_computed():
    # A 10x10 box whose centre is 20 px left of B's: offset (-20, 0); margin 0.1*(10+10)=2 -> revised (-18, 0)/20.
    assert relative_position((0, 0, 10, 10), (20, 0, 30, 10)) == {"left of"}
    assert relative_position((20, 0, 30, 10), (0, 0, 10, 10)) == {"right of"}
    assert relative_position((0, 0, 10, 10), (0, 30, 10, 40)) == {"above"}
    # Diagonal at 45 degrees: dx = dy = (20-2)/sqrt(800) = 0.636 > 0.5, so both hold.
    assert relative_position((0, 0, 10, 10), (20, 20, 30, 30)) == {"left of", "above"}
    # Offset (-10, -9): revised (-8, -7) / 13.45 = (-0.595, -0.520): both just pass 0.5.
    assert relative_position((0, 0, 10, 10), (10, 9, 20, 19)) == {"left of", "above"}
    # Offset (-10, -6): revised (-8, -4) / 11.66 -> dy = -0.343, so only "left of".
    assert relative_position((0, 0, 10, 10), (10, 6, 20, 16)) == {"left of"}
    # Centres 1 px apart: the margin (2 px) swallows the offset entirely.
    assert relative_position((0, 0, 10, 10), (1, 0, 11, 10)) == set()


def test_robust_relations_drop_fragile_ones():
    # Offset (-20, -15): revised (-18, -13) / 25 = (-0.72, -0.52): "above" holds only barely. Moving A 2 px
    # right and down gives (-16, -11) / 22.2 -> dy = -0.495, so "above" is fragile; "left of" stays >= 0.64.
    a, b = (0, 0, 10, 10), (20, 15, 30, 25)
    assert relative_position(a, b) == {"left of", "above"}
    assert robust_relations(a, b, slack=2) == {"left of"}


def test_boxes_clear():
    assert boxes_clear((0, 0, 10, 10), (10 + MIN_GAP_PX, 0, 20, 10))
    assert not boxes_clear((0, 0, 10, 10), (10 + MIN_GAP_PX - 1, 0, 20, 10))
    assert not boxes_clear((0, 0, 10, 10), (5, 5, 15, 15))


def test_place_respects_gaps_and_relations():
    rng = random.Random(1)
    for _ in range(50):
        specs = [ObjectSpec("circle", "red", "large"), ObjectSpec("star", "blue", "small")]
        scene = place(rng, specs, relations=[(1, "above", 0)], robust=True)
        assert scene is not None
        a, b = scene.objects
        assert boxes_clear(a.bbox, b.bbox)
        assert "above" in robust_relations(b.bbox, a.bbox)
        for o in scene.objects:
            assert 0 <= o.bbox[0] < o.bbox[2] <= 64 and 0 <= o.bbox[1] < o.bbox[3] <= 64


def test_train_and_val_never_hold_heldout_combinations():
    for split in ("train", "val"):
        for i in range(1500):
            scene = scene_for(3, split, i)
            for o in scene.objects:
                assert (o.color, o.cls) not in HELDOUT_COLOR_SHAPE
            for x in scene.objects:
                for y in scene.objects:
                    if x is not y:
                        for rel in relative_position(x.bbox, y.bbox):
                            assert (x.cls, rel, y.cls) not in HELDOUT_RELATIONS


def test_test_split_holds_heldout_combinations():
    flagged = sum(bool(heldout_combinations(scene_for(3, "test", i))) for i in range(400))
    assert 0.4 * 400 < flagged < 0.9 * 400


def test_scene_for_is_deterministic_and_split_specific():
    assert scene_for(5, "train", 17).to_json() == scene_for(5, "train", 17).to_json()
    assert scene_for(5, "train", 17).to_json() != scene_for(6, "train", 17).to_json()
    assert scene_for(5, "train", 17).to_json() != scene_for(5, "val", 17).to_json()


def test_scene_json_round_trip_and_validation():
    scene = Scene([ShapeObject("star", "pink", "small", (3, 4, 17, 18))], background="khaki")
    assert Scene.from_json(scene.to_json()) == scene
    bad = scene.to_json()
    bad["objects"][0]["color"] = "teal"
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        Scene.from_json(bad)
    with pytest.raises(ValueError, match="unknown split"):
        scene_for(0, "dev", 0)
