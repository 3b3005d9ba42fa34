"""GEdit protocol: output layout, SC / PQ / O per sample by hand, per-type then unweighted means."""

import json
import math

import numpy as np
import pytest

from arm.data.shapeworld.judge import preservation
from arm.data.shapeworld.render import encode_png, render
from arm.data.shapeworld.scene import Scene
from arm.eval.common import Run
from arm.eval.gedit import run_gedit
from arm.eval.interface import DummyModel
from arm.eval.judges import ShapeWorldJudge

A = {"class": "circle", "color": "red", "size": "small", "bbox": [8, 8, 22, 22]}
B = {"class": "square", "color": "blue", "size": "small", "bbox": [40, 40, 54, 54]}
B_GREEN = {**B, "color": "green"}


def _scene(*objects):
    return {"objects": list(objects), "background": "gray", "resolution": 64}


def _mask(box):
    mask = np.zeros((64, 64), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255
    return mask


def write_gedit_file(root):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images" / "src.png").write_bytes(encode_png(render(Scene.from_json(_scene(A, B)))))
    (root / "images" / "mask_b.png").write_bytes(encode_png(_mask(B["bbox"])))
    (root / "images" / "mask_a.png").write_bytes(encode_png(_mask(A["bbox"])))
    common = {"instruction_language": "en", "input_image": "images/src.png", "source_scene": _scene(A, B)}
    records = [
        {**common, "key": "k1", "task_type": "color_alter", "instruction": "make the square green",
         "target_scene": _scene(A, B_GREEN), "mask": "images/mask_b.png"},
        {**common, "key": "k2", "task_type": "color_alter", "instruction": "change the square to green",
         "target_scene": _scene(A, B_GREEN), "mask": "images/mask_b.png"},
        {**common, "key": "k3", "task_type": "subject-remove", "instruction": "remove the circle",
         "target_scene": _scene(B), "mask": "images/mask_a.png"},
    ]
    path = root / "gedit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_gedit_layout_and_hand_computed_scores(tmp_path):
    data = write_gedit_file(tmp_path)
    # k2 is answered with the source unchanged: nothing the instruction asked happened (SC 0), quality intact.
    run = Run(DummyModel(wrong={"change the square to green"}), ShapeWorldJudge(), progress=False)
    summary = run_gedit(run, data, tmp_path / "out")
    for task, key in (("color_alter", "k1"), ("color_alter", "k2"), ("subject-remove", "k3")):
        folder = tmp_path / "out" / "fullset" / task / "en"
        assert (folder / f"{key}.png").is_file() and (folder / f"{key}_SRCIMG.png").is_file()
    rows = {r["key"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert (rows["k1"]["semantics_score"], rows["k1"]["quality_score"], rows["k1"]["overall_score"]) == (10, 10, 10)
    assert (rows["k2"]["semantics_score"], rows["k2"]["quality_score"], rows["k2"]["overall_score"]) == (0, 10, 0)
    assert rows["k3"]["overall_score"] == 10
    # Per type, then the unweighted mean over types: color_alter (10 + 0) / 2 = 5, subject-remove 10.
    assert summary["per_type"]["color_alter"]["overall"]["value"] == 5.0
    assert summary["overall"]["value"] == pytest.approx((5 + 10) / 2)
    assert summary["sc"]["value"] == pytest.approx((5 + 10) / 2) and summary["pq"]["value"] == 10
    assert summary["headline_language"] == "en"
    # Edit success (ours): k1 and k3 parse to their targets, k2 (the source unchanged) does not -> 2 of 3.
    assert [rows[k]["target_match"] for k in ("k1", "k2", "k3")] == [1.0, 0.0, 1.0]
    assert summary["edit_success"]["value"] == pytest.approx(2 / 3)
    assert summary["per_type"]["color_alter"]["edit_success"]["value"] == 0.5


def test_gedit_over_editing_by_hand():
    source = render(Scene.from_json(_scene(A, B)))
    # The recolour is done, but the circle, which should have stayed, is gone too.
    edited = render(Scene.from_json(_scene(B_GREEN)))
    mask = _mask(B["bbox"]) > 0
    record = {"source_scene": _scene(A, B), "target_scene": _scene(A, B_GREEN)}
    parts = ShapeWorldJudge().gedit(source, edited, record, mask)
    outside = ~mask
    changed = (np.abs(source.astype(int) - edited.astype(int)).max(axis=2) > 8) & outside
    pixels_kept = 1 - changed.sum() / outside.sum()
    assert parts["instruction_success"] == 10  # the new green square is there, the blue one is not
    assert parts["target_match"] == 0.0  # ... but the circle went too: the image is not the target scene
    # Kept facts: background and circle; only the background is found -> 1/2, below the pixel share kept.
    assert pixels_kept > 0.5
    assert parts["no_overediting"] == pytest.approx(10 * min(0.5, pixels_kept))
    assert parts["naturalness"] == 10 and parts["no_artifacts"] == 10
    sc = min(parts["instruction_success"], parts["no_overediting"])
    assert math.sqrt(sc * 10) == pytest.approx(math.sqrt(50))
    assert preservation(source, edited, mask)["changed_fraction"] == pytest.approx(1 - pixels_kept)


def test_gedit_deleting_what_should_change_is_no_success():
    """A gone fact counts only as far as its replacement is drawn: recolouring the square by deleting it earns no
    instruction success, half the job (the green square drawn, the blue one left) earns half, and for a removal
    the gone facts are the whole change. An empty image of the source's background scores 0 on a recolour."""
    judge = ShapeWorldJudge()
    source = render(Scene.from_json(_scene(A, B)))
    recolour = {"source_scene": _scene(A, B), "target_scene": _scene(A, B_GREEN)}
    removal = {"source_scene": _scene(A, B), "target_scene": _scene(A)}
    cases = [
        (recolour, _scene(A), 0.0),          # the square deleted: the new green square is missing
        (recolour, _scene(A, B_GREEN), 10.0),  # done
        (removal, _scene(A), 10.0),          # the removal done
        (removal, _scene(), 10.0),           # the removal done (and the circle lost: over-editing, not success)
        (removal, _scene(A, B), 0.0),        # nothing removed
    ]
    for record, edited, success in cases:
        parts = judge.gedit(source, render(Scene.from_json(edited)), record, None)
        assert parts["instruction_success"] == success, (record["target_scene"], edited)
    # A move: the circle drawn at its new place but also left at its old one is (1 new found + 0 removed) / 2
    # changes; deleting it is 0 (the plain share of facts gave it 5: the old place is empty).
    moved = {**A, "bbox": [40, 8, 54, 22]}
    move = {"source_scene": _scene(A), "target_scene": _scene(moved)}
    alone = render(Scene.from_json(_scene(A)))
    for edited, success in ((_scene(A, moved), 5.0), (_scene(), 0.0), (_scene(moved), 10.0)):
        assert judge.gedit(alone, render(Scene.from_json(edited)), move, None)["instruction_success"] == success
    blank = np.broadcast_to(source[0, 0], source.shape).copy()  # the source's background, nothing else
    parts = judge.gedit(source, blank, recolour, None)
    assert parts["instruction_success"] == 0 and min(parts["instruction_success"], parts["no_overediting"]) == 0
