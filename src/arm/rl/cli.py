"""``arm rl fit|validate --config experiments/rl/<recipe>.yaml``: LightningCLI over GRPO (ARM §3).

Trains ``arm.rl.module.GRPOModule`` on prompts from ``arm.rl.data.PromptDataModule`` (ShapeWorld shards) and
exports the policy to ``<default_root_dir>/ar`` in the AR export format. Recipes chain by pointing
``model.init_from`` at the previous recipe's export. ``--ckpt_path last`` resumes a killed run from the fixed
checkpoint folder its YAML names. ``arm rl table8`` runs every recipe and writes Table 8 (``arm.rl.table8``).
"""

from __future__ import annotations

import sys


def build_cli(args: list[str] | None = None):
    """Parse ``args`` and run the subcommand; the returned CLI holds the trainer and model (for tests)."""
    from arm.lightning_cli import ArmCLI
    from arm.rl.data import PromptDataModule
    from arm.rl.module import GRPOModule

    return ArmCLI(GRPOModule, PromptDataModule, args=args, save_config_kwargs={"overwrite": True})


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] == "table8":
        from arm.rl.table8 import main as table8

        try:
            return table8(args[1:])
        except (FileNotFoundError, ValueError) as err:
            print(f"arm rl table8: error: {err}", file=sys.stderr)
            return 2
    build_cli(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
