"""``arm eval <protocol> --ckpt CKPT --data FILE --out DIR``: run one benchmark protocol, or all of them.

``all`` takes ``--data`` as a ShapeWorld bench folder (``DIR/bench`` of ``arm data shapeworld``), runs every
protocol into ``OUT/<protocol>/`` and writes ``OUT/summary.json`` with each protocol's headline numbers.
Files that are not yet in the real format are converted first (``arm.eval.convert``): MME from
``mme.jsonl``, POPE from ``vqa.jsonl``'s existence questions, captions from the world's test shards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROTOCOLS = ("geneval", "wise", "gedit", "vqa", "mme", "pope", "caption")
HEADLINES = {
    "geneval": ("overall", "per_tag"),
    "wise": ("overall", "per_group", "per_category"),
    "gedit": ("overall", "sc", "pq", "per_type"),
    "vqa": ("accuracy", "per_type"),
    "mme": ("acc", "acc_plus", "total_score"),
    "pope": ("accuracy", "precision", "recall", "f1", "yes_ratio"),
    "caption": ("word_perplexity", "byte_perplexity"),
}


def add_eval_parser(sub: argparse._SubParsersAction, formatter: type) -> None:
    p = sub.add_parser("eval", help="run a benchmark protocol (GenEval, WISE, GEdit, VQA, MME, POPE, captions)",
                       formatter_class=formatter, description=__doc__)
    p.add_argument("protocol", choices=(*PROTOCOLS, "all"))
    p.add_argument("--ckpt", required=True, help="AR checkpoint (weights file or export folder), or `dummy`")
    p.add_argument("--data", required=True,
                   help="benchmark file (MME: a subtask .txt or a folder of them); for `all`, a bench folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--judge", choices=("shapeworld", "openai"), default="shapeworld",
                   help="who scores generated / edited images")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL for --judge openai")
    p.add_argument("--judge-model", default="default", help="model name sent to the judge endpoint")
    p.add_argument("--n", type=int, default=4, help="images per GenEval prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first K records of each file")
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


def run_eval(args: argparse.Namespace) -> int:
    from arm.eval.common import Run
    from arm.eval.interface import load_model
    from arm.eval.judges import make_judge
    from arm.eval.openai_client import JudgeUnavailable
    from arm.eval.results import checkpoint_hash, stamp
    from arm.io import write_json_atomic

    data, out = Path(args.data), Path(args.out)
    if not data.exists():
        raise FileNotFoundError(f"no benchmark data at {str(data)!r}")
    config = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    run = Run(load_model(args.ckpt), make_judge(args.judge, args.judge_url, args.judge_model), args.seed,
              args.limit, config, progress=not args.no_progress)
    try:
        if args.protocol != "all":
            summary = run_protocol(args.protocol, run, data, out, args.n)
            print(json.dumps({k: summary[k] for k in HEADLINES[args.protocol] if k in summary}, indent=2))
            return 0
        if not data.is_dir():
            raise ValueError(f"`arm eval all` takes a bench folder as --data, got the file {data}")
        combined = stamp("all", config, checkpoint_hash(args.ckpt), args.seed)
        for protocol in PROTOCOLS:
            path = bench_file(protocol, data, out)
            if path is None:
                combined[protocol] = {"skipped": f"no {protocol} file in {data}"}
                continue
            summary = run_protocol(protocol, run, path, out / protocol, args.n)
            combined[protocol] = {k: summary[k] for k in HEADLINES[protocol] if k in summary}
        write_json_atomic(out / "summary.json", combined)
        print(json.dumps({p: {k: v["value"] if isinstance(v, dict) else v for k, v in combined[p].items()
                              if (isinstance(v, dict) and "value" in v) or k == "skipped"}
                          for p in PROTOCOLS}, indent=2))
        return 0
    except JudgeUnavailable as err:
        print(f"arm: error: {err}", file=sys.stderr)
        return 2
