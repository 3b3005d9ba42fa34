"""The ``arm`` command: one entry point for data, detection, the demo, benchmarks and (as they land) the stages.

Utility commands use argparse; training stages (``arm tokenizer fit ...``) hand their arguments to a
LightningCLI defined in the stage's package, registered in ``STAGES``. Heavy imports happen inside each command
so that ``arm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from arm.runtime import configure_process

STAGES: dict[str, tuple[str, str]] = {
    "teacher": ("arm.teacher.cli", "train the language-aligned teacher (LightningCLI: fit|validate|test)"),
    "tokenizer": ("arm.tokenizer.cli", "train / evaluate the discrete image tokenizer (LightningCLI)"),
    "ar": ("arm.ar.cli", "train the unified autoregressive model (LightningCLI)"),
    "lm": ("arm.ar.lm_cli", "train the small caption LM (LightningCLI)"),
    "rl": ("arm.rl.cli", "GRPO on image tokens (LightningCLI)"),
}
"""Stage name -> (module whose ``main(args)`` runs it, help). Only stages whose module exists are offered."""


def _available_stages() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, help_) in STAGES.items():
        try:
            if importlib.util.find_spec(module) is not None:
                out[name] = (module, help_)
        except ModuleNotFoundError:
            continue
    return out


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arm",
        description="ARM suite: tokenizer, unified AR model and GRPO on ShapeWorld (embedded) or real data.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = sub.add_parser("data", help="build ShapeWorld, its benchmarks and the text tokenizer", formatter_class=_Formatter)
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sw = dsub.add_parser("shapeworld", help="write ShapeWorld shards and benchmark files", formatter_class=_Formatter,
                         description="Write DIR/{train,val,test}/shard-*.tar and DIR/bench/*.jsonl. Same seed, same bytes.")
    sw.add_argument("--out", required=True, help="output directory")
    sw.add_argument("--num-train", type=int, default=20000)
    sw.add_argument("--num-val", type=int, default=1000)
    sw.add_argument("--num-test", type=int, default=1000)
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--resolution", type=int, default=64, help="image side in pixels")
    sw.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    sw.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    sw.add_argument("--no-bench", action="store_true", help="skip the benchmark files")
    tt = dsub.add_parser("text-tokenizer", help="train a byte-level BPE on the world's text", formatter_class=_Formatter)
    tt.add_argument("--data", required=True, help="ShapeWorld directory (reads DIR/train/*.tar)")
    tt.add_argument("--out", required=True, help="where to write tokenizer.json")
    tt.add_argument("--vocab-size", type=int, default=1024)
    grid = dsub.add_parser("grid", help="figure of samples: scenes, captions, edits, masks", formatter_class=_Formatter)
    grid.add_argument("--data", required=True, help="ShapeWorld directory")
    grid.add_argument("--out", required=True, help="PNG path (a PDF is written beside it)")
    grid.add_argument("--split", default="train")
    grid.add_argument("--num", type=int, default=8)
    chk = dsub.add_parser("detector-check", help="measure the detector's exact-scene accuracy, clean and damaged",
                          formatter_class=_Formatter)
    chk.add_argument("--num", type=int, default=2000, help="fresh test scenes")
    chk.add_argument("--seed", type=int, default=12345, help="seed of the fresh scenes (not the world's)")
    chk.add_argument("--bench", default=None,
                     help="also score a world's bench/ files: ground truth accepted, one-attribute changes rejected")
    chk.add_argument("--out", default=None, help="JSON file for the report")

    det = sub.add_parser("detect", help="detect the objects in images and print JSON", formatter_class=_Formatter)
    det.add_argument("images", nargs="+", help="image files")

    demo = sub.add_parser("demo", help="run the whole recipe on the embedded default, skipping finished stages",
                          formatter_class=_Formatter)
    demo.add_argument("--out", default="results/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--until", default=None, help="stop after this stage (world, text_tok, ..., figures)")
    demo.add_argument("--profile", default="shapeworld", choices=("shapeworld", "tiny"),
                      help="shapeworld: the embedded default; tiny: every stage's tiny YAML on a tiny world (~minutes)")

    bench = sub.add_parser("bench", help="measure throughput; ratios measured side by side", formatter_class=_Formatter)
    bench.add_argument("--out", default="results/bench.json")

    from arm.ar.commands import add_parsers as add_ar_commands  # argparse only: keeps `arm --help` instant

    add_ar_commands(sub, _Formatter)

    from arm.eval.cli import add_eval_parser, add_figures_parser  # argparse only: keeps `arm --help` instant

    add_eval_parser(sub, _Formatter)
    add_figures_parser(sub, _Formatter)

    for name, (_, help_) in _available_stages().items():
        stage = sub.add_parser(name, help=help_, add_help=False)
        stage.add_argument("stage_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    stages = _available_stages()
    if argv and argv[0] in stages:
        configure_process()  # allocator and oneDNN's kernel cache, before the first tensor
        # LightningCLI parses its own arguments (fit/validate/test, --config ...).
        return importlib.import_module(stages[argv[0]][0]).main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_process()
    try:
        return _dispatch(parser, args)
    except (FileNotFoundError, ValueError) as err:
        # Bad input is the user's to fix: one line, no traceback.
        print(f"arm: error: {err}", file=sys.stderr)
        return 2


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "data":
        return _data(parser, args)
    if args.command == "detect":
        from arm.data.shapeworld.detector import detect
        from arm.data.shapeworld.render import decode_png

        for path in args.images:
            if not Path(path).is_file():
                raise FileNotFoundError(f"no image at {path}")
            print(json.dumps({"image": path, "objects": detect(decode_png(Path(path).read_bytes()))}))
        return 0
    if args.command == "demo":
        from arm.demo import run_demo

        run_demo(args.out, seed=args.seed, until=args.until, profile=args.profile)
        return 0
    if args.command == "eval":
        from arm.eval.cli import run_eval

        return run_eval(args)
    if args.command == "figures":
        from arm.eval.cli import run_figures

        return run_figures(args)
    if args.command in ("generate", "edit", "ask"):
        from arm.ar.commands import run as run_ar_command

        return run_ar_command(args)
    if args.command == "bench":
        from arm.bench import run_bench

        run_bench(args.out)
        return 0
    parser.print_help()
    return 0


def _data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.data_command == "shapeworld":
        from arm.data.shapeworld.writer import write_world

        summary = write_world(args.out, args.num_train, args.num_val, args.num_test, args.seed, args.resolution,
                              args.shard_size, args.workers, bench=not args.no_bench)
        print(json.dumps(summary, indent=2))
        return 0
    if args.data_command == "text-tokenizer":
        from arm.data.text_tokenizer import build_text_tokenizer

        print(json.dumps(build_text_tokenizer(args.data, args.out, args.vocab_size), indent=2))
        return 0
    if args.data_command == "grid":
        from arm.data.shapeworld.figures import sample_grid

        print(sample_grid(args.data, args.out, args.split, args.num))
        return 0
    if args.data_command == "detector-check":
        from arm.data.shapeworld.detector_check import detector_accuracy, judge_accuracy

        report = {"detector": detector_accuracy(num_scenes=args.num, seed=args.seed)}
        if args.bench:
            report["judge"] = judge_accuracy(args.bench, seed=args.seed)
        text = json.dumps(report, indent=2)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        print(text)
        return 0
    parser.parse_args(["data", "--help"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
