"""The GRPO understanding anchor (``arm.rl.anchor``, PPO-ptx): prompt records carry their sample's understanding
material, the examples are the AR stage's understanding sequences over the record's own image codes, the loss is
the answer tokens' cross-entropy (checked by hand), and ``ptx_weight`` changes the update."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from arm.ar.module import load_ar_bundle
from arm.rl.anchor import anchor_nll, understanding_examples, understanding_texts
from arm.rl.cli import build_cli
from arm.rl.data import PromptDataModule
from arm.rl.rollout import source_codes
from tests.integration.test_rl_fit import TINY, sft_export  # noqa: F401  (the tiny SFT export)


def _records(world, task: str, n: int) -> list[dict]:
    dm = PromptDataModule(data_dir=str(world), mixture={task: 1.0}, batch_size=n, seed=0)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))["record"]


def test_prompt_records_carry_the_samples_understanding_material(tiny_world):
    for task, field in (("t2i", "scene_image"), ("edit", "source_image")):
        for record in _records(tiny_world / "world", task, 4):
            image = np.asarray(record[field])
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
            items = understanding_texts(record)
            assert record["caption"] and items[-1] == ("caption", None, record["caption"])
            assert {t for t, _, _ in items} >= {"vqa", "mme", "caption"}
            assert all(isinstance(a, str) and a for _, _, a in items)


def test_anchor_examples_and_loss_by_hand(sft_export):  # noqa: F811
    bundle = load_ar_bundle(str(sft_export))
    model, builder = bundle.model.eval(), bundle.builder
    rng = np.random.default_rng()
    records = [{"task": "t2i", "scene_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                "understanding": [{"task": "vqa", "question": "How many circles are there?", "answer": "2"},
                                  {"task": "mme", "question": "Is it red?", "answer": "No"}],
                "caption": None},
               {"task": "t2i", "scene_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                "understanding": [], "caption": "a red square above a blue circle"},
               {"task": "t2i", "scene_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                "understanding": [], "caption": None}]  # nothing to ask: no example
    codes = source_codes(bundle.image_tokenizer, records, torch.device("cpu"), "scene_image")
    examples = understanding_examples(records, codes, builder)
    assert [e.ids for e in examples] == [builder.understanding(codes[0], "How many circles are there?", "2").ids,
                                         builder.understanding(codes[0], "Is it red?", "No", "mme").ids,
                                         builder.caption(codes[1], "a red square above a blue circle").ids]
    # By hand: each example alone, unpadded, CE of every target after the prompt through the text head.
    with torch.no_grad():
        losses = []
        for e in examples:
            ids = torch.tensor(e.ids)
            hidden = model(input_ids=ids[None, :-1])[0]  # (T-1, D)
            logits = model.text_logits(hidden[e.prompt_len - 1:]).float()
            losses.append(F.cross_entropy(logits, ids[e.prompt_len:], reduction="none"))
        expected = torch.cat(losses).mean()
        got = anchor_nll(model, examples, builder.tokenizer.pad_id)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert anchor_nll(model, [], builder.tokenizer.pad_id) is None


def test_ptx_weight_changes_the_update_and_is_logged(tiny_world, sft_export, tmp_path):  # noqa: F811
    def one_step(weight: float):
        cli = build_cli(["fit", "--config", TINY, "--model.init_from", str(sft_export), "--data.data_dir",
                         str(tiny_world / "world"), "--trainer.default_root_dir", str(tmp_path / str(weight)),
                         "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--model.num_passes", "1",
                         "--model.export", "false", "--data.mixture", "{t2i: 1.0}", "--model.ptx_weight",
                         str(weight)])
        return cli.trainer.callback_metrics, cli.model.policy.state_dict()

    metrics0, policy0 = one_step(0.0)
    metrics1, policy1 = one_step(1.0)
    assert "train/ptx_nll" not in metrics0 and float(metrics1["train/ptx_nll"]) > 0
    # Same seed, same rollouts: the GRPO terms agree, so any difference is the anchor's gradient.
    assert float(metrics0["reward/total"]) == float(metrics1["reward/total"])
    assert any(not torch.equal(policy0[k], policy1[k]) for k in policy0)
