"""GenEval prompts and their ground truth (Ghosh et al. 2023, github.com/djghosh13/geneval).

Records follow GenEval's ``prompts/create_prompts.py`` and ``evaluation/evaluate_images.py`` exactly: the six tags,
``include`` clauses (all must hold: at least ``count`` objects of the class, the first ``count`` of them of the
colour, each of them in the relation to every object of the group ``position[1]`` points at) and ``exclude``
clauses (fewer than ``count``), "a photo of ..." wording with GenEval's ``with_article`` and ``make_plural``, and
its position convention: the reference object first, the positioned object second with
``"position": [relation, 0]``.

Simplifications: ShapeWorld's six classes replace COCO's 80, so prompts repeat (GenEval de-duplicates; we keep the
553-prompt mix and vary the ground-truth scene), and ground-truth positions use ``robust_relations`` so that a
detector a pixel or two off still agrees. ``phrasing="varied"`` paraphrases prompts for training, with the same
requirements.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

from arm.data.shapeworld.scene import (
    HELDOUT_RELATIONS_BOTH_WAYS,
    ObjectSpec,
    Scene,
    allowed_colors,
    place,
    robust_relations,
)
from arm.data.shapeworld.world import (
    CLASSES,
    COLORS,
    DEFAULT_BACKGROUND,
    GENEVAL_TAGS,
    HELDOUT_COLOR_SHAPE,
    NUMBER_WORDS,
    RELATIONS,
    SIZES,
)

# ------------------------------------------------------------------------------------------- phrasing


def article(word: str) -> str:
    """GenEval's ``with_article`` rule: "an" before a vowel letter."""
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def plural(noun: str) -> str:
    """GenEval's ``make_plural``: "es" after a final s (crosses), else "s"."""
    return noun + "es" if noun.endswith("s") else noun + "s"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


RELATION_WORDS = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
}
"""Paraphrases of GenEval's four relations; GenEval-phrased prompts use the key itself."""


@lru_cache(maxsize=4096)
def robust_relations_cached(bbox_a: tuple[int, ...], bbox_b: tuple[int, ...]) -> frozenset[str]:
    """``scene.robust_relations`` (five GenEval position tests), memoised: the caption, the GenEval record, the
    questions and the MME pair of one scene ask about the same pairs of boxes."""
    return frozenset(robust_relations(bbox_a, bbox_b))


# ---------------------------------------------------------------------------------------------- GenEval

GENEVAL_TAG_COUNTS = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                      "color_attr": 100}
"""GenEval's 553-prompt mix (its released ``evaluation_metadata.jsonl`` after de-duplication)."""
HELDOUT_TAGS = ("colors", "position", "color_attr")
"""Tags whose records can name a held-out combination (colour x shape, or relation x shape)."""


class GenevalSpec(NamedTuple):
    """What a GenEval record asks for. ``classes`` is (positioned, reference) for ``position``."""

    tag: str
    classes: tuple[str, ...]
    colors: tuple[str, ...] = ()
    count: int = 1
    relation: str | None = None


def geneval_requirements(spec: GenevalSpec) -> dict:
    """The record's ``tag`` / ``include`` / ``exclude`` fields, in GenEval's metadata schema."""
    tag, classes = spec.tag, spec.classes
    if tag == "counting":
        return {"tag": tag, "include": [{"class": classes[0], "count": spec.count}],
                "exclude": [{"class": classes[0], "count": spec.count + 1}]}
    if tag == "position":
        # GenEval's convention: the reference object is include[0]; the positioned one points at it.
        return {"tag": tag, "include": [{"class": classes[1], "count": 1},
                                        {"class": classes[0], "count": 1, "position": [spec.relation, 0]}]}
    if spec.colors:
        return {"tag": tag, "include": [{"class": c, "count": 1, "color": k} for c, k in zip(classes, spec.colors)]}
    return {"tag": tag, "include": [{"class": c, "count": 1} for c in classes]}


_PREFIXES = ("a photo of ", "an image of ", "a picture showing ", "a picture of ", "a drawing of ",
             "a render of ", "")
_REL_ITS = {"left of": "to its left", "right of": "to its right", "above": "above it", "below": "below it"}


def geneval_prompt(spec: GenevalSpec, rng: random.Random | None = None) -> str:
    """GenEval's exact wording when ``rng`` is None; otherwise a paraphrase with the same requirements."""
    tag, cls = spec.tag, spec.classes
    prefix = "a photo of " if rng is None else rng.choice(_PREFIXES)
    if tag == "single_object":
        body = with_article(cls[0])
    elif tag == "two_object":
        a, b = cls if rng is None or rng.random() < 0.5 else cls[::-1]
        body = f"{with_article(a)} and {with_article(b)}"
    elif tag == "counting":
        number = NUMBER_WORDS[spec.count]
        if rng is not None and rng.random() < 0.25:
            number = rng.choice((f"exactly {number}", str(spec.count)))
        body = f"{number} {cls[0] if spec.count == 1 else plural(cls[0])}"  # count 1 only in WISE records
    elif tag == "colors":
        body = with_article(f"{spec.colors[0]} {cls[0]}")
    elif tag == "color_attr":
        pairs = [f"{k} {c}" for c, k in zip(cls, spec.colors)]
        if rng is not None and rng.random() < 0.5:
            pairs.reverse()
        body = f"{with_article(pairs[0])} and {with_article(pairs[1])}"
    elif tag == "position":
        rel = spec.relation
        if rng is not None and rng.random() < 0.3:
            body = f"{with_article(cls[1])} with {with_article(cls[0])} {_REL_ITS[rel]}"
        else:
            word = rel if rng is None else rng.choice(RELATION_WORDS[rel])
            body = f"{with_article(cls[0])} {word} {with_article(cls[1])}"
    else:
        raise ValueError(f"unknown GenEval tag {tag!r}; expected one of {GENEVAL_TAGS}")
    return prefix + body


def geneval_record(spec: GenevalSpec, rng: random.Random | None = None) -> dict:
    record = geneval_requirements(spec)
    record["prompt"] = geneval_prompt(spec, rng)
    return record


def spec_is_heldout(spec: GenevalSpec) -> bool:
    if spec.tag == "position":
        return (spec.classes[0], spec.relation, spec.classes[1]) in HELDOUT_RELATIONS_BOTH_WAYS
    return any((k, c) in HELDOUT_COLOR_SHAPE for c, k in zip(spec.classes, spec.colors))


def spec_for_scene(scene: Scene, rng: random.Random, exhaustive: bool = True, min_count: int = 2,
                   tags: tuple[str, ...] = GENEVAL_TAGS) -> GenevalSpec | None:
    """A spec the scene satisfies exactly under GenEval's rules, or None.

    Colour and position specs only name classes that appear once (so "the circle" is one object), and position
    only uses ``robust_relations``. With ``exhaustive`` the spec accounts for every object of the scene, as in
    the ground-truth scenes of ``sample_geneval_record``; otherwise it may describe a part of the scene.
    """
    objs = scene.objects
    counts = scene.class_counts()
    singles = [o for o in objs if counts[o.cls] == 1]
    if exhaustive and len(singles) != len(objs) and len(counts) != 1:
        return None
    options: list[str] = []
    if singles and (not exhaustive or len(objs) == 1):
        options += ["single_object", "colors"]
    if len(singles) >= 2 and (not exhaustive or len(objs) == 2):
        options += ["two_object", "color_attr", "position"]
    countable = [c for c, n in counts.items() if min_count <= n <= 4 and (not exhaustive or len(counts) == 1)]
    if countable:
        options.append("counting")
    options = [t for t in options if t in tags]
    while options:
        tag = rng.choice(options)
        options.remove(tag)
        if tag == "counting":
            cls = rng.choice(countable)
            return GenevalSpec(tag, (cls,), count=counts[cls])
        if tag in ("single_object", "colors"):
            o = rng.choice(singles)
            return GenevalSpec(tag, (o.cls,), (o.color,) if tag == "colors" else ())
        a, b = rng.sample(singles, 2)
        if tag == "two_object":
            return GenevalSpec(tag, (a.cls, b.cls))
        if tag == "color_attr":
            if a.color != b.color:  # GenEval always names two different colours
                return GenevalSpec(tag, (a.cls, b.cls), (a.color, b.color))
            continue
        rels = robust_relations_cached(tuple(a.bbox), tuple(b.bbox))
        if rels:
            return GenevalSpec(tag, (a.cls, b.cls), relation=rng.choice(sorted(rels)))
    return None


def geneval_record_for_scene(scene: Scene, rng: random.Random, phrasing: str = "geneval",
                             exhaustive: bool = True) -> dict | None:
    """A GenEval record the scene satisfies exactly (see ``spec_for_scene``), or None when there is none.

    ``phrasing="geneval"`` gives GenEval's own wording; ``"varied"`` paraphrases it for training diversity.
    """
    if phrasing not in ("geneval", "varied"):
        raise ValueError(f"unknown phrasing {phrasing!r}; expected 'geneval' or 'varied'")
    spec = spec_for_scene(scene, rng, exhaustive)
    if spec is None:
        return None
    return geneval_record(spec, rng if phrasing == "varied" else None)


def sample_spec(rng: random.Random, tag: str, allow_heldout: bool, require_heldout: bool = False,
                counts: tuple[int, ...] = (2, 3, 4)) -> GenevalSpec:
    """Draw a spec of one tag; ``require_heldout`` makes it name a held-out combination."""
    if tag not in GENEVAL_TAGS:
        raise ValueError(f"unknown GenEval tag {tag!r}; expected one of {GENEVAL_TAGS}")
    if require_heldout and tag not in HELDOUT_TAGS:
        raise ValueError(f"tag {tag!r} cannot name a held-out combination; use one of {HELDOUT_TAGS}")
    allow = allow_heldout or require_heldout
    if tag == "single_object":
        return GenevalSpec(tag, (rng.choice(CLASSES),))
    if tag == "two_object":
        return GenevalSpec(tag, tuple(rng.sample(CLASSES, 2)))
    if tag == "counting":
        return GenevalSpec(tag, (rng.choice(CLASSES),), count=rng.choice(counts))
    if tag == "colors":
        if require_heldout:
            color, cls = rng.choice(sorted(HELDOUT_COLOR_SHAPE))
            return GenevalSpec(tag, (cls,), (color,))
        cls = rng.choice(CLASSES)
        return GenevalSpec(tag, (cls,), (rng.choice(allowed_colors(cls, allow)),))
    if tag == "color_attr":
        if require_heldout:
            color, cls = rng.choice(sorted(HELDOUT_COLOR_SHAPE))
            other = rng.choice([c for c in CLASSES if c != cls])
            other_color = rng.choice([k for k in COLORS if k != color])
            pairs = [(cls, color), (other, other_color)]
            rng.shuffle(pairs)
        else:
            a, b = rng.sample(CLASSES, 2)
            ka = rng.choice(allowed_colors(a, allow))
            pairs = [(a, ka), (b, rng.choice([k for k in allowed_colors(b, allow) if k != ka]))]
        return GenevalSpec(tag, (pairs[0][0], pairs[1][0]), (pairs[0][1], pairs[1][1]))
    # position
    if require_heldout:
        a, rel, b = rng.choice(sorted(HELDOUT_RELATIONS_BOTH_WAYS))
        return GenevalSpec(tag, (a, b), relation=rel)
    a, b = rng.sample(CLASSES, 2)
    rels = [r for r in RELATIONS if allow or (a, r, b) not in HELDOUT_RELATIONS_BOTH_WAYS]
    return GenevalSpec(tag, (a, b), relation=rng.choice(rels))


def scene_for_spec(rng: random.Random, spec: GenevalSpec, resolution: int = 64) -> Scene:
    """A ground-truth scene holding exactly the spec's objects and satisfying it, on the default background.

    Colours the spec leaves open avoid held-out pairs, and only a held-out position spec may place a held-out
    relation, so the scene contains exactly the held-out combinations the spec names.
    """
    sizes = tuple(SIZES)
    if spec.tag == "counting":
        cls, size = spec.classes[0], rng.choice(sizes)  # one size for all, as in the world's counting scenes
        specs = [ObjectSpec(cls, rng.choice(allowed_colors(cls, False)), size) for _ in range(spec.count)]
    else:
        colors = spec.colors or tuple(rng.choice(allowed_colors(c, False)) for c in spec.classes)
        specs = [ObjectSpec(c, k, rng.choice(sizes)) for c, k in zip(spec.classes, colors)]
    relations = [(0, spec.relation, 1)] if spec.tag == "position" else []
    allow = spec.tag == "position" and spec_is_heldout(spec)
    while True:
        scene = place(rng, specs, resolution, DEFAULT_BACKGROUND, relations, allow_heldout=allow, robust=True)
        if scene is not None:
            return scene


def sample_geneval_record(rng: random.Random, tag: str, allow_heldout: bool, require_heldout: bool = False,
                          resolution: int = 64) -> tuple[dict, Scene]:
    """A GenEval-phrased record of ``tag`` and a ground-truth scene that satisfies it exactly."""
    spec = sample_spec(rng, tag, allow_heldout, require_heldout)
    return geneval_record(spec), scene_for_spec(rng, spec, resolution)


def geneval_benchmark(rng_factory: Callable[[int], random.Random], heldout_fraction: float = 0.5,
                      counts: dict[str, int] | None = None, resolution: int = 64) -> list[tuple[dict, Scene]]:
    """GenEval's mix of records with ground-truth scenes; record ``i`` draws from ``rng_factory(i)``.

    Of the colour and position records, about ``heldout_fraction`` name a held-out combination; every other
    record follows the training distribution (no held-out combination), so the two groups score separately.
    """
    out = []
    for tag, n in (counts or GENEVAL_TAG_COUNTS).items():
        for _ in range(n):
            rng = rng_factory(len(out))
            require = tag in HELDOUT_TAGS and rng.random() < heldout_fraction
            out.append(sample_geneval_record(rng, tag, allow_heldout=False, require_heldout=require,
                                             resolution=resolution))
    return out
