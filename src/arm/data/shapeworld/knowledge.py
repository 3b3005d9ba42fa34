"""WISE-style knowledge prompts: ShapeWorld scenes named through facts instead of words.

WISE (Niu et al. 2025, "WISE: A World Knowledge-Informed Semantic Evaluation for Text-to-Image Generation",
github.com/PKU-YuanGroup/WISE) asks for images whose content must be inferred ("the plant often gifted on Mother's
Day" -> carnations). Its records are ``{"prompt_id", "Prompt", "Explanation", "Category", "Subcategory"}`` with
categories Cultural knowledge, Spatio-temporal reasoning and Natural science (subcategories such as
Biology / Physics / Chemistry, Longitudinal / Horizontal time, Geographical location).

Here each prompt names at least one of a shape, a colour, a count or a relation indirectly through a small fact
table ("a shape with three corners" -> triangle, "the colour of grass" -> green, "a pair of" -> 2, "to the east
of ... on a map with north at the top" -> right of). Simplifications: WISE scores images with GPT-4o on
consistency, realism and aesthetics; our records add ``requirements``, a GenEval-schema record (``geneval.py``)
of what the image must show, so a program scores them exactly. Geometry facts are filed under Spatio-temporal
reasoning / Geometry, a subcategory WISE does not have.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from arm.data.shapeworld.geneval import (
    GENEVAL_TAGS,
    HELDOUT_TAGS,
    GenevalSpec,
    capitalize,
    geneval_prompt,
    geneval_requirements,
    plural,
    sample_spec,
    scene_for_spec,
    spec_for_scene,
    with_article,
)
from arm.data.shapeworld.scene import Scene
from arm.data.shapeworld.world import NUMBER_WORDS

CULTURE, SPACE_TIME, SCIENCE = "Cultural knowledge", "Spatio-temporal reasoning", "Natural science"
WISE_CATEGORIES = (CULTURE, SPACE_TIME, SCIENCE)


class Fact(NamedTuple):
    """One indirect name. ``text`` is a singular noun phrase (class), a colour phrase, a count template with
    ``{x}`` (a plural noun phrase) or a relation template with ``{a}`` and ``{b}`` (noun phrases)."""

    value: str | int
    text: str
    explanation: str
    category: str
    subcategory: str
    plural: str = ""


def _shapes(cls: str, *rows: tuple[str, str, str, str, str]) -> tuple[Fact, ...]:
    return tuple(Fact(cls, sg, expl, cat, sub, pl) for sg, pl, expl, cat, sub in rows)


def _facts(value: str | int, *rows: tuple[str, str, str, str]) -> tuple[Fact, ...]:
    return tuple(Fact(value, text, expl, cat, sub) for text, expl, cat, sub in rows)


CLASS_FACTS: dict[str, tuple[Fact, ...]] = {
    "circle": _shapes(
        "circle",
        ("a shape with no corners and no straight sides", "shapes with no corners and no straight sides",
         "A shape with no corners and no straight sides is a circle.", SPACE_TIME, "Geometry"),
        ("a shape like the full moon", "shapes like the full moon", "The full moon looks like a circle.",
         SCIENCE, "Physics"),
        ("a shape like a coin seen face on", "shapes like coins seen face on", "A coin seen face on is a circle.",
         CULTURE, "Daily life")),
    "square": _shapes(
        "square",
        ("a shape with four equal sides and square corners", "shapes with four equal sides and square corners",
         "A shape with four equal sides and right-angled corners is a square.", SPACE_TIME, "Geometry"),
        ("a shape like one field of a chessboard", "shapes like the fields of a chessboard",
         "Each field of a chessboard is a square.", CULTURE, "Games"),
        ("a shape like a face of a die", "shapes like the faces of a die", "Each face of a die is a square.",
         CULTURE, "Games")),
    "triangle": _shapes(
        "triangle",
        ("a shape with three corners", "shapes with three corners", "A shape with three corners is a triangle.",
         SPACE_TIME, "Geometry"),
        ("a shape like a yield sign", "shapes like yield signs", "A yield traffic sign is a triangle.",
         CULTURE, "Symbols"),
        ("a shape like a pyramid seen from the side", "shapes like pyramids seen from the side",
         "An Egyptian pyramid seen from the side is a triangle.", CULTURE, "Architecture")),
    "diamond": _shapes(
        "diamond",
        ("a rhombus standing on one of its corners", "rhombuses standing on one of their corners",
         "A rhombus standing on one corner is a diamond.", SPACE_TIME, "Geometry"),
        ("a shape like the playing-card suit that is not hearts, clubs or spades",
         "shapes like the playing-card suit that is not hearts, clubs or spades",
         "Besides hearts, clubs and spades, the fourth playing-card suit is diamonds.", CULTURE, "Games"),
        ("a shape like a baseball infield seen from above", "shapes like baseball infields seen from above",
         "A baseball infield seen from above is a diamond.", CULTURE, "Sports")),
    "cross": _shapes(
        "cross",
        ("a shape like a plus sign", "shapes like plus signs", "A plus sign is a cross.", CULTURE, "Symbols"),
        ("a shape like the emblem on the Swiss flag", "shapes like the emblem on the Swiss flag",
         "The emblem on the Swiss flag is a cross.", CULTURE, "Symbols"),
        ("a shape of two equal bars crossing at their middles", "shapes of two equal bars crossing at their middles",
         "Two equal bars crossing at their middles make a cross.", SPACE_TIME, "Geometry")),
    "star": _shapes(
        "star",
        ("a shape with five points", "shapes with five points", "A shape with five points is a star.",
         SPACE_TIME, "Geometry"),
        ("a shape like the one on top of a Christmas tree", "shapes like the one on top of a Christmas tree",
         "A star is put on top of a Christmas tree.", CULTURE, "Festival"),
        ("a shape like a starfish seen from above", "shapes like starfish seen from above",
         "A starfish has five arms and looks like a star from above.", SCIENCE, "Biology")),
}

COLOR_FACTS: dict[str, tuple[Fact, ...]] = {
    "red": _facts("red", ("the colour of a ripe tomato", "A ripe tomato is red.", SCIENCE, "Biology"),
                  ("the colour of a stop sign", "A stop sign is red.", CULTURE, "Symbols"),
                  ("the colour of fresh blood", "Fresh blood is red.", SCIENCE, "Biology")),
    "orange": _facts("orange", ("the colour of a carrot", "A carrot is orange.", SCIENCE, "Biology"),
                     ("the colour of a Halloween pumpkin", "A Halloween pumpkin is orange.", CULTURE, "Festival")),
    "yellow": _facts("yellow", ("the colour of a ripe banana", "A ripe banana is yellow.", SCIENCE, "Biology"),
                     ("the colour of a lemon", "A lemon is yellow.", SCIENCE, "Biology"),
                     ("the colour of a sodium flame", "Sodium burns with a yellow flame.", SCIENCE, "Chemistry")),
    "green": _facts("green", ("the colour of grass", "Grass is green.", SCIENCE, "Biology"),
                    ("the colour of chlorophyll", "Chlorophyll is green.", SCIENCE, "Biology"),
                    ("the colour of a traffic light that means go", "A traffic light shows green for go.",
                     CULTURE, "Symbols")),
    "blue": _facts("blue", ("the colour of a clear daytime sky", "Air scatters blue light most, so a clear daytime "
                            "sky is blue.", SCIENCE, "Physics"),
                   ("the colour of copper sulfate crystals", "Copper sulfate crystals are blue.", SCIENCE,
                    "Chemistry")),
    "purple": _facts("purple", ("the colour of an aubergine", "An aubergine is purple.", SCIENCE, "Biology"),
                     ("the colour of mixed red and blue paint", "Red and blue paint mix to purple.", SCIENCE,
                      "Physics"),
                     ("the colour of potassium permanganate solution", "Potassium permanganate solution is "
                      "purple.", SCIENCE, "Chemistry")),
    "pink": _facts("pink", ("the colour of a flamingo", "A flamingo is pink.", SCIENCE, "Biology"),
                   ("the colour of phenolphthalein in a base", "Phenolphthalein turns pink in a basic solution.",
                    SCIENCE, "Chemistry"),
                   ("the colour of mixed red and white paint", "Red and white paint mix to pink.", SCIENCE,
                    "Physics")),
    "brown": _facts("brown", ("the colour of chocolate", "Chocolate is brown.", CULTURE, "Food"),
                    ("the colour of tree bark", "Tree bark is brown.", SCIENCE, "Biology"),
                    ("the colour of roasted coffee beans", "Roasted coffee beans are brown.", CULTURE, "Food")),
    "black": _facts("black", ("the colour of coal", "Coal is black.", SCIENCE, "Chemistry"),
                    ("the colour of a crow's feathers", "A crow's feathers are black.", SCIENCE, "Biology"),
                    ("the colour of a moonless night sky", "A moonless night sky is black.", SCIENCE, "Physics")),
    "white": _facts("white", ("the colour of snow", "Snow is white.", SCIENCE, "Physics"),
                    ("the colour of milk", "Milk is white.", SCIENCE, "Biology"),
                    ("the colour of a polar bear's fur", "A polar bear's fur is white.", SCIENCE, "Biology")),
}

COUNT_FACTS: dict[int, tuple[Fact, ...]] = {
    1: _facts(1, ("as many {x} as the Earth has moons", "The Earth has one moon.", SCIENCE, "Physics"),
              ("as many {x} as a person has noses", "A person has one nose.", SCIENCE, "Biology")),
    2: _facts(2, ("a pair of {x}", "A pair means two.", CULTURE, "Daily life"),
              ("as many {x} as a bicycle has wheels", "A bicycle has two wheels.", CULTURE, "Daily life"),
              ("as many {x} as a bird has wings", "A bird has two wings.", SCIENCE, "Biology")),
    3: _facts(3, ("as many {x} as a triangle has sides", "A triangle has three sides.", SPACE_TIME, "Geometry"),
              ("as many {x} as a traffic light has lamps", "A traffic light has three lamps.", CULTURE, "Symbols"),
              ("a trio of {x}", "A trio means three.", CULTURE, "Daily life")),
    4: _facts(4, ("as many {x} as a dog has legs", "A dog has four legs.", SCIENCE, "Biology"),
              ("as many {x} as there are seasons in a year", "A year has four seasons.", SPACE_TIME,
               "Horizontal time"),
              ("as many {x} as a car has wheels", "A car has four wheels.", CULTURE, "Daily life")),
}

_MAP = "on a map with north at the top"
RELATION_FACTS: dict[str, tuple[Fact, ...]] = {
    "left of": _facts("left of", ("{a} to the west of {b} " + _MAP, "On a map with north at the top, west is to "
                                  "the left.", SPACE_TIME, "Geographical location"),
                      ("{a} where a line of English text begins and {b} where it ends", "English is written from "
                       "left to right, so a line begins on the left.", CULTURE, "Writing"),
                      ("{a} where the sun sets and {b} where it rises, " + _MAP, "The sun sets in the west, which "
                       "is on the left of a map with north at the top.", SPACE_TIME, "Geographical location")),
    "right of": _facts("right of", ("{a} to the east of {b} " + _MAP, "On a map with north at the top, east is to "
                                    "the right.", SPACE_TIME, "Geographical location"),
                       ("{b} where a line of English text begins and {a} where it ends", "English is written from "
                        "left to right, so a line ends on the right.", CULTURE, "Writing"),
                       ("{a} where the sun rises and {b} where it sets, " + _MAP, "The sun rises in the east, which "
                        "is on the right of a map with north at the top.", SPACE_TIME, "Geographical location")),
    "above": _facts("above", ("{a} to the north of {b} " + _MAP, "On a map with north at the top, north is up.",
                              SPACE_TIME, "Geographical location"),
                    ("{a} where the sky would be and {b} where the ground would be", "The sky is above the ground.",
                     SPACE_TIME, "Relative position")),
    "below": _facts("below", ("{a} to the south of {b} " + _MAP, "On a map with north at the top, south is down.",
                              SPACE_TIME, "Geographical location"),
                    ("{a} where the ground would be and {b} where the sky would be", "The ground is below the sky.",
                     SPACE_TIME, "Relative position")),
}

_PREFIXES = ("", "", "A photo of ", "An image of ", "A picture of ")
EXTRA_INDIRECT_PROB = 0.3
"""Chance that a slot besides the one forced indirect is also named through a fact."""


def _object(cls: str, color: str | None, cf: Fact | None, kf: Fact | None, rng: random.Random) -> str:
    """A singular noun phrase for one object, with its colour named directly or through a fact."""
    if color is None:
        return cf.text if cf else with_article(cls)
    if cf is None and kf is None:
        return with_article(f"{color} {cls}")
    noun = cf.text if cf else with_article(cls)
    if kf is not None:
        return f"{noun} in {kf.text}"
    return f"{noun} in {color}" if rng.random() < 0.5 else f"{noun}, coloured {color}"


def wise_record(spec: GenevalSpec, rng: random.Random, prompt_id: int = 0) -> dict:
    """A WISE record for a GenEval spec: at least one of its shapes, colours, count or relation is named
    through a fact; ``Category`` and ``Subcategory`` are those of the fact chosen first."""
    slots: list[tuple[dict, str | int]] = [(CLASS_FACTS, c) for c in spec.classes]
    slots += [(COLOR_FACTS, k) for k in spec.colors]
    if spec.tag == "counting":
        slots.append((COUNT_FACTS, spec.count))
    if spec.tag == "position":
        slots.append((RELATION_FACTS, spec.relation))
    primary = rng.randrange(len(slots))
    facts: list[Fact | None] = [
        rng.choice(table[value]) if i == primary or rng.random() < EXTRA_INDIRECT_PROB else None
        for i, (table, value) in enumerate(slots)
    ]
    n_cls = len(spec.classes)
    class_facts, color_facts = facts[:n_cls], facts[n_cls:n_cls + len(spec.colors)]
    colors = spec.colors or (None,) * n_cls
    objects = [_object(c, k, cf, kf, rng) for c, k, cf, kf in
               zip(spec.classes, colors, class_facts, color_facts or (None,) * n_cls)]
    if spec.tag == "counting":
        cls, cf, nf = spec.classes[0], facts[0], facts[-1]
        things = cf.plural if cf else plural(spec.classes[0])
        if nf is not None:
            body = nf.text.format(x=things)
        elif spec.count == 1:
            body = f"exactly one {cf.text[2:] if cf else cls}"  # drop the fact's leading "a "
        else:
            body = f"{NUMBER_WORDS[spec.count]} {things}"
    elif spec.tag == "position":
        rf = facts[-1]
        body = rf.text.format(a=objects[0], b=objects[1]) if rf else f"{objects[0]} {spec.relation} {objects[1]}"
    elif len(objects) == 2:
        body = f"{objects[0]} and {objects[1]}"
    else:
        body = objects[0]
    used = [f for f in facts if f is not None]
    target = geneval_prompt(spec).removeprefix("a photo of ")
    return {
        "prompt_id": prompt_id,
        "Prompt": capitalize(rng.choice(_PREFIXES) + body),
        "Explanation": " ".join(f.explanation for f in used) + f" So the image shows {target}.",
        "Category": facts[primary].category,
        "Subcategory": facts[primary].subcategory,
        "requirements": geneval_requirements(spec),
    }


def wise_record_for_scene(scene: Scene, rng: random.Random) -> dict | None:
    """A WISE record the scene satisfies exactly (GenEval's rules on ``requirements``), or None when the scene
    holds no GenEval-describable content (e.g. three objects of different classes)."""
    spec = spec_for_scene(scene, rng, exhaustive=True, min_count=1)
    return None if spec is None else wise_record(spec, rng)


def sample_wise_record(rng: random.Random, allow_heldout: bool, require_heldout: bool = False,
                       resolution: int = 64, prompt_id: int = 0) -> tuple[dict, Scene]:
    """A WISE record and a ground-truth scene holding exactly what it asks for.

    With ``require_heldout`` the requirements name a held-out combination (a colour or position record);
    without ``allow_heldout`` they never do. Counting records use counts 1-4, one more than GenEval's 2-4,
    because facts like "as many as the Earth has moons" name one.
    """
    tag = rng.choice(HELDOUT_TAGS if require_heldout else GENEVAL_TAGS)
    spec = sample_spec(rng, tag, allow_heldout, require_heldout, counts=(1, 2, 3, 4))
    scene = scene_for_spec(rng, spec, resolution)
    return wise_record(spec, rng, prompt_id), scene
