"""Tables 7 and 8 of the ARM paper as markdown and LaTeX, from results files only.

- Table 7 (tokenizer loss ablation) from ``results/table7.json``, written by ``arm tokenizer table7``
  (``arm.tokenizer.table7``): its markdown is that module's; the LaTeX is set here with the same columns.
- Table 8 (cross-task synergy) from ``results/table8.json``, whose schema ``build_table8`` defines and
  ``check_table8`` enforces; ``arm eval synergy --table8 PATH`` writes it from ``arm eval all`` folders.
  Each of our numbers carries its bootstrap 95 % interval; the paper's rows (``PAPER_TABLE8``, from
  ``shared/paper.md`` §3) are set beside ours in a second table (they report DPG, which we do not run, and no
  understanding scores).

LaTeX tables use booktabs rules (``\\usepackage{booktabs}``).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from pathlib import Path

from arm.eval.results import git_hash
from arm.eval.synergy import BENCHMARKS, RECIPE_LABELS, recipe_label

TABLE8_COLUMNS = ("gedit_overall", "geneval", "wise", "vqa", "mme_acc_plus")
"""Our Table 8 columns: keys of ``arm.eval.synergy.BENCHMARKS`` (protocol + summary metric)."""

PAPER_TABLE8 = {
    # ARM Table 8: GEdit G_O (0-10), GenEval, DPG, WISE.
    "sft": {"gedit_overall": 5.75, "geneval": 0.79, "dpg": 84.48, "wise": 0.50},
    "t2i": {"gedit_overall": 5.92, "geneval": 0.85, "dpg": 85.57, "wise": 0.55},
    "edit": {"gedit_overall": 6.31, "geneval": 0.80, "dpg": 84.53, "wise": 0.54},
    "t2i_edit": {"gedit_overall": 6.42, "geneval": 0.84, "dpg": 86.03, "wise": 0.56},
    "t2i_edit_joint": {"gedit_overall": 6.68, "geneval": 0.86, "dpg": 86.00, "wise": 0.56},
}
PAPER_COLUMNS = {"gedit_overall": "GEdit G_O", "geneval": "GenEval", "dpg": "DPG", "wise": "WISE"}


# ------------------------------------------------------------------------------------------------ Table 8


def build_table8(recipes: Mapping[str, str | Path], seed: int = 0) -> dict:
    """Table 8 from ``arm eval all`` folders (recipe name -> folder), in the schema of ``results/table8.json``::

        {"rows": {"<recipe>": {"<column>": {"value": float, "ci95": [low, high]} | null, ...,
                               "source": "<eval folder>"}, ...},
         "columns": ["gedit_overall", "geneval", "wise", "vqa", "mme_acc_plus"],
         "paper": {"<recipe>": {"gedit_overall", "geneval", "dpg", "wise"}},
         "seed": int, "git": str, "date": str}

    Recipe names: ``sft``, ``t2i`` (T2I RL only), ``edit`` (Edit RL only), ``t2i_edit`` (T2I -> Edit),
    ``t2i_edit_joint`` (T2I -> Edit -> Joint); other names are allowed and shown as given, after these.
    Each column is the protocol summary's number (``DIR/<protocol>/summary.json``, e.g. ``gedit.overall``,
    ``mme.acc_plus``); a missing protocol gives null. ``rows`` keeps the insertion order.
    """
    rows = {}
    for name, folder in recipes.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no results folder for recipe {name!r} at {str(folder)!r}")
        row: dict = {"source": str(folder)}
        for column in TABLE8_COLUMNS:
            bench = BENCHMARKS[column]
            path = folder / bench.protocol / "summary.json"
            row[column] = json.loads(path.read_text()).get(bench.metric) if path.is_file() else None
        rows[name] = row
    return {"rows": rows, "columns": list(TABLE8_COLUMNS), "paper": PAPER_TABLE8, "seed": seed, "git": git_hash(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def check_table8(table: Mapping, source: str = "table8.json") -> None:
    """ValueError (one line, naming the problem) unless ``table`` follows ``build_table8``'s schema."""
    if not isinstance(table, Mapping) or not isinstance(table.get("rows"), Mapping) or not table["rows"]:
        raise ValueError(f"{source} has no `rows` object; write it with `arm eval synergy --table8 PATH`")
    for name, row in table["rows"].items():
        for column in TABLE8_COLUMNS:
            cell = row.get(column)
            if cell is not None and not (isinstance(cell, Mapping) and "value" in cell and "ci95" in cell):
                raise ValueError(f"{source}: rows.{name}.{column} must be {{value, ci95}} or null, got {cell!r}")


def _ordered(names) -> list[str]:
    known = [n for n in RECIPE_LABELS if n in names]
    return known + [n for n in names if n not in RECIPE_LABELS]


def _value(cell, digits: int) -> str:
    value = cell.get("value") if isinstance(cell, Mapping) else cell
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _with_ci(cell, digits: int) -> tuple[str, str]:
    """(value, "[low, high]") of a ``{value, ci95}`` cell, dashes when missing."""
    if not isinstance(cell, Mapping) or cell.get("value") is None:
        return "–", ""
    low, high = cell.get("ci95") or [None, None]
    return _value(cell, digits), f"[{_value(low, digits)}, {_value(high, digits)}]"


def _digits(column: str) -> int:
    return 2 if column.startswith("gedit") or column == "dpg" else 3


def table8_markdown(table: Mapping) -> str:
    check_table8(table)
    ours = table.get("columns") or list(TABLE8_COLUMNS)
    lines = ["# Table 8: cross-task synergy (value [bootstrap 95 % interval])", "",
             "| recipe | " + " | ".join(BENCHMARKS[c].label for c in ours) + " |", "|---|" + "---|" * len(ours)]
    for name in _ordered(table["rows"]):
        cells = [" ".join(_with_ci(table["rows"][name].get(c), _digits(c))).strip() for c in ours]
        lines.append(f"| {recipe_label(name)} | " + " | ".join(cells) + " |")
    paper = table.get("paper") or PAPER_TABLE8
    lines += ["", "Paper (ARM Table 8):", "", "| recipe | " + " | ".join(PAPER_COLUMNS.values()) + " |",
              "|---|" + "---|" * len(PAPER_COLUMNS)]
    for name in _ordered(paper):
        lines.append(f"| {recipe_label(name)} | "
                     + " | ".join(_value(paper[name].get(c), _digits(c)) for c in PAPER_COLUMNS) + " |")
    lines += ["", f"Ours: seed {table.get('seed')}, git {str(table.get('git', ''))[:10]}, {table.get('date', '')}. "
              "GEdit on 0-10, the others on 0-1. The paper reports DPG (not run here) and no VQA / MME in Table 8."]
    merged = {name: a for name, a in (table.get("merge_alpha") or {}).items() if a is not None and a < 1}
    if merged:
        which = ", ".join(f"{recipe_label(name)} {merged[name]:g}" for name in _ordered(merged))
        lines += ["", "Exported as SFT + alpha (policy - SFT), a weight interpolation toward SFT (WiSE-FT; "
                      f"`merge_alpha` in the recipe YAML; not in the paper): {which}."]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table cell (arrows typeset as math)."""
    out = str(text)
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_"),
                       ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        out = out.replace(char, repl)
    return out.replace("→", r"$\rightarrow$").replace("✓", r"\checkmark").replace("–", "--")


def _latex_tabular(header: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", rf"\label{{{label}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def table8_latex(table: Mapping) -> str:
    check_table8(table)
    ours = table.get("columns") or list(TABLE8_COLUMNS)
    rows = []
    for name in _ordered(table["rows"]):
        cells = []
        for c in ours:
            value, ci = _with_ci(table["rows"][name].get(c), _digits(c))
            cells.append(latex_escape(value) if not ci else rf"{value} {{\scriptsize {ci}}}")
        rows.append([latex_escape(recipe_label(name)), *cells])
    text = _latex_tabular(["Recipe", *(latex_escape(BENCHMARKS[c].label) for c in ours)], rows,
                          "Cross-task synergy on ShapeWorld (ours): value and bootstrap 95\\% interval.", "tab:table8")
    paper = table.get("paper") or PAPER_TABLE8
    paper_rows = [[latex_escape(recipe_label(n)), *(latex_escape(_value(paper[n].get(c), _digits(c)))
                                                   for c in PAPER_COLUMNS)]
                  for n in _ordered(paper)]
    return text + "\n" + _latex_tabular(["Recipe", *(latex_escape(v) for v in PAPER_COLUMNS.values())], paper_rows,
                                        "ARM paper, Table 8.", "tab:table8-paper")


# ------------------------------------------------------------------------------------------------ Table 7


def check_table7(result: Mapping, source: str = "table7.json") -> None:
    """ValueError unless ``result`` holds the paper's four rows and at least one of the variants ``arm tokenizer
    table7`` writes (``make demo`` writes the one it trains; the others render as dashes), and nothing else."""
    from arm.tokenizer.table7 import VARIANTS, variant_name

    names = [variant_name(*v) for v in VARIANTS]
    missing = [n for n in names if n not in (result.get("paper") or {})]
    if missing:
        raise ValueError(f"{source}: `paper` lacks {missing}; rerun `make table7`")
    rows = result.get("rows") or {}
    unknown = sorted(set(rows) - set(names))
    if unknown or not rows:
        raise ValueError(f"{source}: `rows` must hold some of {names}, got {sorted(rows)}; rerun `make table7`")


def table7_markdown(result: Mapping) -> str:
    from arm.tokenizer.table7 import markdown

    check_table7(result)
    return markdown(dict(result))


def table7_latex(result: Mapping) -> str:
    """The columns of ``arm.tokenizer.table7.markdown`` as a LaTeX table, ours / paper in each shared column."""
    from arm.tokenizer.table7 import VARIANTS, _zero_shot, variant_name

    check_table7(result)
    nan = float("nan")
    rows = []
    for sig, feat in VARIANTS:
        name = variant_name(sig, feat)
        row, paper = result["rows"].get(name), result["paper"][name]
        if row is None:  # not trained in this run (a demo's table)
            rows.append([r"\checkmark" if sig else "--", r"\checkmark" if feat else "--",
                         f"-- / {paper['zero_shot']}", f"-- / {paper['psnr']}", f"-- / {paper['code_usage']}",
                         f"-- / {latex_escape(paper['caption_ppl'] or '–')}", "--", "--", "--"])
            continue
        probe = row.get("probe_acc", {})
        rows.append([
            r"\checkmark" if sig else "--", r"\checkmark" if feat else "--",
            f"{_zero_shot(row):.1f} / {paper['zero_shot']}",
            f"{row.get('psnr', nan):.1f} / {paper['psnr']}",
            f"{100 * row.get('code_usage', nan):.1f} / {paper['code_usage']}",
            f"{row.get('caption_ppl', nan):.2f} / {latex_escape(paper['caption_ppl'] or '–')}",
            f"{row.get('fd_teacher', nan):.3f}",
            " / ".join(f"{probe.get(k, nan):.3f}" for k in ("color", "shape", "count")),
            f"{row.get('semantic_recon_acc', nan):.3f}",
        ])
    header = [r"$\mathcal{L}_\mathrm{sig}$", r"$\mathcal{L}_\mathrm{feat}$", "zero-shot", "PSNR (dB)",
              r"code usage (\%)", "caption PPL", r"fd\_teacher", "probe col / shape / count", "semantic recon"]
    caption = (f"Tokenizer loss ablation ($\\mathcal{{L}}_\\mathrm{{cap}}$ and $\\mathcal{{L}}_\\mathrm{{pix}}$ "
               f"always on), ours / paper. ShapeWorld val, seed {result.get('seed')}, git "
               f"{latex_escape(str(result.get('git', ''))[:10])}. Zero-shot: mean of colour and shape (paper: ImageNet).")
    return _latex_tabular(header, rows, caption, "tab:table7").replace(r"\begin{tabular}{lc", r"\begin{tabular}{cc", 1)
