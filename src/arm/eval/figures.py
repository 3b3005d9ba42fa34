"""``make figures`` / ``arm figures --results results --out figures``: the paper's tables and figures, regenerated
from results files only (no model is run).

What is looked for under the results root, and what it becomes in the output folder (PNG + PDF per figure):

=====================================================  =============================================================
input                                                   output
=====================================================  =============================================================
``table7.json`` (``arm tokenizer table7``)              ``table7.md``, ``table7.tex``
``table8.json`` (``arm eval synergy --table8``)         ``table8.md``, ``table8.tex``
``**/recon/{orig,recon}-XXXX.png``                      ``recon_<run>.png``: originals over reconstructions
``**/00000/metadata.jsonl`` + ``samples/`` (GenEval)    ``geneval_<run>_<tag>.png``: samples per prompt, marked
                                                        correct (green) / wrong (red) from ``results.jsonl``
``**/fullset/<type>/<lang>/<key>{,_SRCIMG}.png``        ``gedit_<run>_<type>.png``: sources over edits
``**/cfg_grid/ar{a}_dec{d}/{i:03d}.png``                ``cfg_<run>_<i>.png``: AR-side x decoder-side CFG
TensorBoard files with ``train/reward*``, ``reward/*``  ``rl_reward_curves.png``
``**/synergy.json`` (``arm eval synergy``)              ``synergy_<run>.png``: change against SFT per benchmark
=====================================================  =============================================================

``<run>`` is the input's folder relative to the results root. An input that is missing or unreadable is skipped
with one line saying why; the command ends by listing what it wrote and what it skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from arm.eval.figures_io import slug
from arm.io import write_atomic

MAX_CFG_PROMPTS = 4
DRAW_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError)
"""What a malformed input file can raise while it is read or drawn: reported as a skip, never a crash."""


class Report:
    """What ``arm figures`` wrote and skipped, printed as it goes."""

    def __init__(self, quiet: bool = False):
        self.wrote: list[str] = []
        self.skipped: list[str] = []
        self.quiet = quiet

    def attempt(self, what: str, draw: Callable[[], list[Path]]) -> None:
        """Run ``draw``; record its files, or one skip line when its input is malformed."""
        try:
            paths = draw()
        except DRAW_ERRORS as err:
            self.skip(f"{what}: {type(err).__name__}: {err}".splitlines()[0])
            return
        for path in paths:
            self.wrote.append(str(path))
            if not self.quiet:
                print(f"wrote {path}")

    def skip(self, line: str) -> None:
        self.skipped.append(line)
        if not self.quiet:
            print(f"skipped {line}")

    def summary(self) -> str:
        lines = [f"arm figures: wrote {len(self.wrote)} files, skipped {len(self.skipped)} inputs"]
        lines += [f"  wrote   {p}" for p in self.wrote] + [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


def _scan(root: Path) -> dict[str, list[Path]]:
    """One walk of the results tree: the folders each kind of figure reads."""
    found: dict[str, set[Path]] = {k: set() for k in ("recon", "geneval", "gedit", "cfg", "events", "synergy")}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.name == "recon" and any(f.startswith("orig-") and f.endswith(".png") for f in filenames):
            found["recon"].add(here)
        if "metadata.jsonl" in filenames and here.name.isdigit() and len(here.name) == 5:
            found["geneval"].add(here.parent)
        if "fullset" in dirnames:
            found["gedit"].add(here)
        if here.name == "cfg_grid":
            found["cfg"].add(here)
        if any(f.startswith("events.out.tfevents.") for f in filenames):
            found["events"].add(here)
        if "synergy.json" in filenames:
            found["synergy"].add(here / "synergy.json")
    return {k: sorted(v) for k, v in found.items()}


def _run_name(path: Path, root: Path) -> str:
    return slug(path.relative_to(root).as_posix()) if path != root else slug(root.name)


def _tables(root: Path, out: Path, report: Report) -> None:
    from arm.eval import figures_tables as tables

    def write_both(name: str, md: Callable, tex: Callable, check: Callable) -> list[Path]:
        data = json.loads((root / f"{name}.json").read_text())
        check(data, str(root / f"{name}.json"))
        write_atomic(out / f"{name}.md", md(data).encode())
        write_atomic(out / f"{name}.tex", tex(data).encode())
        return [out / f"{name}.md", out / f"{name}.tex"]

    for name, md, tex, check, how in (
            ("table7", tables.table7_markdown, tables.table7_latex, tables.check_table7, "`make table7`"),
            ("table8", tables.table8_markdown, tables.table8_latex, tables.check_table8,
             "`arm eval synergy --sft DIR --recipe NAME=DIR ... --out DIR --table8 results/table8.json`")):
        if not (root / f"{name}.json").is_file():
            report.skip(f"{name}: no {root / f'{name}.json'} (write it with {how})")
            continue
        report.attempt(name, lambda n=name, m=md, t=tex, c=check: write_both(n, m, t, c))


def _grouped_grids(kind: str, folders: list[Path], read: Callable, draw: Callable, empty: str, root: Path,
                   out: Path, report: Report) -> None:
    """One grid per group (GenEval tag, GEdit task type) of every output folder of a benchmark."""
    if not folders:
        layout = "00000/metadata.jsonl" if kind == "GenEval" else "fullset/"
        report.skip(f"{kind} grids: no {kind} output folder ({layout}) under {root}")
    for folder in folders:
        name = _run_name(folder, root)
        try:
            groups = read(folder)
        except DRAW_ERRORS as err:
            report.skip(f"{kind} {folder}: {type(err).__name__}: {err}")
            continue
        if not groups:
            report.skip(f"{kind} {folder}: {empty}")
        for group, items in sorted(groups.items()):
            report.attempt(f"{kind} {folder} {group}", lambda i=items, g=group, n=name: draw(
                i, out / f"{kind.lower()}_{n}_{slug(g)}.png", f"{kind} {g} ({n})"))


def _grids(root: Path, out: Path, found: dict[str, list[Path]], report: Report) -> None:
    from arm.eval import figures_grids as grids

    if not found["recon"]:
        report.skip(f"reconstruction grid: no recon/orig-XXXX.png under {root} (written by "
                    "arm.eval.figures_grids.write_recon_images beside a tokenizer eval)")
    for folder in found["recon"]:
        name = _run_name(folder.parent, root)
        report.attempt(f"recon {folder}", lambda f=folder, n=name: grids.recon_grid(
            f, out / f"recon_{n}.png", f"Tokenizer reconstructions: {n}"))
    _grouped_grids("GenEval", found["geneval"], grids.read_geneval_folder, grids.geneval_grid, "no samples/*.png",
                   root, out, report)
    _grouped_grids("GEdit", found["gedit"], grids.read_gedit_folder, grids.gedit_grid,
                   "no <key>.png beside <key>_SRCIMG.png", root, out, report)
    if not found["cfg"]:
        report.skip(f"CFG grid: no cfg_grid/ar{{a}}_dec{{d}}/ folder under {root} (written by "
                    "arm.eval.figures_grids.write_cfg_grid)")
    for folder in found["cfg"]:
        name = _run_name(folder.parent, root)
        indices = grids.cfg_prompt_indices(folder)
        if not indices:
            report.skip(f"CFG grid {folder}: no ar{{a}}_dec{{d}}/XXX.png images")
        for index in indices[:MAX_CFG_PROMPTS]:
            report.attempt(f"CFG grid {folder} {index}", lambda f=folder, i=index, n=name: grids.cfg_grid(
                f, i, out / f"cfg_{n}_{i:03d}.png"))


def _curves_and_synergy(root: Path, out: Path, found: dict[str, list[Path]], report: Report) -> None:
    from arm.eval import figures_curves as curves
    from arm.eval.synergy import plot_synergy

    runs = {}
    for folder in found["events"]:
        try:
            scalars = curves.read_scalars(folder)
        except DRAW_ERRORS as err:
            report.skip(f"event files in {folder}: {type(err).__name__}: {err}")
            continue
        if scalars:
            runs[curves.run_label(folder, root)] = scalars
    if runs:
        report.attempt("RL reward curves", lambda: curves.reward_curves(runs, out / "rl_reward_curves.png"))
    else:
        report.skip(f"RL reward curves: no TensorBoard event file with {' or '.join(curves.REWARD_PREFIXES)}* "
                    f"scalars under {root}")
    if not found["synergy"]:
        report.skip(f"synergy chart: no synergy.json under {root} (write it with `arm eval synergy`)")
    for path in found["synergy"]:
        name = _run_name(path.parent, root)
        report.attempt(f"synergy {path}", lambda p=path, n=name: plot_synergy(
            json.loads(p.read_text()), out / f"synergy_{n}.png"))


def make_figures(results: str | Path = "results", out: str | Path = "figures", quiet: bool = False) -> Report:
    """Every table and figure whose inputs exist under ``results``, into ``out``; returns the report."""
    root, out = Path(results), Path(out)
    report = Report(quiet)
    if not root.is_dir():
        report.skip(f"everything: no results folder at {root}")
        return report
    out.mkdir(parents=True, exist_ok=True)
    found = _scan(root)
    _tables(root, out, report)
    _grids(root, out, found, report)
    _curves_and_synergy(root, out, found, report)
    return report
