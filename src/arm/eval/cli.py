"""``arm eval <protocol> --ckpt CKPT --data FILE --out DIR``: run one benchmark protocol, or all of them.

``all`` takes ``--data`` as a ShapeWorld bench folder (``DIR/bench`` of ``arm data shapeworld``), runs every
protocol into ``OUT/<protocol>/`` and writes ``OUT/summary.json`` with each protocol's headline numbers, and
under ``heldout`` (and in ``OUT/heldout.md``) each flagged headline on seen and held-out compositions apart
(``arm.eval.heldout``).
Files that are not yet in the real format are converted first (``arm.eval.convert``): MME from
``mme.jsonl``, POPE from ``vqa.jsonl``'s existence questions, captions from the world's test shards.

``arm eval synergy --sft DIR --recipe NAME=DIR ... --out DIR`` runs no model: it compares ``arm eval all``
folders (``arm.eval.synergy``), each recipe against SFT with paired-bootstrap intervals, and writes
``OUT/synergy.{json,md,png,pdf}``; ``--table8 FILE`` also writes Table 8's JSON (``arm.eval.figures_tables``).
Recipe names of the paper's Table 8: sft, t2i, edit, t2i_edit, t2i_edit_joint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROTOCOLS = ("geneval", "wise", "gedit", "vqa", "mme", "pope", "caption")
HEADLINES = {
    "geneval": ("overall", "per_tag"),
    "wise": ("overall", "per_group", "per_category"),
    "gedit": ("overall", "sc", "pq", "edit_success", "per_type"),
    "vqa": ("accuracy", "per_type", "prior_accuracy", "top_replies"),
    "mme": ("acc", "acc_plus", "total_score", "yes_ratio"),
    "pope": ("accuracy", "precision", "recall", "f1", "yes_ratio"),
    "caption": ("word_perplexity", "byte_perplexity", "object_f1", "generated"),
}


def add_eval_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser("eval", help="run a benchmark protocol (GenEval, WISE, GEdit, VQA, MME, POPE, captions)",
                       formatter_class=formatter, description=__doc__)
    p.add_argument("protocol", choices=(*PROTOCOLS, "all", "synergy"))
    p.add_argument("--ckpt", help="AR checkpoint (weights file or export folder), or `dummy` (all but synergy)")
    p.add_argument("--data", help="benchmark file (MME: a subtask .txt or a folder of them); for `all`, a bench "
                                  "folder (all but synergy)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sft", help="synergy: the SFT model's `arm eval all` folder")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=DIR",
                   help="synergy: an RL recipe's `arm eval all` folder (repeat for each recipe)")
    p.add_argument("--table8", default=None, help="synergy: also write Table 8's JSON (SFT + recipes) to this file")
    p.add_argument("--judge", choices=("shapeworld", "openai"), default="shapeworld",
                   help="who scores generated / edited images")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL for --judge openai")
    p.add_argument("--judge-model", default="default", help="model name sent to the judge endpoint")
    p.add_argument("--n", type=int, default=4, help="images per GenEval prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first K records of each file")
    p.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AR checkpoint's sampling setting (repeat): cfg, text_cfg, image_cfg, "
                        "temperature (text-to-image), edit_temperature, top_k, top_p, decoder_steps, decoder_cfg "
                        "(text-to-image), edit_decoder_cfg, batch_size, answer_batch_size, max_new_tokens, device, "
                        "precision (fp32 | bf16: image sampling and decoding under bf16 autocast), think (1: describe, "
                        "then answer); default: the "
                        "settings its validation used")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _needs_conversion(protocol: str, data: Path) -> bool:
    if protocol == "mme":
        return data.suffix == ".jsonl"
    if protocol == "pope":
        first = data.read_text(encoding="utf-8").split("\n", 1)[0] if data.is_file() else ""
        return '"label"' not in first and '"type"' in first
    return False


def run_protocol(protocol: str, run, data: Path, out: Path, n: int = 4) -> dict:
    """One protocol on its (converted if needed) file; returns its summary."""
    from arm.eval import convert, gedit, geneval, understanding, wise

    if _needs_conversion(protocol, data):
        data = convert.mme_from_bench(data, out / "data") if protocol == "mme" \
            else convert.pope_from_vqa(data, out / "data" / "pope.jsonl")
    if protocol == "geneval":
        return geneval.run_geneval(run, data, out, n)
    if protocol == "wise":
        return wise.run_wise(run, data, out)
    if protocol == "gedit":
        return gedit.run_gedit(run, data, out)
    return getattr(understanding, f"run_{protocol}")(run, data, out)


def bench_file(protocol: str, bench: Path, out: Path) -> Path | None:
    """The file ``all`` evaluates for ``protocol`` in a bench folder (converted when needed); None to skip."""
    from arm.eval import convert

    names = {"geneval": "geneval.jsonl", "wise": "wise.jsonl", "gedit": "gedit.jsonl", "vqa": "vqa.jsonl",
             "mme": "mme.jsonl", "pope": "pope.jsonl", "caption": "captions.jsonl"}
    path = bench / names[protocol]
    if path.is_file():
        return path
    if protocol == "pope" and (bench / "vqa.jsonl").is_file():
        return bench / "vqa.jsonl"
    if protocol == "caption" and (bench.parent / "test").is_dir():
        return convert.captions_from_world(bench.parent, out / "caption" / "data")
    return None


def _key_values(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` strings -> a dict; values read as int, else float, else kept as text."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        for kind in (int, float, str):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
    return out


def run_synergy(args: argparse.Namespace) -> int:
    """``arm eval synergy``: every recipe's paired change against SFT, and optionally Table 8's JSON."""
    from arm.eval.figures_tables import build_table8
    from arm.eval.synergy import synergy, write_synergy
    from arm.io import write_json_atomic

    if not args.sft or not args.recipe:
        raise ValueError("`arm eval synergy` needs --sft DIR and at least one --recipe NAME=DIR")
    recipes = {}
    for item in args.recipe:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--recipe takes NAME=DIR, got {item!r}")
        recipes[name] = folder
    result = synergy(args.sft, recipes, seed=args.seed)
    written = write_synergy(result, args.out)
    if args.table8:
        write_json_atomic(args.table8, build_table8({"sft": args.sft, **recipes}, seed=args.seed))
        written.append(Path(args.table8))
    print((Path(args.out) / "synergy.md").read_text(), end="")
    print("\n".join(f"wrote {p}" for p in written))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if args.protocol == "synergy":
        return run_synergy(args)
    if not args.ckpt or not args.data:
        raise ValueError(f"`arm eval {args.protocol}` needs --ckpt CKPT and --data FILE")
    from arm.eval.common import Run
    from arm.eval.heldout import heldout_split
    from arm.eval.heldout import markdown as heldout_markdown
    from arm.eval.interface import load_model
    from arm.eval.judges import make_judge
    from arm.eval.openai_client import JudgeUnavailable
    from arm.eval.results import checkpoint_hash, stamp
    from arm.io import write_atomic, write_json_atomic

    data, out = Path(args.data), Path(args.out)
    if not data.exists():
        raise FileNotFoundError(f"no benchmark data at {str(data)!r}")
    config = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    model = load_model(args.ckpt, settings=_key_values(args.sampling, "--sampling"))
    config["model_settings"] = model.settings  # sampling settings in use: every summary's stamp carries them
    run = Run(model, make_judge(args.judge, args.judge_url, args.judge_model), args.seed, args.limit, config,
              progress=not args.no_progress)
    try:
        if args.protocol != "all":
            summary = run_protocol(args.protocol, run, data, out, args.n)
            print(json.dumps({k: summary[k] for k in HEADLINES[args.protocol] if k in summary}, indent=2))
            return 0
        if not data.is_dir():
            raise ValueError(f"`arm eval all` takes a bench folder as --data, got the file {data}")
        combined = stamp("all", config, checkpoint_hash(args.ckpt), args.seed)
        combined["seconds"] = {}  # per protocol: where an evaluation's time goes
        for protocol in PROTOCOLS:
            path = bench_file(protocol, data, out)
            if path is None:
                combined[protocol] = {"skipped": f"no {protocol} file in {data}"}
                continue
            started = time.perf_counter()
            summary = run_protocol(protocol, run, path, out / protocol, args.n)
            combined["seconds"][protocol] = round(time.perf_counter() - started, 1)
            combined[protocol] = {k: summary[k] for k in HEADLINES[protocol] if k in summary}
        write_json_atomic(out / "summary.json", combined)  # the protocols' numbers are kept whatever follows
        # Issue 4's "held-out compositions separately": every flagged headline on seen and held-out units.
        combined["heldout"] = heldout_split(out, args.seed)
        write_atomic(out / "heldout.md", heldout_markdown(combined["heldout"]).encode())
        write_json_atomic(out / "summary.json", combined)
        print(json.dumps({p: {k: v["value"] if isinstance(v, dict) else v for k, v in combined[p].items()
                              if (isinstance(v, dict) and "value" in v) or k == "skipped"}
                          for p in PROTOCOLS}, indent=2))
        return 0
    except JudgeUnavailable as err:
        print(f"arm: error: {err}", file=sys.stderr)
        return 2


def add_figures_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    from arm.eval import figures

    p = sub.add_parser("figures", help="regenerate the paper's tables and figures from results files (no model run)",
                       formatter_class=formatter, description=figures.__doc__ + CFG_GRID_HELP)
    p.add_argument("action", nargs="?", choices=("all", "cfg-grid"), default="all",
                   help="`all`: every table and figure from --results; `cfg-grid`: draw the CFG grid of --ckpt")
    p.add_argument("--results", default="results", help="results folder to read")
    p.add_argument("--out", default="figures", help="folder for the tables (md, tex) and figures (png, pdf)")
    p.add_argument("--ckpt", help="cfg-grid: AR export folder")
    p.add_argument("--prompts", help="cfg-grid: prompt file (one per line, or JSON/JSONL records with `prompt`)")
    p.add_argument("--bench", help="cfg-grid: bench folder; the first geneval.jsonl prompt of each tag")
    p.add_argument("--num-prompts", type=int, default=4, help="cfg-grid: at most this many prompts")
    p.add_argument("--ar-scales", default="1,1.5,3", help="cfg-grid: AR-side CFG scales, comma-separated")
    p.add_argument("--dec-scales", default="1,1.5,3", help="cfg-grid: decoder-side CFG scales, comma-separated")
    p.add_argument("--seed", type=int, default=0, help="cfg-grid: sampling seed (the same for every cell)")


CFG_GRID_HELP = """
``arm figures cfg-grid --ckpt AR --prompts FILE|--bench DIR --out DIR``: draw, with the AR export, every prompt
at every AR-side x decoder-side CFG scale into ``DIR/cfg_grid/`` (``arm.ar.eval_model.cfg_grid``), then one
figure per prompt, ``DIR/cfg_<i>.png``; ``arm figures`` later finds the folder under its results root.
"""


def _scales(text: str, flag: str) -> list[float]:
    try:
        scales = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated numbers such as 1,1.5,3; got {text!r}") from None
    if not scales:
        raise ValueError(f"{flag} needs at least one scale")
    return scales


def run_cfg_grid(args: argparse.Namespace) -> int:
    """``arm figures cfg-grid``: sample the grid's images with the AR export, then draw one figure per prompt."""
    if not args.ckpt:
        raise ValueError("`arm figures cfg-grid` needs --ckpt (an AR export folder)")
    ar_scales, dec_scales = _scales(args.ar_scales, "--ar-scales"), _scales(args.dec_scales, "--dec-scales")
    from arm.ar.eval_model import cfg_grid, load_for_eval, read_prompts
    from arm.eval import figures_grids

    prompts = read_prompts(args.prompts, args.bench, args.num_prompts)
    root = cfg_grid(load_for_eval(args.ckpt), prompts, ar_scales, dec_scales, args.out, args.seed)
    for i in range(len(prompts)):
        for path in figures_grids.cfg_grid(root, i, Path(args.out) / f"cfg_{i:03d}.png"):
            print(f"wrote {path}")
    return 0


def run_figures(args: argparse.Namespace) -> int:
    if args.action == "cfg-grid":
        return run_cfg_grid(args)
    from arm.eval.figures import make_figures

    report = make_figures(args.results, args.out)
    print(report.summary())
    return 0
