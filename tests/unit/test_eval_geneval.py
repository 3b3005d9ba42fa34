"""GenEval protocol: folder layout, per-image verdicts, per-tag summary against hand-computed numbers."""

import json

import numpy as np

from arm.data.shapeworld.render import decode_png
from arm.eval.common import Run
from arm.eval.geneval import run_geneval
from arm.eval.interface import DummyModel
from arm.eval.judges import ShapeWorldJudge


def _obj(cls, color, box):
    return {"class": cls, "color": color, "size": "small", "bbox": box}


GENEVAL_RECORDS = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle",
     "scene": {"objects": [_obj("circle", "red", [10, 10, 24, 24])], "background": "gray", "resolution": 64}},
    {"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a photo of a star",
     "scene": {"objects": [_obj("star", "blue", [30, 30, 44, 44])], "background": "gray", "resolution": 64}},
    {"tag": "two_object", "include": [{"class": "square", "count": 1}, {"class": "cross", "count": 1}],
     "prompt": "a photo of a square and a cross",
     "scene": {"objects": [_obj("square", "green", [5, 5, 19, 19]), _obj("cross", "black", [40, 40, 54, 54])],
               "background": "gray", "resolution": 64}},
    {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "yellow"}],
     "prompt": "a photo of a yellow triangle",
     "scene": {"objects": [_obj("triangle", "yellow", [20, 20, 34, 34])], "background": "gray", "resolution": 64}},
    # A real GenEval record: "dog" is no ShapeWorld class, so it is counted as unsupported, never judged.
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
]


def write_geneval_file(path):
    path.write_text("".join(json.dumps(r) + "\n" for r in GENEVAL_RECORDS))
    return path


def test_geneval_layout_and_hand_computed_summary(tmp_path):
    data = write_geneval_file(tmp_path / "geneval.jsonl")
    # The star prompt is answered with a blank image: both its samples fail.
    run = Run(DummyModel(wrong={"a photo of a star"}), ShapeWorldJudge(), seed=3, progress=False)
    summary = run_geneval(run, data, tmp_path / "out", n=2)

    out = tmp_path / "out"
    for i, record in enumerate(GENEVAL_RECORDS):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == record
        for k in range(2):
            assert decode_png((out / f"{i:05d}" / "samples" / f"{k:04d}.png").read_bytes()).shape == (64, 64, 3)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8  # 4 supported prompts x 2 images
    assert {r["sample_id"] for r in rows} == {f"{i:05d}/{k:04d}" for i in range(4) for k in range(2)}
    star = [r for r in rows if r["prompt"] == "a photo of a star"]
    assert not any(r["correct"] for r in star) and all("expected star>=1, found 0" in r["reason"] for r in star)
    assert all(r["correct"] and r["reason"] == "" for r in rows if r["prompt"] != "a photo of a star")
    assert json.loads(rows[0]["metadata"]) == {k: GENEVAL_RECORDS[0][k] for k in ("tag", "include", "prompt")}

    # By hand: single_object 2 of 4 images, two_object 2/2, colors 2/2; overall = mean of the three tags.
    assert summary["per_tag"]["single_object"]["value"] == 0.5
    assert summary["per_tag"]["two_object"]["value"] == 1.0
    assert summary["per_tag"]["colors"]["value"] == 1.0
    assert np.isclose(summary["overall"]["value"], (0.5 + 1 + 1) / 3)
    assert summary["unsupported"] == 1 and summary["unsupported_records"][0]["prompt"] == "a photo of a dog"
    assert summary["images"] == 8 and summary["prompts"] == 4
    assert summary["correct_prompts"]["value"] == 0.75
    low, high = summary["overall"]["ci95"]
    assert low <= summary["overall"]["value"] <= high
    for key in ("config", "checkpoint_sha256", "seed", "git", "date"):
        assert key in summary
    assert summary["checkpoint_sha256"] == "dummy" and summary["seed"] == 3
    assert json.loads((out / "summary.json").read_text())["overall"] == summary["overall"]


def test_geneval_resume_keeps_existing_images(tmp_path):
    data = write_geneval_file(tmp_path / "geneval.jsonl")
    run_geneval(Run(DummyModel(), ShapeWorldJudge(), progress=False), data, tmp_path / "out", n=1)
    # A second run with a model that gets everything wrong finds every image already there and keeps it.
    again = run_geneval(Run(DummyModel(wrong={r["prompt"] for r in GENEVAL_RECORDS}), ShapeWorldJudge(),
                            progress=False), data, tmp_path / "out", n=1)
    assert again["overall"]["value"] == 1.0
