"""What GRPO keeps of its starting model. ``GRPOModule(trainable=...)``: only the parameters whose names match are
updated, the rest keep the starting export's exact values, and a pattern that matches nothing (or is no regular
expression) is a clear error. ``merge_alpha`` / ``merge_base``: the export is base + alpha (policy - base), checked
against the trained policy's own weights."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from arm.ar.module import load_ar_bundle
from arm.rl.cli import build_cli
from arm.rl.module import interpolate_weights, restrict_trainable
from tests.integration.test_rl_fit import TINY, sft_export  # noqa: F401  (the tiny SFT export)


def test_restrict_trainable_freezes_what_no_pattern_matches(sft_export):  # noqa: F811
    model = load_ar_bundle(str(sft_export)).model
    names = [n for n, _ in model.named_parameters()]
    kept = restrict_trainable(model, [r"attn\.(q|v)\.", r"^image_head\."])
    expected = [n for n in names if (".attn.q." in n or ".attn.v." in n or n.startswith("image_head."))]
    assert kept == expected and len(expected) > 2
    assert [n for n, p in model.named_parameters() if p.requires_grad] == expected
    with pytest.raises(ValueError, match="matches no parameter"):
        restrict_trainable(model, ["attn", "no_such_layer"])
    with pytest.raises(ValueError, match="not a valid regular expression"):
        restrict_trainable(model, ["attn.(q"])


def test_only_matching_parameters_move_in_a_grpo_step(tiny_world, sft_export, tmp_path):  # noqa: F811
    start = load_ar_bundle(str(sft_export)).model.state_dict()
    cli = build_cli(["fit", "--config", TINY, "--model.init_from", str(sft_export), "--data.data_dir",
                     str(tiny_world / "world"), "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps",
                     "2", "--trainer.limit_val_batches", "0", "--model.export", "false", "--data.mixture",
                     "{t2i: 1.0}", "--model.trainable", '["attn\\\\."]'])
    after = cli.model.policy.state_dict()
    attention = re.compile(r"attn\.")
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert moved, "the GRPO steps changed nothing"
    assert all(attention.search(k) for k in moved), sorted(k for k in moved if not attention.search(k))
    # Every attention matrix received an update (warm-up lr > 0, Adam moves every parameter with a gradient).
    assert all(k in moved for k in start if attention.search(k) and k.endswith(".weight"))


def test_interpolate_weights_by_hand():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    base = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g).bfloat16()}
    state = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g).bfloat16()}
    alpha = float(torch.rand(1, generator=g))
    merged = interpolate_weights(state, base, alpha)
    assert torch.allclose(merged["a"], (1 - alpha) * base["a"] + alpha * state["a"], atol=1e-6)
    assert merged["b"].dtype == torch.bfloat16
    assert torch.equal(interpolate_weights(state, base, 0.0)["a"], base["a"])
    assert torch.equal(interpolate_weights(state, base, 1.0)["a"], state["a"])
    with pytest.raises(ValueError, match="different names"):
        interpolate_weights(state, {"a": base["a"]}, 0.5)
    with pytest.raises(ValueError, match="same model size"):
        interpolate_weights(state, {**base, "a": torch.zeros(4, 3)}, 0.5)


@pytest.mark.parametrize("explicit_base", [False, True])
def test_export_is_the_interpolation_toward_the_merge_base(tiny_world, sft_export, tmp_path,  # noqa: F811
                                                           explicit_base):
    base_dir = sft_export
    extra = []
    if explicit_base:  # another folder holding the same weights: read through the merge_base path
        base_dir = tmp_path / "sft_copy"
        shutil.copytree(sft_export, base_dir)
        extra = ["--model.merge_base", str(base_dir)]
    cli = build_cli(["fit", "--config", TINY, "--model.init_from", str(sft_export), "--data.data_dir",
                     str(tiny_world / "world"), "--trainer.default_root_dir", str(tmp_path / "run"),
                     "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--data.mixture",
                     "{edit: 1.0}", "--model.merge_alpha", "0.25", *extra])
    policy = cli.model.policy.state_dict()
    base = load_ar_bundle(str(base_dir), image_tokenizer=False).model.state_dict()
    exported = load_ar_bundle(str(tmp_path / "run" / "ar"), image_tokenizer=False).model.state_dict()
    assert any(not torch.equal(policy[k], base[k]) for k in policy), "the policy did not move"
    for k in policy:
        assert torch.allclose(exported[k], base[k] + 0.25 * (policy[k] - base[k]), atol=1e-6), k


def test_bad_merge_settings_are_clear_errors(tiny_world, sft_export, tmp_path):  # noqa: F811
    args = ["fit", "--config", TINY, "--model.init_from", str(sft_export), "--data.data_dir",
            str(tiny_world / "world"), "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "1"]
    with pytest.raises(ValueError, match="merge_alpha must be in"):
        build_cli(args + ["--model.merge_alpha", "1.5"])
    with pytest.raises(FileNotFoundError, match="no AR model at"):
        build_cli(args + ["--model.merge_alpha", "0.5", "--model.merge_base", str(tmp_path / "missing")])
