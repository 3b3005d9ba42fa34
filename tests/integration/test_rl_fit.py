"""``arm rl fit`` end to end on a tiny AR export: GRPO steps, logged rewards, kill/resume, export round trip.

The policy is a randomly initialised tiny AR model exported with a randomly initialised tiny image tokenizer
(teacher + FSQ 4*4*2 = 32 codes over an 8 x 8 grid) and the session's tiny ShapeWorld and text tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arm.ar.model import ARConfig, ARDecoder
from arm.ar.module import load_ar_bundle, save_ar, validation_sampling
from arm.ar.sequences import SPECIAL_TOKENS
from arm.data.text_tokenizer import TextTokenizer
from arm.nn import TransformerConfig
from arm.rl.cli import build_cli, main
from arm.teacher.model import DualEncoder, TeacherConfig, save_teacher
from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig, save_tokenizer
from arm.tokenizer.pixel_decoder import PixelDiTConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments/rl/tiny.yaml")


@pytest.fixture(scope="module")
def sft_export(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    text_tok = tiny_world / "tokenizer.json"
    vocab = TextTokenizer.from_file(text_tok).vocab_size
    torch.manual_seed(0)
    tcfg = TeacherConfig(image_dim=32, image_layers=1, image_heads=2, text_dim=32, text_layers=1, text_heads=2,
                         embed_dim=32, vocab_size=vocab)
    save_teacher(DualEncoder(tcfg), tcfg, str(root / "teacher"), str(text_tok))
    config = TokenizerConfig(levels=[4, 4, 2], projection=TransformerConfig(dim=32, num_layers=1, num_heads=2),
                             decoder=PixelDiTConfig(dim=32, num_layers=1, num_heads=2, time_freq_dim=32),
                             feature_dim=32, text_embed_dim=32)
    save_tokenizer(SemanticTokenizer(config), str(root / "tokenizer"), str(root / "teacher"), None)
    ar = ARConfig.preset("tiny", text_vocab_size=vocab, num_image_codes=32, num_special_tokens=len(SPECIAL_TOKENS),
                         max_seq_len=256)
    sampling = {**validation_sampling(), "cfg": 4.5, "text_cfg": 2.5}  # as an SFT export stores its validation's
    save_ar(ARDecoder(ar).state_dict(), ar, (8, 8), str(root / "sft" / "ar"), str(text_tok), str(root / "tokenizer"),
            sampling, edit_layout="instruction_first")  # not the default, so the RL export must carry it over
    return root / "sft" / "ar"


def test_grpo_fit_logs_resumes_and_exports(tiny_world, sft_export, tmp_path):
    out = tmp_path / "run"
    base = ["fit", "--config", TINY, "--model.init_from", str(sft_export), "--data.data_dir",
            str(tiny_world / "world"), "--trainer.default_root_dir", str(out), "--trainer.enable_checkpointing",
            "true", "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={out / 'checkpoints'}",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=2"]
    # num_passes 2: one rollout batch = 2 optimiser steps. "Killed" after one text-to-image rollout batch ...
    first = build_cli([*base, "--trainer.max_steps", "2", "--model.export", "false", "--data.mixture", "{t2i: 1.0}"])
    assert "reward_tag/" in " ".join(first.trainer.callback_metrics) and "reward/geneval/correct" in \
        first.trainer.callback_metrics
    assert first.trainer.global_step == 2 and (out / "checkpoints" / "last.ckpt").is_file()
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert saved and all(k.startswith("policy.") for k in saved)  # the frozen reference and tokenizer stay out
    # ... and `--ckpt_path last` continues to step 4 with the optimiser state, on edit prompts this time.
    logger = ["--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger", f"--trainer.logger.save_dir={out}"]
    cli = build_cli([*base, *logger, "--trainer.max_steps", "4", "--ckpt_path", "last", "--data.mixture", "{edit: 1.0}"])
    assert cli.trainer.global_step == 4
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/kl", "train/clip_fraction", "train/entropy", "train/ratio",
                "rollout/images_per_s", "reward/total", "reward/quality/reward", "reward/quality/palette",
                "reward/self_judge/reward", "train/zero_spread_groups", "train/ptx_nll"):
        assert key in metrics, key
    for key in ("reward/edit/match", "reward/edit/preserved", "val/edit_match"):
        assert key in metrics, key
    assert any(k.startswith("reward_edit/") for k in metrics)
    assert float(metrics["train/kl"]) >= 0.0 and 0.0 <= float(metrics["train/clip_fraction"]) <= 1.0
    # Entropy of a distribution over 32 codes lies in [0, log 32].
    assert 0.0 < float(metrics["train/entropy"]) <= float(torch.log(torch.tensor(32.0))) + 1e-4
    # The policy moved away from the reference, which stayed at the SFT weights.
    module = cli.model
    sft = load_ar_bundle(str(sft_export), image_tokenizer=False).model.state_dict()
    assert all(torch.equal(module.reference.state_dict()[k], v) for k, v in sft.items())
    assert any(not torch.equal(module.policy.state_dict()[k].cpu(), v) for k, v in sft.items())
    # The export is an AR export of the trained policy, readable by load_ar_bundle (and so by the next recipe).
    export = load_ar_bundle(str(out / "ar"))
    for key, value in module.policy.state_dict().items():
        assert torch.equal(export.model.state_dict()[key], value.cpu()), key
    meta = json.loads((out / "ar" / "config.json").read_text())
    sft_meta = json.loads((sft_export / "config.json").read_text())
    assert meta["grid"] == [8, 8] and meta["tokenizer_export"] == sft_meta["tokenizer_export"]
    # ... sampled as its initialisation is (arm eval's defaults), so a recipe and SFT are compared like with like.
    assert meta["sampling"] == sft_meta["sampling"] and meta["sampling"]["cfg"] == 4.5
    assert meta["edit_layout"] == sft_meta["edit_layout"] == "instruction_first"


def test_missing_policy_export_is_a_one_line_error(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="no AR model at"):
        main(["fit", "--config", TINY, "--model.init_from", str(tmp_path / "none"), "--data.data_dir",
              str(tiny_world / "world"), "--trainer.default_root_dir", str(tmp_path)])


def test_bench_rollouts_counts_the_recipe_batch(sft_export):
    from arm.rl.bench import bench_rollouts, recipe_settings

    bundle = load_ar_bundle(str(sft_export))
    config, _, prompts = recipe_settings()
    out = bench_rollouts(bundle.model, bundle.builder, bundle.image_tokenizer, repeats=1)
    assert out["images_per_batch"] == prompts * config.group_size
    assert out["rollouts_per_s"] == pytest.approx(out["images_per_batch"] / out["seconds_per_batch"])
