"""``arm teacher fit`` on a tiny world: runs end to end through LightningCLI and exports a loadable teacher."""

from __future__ import annotations

import torch

from arm.teacher.cli import main
from arm.teacher.model import load_teacher


def _args(root, *extra: str) -> list[str]:
    return ["fit", "--config", "experiments/teacher/tiny.yaml", "--data.data_dir", str(root / "world"),
            "--model.tokenizer_path", str(root / "tokenizer.json"), "--trainer.default_root_dir",
            str(root / "run_teacher"), "--trainer.logger.init_args.save_dir", str(root / "run_teacher"), *extra]


def test_fast_dev_run(tiny_world):
    main(_args(tiny_world, "--trainer.fast_dev_run", "1"))


def test_fit_validates_zero_shot_and_exports(tiny_world, monkeypatch):
    from lightning.pytorch.cli import LightningCLI

    seen = {}
    original = LightningCLI.__init__

    def keep_cli(self, *a, **k):  # main() returns an exit code; keep the CLI to read the trainer's metrics
        original(self, *a, **k)
        seen["cli"] = self

    monkeypatch.setattr(LightningCLI, "__init__", keep_cli)
    main(_args(tiny_world))
    metrics = seen["cli"].trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/zero_shot_color_acc", "val/zero_shot_shape_acc"):
        assert key in metrics, key
    assert 0.0 <= float(metrics["val/zero_shot_color_acc"]) <= 1.0
    teacher = load_teacher(str(tiny_world / "run_teacher" / "teacher"))
    with torch.no_grad():
        assert teacher.image_embedding(torch.rand(2, 3, 64, 64)).shape == (2, 32)
        assert teacher.embed_texts(["a red circle"]).shape == (1, 32)
        trained = seen["cli"].model.model
        images = torch.rand(2, 3, 64, 64)
        torch.testing.assert_close(teacher.image_embedding(images), trained.eval().image_embedding(images))
    hp = seen["cli"].model.hparams  # tiny.yaml trains every teacher loss: hard negatives, short texts, attributes, presence
    assert hp.hard_negatives == 1 and hp.attribute_weight > 0 and hp.presence_weight > 0
    assert list((tiny_world / "run_teacher" / "logs").glob("version_*/events.out.tfevents.*")), "TensorBoard logs missing"
    assert list((tiny_world / "run_teacher" / "logs").glob("version_*/checkpoints/last.ckpt")), "no last.ckpt"


def test_resume_from_last_checkpoint(tiny_world, monkeypatch):
    """A second fit with ``--ckpt_path last`` and a larger step budget continues from the saved step."""
    from lightning.pytorch.cli import LightningCLI

    seen = {}
    original = LightningCLI.__init__

    def keep_cli(self, *a, **k):
        original(self, *a, **k)
        seen["cli"] = self

    monkeypatch.setattr(LightningCLI, "__init__", keep_cli)
    root = tiny_world / "resume"
    # a fixed logger version keeps the checkpoint folder fixed, as shapeworld.yaml's fixed dirpath does
    args = ["fit", "--config", "experiments/teacher/tiny.yaml", "--data.data_dir", str(tiny_world / "world"),
            "--model.tokenizer_path", str(tiny_world / "tokenizer.json"), "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root), "--trainer.logger.init_args.version", "0"]
    main(args)
    assert (root / "logs" / "version_0" / "checkpoints" / "last.ckpt").exists()
    assert seen["cli"].trainer.global_step == 4
    main([*args, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    assert seen["cli"].trainer.global_step == 6
    assert str(seen["cli"].trainer.ckpt_path).endswith("last.ckpt")  # restored, not trained from scratch
