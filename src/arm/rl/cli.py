"""``arm rl fit|validate --config experiments/rl/<recipe>.yaml``: LightningCLI over GRPO (ARM §3).

Trains ``arm.rl.module.GRPOModule`` on prompts from ``arm.rl.data.PromptDataModule`` (ShapeWorld shards) and
exports the policy to ``<default_root_dir>/ar`` in the AR export format. Recipes chain by pointing
``model.init_from`` at the previous recipe's export. ``--ckpt_path last`` resumes a killed run from the fixed
checkpoint folder its YAML names.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from arm.rl.data import PromptDataModule
from arm.rl.module import GRPOModule


def build_cli(args: list[str] | None = None) -> LightningCLI:
    """Parse ``args`` and run the subcommand; the returned CLI holds the trainer and model (for tests)."""
    return LightningCLI(GRPOModule, PromptDataModule, args=args, save_config_kwargs={"overwrite": True})


def main(args: list[str] | None = None) -> int:
    build_cli(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
