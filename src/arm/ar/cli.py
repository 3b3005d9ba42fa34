"""``arm ar fit|validate|test --config experiments/ar/<name>.yaml``: LightningCLI over the unified AR model.

Trains ``arm.ar.module.ARModule`` on ``arm.data.codes.CodeDataModule`` (the image tokenizer's code shards) and
exports ``<default_root_dir>/ar/``, which ``arm generate|edit|ask --ckpt`` read. The text tokenizer is named once,
as ``model.tokenizer_path``; the DataModule gets the same file, and the edit layout of ``model.edit_layout``.
"""

from __future__ import annotations

from arm.ar.module import ARModule
from arm.data.codes import CodeDataModule
from arm.lightning_cli import ArmCLI


class ARCLI(ArmCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.tokenizer_path", "data.tokenizer_path")
        parser.link_arguments("model.edit_layout", "data.edit_layout")
        parser.link_arguments("model.inventory_weight", "data.inventory", compute_fn=lambda weight: weight > 0)


def main(args: list[str] | None = None) -> int:
    ARCLI(ARModule, CodeDataModule, args=args, save_config_kwargs={"overwrite": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
