"""`arm data shapeworld` end to end on a tiny world: layout, schema, byte-identical reruns, bench files."""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from arm.cli import main
from arm.data.shapeworld.scene import Scene
from arm.data.shapeworld.writer import write_world


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sw") / "world"
    rc = main(["data", "shapeworld", "--out", str(out), "--num-train", "60", "--num-val", "20",
               "--num-test", "80", "--seed", "3", "--shard-size", "25", "--workers", "2"])
    assert rc == 0
    return out


def test_layout_and_sample_schema(tiny_world):
    assert sorted(p.name for p in (tiny_world / "train").glob("*.tar")) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(tiny_world / "test" / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert names[:4] == ["test-00000000.edit.png", "test-00000000.json", "test-00000000.mask.png",
                             "test-00000000.png"]
        meta = json.loads(tar.extractfile("test-00000000.json").read())
        member = tar.getmember("test-00000000.png")
        assert member.mtime == 0
    assert {"key", "split", "index", "scene", "heldout", "caption", "geneval", "wise", "vqa", "mme",
            "edit"} <= meta.keys()
    scene = Scene.from_json(meta["scene"])
    assert len(scene.objects) in (1, 2, 3, 4)
    assert {"type", "instruction", "target_scene"} <= meta["edit"].keys()
    assert len(meta["mme"]) == 2 and {q["answer"] for q in meta["mme"]} == {"Yes", "No"}


def test_same_seed_same_bytes_whatever_the_workers(tiny_world, tmp_path):
    again = tmp_path / "again"
    write_world(str(again), num_train=60, num_val=20, num_test=80, seed=3, shard_size=25, workers=1,
                progress=False)
    assert _digest(again) == _digest(tiny_world)
    other = tmp_path / "other"
    write_world(str(other), num_train=60, num_val=0, num_test=0, seed=4, shard_size=25, workers=1,
                bench=False, progress=False)
    assert _digest(other)["train/shard-000000.tar"] != _digest(tiny_world)["train/shard-000000.tar"]


def test_bench_files(tiny_world):
    bench = tiny_world / "bench"
    geneval = [json.loads(line) for line in (bench / "geneval.jsonl").read_text().splitlines()]
    assert len(geneval) == 553
    tags = {}
    for r in geneval:
        tags[r["tag"]] = tags.get(r["tag"], 0) + 1
        assert {"tag", "include", "prompt", "image"} <= r.keys()
        assert (bench / r["image"]).is_file()
    assert tags == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                    "color_attr": 100}
    assert any(r["heldout"] for r in geneval) and not all(r["heldout"] for r in geneval)
    for name, keys in {
        "wise": {"prompt_id", "Prompt", "Explanation", "Category", "Subcategory", "requirements"},
        "gedit": {"key", "task_type", "instruction", "instruction_language", "input_image"},
        "vqa": {"question_id", "image", "question", "answer", "type"},
        "mme": {"image", "question", "answer"},
    }.items():
        records = [json.loads(line) for line in (bench / f"{name}.jsonl").read_text().splitlines()]
        assert records, name
        for r in records:
            assert keys <= r.keys(), (name, keys - r.keys())


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "grid", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arm: error: no shards in") and "\n" not in err
    assert main(["detect", str(tmp_path / "missing.png")]) == 2
    assert "no image at" in capsys.readouterr().err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "detect", "demo", "bench"):
        assert cmd in out
