"""Scenes: objects in boxes, their JSON form, GenEval's position rule, and seeded sampling with split policies.

A scene is 1-4 objects, each a (class, colour, size, box), on a plain background. Boxes are integer pixels with
an exclusive max, never overlap and keep ``MIN_GAP_PX`` apart. Sampling is driven by a ``random.Random`` that the
caller seeds per sample, so a sample's content depends only on (seed, split, index), never on worker count.

Relative position follows GenEval's rule (Ghosh et al. 2023, ``evaluation/evaluate_images.py``): the centre
offset of A from B, shrunk on each axis by 0.1 x (A's size + B's size) on that axis, normalised by the unshrunk
offset's length; a component below -0.5 / above 0.5 means "left of" / "right of" (x) or "above" / "below" (y).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from arm.data.shapeworld.world import (
    BACKGROUNDS,
    CLASSES,
    COLORS,
    DEFAULT_BACKGROUND,
    HELDOUT_COLOR_SHAPE,
    HELDOUT_RELATIONS,
    INVERSE_RELATION,
    MIN_GAP_PX,
    SIZES,
    size_px,
)

POSITION_THRESHOLD = 0.1
"""GenEval's margin: the centre offset is reduced by this fraction of the two objects' summed sizes."""


@dataclass
class ShapeObject:
    """One object. ``bbox`` is ``(x0, y0, x1, y1)`` in pixels, exclusive max."""

    cls: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]

    def to_json(self) -> dict:
        return {"class": self.cls, "color": self.color, "size": self.size, "bbox": list(self.bbox)}

    @staticmethod
    def from_json(d: dict) -> ShapeObject:
        return ShapeObject(cls=d["class"], color=d["color"], size=d.get("size", "small"), bbox=tuple(int(v) for v in d["bbox"]))

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass
class Scene:
    """Objects on a background, at a square resolution."""

    objects: list[ShapeObject] = field(default_factory=list)
    background: str = DEFAULT_BACKGROUND
    resolution: int = 64

    def to_json(self) -> dict:
        return {
            "objects": [o.to_json() for o in self.objects],
            "background": self.background,
            "resolution": self.resolution,
        }

    @classmethod
    def from_json(cls, d: dict) -> Scene:
        scene = cls(
            objects=[ShapeObject.from_json(o) for o in d["objects"]],
            background=d.get("background", DEFAULT_BACKGROUND),
            resolution=int(d.get("resolution", 64)),
        )
        scene.validate()
        return scene

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is not part of ShapeWorld."""
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {sorted(BACKGROUNDS)}")
        for o in self.objects:
            if o.cls not in CLASSES:
                raise ValueError(f"unknown class {o.cls!r}; expected one of {list(CLASSES)}")
            if o.color not in COLORS:
                raise ValueError(f"unknown colour {o.color!r}; expected one of {list(COLORS)}")
            if o.size not in SIZES:
                raise ValueError(f"unknown size {o.size!r}; expected one of {list(SIZES)}")

    def copy(self) -> Scene:
        return Scene.from_json(self.to_json())

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.objects:
            counts[o.cls] = counts.get(o.cls, 0) + 1
        return counts


# ----------------------------------------------------------------------------------------------- geometry


def relative_position(bbox_a: Sequence[float], bbox_b: Sequence[float]) -> set[str]:
    """GenEval's relations of box A relative to box B (a set: "left of" and "above" can both hold)."""
    ax0, ay0, ax1, ay1 = bbox_a
    bx0, by0, bx1, by1 = bbox_b
    off_x = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
    off_y = (ay0 + ay1) / 2 - (by0 + by1) / 2
    norm = math.hypot(off_x, off_y)
    rev_x = max(abs(off_x) - POSITION_THRESHOLD * ((ax1 - ax0) + (bx1 - bx0)), 0.0) * math.copysign(1, off_x)
    rev_y = max(abs(off_y) - POSITION_THRESHOLD * ((ay1 - ay0) + (by1 - by0)), 0.0) * math.copysign(1, off_y)
    if abs(rev_x) < 1e-3 and abs(rev_y) < 1e-3:
        return set()
    dx, dy = rev_x / norm, rev_y / norm
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def robust_relations(bbox_a: Sequence[int], bbox_b: Sequence[int], slack: int = 2) -> set[str]:
    """Relations that hold for every shift of either box by up to ``slack`` px on each axis.

    Benchmark ground truth uses these, so a detector that is off by a pixel or two still agrees with it.
    """
    rels = relative_position(bbox_a, bbox_b)
    for dx in (-slack, slack):
        for dy in (-slack, slack):
            shifted = (bbox_a[0] + dx, bbox_a[1] + dy, bbox_a[2] + dx, bbox_a[3] + dy)
            rels &= relative_position(shifted, bbox_b)
    return rels


def boxes_clear(a: Sequence[int], b: Sequence[int], gap: int = MIN_GAP_PX) -> bool:
    """True when boxes a and b are at least ``gap`` pixels apart on some axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def scene_label(meta: dict, field: str) -> str | None:
    """The one value of ``field`` ("color" or "class") shared by all objects of a sample's scene, else ``None``."""
    values = {o[field] for o in meta["scene"]["objects"]}
    return values.pop() if len(values) == 1 else None


# ------------------------------------------------------------------------------------------ split policy


def heldout_combinations(scene: Scene) -> list[str]:
    """The held-out combinations a scene contains, as readable strings (empty for a train-legal scene)."""
    found = [f"{o.color} {o.cls}" for o in scene.objects if (o.color, o.cls) in HELDOUT_COLOR_SHAPE]
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i == j:
                continue
            for rel in relative_position(a.bbox, b.bbox):
                if (a.cls, rel, b.cls) in HELDOUT_RELATIONS:
                    found.append(f"{a.cls} {rel} {b.cls}")
    return found


def _mirror_heldout() -> frozenset[tuple[str, str, str]]:
    return HELDOUT_RELATIONS | {(b, INVERSE_RELATION[r], a) for a, r, b in HELDOUT_RELATIONS}


HELDOUT_RELATIONS_BOTH_WAYS = _mirror_heldout()


@dataclass(frozen=True)
class ObjectSpec:
    """What to place: attributes fixed, position free."""

    cls: str
    color: str
    size: str


def allowed_colors(cls: str, allow_heldout: bool) -> list[str]:
    return [c for c in COLORS if allow_heldout or (c, cls) not in HELDOUT_COLOR_SHAPE]


def random_spec(rng: random.Random, allow_heldout: bool, cls: str | None = None) -> ObjectSpec:
    cls = cls or rng.choice(CLASSES)
    return ObjectSpec(cls, rng.choice(allowed_colors(cls, allow_heldout)), rng.choice(tuple(SIZES)))


def place(
    rng: random.Random,
    specs: Sequence[ObjectSpec],
    resolution: int = 64,
    background: str = DEFAULT_BACKGROUND,
    relations: Iterable[tuple[int, str, int]] = (),
    allow_heldout: bool = False,
    robust: bool = False,
    tries: int = 200,
) -> Scene | None:
    """Place objects with the given attributes at random, non-overlapping positions.

    ``relations`` are ``(i, rel, j)`` constraints ("object i is <rel> object j" by GenEval's rule, or by
    ``robust_relations`` when ``robust``). Without ``allow_heldout`` a placement that creates a held-out relation
    is rejected. Returns ``None`` when no placement is found in ``tries`` attempts.
    """
    relations = list(relations)
    rel_fn = robust_relations if robust else relative_position
    for _ in range(tries):
        boxes: list[tuple[int, int, int, int]] = []
        for spec in specs:
            side = size_px(spec.size, resolution)
            for _ in range(50):
                x0 = rng.randint(1, resolution - side - 1)
                y0 = rng.randint(1, resolution - side - 1)
                box = (x0, y0, x0 + side, y0 + side)
                if all(boxes_clear(box, b) for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) != len(specs):
            continue
        if any(rel not in rel_fn(boxes[i], boxes[j]) for i, rel, j in relations):
            continue
        if not allow_heldout and any(
            (specs[i].cls, rel, specs[j].cls) in HELDOUT_RELATIONS
            for i in range(len(specs))
            for j in range(len(specs))
            if i != j
            for rel in relative_position(boxes[i], boxes[j])
        ):
            continue
        objects = [ShapeObject(s.cls, s.color, s.size, b) for s, b in zip(specs, boxes)]
        return Scene(objects=objects, background=background, resolution=resolution)
    return None


SCENE_KINDS = {"single": 0.2, "pair": 0.35, "count": 0.2, "random": 0.25}
"""Mixture of scene layouts: one object, two of different classes, 2-4 of one class, 1-4 of anything."""


def sample_scene(
    rng: random.Random,
    allow_heldout: bool = False,
    require_heldout: bool = False,
    resolution: int = 64,
    background_prob: float = 0.1,
) -> Scene:
    """Draw one scene from the world's mixture of layouts.

    ``allow_heldout`` is False for train and val. ``require_heldout`` (test only) forces one held-out
    combination into the scene. ``background_prob`` is the chance of a non-default background.
    """
    background = DEFAULT_BACKGROUND
    if rng.random() < background_prob:
        background = rng.choice([b for b in BACKGROUNDS if b != DEFAULT_BACKGROUND])
    while True:
        relations: list[tuple[int, str, int]] = []
        if require_heldout:
            specs, relations = _heldout_specs(rng)
        else:
            kind = rng.choices(list(SCENE_KINDS), weights=list(SCENE_KINDS.values()))[0]
            specs = _kind_specs(rng, kind, allow_heldout)
        scene = place(rng, specs, resolution, background, relations, allow_heldout or require_heldout)
        if scene is not None:
            return scene


def _kind_specs(rng: random.Random, kind: str, allow_heldout: bool) -> list[ObjectSpec]:
    if kind == "single":
        return [random_spec(rng, allow_heldout)]
    if kind == "pair":
        a, b = rng.sample(CLASSES, 2)
        return [random_spec(rng, allow_heldout, a), random_spec(rng, allow_heldout, b)]
    if kind == "count":
        cls = rng.choice(CLASSES)
        n = rng.randint(2, 4)
        # Counted objects share a size so that "how many" is the only question, as in GenEval's counting.
        size = rng.choice(tuple(SIZES))
        return [ObjectSpec(cls, rng.choice(allowed_colors(cls, allow_heldout)), size) for _ in range(n)]
    if kind == "random":
        return [random_spec(rng, allow_heldout) for _ in range(rng.randint(1, 4))]
    raise ValueError(f"unknown scene kind {kind!r}; expected one of {list(SCENE_KINDS)}")


def _heldout_specs(rng: random.Random) -> tuple[list[ObjectSpec], list[tuple[int, str, int]]]:
    """Specs that contain one held-out combination, plus up to two other objects."""
    extra = [random_spec(rng, True) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.5:
        color, cls = rng.choice(sorted(HELDOUT_COLOR_SHAPE))
        return [ObjectSpec(cls, color, rng.choice(tuple(SIZES)))] + extra, []
    a, rel, b = rng.choice(sorted(HELDOUT_RELATIONS))
    specs = [random_spec(rng, True, a), random_spec(rng, True, b)]
    return specs + extra[:1], [(0, rel, 1)]


SPLITS = ("train", "val", "test")
TEST_HELDOUT_FRACTION = 0.5
"""Share of test scenes forced to hold a held-out combination; the rest follow the train distribution."""


def split_rng(seed: int, split: str, index: int, stream: str = "scene") -> random.Random:
    """The random generator for one sample: a pure function of (seed, split, index, stream).

    String seeds go through SHA-512 in ``random.seed``, so this is stable across processes and Python runs.
    """
    return random.Random(f"shapeworld/{seed}/{split}/{index}/{stream}")


def scene_for(seed: int, split: str, index: int, resolution: int = 64) -> Scene:
    """The scene of sample ``index`` of ``split``: train and val never hold a held-out combination."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = split_rng(seed, split, index)
    if split == "test":
        return sample_scene(rng, allow_heldout=True, require_heldout=rng.random() < TEST_HELDOUT_FRACTION,
                            resolution=resolution)
    return sample_scene(rng, allow_heldout=False, resolution=resolution)
