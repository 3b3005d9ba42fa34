"""Tables 7 and 8 as markdown and LaTeX from tiny JSON files, and their schema checks."""

import pytest

from arm.eval.figures_tables import (
    PAPER_TABLE8,
    check_table8,
    latex_escape,
    table7_latex,
    table7_markdown,
    table8_latex,
    table8_markdown,
)


def table7_json():
    """The shape ``arm tokenizer table7`` writes, with made-up numbers."""
    from arm.tokenizer.table7 import PAPER_ROWS, variant_name

    rows = {}
    for i, (sig, feat) in enumerate(PAPER_ROWS):
        rows[variant_name(sig, feat)] = {
            "l_sig": sig, "l_feat": feat, "psnr": 20.0 + i, "code_usage": 0.5 + i / 10, "caption_ppl": 3.0 + i,
            "fd_teacher": 0.1 * i, "semantic_recon_acc": 0.9, "zero_shot_acc": {"color": 0.8, "shape": 0.4 + i / 10},
            "probe_acc": {"color": 1.0, "shape": 0.5, "count": 0.25}}
    return {"rows": rows, "paper": {variant_name(*k): v for k, v in PAPER_ROWS.items()}, "seed": 3,
            "git": "abcdef0123456789", "date": "2026-01-01", "config": "experiments/tokenizer/shapeworld.yaml"}


def table8_json():
    return {"rows": {"t2i": {"gedit_overall": {"value": 5.5, "ci95": [5.25, 5.75]}, "geneval": None, "wise": None,
                             "vqa": {"value": 0.5, "ci95": [0.25, 0.75]}, "mme_acc_plus": None},
                     "sft": {"gedit_overall": {"value": 5.125, "ci95": [4.875, 5.375]},
                             "geneval": {"value": 0.625, "ci95": [0.5, 0.75]}, "wise": None, "vqa": None,
                             "mme_acc_plus": None}},
            "columns": ["gedit_overall", "geneval", "wise", "vqa", "mme_acc_plus"], "paper": PAPER_TABLE8,
            "seed": 0, "git": "0123456789abc", "date": "2026-01-02"}


def test_table7_markdown_and_latex():
    result = table7_json()
    md = table7_markdown(result)
    # Row sig1_feat1 (the fourth): zero-shot mean(0.8, 0.7) = 75.0 %, PSNR 23.0, code usage 80.0 %.
    assert "| ✓ | ✓ | 75.0 / 80.2 | 23.0 / 19.6 | 80.0 / 75.6 |" in md
    tex = table7_latex(result)
    assert r"\checkmark & \checkmark & 75.0 / 80.2 & 23.0 / 19.6 & 80.0 / 75.6 & 6.00 / 0.28 (?) & 0.300" in tex
    assert r"-- & -- & 60.0 / 0.2 & 20.0 / 15.2 & 50.0 / 69.4" in tex
    assert tex.count(r"\\") == 5 and r"\toprule" in tex and r"\begin{tabular}{ccccccccc}" in tex
    # A demo's table holds only the row it trained: the others are dashes beside the paper's numbers.
    result["rows"] = {"sig1_feat1": result["rows"]["sig1_feat1"]}
    md = table7_markdown(result)
    assert "| ✓ | ✓ | 75.0 / 80.2 | 23.0 / 19.6 | 80.0 / 75.6 |" in md
    assert "| – | ✓ | – / 58.1 | – / 17.1 | – / 71.0 | – / – | – | – | – |" in md
    assert "sig0_feat0, sig1_feat0, sig0_feat1) were not trained" in md and "needs all four rows" in md
    tex = table7_latex(result)
    assert r"-- & \checkmark & -- / 58.1 & -- / 17.1 & -- / 71.0" in tex and tex.count(r"\\") == 5
    for rows, match in (({}, "must hold some of"), ({"sig2_feat0": {}}, "must hold some of")):
        with pytest.raises(ValueError, match=match):
            table7_markdown({**result, "rows": rows})
    del result["paper"]["sig0_feat1"]
    with pytest.raises(ValueError, match="`paper` lacks \\['sig0_feat1'\\]"):
        table7_markdown(result)


def test_table8_markdown_and_latex():
    table = table8_json()
    md = table8_markdown(table)
    lines = md.splitlines()
    # SFT first (the paper's order), whatever the JSON's order; missing numbers as dashes.
    sft_row = lines.index("| SFT | 5.12 [4.88, 5.38] | 0.625 [0.500, 0.750] | – | – | – |")
    assert lines[sft_row + 1] == "| T2I RL | 5.50 [5.25, 5.75] | – | – | 0.500 [0.250, 0.750] | – |"
    assert "| T2I → Edit → Joint | 6.68 | 0.860 | 86.00 | 0.560 |" in lines
    assert "interpolation" not in md  # no merge_alpha recorded: no note
    table["merge_alpha"] = {"t2i": 1.0, "t2i_edit_joint": 0.7, "t2i_edit": 0.5}
    note = table8_markdown(table).splitlines()[-1]
    assert note.startswith("Exported as SFT + alpha (policy - SFT)")
    assert note.endswith(": T2I → Edit 0.5, T2I → Edit → Joint 0.7.")
    tex = table8_latex(table)
    assert r"SFT & 5.12 {\scriptsize [4.88, 5.38]} & 0.625 {\scriptsize [0.500, 0.750]} & -- & -- & -- \\" in tex
    assert r"T2I $\rightarrow$ Edit $\rightarrow$ Joint & 6.68 & 0.860 & 86.00 & 0.560 \\" in tex
    assert tex.count(r"\begin{tabular}") == 2


def test_table8_schema_errors_and_escaping():
    table = table8_json()
    table["rows"]["sft"]["geneval"] = 0.6
    with pytest.raises(ValueError, match=r"rows.sft.geneval must be \{value, ci95\} or null"):
        check_table8(table)
    with pytest.raises(ValueError, match="no `rows`"):
        check_table8({"rows": {}})
    assert latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
