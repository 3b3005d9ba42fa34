"""A ShapeWorld scene's object inventory as classification targets, for the AR stage's inventory loss.

The AR model reads and draws one object well but does not count, check existence or keep a second object apart
(experiments/LOG.md, twentieth and twenty-fifth sessions: "1" for 98-99% of count questions, existence at chance,
one object named twice in captions of two-object scenes). ``ARModule(inventory_weight=w)`` adds a head on the
hidden state of every image block's last code that must say, from the whole block, how many objects of each kind
it shows. This is our addition, not ARM's (§2 trains next-token prediction only); it is an object-level auxiliary
target in the spirit of the multi-label tagging heads of vision-language pre-training, on ShapeWorld's exact scenes.

Targets are ``INVENTORY_HEADS`` counts, each a class in ``0 .. MAX_OBJECTS`` (``INVENTORY_BINS`` bins): one per
(colour, class) pair in ``INVENTORY_PAIRS`` order, then one per class (``CLASSES`` order), then one per colour
(``COLORS`` order). The background is left out: a single colour over most of the image, which the codes carry
plainly.
"""

from __future__ import annotations

from arm.data.shapeworld.world import CLASSES, COLORS, MAX_OBJECTS

INVENTORY_PAIRS: tuple[tuple[str, str], ...] = tuple((color, cls) for color in COLORS for cls in CLASSES)
INVENTORY_HEADS = len(INVENTORY_PAIRS) + len(CLASSES) + len(COLORS)
INVENTORY_BINS = MAX_OBJECTS + 1

_PAIR_INDEX = {pair: i for i, pair in enumerate(INVENTORY_PAIRS)}
_CLASS_INDEX = {cls: len(INVENTORY_PAIRS) + i for i, cls in enumerate(CLASSES)}
_COLOR_INDEX = {color: len(INVENTORY_PAIRS) + len(CLASSES) + i for i, color in enumerate(COLORS)}


def scene_inventory(scene: dict) -> list[int]:
    """The ``INVENTORY_HEADS`` counts of a scene's json (``Scene.to_json()``: ``{"objects": [{"class", "color",
    ...}], ...}``)."""
    objects = scene.get("objects")
    if objects is None:
        raise KeyError("a scene json needs 'objects' for its inventory")
    if len(objects) > MAX_OBJECTS:
        raise ValueError(f"a scene of {len(objects)} objects; ShapeWorld's inventory counts at most {MAX_OBJECTS}")
    counts = [0] * INVENTORY_HEADS
    for o in objects:
        cls, color = o["class"], o["color"]
        if cls not in _CLASS_INDEX or color not in _COLOR_INDEX:
            raise ValueError(f"object {color!r} {cls!r} is not a ShapeWorld class and colour; the inventory loss "
                             f"needs ShapeWorld scenes (set model.inventory_weight 0 for other data)")
        counts[_PAIR_INDEX[(color, cls)]] += 1
        counts[_CLASS_INDEX[cls]] += 1
        counts[_COLOR_INDEX[color]] += 1
    return counts
