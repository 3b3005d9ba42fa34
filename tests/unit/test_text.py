"""Captions, GenEval / WISE records, VQA questions and MME pairs, checked against independent expectations:
hand-built scenes with hand-written answers, and GenEval's own scoring rule re-implemented here on ground truth."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from arm.data.shapeworld import knowledge, text
from arm.data.shapeworld.scene import Scene, ShapeObject, heldout_combinations, relative_position, scene_for
from arm.data.shapeworld.world import (
    BACKGROUNDS,
    CLASSES,
    COLORS,
    HELDOUT_COLOR_SHAPE,
    HELDOUT_RELATIONS,
    NUMBER_WORDS,
)

INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
HELDOUT_TRIPLES = set(HELDOUT_RELATIONS) | {(b, INVERSE[r], a) for a, r, b in HELDOUT_RELATIONS}
NUMBER_WORDS_INV = {w: n for n, w in NUMBER_WORDS.items()}
PLURALS = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
           "crosses": "cross", "stars": "star"}
REL_WORDS = {"left of": "left of", "to the left of": "left of", "on the left of": "left of", "right of": "right of",
             "to the right of": "right of", "on the right of": "right of", "above": "above", "over": "above",
             "higher than": "above", "below": "below", "under": "below", "beneath": "below", "lower than": "below"}


def obj(cls: str, color: str, box: tuple[int, int, int, int], size: str = "small") -> ShapeObject:
    return ShapeObject(cls, color, size, box)


def geneval_correct(record: dict, scene: Scene) -> bool:
    """GenEval's ``evaluate`` (evaluation/evaluate_images.py) with the scene's objects as perfect detections."""
    detected: dict[str, list[ShapeObject]] = {}
    for o in scene.objects:
        detected.setdefault(o.cls, []).append(o)
    correct, groups = True, []
    for req in record["include"]:
        found = detected.get(req["class"], [])[: req["count"]]
        matched = len(found) >= req["count"]
        if matched and "color" in req:
            matched = sum(o.color == req["color"] for o in found) >= req["count"]
        if matched and "position" in req:
            rel, target = req["position"]
            matched = groups[target] is not None and all(
                rel in relative_position(o.bbox, t.bbox) for o in found for t in groups[target])
        correct &= matched
        groups.append(found if matched else None)
    for req in record.get("exclude", []):
        if len(detected.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def record_heldout(requirements: dict) -> bool:
    inc = requirements["include"]
    if any((r.get("color"), r["class"]) in HELDOUT_COLOR_SHAPE for r in inc):
        return True
    return requirements["tag"] == "position" and (inc[1]["class"], inc[1]["position"][0], inc[0]["class"]) in HELDOUT_TRIPLES


def train_scenes(n: int) -> list[Scene]:
    return [scene_for(1, "train", i) for i in range(n)]


# ------------------------------------------------------------------------------------------------ GenEval


def test_geneval_wording_rules():
    assert text.with_article("orange circle") == "an orange circle"
    assert text.with_article("red star") == "a red star"
    assert text.plural("cross") == "crosses" and text.plural("circle") == "circles"


@pytest.mark.parametrize("spec, expected", [
    (text.GenevalSpec("single_object", ("diamond",)),
     {"tag": "single_object", "include": [{"class": "diamond", "count": 1}], "prompt": "a photo of a diamond"}),
    (text.GenevalSpec("two_object", ("circle", "star")),
     {"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "star", "count": 1}],
      "prompt": "a photo of a circle and a star"}),
    (text.GenevalSpec("counting", ("cross",), count=3),
     {"tag": "counting", "include": [{"class": "cross", "count": 3}], "exclude": [{"class": "cross", "count": 4}],
      "prompt": "a photo of three crosses"}),
    (text.GenevalSpec("colors", ("square",), ("orange",)),
     {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "orange"}],
      "prompt": "a photo of an orange square"}),
    (text.GenevalSpec("position", ("circle", "square"), relation="left of"),
     {"tag": "position", "include": [{"class": "square", "count": 1},
                                     {"class": "circle", "count": 1, "position": ["left of", 0]}],
      "prompt": "a photo of a circle left of a square"}),
    (text.GenevalSpec("color_attr", ("circle", "triangle"), ("red", "white")),
     {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                       {"class": "triangle", "count": 1, "color": "white"}],
      "prompt": "a photo of a red circle and a white triangle"}),
])
def test_geneval_records_follow_geneval_schema(spec, expected):
    assert text.geneval_record(spec) == expected


def test_geneval_tag_mix():
    assert text.GENEVAL_TAG_COUNTS == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                                       "position": 100, "color_attr": 100}
    assert sum(text.GENEVAL_TAG_COUNTS.values()) == 553


@pytest.mark.parametrize("tag", text.GENEVAL_TAGS)
def test_sampled_geneval_records_hold_exactly_on_their_scene(tag):
    rng = random.Random(tag)
    for i in range(60):
        record, scene = text.sample_geneval_record(rng, tag, allow_heldout=bool(i % 2))
        assert record["tag"] == tag and record["prompt"].startswith("a photo of ")
        assert geneval_correct(record, scene), (record, scene)
        # Only the prompt's objects: as many objects as the include clauses count, of their classes.
        assert len(scene.objects) == sum(r["count"] for r in record["include"])
        assert sorted({o.cls for o in scene.objects}) == sorted({r["class"] for r in record["include"]})
        if tag == "counting":
            n = record["include"][0]["count"]
            assert 2 <= n <= 4 and record["exclude"] == [{"class": record["include"][0]["class"], "count": n + 1}]
            assert NUMBER_WORDS[n] in record["prompt"]
        if tag == "position":
            ref, moved = record["include"]
            assert ref.keys() == {"class", "count"} and moved["position"][1] == 0
            a = next(o for o in scene.objects if o.cls == moved["class"])
            b = next(o for o in scene.objects if o.cls == ref["class"])
            assert record["prompt"] == f"a photo of {text.with_article(a.cls)} {moved['position'][0]} " \
                                       f"{text.with_article(b.cls)}"
            for dx in (-2, 2):  # the relation survives a detector that is two pixels off
                shifted = (a.bbox[0] + dx, a.bbox[1] + dx, a.bbox[2] + dx, a.bbox[3] + dx)
                assert moved["position"][0] in relative_position(shifted, b.bbox)
        if tag == "color_attr":
            assert record["include"][0]["color"] != record["include"][1]["color"]


@pytest.mark.parametrize("tag", text.HELDOUT_TAGS)
def test_geneval_heldout_policy(tag):
    rng = random.Random(7)
    for _ in range(500):
        record, scene = text.sample_geneval_record(rng, tag, allow_heldout=False)
        assert not record_heldout(record) and heldout_combinations(scene) == []
    for _ in range(100):
        record, scene = text.sample_geneval_record(rng, tag, allow_heldout=False, require_heldout=True)
        assert record_heldout(record) and heldout_combinations(scene) != []
        assert geneval_correct(record, scene)


def test_require_heldout_refuses_tags_without_attributes():
    with pytest.raises(ValueError, match="held-out"):
        text.sample_geneval_record(random.Random(0), "counting", allow_heldout=True, require_heldout=True)


def test_geneval_benchmark_mix_and_heldout_split():
    bench = text.geneval_benchmark(lambda i: random.Random(f"bench/{i}"), heldout_fraction=0.5)
    assert len(bench) == 553
    tags = [r["tag"] for r, _ in bench]
    assert {t: tags.count(t) for t in set(tags)} == text.GENEVAL_TAG_COUNTS
    held = [record_heldout(r) for r, _ in bench if r["tag"] in ("colors", "position", "color_attr")]
    assert 0.35 < sum(held) / len(held) < 0.65
    for record, scene in bench:
        assert geneval_correct(record, scene)
        assert bool(heldout_combinations(scene)) == record_heldout(record)


def test_record_for_hand_built_scenes():
    one = Scene([obj("circle", "red", (5, 5, 19, 19))])
    twins = Scene([obj("circle", "red", (5, 5, 19, 19)), obj("circle", "red", (40, 40, 54, 54))])
    pair = Scene([obj("triangle", "red", (2, 25, 16, 39)), obj("square", "red", (45, 25, 59, 39))])
    mixed = Scene([obj("circle", "red", (2, 2, 16, 16)), obj("square", "blue", (40, 2, 54, 16)),
                   obj("star", "white", (20, 40, 34, 54))])
    prompts = {text.geneval_record_for_scene(one, random.Random(s))["prompt"] for s in range(40)}
    assert prompts == {"a photo of a circle", "a photo of a red circle"}
    for s in range(20):
        record = text.geneval_record_for_scene(twins, random.Random(s))
        assert record == {"tag": "counting", "include": [{"class": "circle", "count": 2}],
                          "exclude": [{"class": "circle", "count": 3}], "prompt": "a photo of two circles"}
    prompts = {text.geneval_record_for_scene(pair, random.Random(s))["prompt"] for s in range(60)}
    # Same colour: never a color_attr record; the only robust relation is left / right.
    assert prompts == {"a photo of a triangle and a square", "a photo of a square and a triangle",
                       "a photo of a triangle left of a square", "a photo of a square right of a triangle"}
    assert text.geneval_record_for_scene(mixed, random.Random(0)) is None
    for s in range(30):
        record = text.geneval_record_for_scene(mixed, random.Random(s), exhaustive=False)
        assert geneval_correct(record, mixed)


def test_records_for_world_scenes_hold():
    for i, scene in enumerate(train_scenes(300)):
        for phrasing in ("geneval", "varied"):
            for exhaustive in (True, False):
                record = text.geneval_record_for_scene(scene, random.Random(i), phrasing, exhaustive)
                if record is not None:
                    assert geneval_correct(record, scene), (record, scene)
                    assert not record_heldout(record)


# ------------------------------------------------------------------------------------------------ captions


def test_caption_of_hand_built_scene():
    scene = Scene([obj("circle", "red", (2, 4, 16, 18)), obj("square", "blue", (40, 8, 62, 30), "large")],
                  background="khaki")
    left_words = [w for w, r in REL_WORDS.items() if r == "left of"]
    for s in range(40):
        cap = text.caption(scene, random.Random(s))
        assert "khaki" in cap
        assert re.search(r"(small|little) red circle|(small|little) red one", cap), cap
        assert re.search(r"(large|big) blue square", cap), cap
        assert "top left" in cap  # the circle's region, in every location phrasing of it
        m = re.search(r"The (circle|square) is ([\w ]+) the (circle|square)\.", cap)
        if m:  # the only relation is "circle left of square" (the centres differ by 42 px in x, 8 in y)
            a, word, b = m.groups()
            assert (a, b) in (("circle", "square"), ("square", "circle"))
            assert (word in left_words) == (a == "circle"), cap


def test_captions_name_every_object():
    for i, scene in enumerate(train_scenes(300)):
        cap = text.caption(scene, random.Random(i))
        for o in scene.objects:
            want = sum(p.color == o.color and p.cls == o.cls for p in scene.objects)
            got = cap.count(f"{o.color} {o.cls}") + cap.count(f"{o.color} one")
            assert got >= want, (cap, scene)
        if scene.background != "gray":
            assert scene.background in cap


def test_caption_objects_read_back_every_scene_exactly():
    """The parser inverts the caption grammar: for fresh scenes (every layout, the counting one included) and
    wordings, the objects read back are the scene's, as (size, colour, class) multisets."""
    seed = random.randrange(10**6)
    scenes = [scene_for(seed, split, i) for split in ("train", "test") for i in range(300)]
    layouts = set()
    for i, scene in enumerate(scenes):
        cap = text.caption(scene, random.Random(seed + i))
        layouts.add(":" in cap and "shapes:" not in cap and "right:" not in cap)
        want = sorted((o.size, o.color, o.cls) for o in scene.objects)
        assert sorted(text.caption_objects(cap)) == want, (seed, cap)
    assert layouts == {True, False}  # both the counting layout and the others were read


def test_caption_objects_by_hand():
    cap = ("The background is khaki. Three crosses: a small red one at the top, a big blue one on the left and a "
           "little red one in the centre. The red cross is above the blue cross.")
    assert text.caption_objects(cap) == [("small", "red", "cross"), ("large", "blue", "cross"),
                                         ("small", "red", "cross")]
    cap = "An image of a big pink star in the middle. There is a little white circle at the top. The star is below it."
    assert text.caption_objects(cap) == [("large", "pink", "star"), ("small", "white", "circle")]
    # back-references, a bare "one" with no counting head, and words outside the grammar claim nothing
    assert text.caption_objects("The red circle is left of the blue square. A small green one. a red hexagon") == []
    assert text.caption_objects("An empty gray background.") == []


# ------------------------------------------------------------------------------------------------ VQA


def _names(scene: Scene, name: str) -> list[ShapeObject]:
    *color, cls = name.split()
    return [o for o in scene.objects if o.cls == cls and (not color or o.color == color[0])]


def check_vqa(q: dict, scene: Scene) -> None:
    """Re-derive the answer of one question from the scene."""
    question, answer, kind = q["question"], q["answer"], q["type"]
    if kind == "count":
        thing = re.search(r"(?:How many|number of) (.+?) (?:are|can|in)\b", question).group(1)
        if thing.endswith(" shapes"):
            expected = sum(o.color == thing.split()[0] for o in scene.objects)
        else:
            expected = sum(o.cls == PLURALS[thing] for o in scene.objects)
        assert answer == str(expected), q
    elif kind == "color_of":
        (cls,) = [c for c in CLASSES if re.search(rf"\b{c}\b", question)]
        (o,) = [o for o in scene.objects if o.cls == cls]  # asked only when the class appears once
        assert answer == o.color, q
    elif kind == "shape_of":
        (color,) = [k for k in COLORS if re.search(rf"\b{k}\b", question)]
        (o,) = [o for o in scene.objects if o.color == color]
        assert answer == o.cls, q
    elif kind == "exists":
        thing = re.search(r"\b(?:a|an) (\w+(?: \w+)?)\?|\b(?:a|an) (\w+(?: \w+)?) in the image", question)
        name = thing.group(1) or thing.group(2)
        assert answer == ("yes" if _names(scene, name) else "no"), q
    elif kind == "relation":
        check_relation_question(question, answer, scene)
    else:
        raise AssertionError(f"unknown type {kind}")


def check_relation_question(question: str, answer: str, scene: Scene) -> None:
    m = re.match(r"Is the (.+?) (to the left or to the right of|left or right of|above or below|higher or lower "
                 r"than) the (.+)\?$", question)
    if m:
        (a,), (b,) = _names(scene, m.group(1)), _names(scene, m.group(3))
        rels = relative_position(a.bbox, b.bbox)
        expected = {"left": "left of", "right": "right of", "above": "above", "below": "below"}[answer]
        assert expected in rels and INVERSE[expected] not in rels, question
        return
    body = re.match(r"Is the (.+) the (.+?)\?", question.removesuffix(text.MME_SUFFIX))
    head, b_name = body.groups()
    word = next(w for w in sorted(REL_WORDS, key=len, reverse=True) if head.endswith(" " + w))
    (a,), (b,) = _names(scene, head[: -len(word) - 1]), _names(scene, b_name.removesuffix(" in this image"))
    holds = REL_WORDS[word] in relative_position(a.bbox, b.bbox)
    assert answer.lower() == ("yes" if holds else "no"), question


def test_vqa_on_hand_built_scene():
    # Two red circles and a blue square: count "2"; the circles' colour is never asked (two circles), and no
    # relation is asked (the circles have no unique name, so no pair of uniquely named objects exists).
    scene = Scene([obj("circle", "red", (2, 2, 16, 16)), obj("circle", "red", (2, 44, 16, 58)),
                   obj("square", "blue", (44, 24, 58, 38))])
    seen = set()
    for s in range(80):
        for q in text.vqa_questions(scene, random.Random(s)):
            seen.add(q["type"])
            check_vqa(q, scene)
            if q["type"] == "count" and "circles" in q["question"]:
                assert q["answer"] == "2"
            assert not (q["type"] == "color_of" and "circle" in q["question"])
            if q["type"] == "color_of":
                assert q["answer"] == "blue"
            if q["type"] == "shape_of":  # red appears twice: only the blue square is asked for
                assert "blue" in q["question"] and q["answer"] == "square"
    assert seen == set(text.VQA_TYPES) - {"relation"}


def test_vqa_answers_hold_on_world_scenes():
    yes = no = 0
    for i, scene in enumerate(train_scenes(400)):
        qs = text.vqa_questions(scene, random.Random(i))
        assert len(qs) == 4 and len({q["question"] for q in qs}) == 4
        assert len({q["type"] for q in qs}) >= 2
        for q in qs:
            assert set(q) == {"question", "answer", "type"} and q["type"] in text.VQA_TYPES
            check_vqa(q, scene)
            if q["type"] == "exists":
                yes += q["answer"] == "yes"
                no += q["answer"] == "no"
    assert 0.35 < yes / (yes + no) < 0.65


def test_existence_pairs_contrast_one_word_on_world_scenes():
    seed = random.randrange(10**6)  # fresh scenes each run; the seed is in the failure message
    swaps, held = Counter(), 0
    for i, scene in enumerate(scene_for(seed, "train", j) for j in range(300)):
        pair = text.existence_pair(scene, random.Random(i))
        if pair is None:
            assert not scene.objects, (seed, i)  # a hard negative exists for every non-empty scene
            continue
        assert sorted(q["answer"] for q in pair) == ["no", "yes"], (seed, pair)
        for q in pair:
            assert set(q) == {"question", "answer", "type"} and q["type"] == "exists"
            check_vqa(q, scene)  # the answers hold on the scene by the bench's own reading
        yes, no = (q["question"].split() for q in sorted(pair, key=lambda q: q["answer"] != "yes"))
        diff = [(a, b) for a, b in zip(yes, no) if a != b]
        # One template: the questions differ in the thing's one word (and in its article, "a" / "an").
        assert len(yes) == len(no) and len([d for d in diff if d[0] not in ("a", "an")]) == 1, (seed, pair)
        (a, b), = [d for d in diff if d[0] not in ("a", "an")]
        swaps["colour" if a.lower() in COLORS else "class"] += 1
        held += any(f"{k} {c}" in " ".join(no) for k, c in HELDOUT_COLOR_SHAPE)
    assert held == 0 and swaps["colour"] > 30 and swaps["class"] > 30, (seed, swaps)


def test_existence_pair_by_hand():
    scene = Scene([obj("circle", "red", (2, 2, 16, 16))])
    seen = set()
    for s in range(60):
        pair = text.existence_pair(scene, random.Random(s))
        by_answer = {q["answer"]: q["question"] for q in pair}
        assert re.search(r"\ba (red )?circle\b", by_answer["yes"]), pair
        seen.add(re.sub(r"^(Is there|Does the image contain|Can you see) |( in the image)?\?$", "", by_answer["no"]))
    # Negatives: red with another class, a circle of another colour, or another class alone; never the circle.
    assert not seen & {"a red circle", "a circle"}
    assert any(n.startswith("a red ") for n in seen) and any(n.endswith(" circle") for n in seen)
    assert any(n in {"a square", "a triangle", "a diamond", "a cross", "a star"} for n in seen)
    assert text.existence_pair(Scene([]), random.Random(0)) is None


# ------------------------------------------------------------------------------------------------ MME


def check_mme(q: dict, scene: Scene) -> None:
    question = q["question"].removesuffix(text.MME_SUFFIX)
    if q["category"] == "existence":
        name = re.match(r"Is there (?:a|an) (.+) in (?:this|the) image\?", question).group(1)
        holds = bool(_names(scene, name))
    elif q["category"] == "count":
        m = re.match(r"Is there exactly one (\w+) in this image\?|Are there exactly (\w+) (\w+) in this image\?",
                     question)
        cls, n = (m.group(1), 1) if m.group(1) else (PLURALS[m.group(3)], NUMBER_WORDS_INV[m.group(2)])
        holds = sum(o.cls == cls for o in scene.objects) == n
    elif q["category"] == "color" and question.startswith("Is the background"):
        holds = question == f"Is the background {scene.background}?"
    elif q["category"] == "color":
        cls, color = re.match(r"Is the (\w+) in this image (\w+)\?", question).groups()
        (o,) = [o for o in scene.objects if o.cls == cls]
        holds = o.color == color
    else:
        check_relation_question(question, q["answer"], scene)
        return
    assert q["answer"] == ("Yes" if holds else "No"), q


def test_mme_pairs():
    categories = set()
    for i, scene in enumerate(train_scenes(400)):
        pair = text.mme_pair(scene, random.Random(i))
        assert sorted(q["answer"] for q in pair) == ["No", "Yes"]
        assert pair[0]["category"] == pair[1]["category"]
        categories.add(pair[0]["category"])
        for q in pair:
            assert q["question"].endswith("? Please answer yes or no.")
            check_mme(q, scene)
    assert categories == {"existence", "count", "color", "position"}


# ------------------------------------------------------------------------------------------------ WISE

FACT_EXPECTATIONS = {
    "a shape with three corners": ("class", "triangle"),
    "a shape with four equal sides and square corners": ("class", "square"),
    "a shape like a plus sign": ("class", "cross"),
    "a shape like the full moon": ("class", "circle"),
    "a shape with five points": ("class", "star"),
    "the colour of grass": ("color", "green"),
    "the colour of snow": ("color", "white"),
    "the colour of a ripe banana": ("color", "yellow"),
    "the colour of a ripe tomato": ("color", "red"),
    "a pair of {x}": ("count", 2),
    "as many {x} as a dog has legs": ("count", 4),
    "as many {x} as the Earth has moons": ("count", 1),
    "{a} to the east of {b} on a map with north at the top": ("relation", "right of"),
    "{a} to the north of {b} on a map with north at the top": ("relation", "above"),
}


def test_fact_table_values_and_coverage():
    tables = {"class": knowledge.CLASS_FACTS, "color": knowledge.COLOR_FACTS, "count": knowledge.COUNT_FACTS,
              "relation": knowledge.RELATION_FACTS}
    facts = {f.text: (kind, f.value) for kind, table in tables.items() for fs in table.values() for f in fs}
    for phrase, expected in FACT_EXPECTATIONS.items():
        assert facts[phrase] == expected, phrase
    assert all(len(knowledge.CLASS_FACTS[c]) >= 2 for c in CLASSES)
    assert all(len(knowledge.COLOR_FACTS[k]) >= 2 for k in COLORS)
    assert all(len(knowledge.COUNT_FACTS[n]) >= 2 for n in (1, 2, 3, 4))
    assert all(len(knowledge.RELATION_FACTS[r]) >= 2 for r in INVERSE)
    for table in tables.values():
        for fact in (f for fs in table.values() for f in fs):
            assert fact.category in knowledge.WISE_CATEGORIES and fact.subcategory
    for cls, fs in knowledge.CLASS_FACTS.items():  # a shape's facts never name another shape
        for fact in fs:
            assert not any(re.search(rf"\b{c}", fact.text + " " + fact.plural) for c in CLASSES if c != cls), fact


def test_wise_records_resolve_to_their_requirements():
    rng = random.Random(3)
    used = set()
    for i in range(500):
        record, scene = knowledge.sample_wise_record(rng, allow_heldout=True, prompt_id=i)
        assert set(record) == {"prompt_id", "Prompt", "Explanation", "Category", "Subcategory", "requirements"}
        assert record["prompt_id"] == i and record["Category"] in knowledge.WISE_CATEGORIES
        req = record["requirements"]
        assert geneval_correct(req, scene)
        assert len(scene.objects) == sum(r["count"] for r in req["include"])
        prompt = record["Prompt"].lower()
        for phrase, (kind, value) in FACT_EXPECTATIONS.items():
            pattern = re.escape(phrase.lower()).replace(r"\{x\}", ".+").replace(r"\{a\}", ".+").replace(r"\{b\}", ".+")
            if re.search(pattern, prompt):
                used.add(phrase)
                if kind == "class":
                    assert value in {r["class"] for r in req["include"]}, record
                elif kind == "color":
                    assert value in {r.get("color") for r in req["include"]}, record
                elif kind == "count":
                    assert req["tag"] == "counting" and req["include"][0]["count"] == value, record
                else:
                    assert req["include"][1]["position"][0] == value, record
    assert len(used) >= len(FACT_EXPECTATIONS) - 2


def test_wise_heldout_policy_and_scene_records():
    rng = random.Random(5)
    for _ in range(300):
        record, scene = text.sample_wise_record(rng, allow_heldout=False)
        assert not record_heldout(record["requirements"]) and heldout_combinations(scene) == []
        record, scene = text.sample_wise_record(rng, allow_heldout=False, require_heldout=True)
        assert record_heldout(record["requirements"]) and geneval_correct(record["requirements"], scene)
    for i, scene in enumerate(train_scenes(200)):
        record = text.wise_record_for_scene(scene, random.Random(i))
        if record is not None:
            assert geneval_correct(record["requirements"], scene)


# ------------------------------------------------------------------------------------------------ general


def test_text_never_names_absent_heldout_combinations():
    pairs = [f"{k} {c}" for k, c in HELDOUT_COLOR_SHAPE]
    for i, scene in enumerate(train_scenes(300)):
        rng = random.Random(i)
        texts = [text.caption(scene, rng)]
        texts += [q["question"] for q in text.vqa_questions(scene, rng) + text.mme_pair(scene, rng)]
        for record in (text.geneval_record_for_scene(scene, rng, "varied"), text.wise_record_for_scene(scene, rng)):
            texts += text.all_texts({"r": record}) if record else []
        for t in texts:
            assert not any(p in t for p in pairs), t
            for a, rel, b in HELDOUT_TRIPLES:
                words = [w for w, r in REL_WORDS.items() if r == rel]
                assert not any(re.search(rf"\b{a} (?:is )?{w} (?:the|a|an) {b}\b", t) for w in words), t


def test_determinism():
    scene = scene_for(0, "train", 3)

    def everything(seed: int) -> list:
        rng = random.Random(seed)
        return [text.caption(scene, rng), text.geneval_record_for_scene(scene, rng, "varied"),
                text.wise_record_for_scene(scene, rng), text.vqa_questions(scene, rng), text.mme_pair(scene, rng),
                text.sample_geneval_record(rng, "position", True)[0], text.sample_wise_record(rng, True)[0],
                [s.to_json() for _, s in text.geneval_benchmark(lambda i: random.Random(i),
                                                                counts={"counting": 3, "position": 3})]]

    assert everything(11) == everything(11)
    assert everything(11) != everything(12)


def test_all_texts_of_a_sample():
    sample = {
        "key": "train-00000001", "scene": scene_for(0, "train", 1).to_json(), "heldout": [],
        "caption": "A red circle.",
        "geneval": {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
                    "prompt": "a photo of a red circle"},
        "wise": {"prompt_id": 0, "Prompt": "A circle in the colour of a stop sign", "Explanation": "Stop signs are red.",
                 "Category": "Cultural knowledge", "Subcategory": "Symbols", "requirements": {"tag": "colors"}},
        "vqa": [{"question": "How many circles are there?", "answer": "1", "type": "count"}],
        "mme": [{"question": "Is there a red circle in this image? Please answer yes or no.", "answer": "Yes",
                 "category": "existence"}],
        "edit": {"type": "recolor", "instruction": "make the circle blue", "target_scene": {"objects": []}},
    }
    assert text.all_texts(sample) == [
        "A red circle.", "a photo of a red circle", "A circle in the colour of a stop sign", "Stop signs are red.",
        "How many circles are there?", "1", "Is there a red circle in this image? Please answer yes or no.", "Yes",
        "make the circle blue"]
    assert text.all_texts({"geneval": None, "vqa": []}) == []


def test_backgrounds_in_mme_fallback():
    # A scene with two identical squares: the colour category falls back to asking about the background.
    scene = Scene([obj("square", "red", (2, 2, 16, 16)), obj("square", "red", (40, 40, 54, 54))], background="slate")
    for s in range(30):
        for q in text.mme_pair(scene, random.Random(s)):
            if q["question"].startswith("Is the background"):
                assert q["answer"] == ("Yes" if "slate" in q["question"] else "No")
                assert any(b in q["question"] for b in BACKGROUNDS)
