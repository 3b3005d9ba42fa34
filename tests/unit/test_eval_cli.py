"""``arm eval`` on ``--ckpt dummy``: every protocol through the command line, conversions, stamps, errors."""

import json

from arm.cli import main
from tests.unit.test_eval_gedit import write_gedit_file
from tests.unit.test_eval_geneval import write_geneval_file
from tests.unit.test_eval_understanding import write_images
from tests.unit.test_eval_wise import write_wise_file


def build_bench(root):
    """A bench folder in ShapeWorld's layout (``arm data shapeworld``'s DIR/bench), built by hand."""
    root.mkdir(parents=True)
    write_geneval_file(root / "geneval.jsonl")
    write_wise_file(root / "wise.jsonl")
    write_gedit_file(root)
    write_images(root)
    vqa = [{"question_id": i, "image": "images/one.png", "question": q, "answer": a, "type": t, "heldout": i == 0}
           for i, (q, a, t) in enumerate([("Is there a circle?", "yes", "exists"), ("Is there a star?", "no", "exists"),
                                          ("What colour is the circle?", "red", "color_of")])]
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vqa))
    mme = [{"image": "images/two.png", "question": q, "answer": a, "category": "existence"}
           for q, a in (("Is there a circle? Please answer yes or no.", "Yes"),
                        ("Is there a star? Please answer yes or no.", "No"))]
    (root / "mme.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mme))
    return root


def test_eval_all_on_dummy(tmp_path, capsys):
    bench = build_bench(tmp_path / "bench")
    assert main(["eval", "all", "--ckpt", "dummy", "--data", str(bench), "--out", str(tmp_path / "out"),
                 "--n", "1", "--seed", "5", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checkpoint_sha256"] == "dummy" and summary["seed"] == 5 and summary["git"] and summary["date"]
    assert summary["config"]["protocol"] == "all"
    assert summary["geneval"]["overall"]["value"] == 1.0
    assert summary["gedit"]["overall"]["value"] == 10.0
    assert summary["vqa"]["accuracy"]["value"] == 1.0
    assert summary["mme"]["acc_plus"]["value"] == 1.0
    assert summary["pope"]["accuracy"]["value"] == 1.0  # built from vqa.jsonl's two `exists` questions
    assert "skipped" in summary["caption"]  # no world test shards next to this bench
    # A time for every protocol that ran, none for the skipped one.
    ran = {p for p in ("geneval", "wise", "gedit", "vqa", "mme", "pope", "caption") if "skipped" not in summary[p]}
    assert set(summary["seconds"]) == ran and all(t >= 0 for t in summary["seconds"].values())
    # The seen / held-out split (arm.eval.heldout): VQA's records carry the flag (question 0 held out); the
    # other hand-built files do not, so they are left out.
    assert set(summary["heldout"]) == {"vqa"}
    assert summary["heldout"]["vqa"]["seen"]["units"] == 2 and summary["heldout"]["vqa"]["heldout"]["units"] == 1
    assert "| VQA acc | 1.000 [1.000, 1.000] (2) | 1.000 [1.000, 1.000] (1) |" in (
        tmp_path / "out" / "heldout.md").read_text()
    pope = [json.loads(line) for line in (tmp_path / "out" / "pope" / "data" / "pope.jsonl").read_text().splitlines()]
    assert [(p["text"], p["label"]) for p in pope] == [("Is there a circle?", "yes"), ("Is there a star?", "no")]
    assert (tmp_path / "out" / "mme" / "data" / "existence.txt").is_file()
    assert json.loads(capsys.readouterr().out)["gedit"]["sc"] == 10.0


def test_eval_single_protocol_and_bad_input(tmp_path, capsys):
    bench = build_bench(tmp_path / "bench")
    assert main(["eval", "mme", "--ckpt", "dummy", "--data", str(bench / "mme.jsonl"), "--out",
                 str(tmp_path / "mme"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["acc"]["value"] == 1.0
    assert main(["eval", "wise", "--ckpt", "dummy", "--data", str(tmp_path / "missing.json"), "--out",
                 str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arm: error: no benchmark data") and err.count("\n") == 1
    assert main(["eval", "gedit", "--ckpt", "dummy", "--data", str(bench / "gedit.jsonl"), "--out",
                 str(tmp_path / "g"), "--judge", "openai"]) == 2
    assert "--judge-url" in capsys.readouterr().err
