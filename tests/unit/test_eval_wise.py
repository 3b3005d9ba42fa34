"""WISE protocol: WiScore per image, WISE's group weights, output layout, real-format input, unsupported."""

import json

import numpy as np
import pytest

from arm.eval.common import Run
from arm.eval.interface import DummyModel
from arm.eval.judges import ShapeWorldJudge
from arm.eval.wise import run_wise, wiscore, wise_group


def _scene(cls, color, box=(20, 20, 34, 34)):
    return {"objects": [{"class": cls, "color": color, "size": "small", "bbox": list(box)}], "background": "gray",
            "resolution": 64}


def _req(cls, color):
    return {"tag": "colors", "include": [{"class": cls, "count": 1, "color": color}]}


WISE_RECORDS = [
    {"prompt_id": 0, "Prompt": "A shape like a face of a die, coloured blue", "Explanation": "A blue square.",
     "Category": "Cultural knowledge", "Subcategory": "Games", "requirements": _req("square", "blue"),
     "scene": _scene("square", "blue")},
    {"prompt_id": 1, "Prompt": "A shape with three corners in the colour of grass", "Explanation": "A green triangle.",
     "Category": "Spatio-temporal reasoning", "Subcategory": "Geometry", "requirements": _req("triangle", "green"),
     "scene": _scene("triangle", "green")},
    # The ground truth handed to the dummy has the right class in the wrong colour: consistency 1.
    {"prompt_id": 2, "Prompt": "A shape like the full moon, the colour of a ripe tomato", "Explanation": "A red circle.",
     "Category": "Natural science", "Subcategory": "Biology", "requirements": _req("circle", "red"),
     "scene": _scene("circle", "blue")},
    # A real WISE record: no resolved requirements, so the ShapeWorld judge cannot score it.
    {"prompt_id": 5, "Prompt": "The plant often gifted on Mother's Day", "Explanation": "Carnations.",
     "Category": "Cultural knowledge", "Subcategory": "Festival"},
]


def write_wise_file(path, as_json_list=False):
    text = json.dumps(WISE_RECORDS) if as_json_list else "".join(json.dumps(r) + "\n" for r in WISE_RECORDS)
    path.write_text(text)
    return path


@pytest.mark.parametrize("as_json_list", [True, False])
def test_wise_hand_computed(tmp_path, as_json_list):
    data = write_wise_file(tmp_path / "wise.json", as_json_list)
    # Prompt 1 gets a blank image: no triangle at all, consistency 0; a blank render is still flawless (2, 2).
    run = Run(DummyModel(wrong={WISE_RECORDS[1]["Prompt"]}), ShapeWorldJudge(), progress=False)
    summary = run_wise(run, data, tmp_path / "out")
    for r in WISE_RECORDS:
        assert (tmp_path / "out" / f"{r['prompt_id']}.png").is_file()
    rows = {r["prompt_id"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    expected = {0: (2, 2, 2), 1: (0, 2, 2), 2: (1, 2, 2)}
    for pid, (c, r, a) in expected.items():
        assert (rows[pid]["consistency"], rows[pid]["realism"], rows[pid]["aesthetic_quality"]) == (c, r, a)
        assert np.isclose(rows[pid]["wiscore"], (0.7 * c + 0.2 * r + 0.1 * a) / 2)
    scores = {"CULTURE": 1.0, "SPACE": 0.3, "BIOLOGY": 0.65}
    assert {g: v["value"] for g, v in summary["per_group"].items()} == pytest.approx(scores)
    assert np.isclose(summary["overall"]["value"], (0.4 * 1.0 + 0.133 * 0.3 + 0.1 * 0.65) / (0.4 + 0.133 + 0.1))
    assert summary["per_category"]["Natural science"]["value"] == pytest.approx(0.65)
    assert summary["unsupported"] == 1 and summary["unsupported_records"][0]["prompt_id"] == 5
    low, high = summary["overall"]["ci95"]
    assert low <= summary["overall"]["value"] <= high


def test_wise_groups_follow_wise_prompt_ids_for_real_records():
    real = {"Category": "Natural science", "Subcategory": "Chemistry"}
    assert [wise_group({**real, "prompt_id": pid}) for pid in (1, 400, 401, 567, 568, 700, 701, 801, 1000)] == [
        "CULTURE", "CULTURE", "TIME", "TIME", "SPACE", "SPACE", "BIOLOGY", "PHYSICS", "CHEMISTRY"]
    ours = {"prompt_id": 3, "requirements": {}, "Category": "Spatio-temporal reasoning"}
    assert wise_group({**ours, "Subcategory": "Horizontal time"}) == "TIME"
    assert wise_group({**ours, "Subcategory": "Geographical location"}) == "SPACE"
    assert wiscore(2, 2, 2) == pytest.approx(1.0) and wiscore(0, 0, 0) == 0.0
