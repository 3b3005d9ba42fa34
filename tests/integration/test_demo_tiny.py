"""``arm demo --profile tiny``: the whole recipe (world -> teacher -> LM -> tokenizer -> codes -> AR -> eval -> RL ->
eval -> synergy -> figures) on a tiny world with every stage's tiny YAML, then a rerun that skips every stage."""

from __future__ import annotations

import json

from arm.demo import PROFILES, run_demo

STAGES = ("world", "text_tok", "figure", "judge", "teacher", "lm", "tokenizer", "tokenizer_eval", "codes", "ar",
          "eval_sft", "cfg_grid", "rl_t2i", "eval_rl_t2i", "synergy", "figures")


def _in_unit(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def test_tiny_demo_runs_every_stage_then_skips_them(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(str(out), seed=0, profile="tiny")
    assert set(summary["timings_s"]) == set(STAGES)
    # The summary shape: tokenizer metrics, SFT and per-recipe benchmark blocks, timings, git, seed.
    for key in ("psnr", "semantic_recon_acc", "code_usage", "zero_shot_acc", "probe_acc", "fd_teacher"):
        assert key in summary["tokenizer"], key
    assert set(summary["rl"]) == {"t2i"}
    for block in (summary["sft"], summary["rl"]["t2i"]):
        assert _in_unit(block["geneval"]["overall"]) and set(block["geneval"]["per_tag"]) <= {
            "single_object", "two_object", "counting", "colors", "position", "color_attr"}
        assert 0.0 <= block["gedit"]["overall"] <= 10.0 and _in_unit(block["vqa"]["accuracy"])
        assert _in_unit(block["mme"]["acc"]) and _in_unit(block["mme"]["acc_plus"])
        assert _in_unit(block["wise"]["overall"])
    assert summary["seed"] == 0 and summary["git"]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["sft"] == summary["sft"]
    # The AR stage trained the tiny profile's step budget and exported; eval wrote the GenEval layout.
    assert (out / "ar" / "ar" / "model.safetensors").is_file()
    assert (out / "codes" / "train" / "code_colours.safetensors").is_file()  # the AR stage's colour factors
    assert list((out / "eval" / "sft" / "geneval").glob("00000/samples/0000.png"))
    figures = json.loads((out / "figures" / "report.json").read_text())["figures"]
    assert any("synergy" in f for f in figures) and any("rl_reward_curves" in f for f in figures)
    assert any("recon" in f for f in figures)  # the tokenizer eval wrote OUT/recon for the reconstruction grid
    # Table 7 with the one row the demo trains (the full recipe), the paper's rows beside it
    table7 = (out / "figures" / "table7.md").read_text()
    assert "| ✓ | ✓ | – / 80.2" not in table7 and "| – | – | – / 0.2 |" in table7
    # ARM's figure 4: every prompt drawn at 3 AR-side x 3 decoder-side scales, one figure per prompt
    assert json.loads((out / "cfg" / "sft" / "done.json").read_text())["images"] == 9 * len(
        [f for f in figures if "cfg_" in f])
    assert json.loads((out / "table8.json").read_text())["rows"].keys() >= {"sft", "t2i"}
    assert PROFILES["tiny"].steps["ar"] == 4
    # The profile's budgets reach the stages' overrides (the shapeworld profile runs 650 of the tokenizer YAML's 1,350
    # joint steps, then 600 of its decoder alone): 4 joint + 2 decoder steps here, validated after 3 and 6.
    tok_override = json.loads((out / "tokenizer" / "override.yaml").read_text())
    assert (tok_override["trainer"]["max_steps"], tok_override["trainer"]["val_check_interval"]) == (4 + 2, 3)
    assert tok_override["model"]["decoder_steps"] == PROFILES["tiny"].steps["tokenizer_decoder"] == 2
    capsys.readouterr()
    again = run_demo(str(out), seed=0, profile="tiny")
    printed = capsys.readouterr().out
    assert printed.count("done already, skipped") == len(STAGES)
    assert again["timings_s"] == summary["timings_s"]  # nothing ran again

    # make table8 on the same tiny demo: four chained recipes, each evaluated, paired against the demo's SFT eval.
    from arm.rl.table8 import RECIPES, run_table8

    table = run_table8(str(tmp_path / "results"), str(out), profile="tiny", eval_limit=4)
    assert set(table["rows"]) == {"sft", *(name for name, _, _ in RECIPES)}
    assert set(table["timings_s"]) == {f"{kind}_{name}" for name, _, _ in RECIPES for kind in ("rl", "eval")}
    assert table["merge_alpha"] == {name: 1.0 for name, _, _ in RECIPES}  # tiny.yaml sets none
    again = run_table8(str(tmp_path / "results"), str(out), profile="tiny", eval_limit=4)  # every run skipped
    assert again["timings_s"] == table["timings_s"] and again["rows"] == table["rows"]
    for name, _, parent in RECIPES:
        config = json.loads((tmp_path / "results" / "table8" / "rl" / name / "override.yaml").read_text())
        expected = out / "ar" / "ar" if parent == "sft" else tmp_path / "results" / "table8" / "rl" / parent / "ar"
        assert config["model"]["init_from"] == str(expected)  # recipes chain: each starts from its parent's export
    markdown = (tmp_path / "results" / "table8.md").read_text()
    assert "SFT" in markdown and "T2I" in markdown
