"""Text about ShapeWorld scenes: captions, VQA questions and MME yes/no pairs; the facade for all world text.

Every text has an exact answer on its scene, so the benchmarks of the ARM paper can be scored by a program:

- Captions describe every object (size, colour, 3 x 3 region), the relation of a pair and the background, in
  varied wording, so that a generator could redraw the scene roughly from them.
- VQA: short canonical answers (digits, a colour, a class, "yes"/"no", a relation word) as in VQAv2's normalised
  answers. Simplification: one exact answer instead of ten annotators' soft score.
- MME (Fu et al. 2023): each image gets one question answered "Yes" and one answered "No", both of one of MME's
  perception categories (existence, count, position, color), each ending with " Please answer yes or no.".
- GenEval records (Ghosh et al. 2023) live in ``geneval.py`` and WISE knowledge prompts (Niu et al. 2025) in
  ``knowledge.py``; both are re-exported here, so ``text`` is the one module the shard writer needs.

Questions never name a held-out combination (``world.HELDOUT_*``) that the scene does not contain, so
train-split text cannot leak one. Every function is a pure function of its scene and the ``random.Random`` given.
"""

from __future__ import annotations

import random
import re

from arm.data.shapeworld.geneval import (
    GENEVAL_TAG_COUNTS,
    GENEVAL_TAGS,
    HELDOUT_TAGS,
    RELATION_WORDS,
    GenevalSpec,
    capitalize,
    geneval_benchmark,
    geneval_prompt,
    geneval_record,
    geneval_record_for_scene,
    geneval_requirements,
    plural,
    robust_relations_cached,
    sample_geneval_record,
    with_article,
)
from arm.data.shapeworld.knowledge import sample_wise_record, wise_record_for_scene
from arm.data.shapeworld.scene import HELDOUT_RELATIONS_BOTH_WAYS, Scene, ShapeObject
from arm.data.shapeworld.world import (
    BACKGROUNDS,
    CLASSES,
    COLORS,
    DEFAULT_BACKGROUND,
    HELDOUT_COLOR_SHAPE,
    INVERSE_RELATION,
    NUMBER_WORDS,
)

__all__ = [
    # here
    "caption", "caption_objects", "vqa_questions", "existence_pair", "mme_pair", "all_texts", "region",
    "location_phrase", "VQA_TYPES",
    "MME_SUFFIX", "MME_CATEGORIES", "REGION_NAMES", "LOCATION_PHRASES", "TEXT_KEYS",
    # re-exported, so that ``text`` is the one module the shard writer needs
    "GENEVAL_TAGS", "GENEVAL_TAG_COUNTS", "HELDOUT_TAGS", "GenevalSpec", "geneval_record", "geneval_prompt",
    "geneval_requirements", "geneval_record_for_scene", "sample_geneval_record", "geneval_benchmark",
    "wise_record_for_scene", "sample_wise_record",
]

# ------------------------------------------------------------------------------------------- location

REGION_NAMES: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)
"""3 x 3 regions of the image by box centre, row-major."""

LOCATION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the top left corner", "at the top left"),
    "top": ("at the top", "near the top", "at the top centre"),
    "top right": ("in the top right", "in the top right corner", "at the top right"),
    "left": ("on the left", "at the left", "on the left side"),
    "centre": ("in the centre", "in the middle", "in the centre of the image"),
    "right": ("on the right", "at the right", "on the right side"),
    "bottom left": ("in the bottom left", "in the bottom left corner", "at the bottom left"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom centre"),
    "bottom right": ("in the bottom right", "in the bottom right corner", "at the bottom right"),
}


def region(bbox: tuple[int, int, int, int], resolution: int) -> str:
    """Name of the 3 x 3 region holding the box centre."""
    col = min(2, (bbox[0] + bbox[2]) * 3 // (2 * resolution))
    row = min(2, (bbox[1] + bbox[3]) * 3 // (2 * resolution))
    return REGION_NAMES[row][col]


def location_phrase(bbox: tuple[int, int, int, int], resolution: int, rng: random.Random) -> str:
    return rng.choice(LOCATION_PHRASES[region(bbox, resolution)])


SIZE_WORDS = {"small": ("small", "small", "little"), "large": ("large", "large", "big")}

# --------------------------------------------------------------------------------------------- captions

_INTROS_ONE = ("A picture of", "An image of", "This image shows", "There is", "The scene contains", "We see")
_INTROS_MANY = ("A picture of", "An image of", "This image shows", "The scene contains", "We see")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe(o: ShapeObject, rng: random.Random) -> str:
    return f"{rng.choice(SIZE_WORDS[o.size])} {o.color} {o.cls}"


def _pair_refs(a: ShapeObject, b: ShapeObject) -> tuple[str, str] | None:
    """Names that tell two objects apart: class, else colour + class, else size + class."""
    if a.cls != b.cls:
        return a.cls, b.cls
    if a.color != b.color:
        return f"{a.color} {a.cls}", f"{b.color} {b.cls}"
    if a.size != b.size:
        return f"{a.size} {a.cls}", f"{b.size} {b.cls}"
    return None


def caption(scene: Scene, rng: random.Random) -> str:
    """A complete description: every object with size, colour and 3 x 3 location, the relation of a pair, and
    the background (always when not gray). Wording, object order and sentence layout vary with ``rng``."""
    objs, res, bg = scene.objects, scene.resolution, scene.background
    bg_sentence = ""
    if bg != DEFAULT_BACKGROUND or rng.random() < 0.2:
        bg_sentence = rng.choice(("The background is {}.", "It is set on a plain {} background.",
                                  "Everything sits on a {} background.")).format(bg)
    if not objs:
        return f"An empty {bg} background."
    order = list(objs)
    reading = rng.random() < 0.5
    if reading:  # left to right, which the "From left to right" wording below relies on
        order.sort(key=lambda o: o.bbox[0] + o.bbox[2])
    else:
        rng.shuffle(order)
    style = rng.randrange(3)
    n = len(order)
    if style == 2 and n >= 2 and all(o.cls == order[0].cls for o in order):
        # Counting layout: "Three circles: a small red one in the top left, ..."
        parts = [f"{with_article(rng.choice(SIZE_WORDS[o.size]) + ' ' + o.color)} one "
                 f"{location_phrase(o.bbox, res, rng)}" for o in order]
        body = f"{capitalize(NUMBER_WORDS[n])} {plural(order[0].cls)}: {_join(parts)}."
    elif style == 1:
        sentences = []
        for o in order:
            desc, loc = with_article(_describe(o, rng)), location_phrase(o.bbox, res, rng)
            form = rng.randrange(3)
            if form == 0:
                sentences.append(f"There is {desc} {loc}.")
            elif form == 1:
                sentences.append(f"{capitalize(desc)} is {loc}.")
            else:
                sentences.append(f"{capitalize(loc)}, there is {desc}.")
        body = " ".join(sentences)
    else:
        parts = [f"{with_article(_describe(o, rng))} {location_phrase(o.bbox, res, rng)}" for o in order]
        if n == 1:
            body = f"{rng.choice(_INTROS_ONE)} {parts[0]}."
        elif reading and rng.random() < 0.4:
            body = f"From left to right: {_join(parts)}."
        elif rng.random() < 0.4:
            body = f"There are {NUMBER_WORDS[n]} shapes: {_join(parts)}."
        else:
            body = f"{rng.choice(_INTROS_MANY)} {_join(parts)}."
    sentences = [body]
    if n == 2 and rng.random() < 0.85:
        refs = _pair_refs(order[0], order[1])
        rels = robust_relations_cached(tuple(order[0].bbox), tuple(order[1].bbox)) if refs else set()
        if rels:
            rel = rng.choice(sorted(rels))
            sentences.append(f"The {refs[0]} is {rng.choice(RELATION_WORDS[rel])} the {refs[1]}.")
    if bg_sentence:
        sentences.insert(rng.randrange(2) * len(sentences), bg_sentence)
    return " ".join(sentences)


_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_PLURAL_OF = {plural(c): c for c in CLASSES}
_ARTICLE = r"\b(?:a|an) "
_SIZE, _COLOUR = "(" + "|".join(_SIZE_OF) + ")", "(" + "|".join(COLORS) + ")"
_DESCRIBED = re.compile(_ARTICLE + _SIZE + " " + _COLOUR + " (" + "|".join(CLASSES) + r")\b", re.IGNORECASE)
_COUNTED = re.compile(_ARTICLE + _SIZE + " " + _COLOUR + r" one\b", re.IGNORECASE)
_COUNT_HEAD = re.compile(r"\b(?:" + "|".join(NUMBER_WORDS.values()) + ") (" + "|".join(_PLURAL_OF) + "):",
                         re.IGNORECASE)


def caption_objects(text: str) -> list[tuple[str, str, str]]:
    """The objects a caption in ``caption``'s grammar describes, as ``(size, colour, class)`` in text order.

    Every object ``caption`` describes is an article, a size word, a colour and a class ("a little red star"), or,
    in the counting layout ("Three circles: a small red one ..., ..."), the same with "one" for the class named by
    the nearest preceding "<number> <plural>:". References back ("the circle", "the red circle" in a relation
    sentence) and the background sentence are not objects. So for every caption ``caption`` writes the result is
    its scene's objects exactly (tested); for a model's caption it is what the model claims to see, which
    ``arm.eval.understanding`` scores against the scene."""
    found = [(m.start(), (_SIZE_OF[m[1].lower()], m[2].lower(), m[3].lower())) for m in _DESCRIBED.finditer(text)]
    heads = [(m.start(), _PLURAL_OF[m[1].lower()]) for m in _COUNT_HEAD.finditer(text)]
    for m in _COUNTED.finditer(text):
        named = [cls for at, cls in heads if at < m.start()]
        if named:  # "a small red one" with no counting head before it names no class: not an object
            found.append((m.start(), (_SIZE_OF[m[1].lower()], m[2].lower(), named[-1])))
    return [obj for _, obj in sorted(found)]


# ------------------------------------------------------------------------------------------------- VQA

VQA_TYPES = ("count", "color_of", "shape_of", "exists", "relation")

_COUNT_Q = ("How many {} are there?", "How many {} are in the image?", "How many {} can you see?",
            "What is the number of {} in the picture?")
_COLOR_Q = ("What colour is the {}?", "What color is the {}?", "What is the colour of the {}?",
            "Which colour does the {} have?")
_SHAPE_Q = ("What shape is the {} object?", "Which shape is {}?", "What is the {} shape?",
            "What kind of shape is {}?")
_EXISTS_Q = ("Is there {}?", "Is there {} in the image?", "Does the image contain {}?", "Can you see {}?")
_OPEN_REL_Q = {
    "x": ("Is the {a} to the left or to the right of the {b}?", "Is the {a} left or right of the {b}?"),
    "y": ("Is the {a} above or below the {b}?", "Is the {a} higher or lower than the {b}?"),
}
_REL_ANSWER = {"left of": "left", "right of": "right", "above": "above", "below": "below"}


def _absent_thing(scene: Scene, rng: random.Random) -> str | None:
    """A plausible absent object ("a blue circle", "a star"): a present object with its colour or class changed,
    or an absent class; never a held-out colour x shape pair."""
    present = {(o.color, o.cls) for o in scene.objects}
    classes = {o.cls for o in scene.objects}
    kind = rng.randrange(3)
    if kind == 2 or not scene.objects:
        missing = [c for c in CLASSES if c not in classes]
        if missing:
            return with_article(rng.choice(missing))
    o = rng.choice(scene.objects) if scene.objects else None
    if o is None:
        return None
    if kind == 0:
        options = [(k, o.cls) for k in COLORS if (k, o.cls) not in present]
    else:
        options = [(o.color, c) for c in CLASSES if (o.color, c) not in present]
    options = [p for p in options if p not in HELDOUT_COLOR_SHAPE]
    if not options:
        return None
    k, c = rng.choice(options)
    return with_article(f"{k} {c}")


def _referable(scene: Scene) -> list[tuple[ShapeObject, str]]:
    """Objects with a unique name in the scene: the class alone, else colour + class."""
    counts = scene.class_counts()
    pairs: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        pairs[(o.color, o.cls)] = pairs.get((o.color, o.cls), 0) + 1
    out = []
    for o in scene.objects:
        if counts[o.cls] == 1:
            out.append((o, o.cls))
        elif pairs[(o.color, o.cls)] == 1:
            out.append((o, f"{o.color} {o.cls}"))
    return out


def _relation_fact(scene: Scene, rng: random.Random) -> tuple[str, str, frozenset[str], ShapeObject, ShapeObject] | None:
    """Two uniquely named objects and their robust relations (non-empty), or None."""
    refs = _referable(scene)
    if len(refs) < 2:
        return None
    for _ in range(3):
        (a, na), (b, nb) = rng.sample(refs, 2)
        rels = robust_relations_cached(tuple(a.bbox), tuple(b.bbox))
        if rels:
            return na, nb, rels, a, b
    return None


def _false_relation(rels: frozenset[str], a: ShapeObject, b: ShapeObject, rng: random.Random) -> str | None:
    """A relation surely false for (a, b): the inverse of a robust one, unless it would name a held-out one."""
    options = [INVERSE_RELATION[r] for r in sorted(rels)
               if (a.cls, INVERSE_RELATION[r], b.cls) not in HELDOUT_RELATIONS_BOTH_WAYS]
    return rng.choice(options) if options else None


def _vqa_one(kind: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    objs = scene.objects
    if kind == "count":
        if objs and rng.random() < 0.2:
            color = rng.choice(objs).color
            n = sum(o.color == color for o in objs)
            return rng.choice(_COUNT_Q).format(f"{color} shapes"), str(n)
        counts = scene.class_counts()
        cls = rng.choice(list(counts)) if counts and rng.random() < 0.8 else rng.choice(CLASSES)
        return rng.choice(_COUNT_Q).format(plural(cls)), str(counts.get(cls, 0))
    if kind == "color_of":
        counts = scene.class_counts()
        singles = [o for o in objs if counts[o.cls] == 1]
        if not singles:
            return None
        o = rng.choice(singles)
        return rng.choice(_COLOR_Q).format(o.cls), o.color
    if kind == "shape_of":
        colors = [o.color for o in objs]
        singles = [o for o in objs if colors.count(o.color) == 1]
        if not singles:
            return None
        o = rng.choice(singles)
        return rng.choice(_SHAPE_Q).format(o.color), o.cls
    if kind == "exists":
        if objs and rng.random() < 0.5:
            o = rng.choice(objs)
            thing = with_article(o.cls if rng.random() < 0.3 else f"{o.color} {o.cls}")
            return rng.choice(_EXISTS_Q).format(thing), "yes"
        thing = _absent_thing(scene, rng)
        return (rng.choice(_EXISTS_Q).format(thing), "no") if thing else None
    if kind == "relation":
        fact = _relation_fact(scene, rng)
        if fact is None:
            return None
        na, nb, rels, a, b = fact
        if rng.random() < 0.4:  # open question on one axis: exactly one of its two answers holds
            rel = rng.choice(sorted(rels))
            axis = "x" if rel in ("left of", "right of") else "y"
            return rng.choice(_OPEN_REL_Q[axis]).format(a=na, b=nb), _REL_ANSWER[rel]
        rel, answer = rng.choice(sorted(rels)), "yes"
        if rng.random() < 0.5:
            false = _false_relation(rels, a, b, rng)
            if false is not None:
                rel, answer = false, "no"
        return f"Is the {na} {rng.choice(RELATION_WORDS[rel])} the {nb}?", answer
    raise ValueError(f"unknown VQA type {kind!r}; expected one of {VQA_TYPES}")


def existence_pair(scene: Scene, rng: random.Random) -> list[dict[str, str]] | None:
    """Two existence questions on one scene that differ in one word and have opposite answers, in random order:
    a present thing ("a red circle", or "a circle") and a hard negative made from it (its colour or its class
    changed, "a blue circle" / "a red star"; an absent class for the class alone), asked with the same VQA
    template. Records as ``vqa_questions``' (type "exists"); None for an empty scene or where no negative applies.
    Never names a held-out colour x shape pair (the negative is absent, so it would be one the scene lacks)."""
    if not scene.objects:
        return None
    present = {(o.color, o.cls) for o in scene.objects}
    o = rng.choice(scene.objects)
    form = rng.choice(_EXISTS_Q)
    negative = None
    if rng.random() < 0.3:  # the class alone, as the VQA bench asks 30% of its present-thing questions
        missing = [c for c in CLASSES if c not in {p[1] for p in present}]
        if missing:
            positive, negative = o.cls, rng.choice(missing)
    if negative is None:
        positive = f"{o.color} {o.cls}"
        by_colour = [(k, o.cls) for k in COLORS if (k, o.cls) not in present]
        by_class = [(o.color, c) for c in CLASSES if (o.color, c) not in present]
        swaps = [by_colour, by_class] if rng.random() < 0.5 else [by_class, by_colour]
        options = [p for p in swaps[0] if p not in HELDOUT_COLOR_SHAPE] or \
                  [p for p in swaps[1] if p not in HELDOUT_COLOR_SHAPE]
        if not options:
            return None
        negative = " ".join(rng.choice(options))
    records = [{"question": form.format(with_article(positive)), "answer": "yes", "type": "exists"},
               {"question": form.format(with_article(negative)), "answer": "no", "type": "exists"}]
    if rng.random() < 0.5:
        records.reverse()
    return records


def vqa_questions(scene: Scene, rng: random.Random, n: int = 4) -> list[dict[str, str]]:
    """Up to ``n`` distinct questions ``{"question", "answer", "type"}``, covering as many types as apply."""
    types = list(VQA_TYPES)
    rng.shuffle(types)
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for _ in range(n):  # rounds: a scene where few types apply repeats them with other objects
        for kind in types:
            if len(out) == n:
                return out
            qa = _vqa_one(kind, scene, rng)
            if qa is not None and qa[0] not in seen:
                seen.add(qa[0])
                out.append({"question": qa[0], "answer": qa[1], "type": kind})
    return out


# ------------------------------------------------------------------------------------------------- MME

MME_SUFFIX = " Please answer yes or no."
MME_CATEGORIES = ("existence", "count", "color", "position")


def _mme_questions(category: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """(question answered Yes, question answered No) of one MME category, or None when it does not apply."""
    objs = scene.objects
    if category == "existence":
        absent = _absent_thing(scene, rng)
        if not objs or absent is None:
            return None
        o = rng.choice(objs)
        form = rng.choice(("Is there {} in this image?", "Is there {} in the image?"))
        return form.format(with_article(f"{o.color} {o.cls}")), form.format(absent)
    if category == "count":
        if not objs:
            return None
        counts = scene.class_counts()
        cls = rng.choice(list(counts))
        wrong = rng.choice([m for m in range(1, 5) if m != counts[cls]])

        def ask(m: int) -> str:
            if m == 1:
                return f"Is there exactly one {cls} in this image?"
            return f"Are there exactly {NUMBER_WORDS[m]} {plural(cls)} in this image?"

        return ask(counts[cls]), ask(wrong)
    if category == "color":
        counts = scene.class_counts()
        singles = [o for o in objs if counts[o.cls] == 1]
        if not singles:
            others = [b for b in BACKGROUNDS if b != scene.background]
            return f"Is the background {scene.background}?", f"Is the background {rng.choice(others)}?"
        o = rng.choice(singles)
        wrong = rng.choice([k for k in COLORS if k != o.color and (k, o.cls) not in HELDOUT_COLOR_SHAPE])
        return f"Is the {o.cls} in this image {o.color}?", f"Is the {o.cls} in this image {wrong}?"
    if category == "position":
        fact = _relation_fact(scene, rng)
        if fact is None:
            return None
        na, nb, rels, a, b = fact
        false = _false_relation(rels, a, b, rng)
        if false is None:
            return None
        true = rng.choice(sorted(rels))
        return (f"Is the {na} {rng.choice(RELATION_WORDS[true])} the {nb}?",
                f"Is the {na} {rng.choice(RELATION_WORDS[false])} the {nb}?")
    raise ValueError(f"unknown MME category {category!r}; expected one of {MME_CATEGORIES}")


def mme_pair(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """MME's pair for one image: one question answered "Yes" and one answered "No" (in random order), both of
    one category, each ending with " Please answer yes or no."."""
    categories = list(MME_CATEGORIES)
    rng.shuffle(categories)
    for category in categories + ["color"]:  # "color" always applies (it falls back to the background)
        pair = _mme_questions(category, scene, rng)
        if pair is not None:
            break
    records = [{"question": pair[0] + MME_SUFFIX, "answer": "Yes", "category": category},
               {"question": pair[1] + MME_SUFFIX, "answer": "No", "category": category}]
    if rng.random() < 0.5:
        records.reverse()
    return records


# --------------------------------------------------------------------------------------------- all text

TEXT_KEYS = frozenset({"caption", "prompt", "Prompt", "Explanation", "question", "answer", "instruction"})
"""Keys whose string values are natural-language text in a sample's JSON (writer.build_sample's ``meta``)."""


def all_texts(sample_json: dict) -> list[str]:
    """Every text field of a sample, in document order (for training a text tokenizer)."""
    out: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str):
                    if key in TEXT_KEYS:
                        out.append(value)
                elif isinstance(value, (dict, list)):
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(sample_json)
    return out
