"""The vocabulary of ShapeWorld: shape classes, GenEval's ten colours, sizes, backgrounds, held-out combinations.

ShapeWorld is the suite's embedded default: a synthetic world whose every caption, question and edit has an
exact answer, so the benchmarks the ARM paper reports (GenEval, WISE, GEdit, VQA, MME; ``../shared/paper.md`` §4)
can be scored by a program. This module holds only data; sampling lives in ``scene.py``, drawing in ``render.py``.

Deliberate choices:
- Colours are GenEval's ten names. Their RGB values are picked so that the closest pair (orange/yellow) is still
  ~87 apart in RGB and every colour is >= 90 from every background, so colour survives JPEG, blur and jitter.
- Objects sit in square boxes with two size levels; a shape is stretched to fill its box exactly, which makes the
  box a property of the scene rather than of the renderer.
- Held-out combinations (see ``HELDOUT_COLOR_SHAPE`` and ``HELDOUT_RELATIONS``) never occur in train or val.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
"""Six shapes chosen to stay distinct at 14 px: their fill ratios (area / box area) and convexities differ."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 20),
    "green": (30, 150, 50),
    "blue": (30, 80, 230),
    "purple": (130, 40, 180),
    "pink": (255, 140, 200),
    "brown": (120, 70, 30),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
"""GenEval's ten colour names (the order GenEval lists them) and the RGB each is drawn with."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "khaki": (175, 160, 105),
    "slate": (85, 105, 135),
}
"""Plain backgrounds; each is >= 90 RGB units from every object colour. ``gray`` is the default one."""

DEFAULT_BACKGROUND = "gray"

SIZES: dict[str, float] = {"small": 0.22, "large": 0.34}
"""Box side as a fraction of the image side: 14 px and 22 px at the default 64 x 64."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""GenEval's four relative positions."""

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
"""GenEval's six prompt tags; its overall score is the unweighted mean of the per-tag accuracies."""

INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

MAX_OBJECTS = 4
MIN_GAP_PX = 3
"""Minimum empty pixels between two boxes: objects never overlap, and blur cannot join them."""

HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset(
    {("blue", "triangle"), ("red", "star"), ("yellow", "square"), ("purple", "cross"), ("green", "circle")}
)
"""(colour, class) pairs that appear only in the test split."""

HELDOUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {("circle", "left of", "square"), ("triangle", "above", "diamond"), ("star", "below", "cross")}
)
"""(class A, relation, class B) triples, by GenEval's position rule, that appear only in the test split.
Each also excludes its mirror (B, inverse relation, A), which is the same arrangement."""


def size_px(size: str, resolution: int) -> int:
    """Side of a box of the named size at a resolution, in pixels."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    return max(4, round(SIZES[size] * resolution))
