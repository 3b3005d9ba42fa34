"""``arm lm fit|validate|test --config experiments/lm/<name>.yaml``: LightningCLI over the small caption LM.

Trains ``arm.ar.lm_module.CaptionLMModule`` on ``arm.data.datamodule.ShapeWorldDataModule`` (task ``caption``) and
exports ``<default_root_dir>/lm/``, which ``arm.ar.lm_module.load_lm`` reads for the tokenizer's L_cap (paper §1).
"""

from __future__ import annotations

from arm.ar.lm_module import CaptionLMModule
from arm.data.datamodule import ShapeWorldDataModule
from arm.lightning_cli import ArmCLI


def main(args: list[str] | None = None) -> int:
    ArmCLI(CaptionLMModule, ShapeWorldDataModule, args=args, save_config_kwargs={"overwrite": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
