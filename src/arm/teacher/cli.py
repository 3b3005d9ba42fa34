"""``arm teacher fit|validate|test --config experiments/teacher/<name>.yaml``: LightningCLI over the teacher.

Trains ``arm.teacher.module.TeacherModule`` on ``arm.data.datamodule.ShapeWorldDataModule`` (use task ``scene`` so
validation can score zero-shot colour and shape; see the module docstring).
"""

from __future__ import annotations

from arm.data.datamodule import ShapeWorldDataModule
from arm.lightning_cli import ArmCLI
from arm.teacher.module import TeacherModule


def main(args: list[str] | None = None) -> int:
    ArmCLI(TeacherModule, ShapeWorldDataModule, args=args, save_config_kwargs={"overwrite": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
