"""Synergy analysis: paired changes against SFT on tiny results folders, checked against hand computations."""

import json

import pytest

from arm.cli import main
from arm.eval.figures_io import pixel_size, read_png
from arm.eval.synergy import (
    BENCHMARKS,
    paired_difference,
    read_units,
    synergy,
    synergy_figsize,
    write_synergy,
)


def write_rows(folder, protocol, rows, summary=None):
    """``folder/<protocol>/results.jsonl`` (and a summary.json when given), as ``arm eval all`` lays them out."""
    path = folder / protocol
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary))


def vqa_rows(scores):
    return [{"sample_id": str(i), "stratum": "all", "score": float(s)} for i, s in enumerate(scores)]


def units(scores, stratum="all"):
    return {str(i): (stratum, float(s)) for i, s in enumerate(scores)}


def test_pooled_difference_by_hand(tmp_path):
    write_rows(tmp_path / "sft", "vqa", vqa_rows([1, 0, 1, 0]), {"accuracy": {"value": 0.5, "ci95": [0, 1]}})
    write_rows(tmp_path / "rl", "vqa", vqa_rows([1, 1, 1, 0]), {"accuracy": {"value": 0.75, "ci95": [0, 1]}})
    sft, rl = (read_units(tmp_path / d, BENCHMARKS["vqa"]) for d in ("sft", "rl"))
    cell = paired_difference(sft, rl)
    # Differences [0, 1, 0, 0]: mean 0.25. A resample's mean is k/4 with k ~ Binomial(4, 1/4): P(k=0) = 0.32 puts
    # the 2.5th percentile at 0, and P(k<=2) = 0.95 < 0.975 <= P(k<=3) = 0.996 puts the 97.5th at 0.75.
    assert cell["delta"]["value"] == pytest.approx(0.25)
    assert cell["delta"]["ci95"] == pytest.approx([0.0, 0.75])
    assert cell["significant"] is False
    assert (cell["matched"], cell["unmatched_sft"], cell["unmatched_recipe"]) == (4, 0, 0)


def test_clear_change_is_significant_both_ways():
    # 30 of 40 units gain 1: mean +0.75; a resample's mean is 0 only if all 40 draws hit the 10 zeros (0.25^40).
    sft, rl = units([0] * 40), units([1] * 30 + [0] * 10)
    up, down = paired_difference(sft, rl), paired_difference(rl, sft)
    assert up["delta"]["value"] == pytest.approx(0.75) and up["significant"] and up["delta"]["ci95"][0] > 0
    assert down["delta"]["value"] == pytest.approx(-0.75) and down["significant"] and down["delta"]["ci95"][1] < 0
    assert up["delta"]["ci95"][0] <= 0.75 <= up["delta"]["ci95"][1]


def test_geneval_units_are_prompts_and_strata_are_tags(tmp_path):
    def rows(images):
        return [{"sample_id": f"{p}/{k:04d}", "stratum": tag, "score": float(s), "correct": bool(s), "tag": tag}
                for p, tag, scores in images for k, s in enumerate(scores)]

    write_rows(tmp_path / "sft", "geneval", rows([("00000", "A", [1, 0]), ("00001", "A", [0, 0]),
                                                   ("00002", "B", [1, 1])]))
    write_rows(tmp_path / "rl", "geneval", rows([("00000", "A", [1, 1]), ("00001", "A", [1, 0]),
                                                  ("00002", "B", [1, 1]), ("00003", "B", [0, 0])]))
    sft, rl = (read_units(tmp_path / d, BENCHMARKS["geneval"]) for d in ("sft", "rl"))
    assert sft == {"00000": ("A", 0.5), "00001": ("A", 0.0), "00002": ("B", 1.0)}
    cell = paired_difference(sft, rl, "strata")
    # By hand over the matched prompts: SFT overall = mean(A: (0.5 + 0) / 2, B: 1) = 0.625; recipe = mean(0.75, 1)
    # = 0.875; change 0.25. Prompt 00003 exists in the recipe only: left out and counted.
    assert cell["delta"]["value"] == pytest.approx(0.25)
    assert (cell["matched"], cell["unmatched_recipe"]) == (3, 1)


def test_mme_image_units_and_wise_weights(tmp_path):
    def mme(scores):
        return [{"sample_id": f"existence/{img}#{q + 1}", "stratum": "existence", "score": float(s)}
                for img, pair in scores.items() for q, s in enumerate(pair)]

    write_rows(tmp_path / "sft", "mme", mme({"a.png": [1, 0], "b.png": [1, 1]}))
    write_rows(tmp_path / "rl", "mme", mme({"a.png": [1, 1], "b.png": [1, 1]}))
    for key, change in (("mme_acc", 0.25), ("mme_acc_plus", 0.5)):
        sft, rl = (read_units(tmp_path / d, BENCHMARKS[key]) for d in ("sft", "rl"))
        assert set(sft) == {"existence/a.png", "existence/b.png"}
        # acc: 3/4 -> 4/4 questions right; acc+: images with both right 1/2 -> 2/2.
        assert paired_difference(sft, rl)["delta"]["value"] == pytest.approx(change)

    sft = {"c1": ("CULTURE", 0.2), "c2": ("CULTURE", 0.4), "t1": ("TIME", 0.1), "t2": ("TIME", 0.3)}
    rl = {"c1": ("CULTURE", 0.4), "c2": ("CULTURE", 0.6), "t1": ("TIME", 0.6), "t2": ("TIME", 0.8)}
    # CULTURE +0.2, TIME +0.5, weights 0.4 and 0.167 renormalised over the two groups present.
    expected = (0.4 * 0.2 + 0.167 * 0.5) / (0.4 + 0.167)
    assert paired_difference(sft, rl, "wise")["delta"]["value"] == pytest.approx(expected)


def test_gedit_compares_the_headline_language_only(tmp_path):
    def rows(en, cn):
        return [{"sample_id": k, "stratum": "color", "score": s, "overall_score": s, "semantics_score": s,
                 "quality_score": s, "instruction_language": lang, "task_type": "color"}
                for lang, scores in (("en", en), ("cn", cn)) for k, s in zip(("k1", "k2"), scores)]

    write_rows(tmp_path / "sft", "gedit", rows([4.0, 6.0], [0.0, 0.0]))
    write_rows(tmp_path / "rl", "gedit", rows([5.0, 9.0], [10.0, 10.0]))
    result = synergy(tmp_path / "sft", {"t2i": tmp_path / "rl"})
    assert result["rows"]["t2i"]["gedit_overall"]["delta"]["value"] == pytest.approx(2.0)  # (1 + 3) / 2, English
    assert "skipped" in result["rows"]["t2i"]["vqa"]
    assert "skipped" in result["rows"]["t2i"]["gedit_success"]  # these rows carry no target_match (a VLM judge's)


def test_edit_success_is_a_pooled_share_of_edits(tmp_path):
    def rows(matches):
        return [{"sample_id": f"k{i}", "stratum": t, "score": 1.0, "overall_score": 1.0, "semantics_score": 1.0,
                 "quality_score": 1.0, "instruction_language": "en", "task_type": t, "target_match": m}
                for i, (t, m) in enumerate(matches)]

    write_rows(tmp_path / "sft", "gedit", rows([("color", 0.0), ("color", 0.0), ("remove", 1.0), ("add", 0.0)]))
    write_rows(tmp_path / "rl", "gedit", rows([("color", 1.0), ("color", 1.0), ("remove", 1.0), ("add", 0.0)]))
    cell = synergy(tmp_path / "sft", {"edit": tmp_path / "rl"})["rows"]["edit"]["gedit_success"]
    assert cell["delta"]["value"] == pytest.approx(2 / 4)  # pooled over edits: 1/4 -> 3/4, not a mean of types


def test_write_synergy_table_and_chart(tmp_path):
    write_rows(tmp_path / "sft", "vqa", vqa_rows([0] * 40), {"accuracy": {"value": 0.0, "ci95": [0, 0]}})
    write_rows(tmp_path / "a", "vqa", vqa_rows([1] * 30 + [0] * 10))
    write_rows(tmp_path / "b", "vqa", vqa_rows([0] * 39 + [1]))
    result = synergy(tmp_path / "sft", {"t2i": tmp_path / "a", "edit": tmp_path / "b"})
    written = write_synergy(result, tmp_path / "out")
    assert {p.name for p in written} == {"synergy.json", "synergy.md", "synergy.png", "synergy.pdf"}
    md = (tmp_path / "out" / "synergy.md").read_text()
    line = next(row for row in md.splitlines() if row.startswith("| T2I RL |"))
    assert "+0.750 [" in line and line.endswith(" * |")
    assert result["rows"]["edit"]["vqa"]["significant"] is False  # one gain in 40 units
    assert result["rows"]["t2i"]["vqa"]["sft"] == 0.0  # the protocol's own headline, read from its summary
    assert read_png(tmp_path / "out" / "synergy.png").shape[1::-1] == pixel_size(synergy_figsize(1, 2))
    assert (tmp_path / "out" / "synergy.pdf").stat().st_size > 0


def test_synergy_cli_and_table8(tmp_path, capsys):
    for name, scores in (("sft", [1, 0, 1, 0]), ("rl", [1, 1, 1, 0])):
        write_rows(tmp_path / name, "vqa", vqa_rows(scores),
                   {"accuracy": {"value": sum(scores) / 4, "ci95": [0.0, 1.0]}})
    assert main(["eval", "synergy", "--sft", str(tmp_path / "sft"), "--recipe", f"t2i={tmp_path / 'rl'}",
                 "--out", str(tmp_path / "syn"), "--table8", str(tmp_path / "table8.json")]) == 0
    assert "| T2I RL |" in capsys.readouterr().out
    table = json.loads((tmp_path / "table8.json").read_text())
    assert list(table["rows"]) == ["sft", "t2i"]
    assert table["rows"]["t2i"]["vqa"] == {"value": 0.75, "ci95": [0.0, 1.0]} and table["rows"]["t2i"]["wise"] is None
    assert main(["eval", "synergy", "--sft", str(tmp_path / "sft"), "--recipe", "no-equals-sign",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arm: error: --recipe takes NAME=DIR") and err.count("\n") == 1
    assert main(["eval", "vqa", "--out", str(tmp_path / "x")]) == 2
    assert "needs --ckpt" in capsys.readouterr().err
