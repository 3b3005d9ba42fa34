"""Every headline split into seen and held-out compositions, from the per-sample files of one ``arm eval all`` run.

ShapeWorld holds some colour-shape pairs and spatial relations out of training (``arm.data.shapeworld.world``);
each bench record says whether it involves one (``heldout``), and the protocols copy the flag into their
``results.jsonl`` rows (GenEval per image, WISE per prompt, GEdit per edit, VQA per question). Issue 4 asks for
every AR score "with the held-out compositions separately": here each benchmark's headline is rebuilt, exactly as
the synergy analysis rebuilds it (``arm.eval.synergy.BENCHMARKS``: GenEval's mean over tags, GEdit's over task
types, WISE's weighted groups, pooled means otherwise), on the seen and on the held-out units alone, each with its
bootstrap 95 % interval. A subset's strata can be fewer than the whole bench's (no held-out record of some tag),
so the two parts need not average to the headline. Benchmarks whose rows carry no flag (MME, POPE: their records
are built without one) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from arm.eval.results import SAMPLES_FILE, read_jsonl
from arm.eval.stats import number
from arm.eval.synergy import BENCHMARKS, combine_strata, read_units

PARTS = {"seen": False, "heldout": True}


def heldout_split(folder: str | Path, seed: int = 0) -> dict:
    """``{benchmark key: {"label", "seen": {"value", "ci95", "units"}, "heldout": {...}}}`` for every benchmark of
    ``folder`` (an ``arm eval all`` output) whose rows say ``heldout``."""
    folder, result = Path(folder), {}
    for key, bench in BENCHMARKS.items():
        path = folder / bench.protocol / SAMPLES_FILE
        if not path.is_file() or not any(isinstance(r.get("heldout"), bool) for r in read_jsonl(path)):
            continue
        entry = {"label": bench.label}
        for part, flag in PARTS.items():
            try:
                units = read_units(folder, bench, keep=lambda row, flag=flag: row.get("heldout") is flag)
            except FileNotFoundError:  # a field this folder's rows lack (edit success from the VLM judge)
                break
            strata: dict[str, list[float]] = {}
            for stratum, score in units.values():
                strata.setdefault(stratum, []).append(score)
            value, ci = combine_strata(strata, bench.combine, seed)
            entry[part] = {**number(value, ci), "units": len(units)}
        else:
            result[key] = entry
    return result


def markdown(result: Mapping) -> str:
    """The split as a markdown table (value [95 % interval], units)."""
    def cell(part: Mapping) -> str:
        if part["value"] is None:  # no unit in this part (``number`` turns NaN into None)
            return f"- ({part['units']})"
        low, high = part["ci95"]
        return f"{part['value']:.3f} [{low:.3f}, {high:.3f}] ({part['units']})"

    lines = ["# Seen and held-out compositions (value [95 % bootstrap interval] (units))", "",
             "| benchmark | seen | held-out |", "| --- | --- | --- |"]
    lines += [f"| {entry['label']} | {cell(entry['seen'])} | {cell(entry['heldout'])} |" for entry in result.values()]
    return "\n".join(lines) + "\n"
