"""The loss on the codes of the images a sequence reads (``ARModule(condition_image_weight=...)``)."""

from __future__ import annotations

import pytest
import torch

from arm.ar.model import ARConfig, ARDecoder
from arm.ar.module import ARModule, token_nll
from arm.ar.sequences import collate_examples


def _module(tokenizer: str, **kwargs) -> ARModule:
    module = ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, **kwargs)
    module.configure_model()
    return module


def _examples(builder, generator: torch.Generator) -> list:
    def codes():
        return torch.randint(0, 32, (64,), generator=generator).tolist()

    return [builder.t2i("a photo of a red square", codes()),
            builder.understanding(codes(), "what colour is the square?", "red"),
            builder.caption(codes(), "a red square"),
            builder.edit(codes(), "make the square blue", codes()),
            builder.edit(codes(), "make it blue", codes(), drop_image=True)]


def test_condition_nll_is_the_image_heads_nll_of_every_unscored_code(tiny_world):
    module = _module(str(tiny_world / "tokenizer.json"))
    generator = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    batch = collate_examples(_examples(module.builder, generator), module.tokenizer.pad_id)
    ids, mask, model = batch["ids"], batch["loss_mask"], module.model.eval()
    offset = model.config.image_token_offset
    with torch.no_grad():
        got = token_nll(model, ids, mask, condition_images=True)
        plain = token_nll(model, ids, mask)
        hidden = model(input_ids=ids[:, :-1])
    for kind in ("image", "text"):  # the scored tokens are untouched
        assert torch.equal(got[kind], plain[kind])
    assert "condition" not in plain
    want, rows = [], []
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if not mask[b, t] and ids[b, t] >= offset:  # by hand: an image code in the prompt
                logp = model.image_logits(hidden[b, t - 1]).float().log_softmax(-1)
                want.append(-logp[int(ids[b, t]) - offset])
                rows.append(b)
    assert torch.allclose(got["condition"], torch.stack(want), atol=1e-5)
    # 64 codes read by the understanding, caption and edit rows; none in t2i or an edit without its source
    assert torch.bincount(got["condition_rows"], minlength=5).tolist() == [0, 64, 64, 64, 0]
    assert got["condition_rows"].tolist() == rows


def test_condition_codes_follow_the_unconditional_t2i_prompt(tiny_world):
    builder = _module(str(tiny_world / "tokenizer.json")).builder
    uncond = builder.t2i_prompt("a photo of a red square", drop_text=True)
    for example in _examples(builder, torch.Generator().manual_seed(3))[1:4]:
        assert example.ids[: len(uncond)] == uncond  # the codes read are scored in CFG's unconditional context


def test_module_adds_the_weighted_condition_mean_and_nothing_else(tiny_world):
    tokenizer = str(tiny_world / "tokenizer.json")
    with pytest.raises(ValueError, match="condition_image_weight must be >= 0"):
        ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, condition_image_weight=-1.0)
    plain = _module(tokenizer, contrast_weight=1.0, contrast_words=[["square", "triangle"]])
    module = _module(tokenizer, condition_image_weight=0.3, contrast_weight=1.0,
                     contrast_words=[["square", "triangle"]])
    module.model.load_state_dict(plain.model.state_dict())
    batch = collate_examples(_examples(module.builder, torch.Generator().manual_seed(5)), module.tokenizer.pad_id)
    plain.train()
    module.train()
    loss, means, nll = module._losses(batch)
    plain_loss, plain_means, _ = plain._losses(batch)
    for key in ("text", "image", "contrast"):
        assert torch.allclose(means[key], plain_means[key])
    assert "condition" not in plain_means
    # two negatives (square -> triangle in the t2i prompt and in the edit's instruction): the edit's copy holds its
    # 64 source codes, which stay out of the condition loss as the negatives stay out of the next-token loss
    assert means["contrast_pairs"].item() == 2.0
    assert nll["condition"].numel() == 3 * 64 and bool((nll["condition_rows"] < len(batch["task"])).all())
    assert torch.allclose(means["condition"], nll["condition"].mean())
    assert torch.allclose(loss, plain_loss + 0.3 * means["condition"])
    grad = torch.autograd.grad(means["condition"], module.model.image_head.weight)[0]
    assert grad.abs().sum() > 0  # the condition term trains the image head


def test_token_nll_without_condition_codes_still_returns_an_empty_group():
    model = ARDecoder(ARConfig.preset("tiny")).eval()
    ids = torch.randint(0, model.config.image_token_offset, (2, 6))  # text only
    with torch.no_grad():
        out = token_nll(model, ids, torch.ones(2, 6, dtype=torch.bool), condition_images=True)
    assert out["condition"].numel() == 0 and out["condition_rows"].numel() == 0
