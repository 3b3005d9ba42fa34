"""VQA, MME, POPE, caption perplexity and generated captions against numbers computed by hand on tiny files in the
real formats."""

import json
import math

import pytest

from arm.data.shapeworld.render import encode_png, render
from arm.data.shapeworld.scene import Scene
from arm.eval.common import Run
from arm.eval.interface import DummyModel
from arm.eval.understanding import (
    caption_object_scores,
    normalize_answer,
    parse_yes_no,
    pope_reply,
    run_caption,
    run_mme,
    run_pope,
    run_vqa,
    vqa_accuracy,
)


def write_images(root, names=("one", "two")):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        scene = {"objects": [{"class": "circle", "color": "red", "size": "small", "bbox": [4 + 10 * i, 8, 18 + 10 * i, 22]}],
                 "background": "gray", "resolution": 64}
        (root / "images" / f"{name}.png").write_bytes(encode_png(render(Scene.from_json(scene))))


MME_LINES = [
    ("images/one.png", "Is there a red circle in this image? Please answer yes or no.", "Yes"),
    ("images/one.png", "Is there a blue circle in this image? Please answer yes or no.", "No"),
    ("images/two.png", "Is there a circle in this image? Please answer yes or no.", "Yes"),
    ("images/two.png", "Is there a star in this image? Please answer yes or no.", "No"),
]


def test_mme_acc_and_acc_plus_by_hand(tmp_path):
    write_images(tmp_path)
    (tmp_path / "existence.txt").write_text("".join("\t".join(line) + "\n" for line in MME_LINES))
    run = Run(DummyModel(wrong={MME_LINES[3][1]}), progress=False)  # one question of image two answered wrong
    summary = run_mme(run, tmp_path / "existence.txt", tmp_path / "out")
    # 3 of 4 questions right; image one has both right, image two not: acc 0.75, acc+ 0.5, score 125.
    assert summary["acc"]["value"] == 0.75 and summary["acc_plus"]["value"] == 0.5
    assert summary["per_subtask"]["existence"]["score"]["value"] == pytest.approx(125.0)
    assert summary["total_score"]["value"] == pytest.approx(125.0)
    assert summary["yes_ratio"]["value"] == pytest.approx(3 / 4)  # replies Yes, No, Yes, Yes (POPE's format)
    lines = (tmp_path / "out" / "existence.txt").read_text().splitlines()
    assert [line.split("\t") for line in lines] == [[*row, pred] for row, pred in zip(MME_LINES, ["Yes", "No", "Yes", "Yes"])]


def test_yes_no_readings():
    assert [parse_yes_no(t) for t in ("Yes", "no", "Yes, there is.", "Nope", "I think so")] == [
        "yes", "no", "yes", "no", "other"]
    assert [pope_reply(t) for t in ("Yes, there is a cat.", "No.", "There is not a dog", "Yes. But no cat.")] == [
        "yes", "no", "no", "yes"]


def test_pope_by_hand(tmp_path):
    write_images(tmp_path)
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    rows = [{"question_id": i, "image": f"images/{'one' if i % 2 else 'two'}.png", "text": f"Is there a thing {i}?",
             "label": label} for i, label in enumerate(labels)]
    (tmp_path / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = Run(DummyModel(wrong={"Is there a thing 1?", "Is there a thing 3?"}), progress=False)
    summary = run_pope(run, tmp_path / "pope.jsonl", tmp_path / "out")
    # Predictions yes, no, yes, yes, no, no: TP 2, FN 1, FP 1, TN 2.
    assert summary["accuracy"]["value"] == pytest.approx(4 / 6)
    assert summary["precision"]["value"] == pytest.approx(2 / 3)
    assert summary["recall"]["value"] == pytest.approx(2 / 3)
    assert summary["f1"]["value"] == pytest.approx(2 / 3)
    assert summary["yes_ratio"]["value"] == pytest.approx(3 / 6)
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == list(range(6))


def test_vqa_per_type_and_vqav2_accuracy(tmp_path):
    write_images(tmp_path)
    rows = [
        {"question_id": 0, "image": "images/one.png", "question": "How many circles?", "answer": "1", "type": "count"},
        {"question_id": 1, "image": "images/two.png", "question": "How many stars?", "answer": "0", "type": "count"},
        {"question_id": 2, "image": "images/one.png", "question": "What colour is the circle?", "answer": "red",
         "type": "color_of"},
    ]
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrong = {"How many stars?", "What colour is the circle?"}
    summary = run_vqa(Run(DummyModel(wrong=wrong), progress=False), tmp_path / "vqa.jsonl", tmp_path / "out")
    # The dummy's wrong reply is "none", which VQA's normalisation reads as "0": right for the star count
    # (answer 0), wrong for the colour.
    assert summary["per_type"]["count"]["value"] == 1.0 and summary["per_type"]["color_of"]["value"] == 0.0
    assert summary["accuracy"]["value"] == pytest.approx(2 / 3)
    assert normalize_answer("The Two.") == "2"
    # Ten human answers, three say "2": leaving out one of those three leaves 2 matches (2/3), else 3 (1).
    record = {"answers": ["2"] * 3 + ["3"] * 7}
    assert vqa_accuracy("two", record) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("4", record) == 0.0


def test_vqa_prior_baseline_and_reply_shares_by_hand(tmp_path):
    """The per-type prior answers each question with its type's most frequent reference answer; ``top_replies``
    gives each type's most frequent replies and their shares; every row keeps its reference answer."""
    write_images(tmp_path)
    counts = ["1", "1", "1", "0", "2"]  # count type: prior "1" is right on 3 of 5
    colours = ["red", "blue", "blue", "red", "red", "green"]  # colour type: prior "red" on 3 of 6
    rows = [{"question_id": i, "image": "images/one.png", "question": f"How many things {i}?", "answer": a,
             "type": "count"} for i, a in enumerate(counts)]
    rows += [{"question_id": 10 + i, "image": "images/two.png", "question": f"What colour is thing {i}?", "answer": a,
              "type": "color_of"} for i, a in enumerate(colours)]
    rows.append({"question_id": 99, "image": "images/one.png", "question": "How many humans?", "type": "human",
                 "answers": ["3"] * 6 + ["2"] * 4})  # ten answers: prior "3", accuracy 1 (six say 3)
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrong = {r["question"] for r in rows[:4]}  # the dummy answers these "none", read as "0"
    summary = run_vqa(Run(DummyModel(wrong=wrong), progress=False), tmp_path / "vqa.jsonl", tmp_path / "out")
    assert summary["prior_per_type"] == {"count": pytest.approx(3 / 5), "color_of": pytest.approx(3 / 6),
                                         "human": pytest.approx(1.0)}
    assert summary["prior_accuracy"] == pytest.approx((3 + 3 + 1) / 12)
    assert summary["top_replies"]["count"] == {"0": 0.8, "2": 0.2}
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in results] == [*counts, *colours, "3"]


def test_caption_perplexity_by_hand(tmp_path):
    write_images(tmp_path)
    captions = ["a red circle", "one small red circle on gray"]
    rows = [{"id": i, "image": f"images/{n}.png", "caption": c} for i, (n, c) in enumerate(zip(("one", "two"), captions))]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_caption(Run(DummyModel(word_logprob=-0.5), progress=False), tmp_path / "captions.jsonl",
                          tmp_path / "out")
    words = sum(len(c.split()) for c in captions)
    nbytes = sum(len(c.encode()) for c in captions)
    assert summary["word_perplexity"]["value"] == pytest.approx(math.exp(0.5))
    assert summary["byte_perplexity"]["value"] == pytest.approx(math.exp(0.5 * words / nbytes))


def test_caption_object_scores_by_hand():
    red, blue = ("red", "circle"), ("blue", "star")
    assert caption_object_scores([red, red], [red, blue]) == {
        "object_precision": 0.5, "object_recall": 0.5, "object_f1": 0.5, "exact": 0.0, "count_exact": 1.0}
    assert caption_object_scores([red, blue], [blue, red]) == {
        "object_precision": 1.0, "object_recall": 1.0, "object_f1": 1.0, "exact": 1.0, "count_exact": 1.0}
    assert caption_object_scores([], []) == {
        "object_precision": 1.0, "object_recall": 1.0, "object_f1": 1.0, "exact": 1.0, "count_exact": 1.0}
    assert caption_object_scores([], [red])["object_precision"] == 0.0
    assert caption_object_scores([blue], [])["object_recall"] == 0.0


def test_generated_captions_scored_against_the_scene(tmp_path):
    """Three images of one small red circle: described right, described with an extra star, not described (the
    dummy's `wrong` caption comes back empty); per image F1 1, 2/3 and 0 by hand."""
    write_images(tmp_path, ("one", "two", "three"))
    scenes = [{"objects": [{"class": "circle", "color": "red", "size": "small",
                            "bbox": [4 + 10 * i, 8, 18 + 10 * i, 22]}], "background": "gray", "resolution": 64}
              for i in range(3)]
    captions = ["A picture of a small red circle on the left.",
                "There are two shapes: a little red circle on the left and a big blue star at the top.",
                "a red circle"]
    rows = [{"id": n, "image": f"images/{n}.png", "caption": c, "scene": sc}
            for n, c, sc in zip(("one", "two", "three"), captions, scenes)]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_caption(Run(DummyModel(wrong=[captions[2]]), progress=False), tmp_path / "captions.jsonl",
                          tmp_path / "out")
    generated = summary["generated"]
    assert generated["records"] == 3
    assert generated["object_f1"]["value"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["object_f1"] == generated["object_f1"]
    assert generated["object_precision"]["value"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert generated["object_recall"]["value"] == pytest.approx((1 + 1 + 0) / 3)
    assert generated["exact"]["value"] == pytest.approx(1 / 3)
    assert generated["count_exact"]["value"] == pytest.approx(1 / 3)
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["generated"] for r in results] == [*captions[:2], ""]
    assert [r["object_f1"] for r in results] == pytest.approx([1, 2 / 3, 0])


def test_captions_without_scenes_score_perplexity_only(tmp_path):
    write_images(tmp_path, ("one",))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"id": 0, "image": "images/one.png", "caption": "x"}) + "\n")
    summary = run_caption(Run(DummyModel(), progress=False), tmp_path / "captions.jsonl", tmp_path / "out")
    assert "generated" not in summary and "object_f1" not in summary
