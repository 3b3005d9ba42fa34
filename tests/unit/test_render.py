"""Rendering: coverage templates against analytic areas, the fast renderer against a full-canvas reference,
and the hand-written PNG encoder against PIL's decoder."""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from arm.data.shapeworld.render import (
    SUPERSAMPLE,
    _draw_shape,
    decode_png,
    encode_png,
    render,
    shape_coverage,
)
from arm.data.shapeworld.scene import Scene, ShapeObject, scene_for
from arm.data.shapeworld.world import BACKGROUNDS, COLORS


@pytest.mark.parametrize(
    "cls,area",
    [("square", 1.0), ("circle", math.pi / 4), ("triangle", 0.5), ("diamond", 0.5), ("cross", 5 / 9)],
)
def test_coverage_matches_analytic_area(cls, area):
    # Fill fractions of a 40 px box: the supersampled polygon is one sub-pixel short per side, hence the slack.
    assert shape_coverage(cls, 40, 40).mean() == pytest.approx(area, abs=0.03)


def test_shapes_are_distinct_templates():
    templates = {c: shape_coverage(c, 14, 14) for c in ("circle", "square", "triangle", "diamond", "cross", "star")}
    for a, ta in templates.items():
        for b, tb in templates.items():
            if a < b:
                iou = np.minimum(ta, tb).sum() / np.maximum(ta, tb).sum()
                assert iou < 0.85, (a, b, iou)


def _reference_render(scene: Scene) -> np.ndarray:
    """Independent path: draw the whole scene on one supersampled PIL canvas and box-filter it."""
    s, res = SUPERSAMPLE, scene.resolution
    canvas = Image.new("RGB", (res * s, res * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        _draw_shape(draw, o.cls, (x0 * s, y0 * s, x1 * s, y1 * s), COLORS[o.color])
    return np.asarray(canvas.resize((res, res), Image.BOX))


def test_render_equals_full_canvas_reference():
    rng = np.random.default_rng()
    for i in rng.integers(0, 10**6, size=30):
        scene = scene_for(int(i), "test", int(i) % 97)
        diff = np.abs(render(scene).astype(int) - _reference_render(scene).astype(int))
        assert diff.max() <= 2


def test_render_exact_pixels_of_a_square():
    scene = Scene([ShapeObject("square", "red", "small", (10, 20, 24, 34))])
    img = render(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (img[21:33, 11:23] == COLORS["red"]).all()  # interior
    assert (img[:19] == BACKGROUNDS["gray"]).all() and (img[35:] == BACKGROUNDS["gray"]).all()


def test_png_round_trip_rgb_and_grey():
    rng = np.random.default_rng()
    rgb = rng.integers(0, 256, size=(13, 29, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(7, 5), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(grey)))), grey)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)
    assert encode_png(rgb) == encode_png(rgb.copy())
    with pytest.raises(ValueError, match="encode_png takes"):
        encode_png(np.zeros((4, 4, 4), np.uint8))
