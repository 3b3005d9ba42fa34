"""ARDecoder (ARM §2): shapes, causality, tying, id layout, preset sizes, and the prefix caption loss."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from arm.ar.model import (
    PRESETS,
    ARConfig,
    ARDecoder,
    count_parameters,
    count_preset_parameters,
    lm_loss,
    prefix_caption_loss,
)


def tiny(**overrides) -> ARDecoder:
    torch.manual_seed(0)
    return ARDecoder(ARConfig.preset("tiny", **overrides)).eval()


def test_shapes_and_id_layout():
    model = tiny()
    c = model.config
    assert (c.text_vocab_size, c.num_special_tokens, c.num_image_codes) == (64, 4, 32)
    assert c.image_token_offset == 68 and c.vocab_size == 100 and c.special_id(0) == 64 and c.special_id(3) == 67
    with pytest.raises(IndexError):
        c.special_id(4)
    ids = torch.randint(0, c.vocab_size, (2, 7))
    hidden = model(input_ids=ids)
    assert hidden.shape == (2, 7, 32)
    assert model.text_logits(hidden).shape == (2, 7, 68)
    assert model.image_logits(hidden).shape == (2, 7, 32)
    codes = torch.tensor([0, 5, 31])
    assert torch.equal(model.image_codes(model.image_ids(codes)), codes)
    assert model.is_image_id(model.image_ids(codes)).all()
    torch.testing.assert_close(model(inputs_embeds=model.embed(ids)), hidden)
    with pytest.raises(ValueError):
        model(input_ids=ids, inputs_embeds=model.embed(ids))


def test_text_only_has_no_image_head():
    model = tiny(num_image_codes=0)
    assert model.image_head is None
    with pytest.raises(ValueError, match="no image head"):
        model.image_logits(torch.zeros(1, 1, 32))


def test_causal():
    model = tiny()
    ids = torch.randint(0, 100, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 100
    a, b = model(input_ids=ids), model(input_ids=changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_padding_mask_leaves_real_tokens_unchanged():
    model = tiny()
    ids = torch.randint(0, 100, (1, 8))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.arange(11)[None] < 8
    torch.testing.assert_close(model(input_ids=padded, mask=mask)[:, :8], model(input_ids=ids), atol=1e-5, rtol=1e-5)


def test_tied_head_shares_storage_untied_does_not():
    tied = tiny()
    assert tied.text_head is None
    assert tied.text_head_weight.data_ptr() == tied.embed.weight.data_ptr()
    assert tied.text_head_weight.shape == (68, 32)
    names = [n for n, _ in tied.named_parameters()]
    assert "text_head.weight" not in names
    untied = tiny(tie_embeddings=False)
    assert untied.text_head_weight.data_ptr() != untied.embed.weight.data_ptr()
    assert count_parameters(untied) - count_parameters(tied) == 68 * 32


def test_image_head_is_separate():
    model = tiny()
    assert model.image_head.weight.shape == (32, 32)
    assert model.image_head.weight.data_ptr() != model.embed.weight.data_ptr()


def test_preset_parameter_counts_on_meta():
    # Qwen2.5-0.5B is "0.49B" (494,032,768 params with tied embeddings); 1.5B: 1.54B; 7B: 7.62B.
    assert count_preset_parameters(ARConfig.preset("qwen2.5-0.5b")) == 494_032_768
    assert abs(count_preset_parameters(ARConfig.preset("qwen2.5-1.5b")) - 1.54e9) < 0.01e9
    assert abs(count_preset_parameters(ARConfig.preset("qwen2.5-7b")) - 7.62e9) < 0.01e9
    # Image codes add one embedding row and one image-head row each.
    extended = ARConfig.preset("qwen2.5-0.5b", num_image_codes=65536, num_special_tokens=8)
    assert count_preset_parameters(extended) == 494_032_768 + (2 * 65536 + 8) * 896
    assert PRESETS["shapeworld"].num_layers == 6 and PRESETS["shapeworld"].dim == 256


def test_missing_text_vocab_is_an_error():
    with pytest.raises(ValueError, match="text_vocab_size"):
        ARDecoder(ARConfig.preset("shapeworld"))
    with pytest.raises(ValueError, match="unknown ARConfig preset"):
        ARConfig.preset("gpt-5")


def test_prefix_loss_equals_plain_lm_loss():
    """A prefix made of the embeddings of the first k tokens gives the LM loss of the rest (k=1: the whole loss)."""
    model = tiny(num_image_codes=0, num_special_tokens=0)
    ids = torch.randint(0, 64, (3, 12))
    full = lm_loss(model, ids)
    by_prefix = prefix_caption_loss(model, model.embed(ids[:, :1]), ids[:, 1:])
    torch.testing.assert_close(by_prefix, full)
    # By hand: mean NLL of tokens 4.. given everything before them.
    logp = model.text_logits(model(input_ids=ids)).log_softmax(-1)
    by_hand = -logp[:, 3:-1].gather(-1, ids[:, 4:, None]).mean()
    torch.testing.assert_close(prefix_caption_loss(model, model.embed(ids[:, :4]), ids[:, 4:]), by_hand)


def test_prefix_loss_ignores_padding_and_reaches_prefix():
    model = tiny(num_image_codes=0, num_special_tokens=0)
    ids = torch.randint(1, 64, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    prefix = torch.randn(2, 3, 32, requires_grad=True)
    loss = prefix_caption_loss(model, prefix, ids, mask)
    garbage = ids.clone()
    garbage[1, 3:] = 0
    torch.testing.assert_close(prefix_caption_loss(model, prefix, garbage, mask), loss)
    loss.backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    # With right padding the masked LM loss equals the loss of the unpadded row alone.
    row = prefix_caption_loss(model, prefix[1:], ids[1:, :3])
    first = prefix_caption_loss(model, prefix[:1], ids[:1])
    torch.testing.assert_close(loss, (first * 6 + row * 3) / 9)


def test_dataclass_roundtrip():
    c = ARConfig.preset("tiny")
    assert ARConfig(**dataclasses.asdict(c)) == c


@pytest.mark.parametrize("std", [0.02, 0.05])
def test_initializer_range_sets_every_matrix_std(std):
    """Every matrix is drawn from normal(0, initializer_range); biases start at 0 and norm gains at 1. The
    sample std of each large matrix (>= 2,048 entries) lies within 10% of the configured one (its relative
    standard error is ~1/sqrt(2n) < 1.6%), checked on a fresh random seed."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    model = ARDecoder(ARConfig.preset("tiny", initializer_range=std))
    checked = 0
    for name, p in model.named_parameters():
        if p.ndim == 2 and p.numel() >= 2048:
            assert abs(p.std().item() / std - 1) < 0.10, (name, seed)
            assert abs(p.mean().item()) < 4 * std / p.numel() ** 0.5, (name, seed)
            checked += 1
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        elif p.ndim == 1:
            assert torch.all(p == 1), name
    assert checked >= 4  # embedding, attention and MLP matrices at least
