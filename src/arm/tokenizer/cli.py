"""``arm tokenizer ...``: training through LightningCLI, and the tokenizer's utility commands.

- ``arm tokenizer fit|validate --config experiments/tokenizer/<name>.yaml``: LightningCLI over ``TokenizerModule``
  and ``ShapeWorldDataModule`` (task ``scene``, so validation can score against the scenes).
- ``arm tokenizer eval --ckpt DIR --data WORLD --out FILE.json``: every tokenizer metric on val (+ linear probes,
  + ``rfid`` with ``--inception-weights``), and reconstruction PNGs in ``<dir of FILE>/recon/``.
- ``arm tokenizer encode --ckpt DIR --shards PATTERN --out DIR``: code shards for the AR stage.
- ``arm tokenizer decode --ckpt DIR --codes FILE.npy --out DIR``: codes back to PNG images.
- ``arm tokenizer table7 --out results``: the loss ablation of the paper's Table 7 (``make table7``).
``--ckpt`` is the folder that fit exports (``<default_root_dir>/tokenizer``).
"""

from __future__ import annotations

import argparse
import sys

UTILITIES = ("eval", "encode", "decode", "table7")


def _utility_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arm tokenizer", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="all tokenizer metrics on the val split, as JSON",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Every tokenizer metric on val (reconstruction, codes, zero-shot, probes, caption "
                                    "perplexity). With a ShapeWorld bench beside the shards (DATA/bench/geneval.jsonl) "
                                    "it also writes geneval_recon: the GenEval-protocol score of the round trip of "
                                    "the bench's images, the ceiling of text-to-image through these codes. level_occupancy "
                                    "gives, per FSQ channel, the share of val tokens at each level; "
                                    "recon_background_acc and recon_object_recall (per 'class_size': the detector "
                                    "finds an object of that class at its place in the reconstruction; "
                                    "recon_objects counts them) say where semantic_recon_acc loses its scenes.")
    ev.add_argument("--ckpt", required=True, help="exported tokenizer folder")
    ev.add_argument("--data", required=True, help="ShapeWorld directory (train/ and val/ shards)")
    ev.add_argument("--out", required=True, help="JSON file to write")
    ev.add_argument("--num-val", type=int, default=1000, help="val images")
    ev.add_argument("--num-probe-train", type=int, default=2000, help="train images to fit the linear probes on")
    ev.add_argument("--recon-images", type=int, default=256, help="val images reconstructed")
    ev.add_argument("--steps", type=int, default=None,
                    help="decoder Euler steps; None: the export's (its YAML's val_decode_steps; 10 if it records none)")
    ev.add_argument("--cfg", type=float, default=None,
                    help="decoder-side CFG scale; None: the export's (its YAML's val_cfg_scale; 1 if it records none)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--readout", choices=("export", "head", "teacher"), default="export",
                    help="how zero-shot and the probes read z_q: as the export records (head when it was trained "
                         "with L_sig, the teacher's pooling and projection without), or forced")
    ev.add_argument("--inception-weights", default=None,
                    help="local torch-fidelity InceptionV3 weights file: adds rfid (else only fd_teacher, not an FID)")
    enc = sub.add_parser("encode", help="write code shards (webdataset) for the AR stage",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    enc.add_argument("--ckpt", required=True, help="exported tokenizer folder")
    enc.add_argument("--shards", required=True, help="input shards: a directory, glob or brace pattern")
    enc.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="teacher and projection under bf16 autocast (FSQ stays fp32): ~1.8x faster on this CPU, "
                          "~98%% of codes equal to fp32's (the rest sit on a rounding boundary); the tokenizer "
                          "trained under bf16-mixed saw such codes")
    enc.add_argument("--out", required=True, help="output directory for code shards")
    enc.add_argument("--batch-size", type=int, default=128)
    enc.add_argument("--anchor-edits", action=argparse.BooleanOptionalAction, default=False,
                     help="an edit target's patches whose pixels equal the source's take the source's codes, so the "
                          "AR model can copy them (the teacher's contextual features move them otherwise; "
                          "arm.tokenizer.tools); an AR model learns the copy with model.edit_layout "
                          "instruction_first")
    enc.add_argument("--palette", default="shapeworld",
                     help="colours of OUT/code_colours.safetensors (each code's patch colours, which "
                          "ARModule(code_colours=...) reads): 'shapeworld' (the embedded world's 13) or 'grid:L' "
                          "(L^3 RGB centres, for other images)")
    dec = sub.add_parser("decode", help="turn codes (.npy of shape (N,) or (B, N)) into PNG images",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    dec.add_argument("--ckpt", required=True, help="exported tokenizer folder")
    dec.add_argument("--codes", required=True, help=".npy file of code indices")
    dec.add_argument("--out", required=True, help="output directory")
    dec.add_argument("--steps", type=int, default=None,
                     help="decoder Euler steps; None: the export's (10 if it records none)")
    dec.add_argument("--cfg", type=float, default=None,
                     help="decoder-side CFG scale; None: the export's (1 if it records none)")
    dec.add_argument("--seed", type=int, default=0)
    t7 = sub.add_parser("table7", help="train the four loss-ablation variants and write Table 7",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t7.add_argument("--out", default="results", help="writes OUT/table7.{json,md} and OUT/table7/<variant>/")
    t7.add_argument("--demo", default="results/demo", help="the demo folder (world, teacher, caption LM)")
    t7.add_argument("--seed", type=int, default=0)
    t7.add_argument("--steps", type=int, default=None,
                    help="joint steps per variant in place of the YAML's budget, without its decoder phase "
                         "(`make table7`: 650, to fit its 30 minutes)")
    return parser


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] in UTILITIES:
        from arm.tokenizer import tools

        ns = _utility_parser().parse_args(args)
        try:
            return getattr(tools, f"run_{ns.command}")(ns)
        except (FileNotFoundError, ValueError) as err:
            print(f"arm tokenizer {ns.command}: error: {err}", file=sys.stderr)
            return 2
    from arm.data.datamodule import ShapeWorldDataModule
    from arm.lightning_cli import ArmCLI
    from arm.tokenizer.module import TokenizerModule

    class TokenizerCLI(ArmCLI):
        def instantiate_classes(self) -> None:
            # A bad setting (a path that does not exist, sizes that do not fit the teacher) is found while the
            # module and DataModule are built: report it as one line. Errors during training keep their traceback.
            try:
                super().instantiate_classes()
                self.model.check_step_budget(self.trainer.max_steps)
            except (FileNotFoundError, ValueError) as err:
                raise BadSetting(str(err)) from err

    try:
        TokenizerCLI(TokenizerModule, ShapeWorldDataModule, args=args, save_config_kwargs={"overwrite": True})
    except BadSetting as err:
        print(f"arm: error: {err}", file=sys.stderr)
        return 2
    return 0


class BadSetting(Exception):
    """A ValueError or FileNotFoundError raised while LightningCLI builds the module or DataModule."""


if __name__ == "__main__":
    raise SystemExit(main())
