"""FSQ code factors of the AR decoder (``arm.ar.model.CodeFactors``): coordinates, effective rows, gradients, folding
into a plain decoder, and sampling through the packed decoder."""

from __future__ import annotations

import pytest
import torch

from arm.ar.model import CODE_FACTOR_PREFIX, ARConfig, ARDecoder, fold_code_factors
from arm.ar.sampling import SamplingConfig, sample_image_codes

LEVELS = [4, 2, 4]  # 32 codes: the tiny preset's image vocabulary


def tiny(seed: int) -> ARDecoder:
    torch.manual_seed(seed)
    return ARDecoder(ARConfig.preset("tiny")).eval()


def with_random_factors(seed: int) -> ARDecoder:
    model = tiny(seed)
    factors = model.enable_code_factors(LEVELS)
    with torch.no_grad():  # sharper than the 0.02 init, so greedy paths depend on the factors
        factors.embed.normal_(0.0, 1.0)
        factors.head.normal_(0.0, 1.0)
        model.embed.weight.mul_(30)
        model.image_head.weight.mul_(30)
    return model


def hand_coords(levels: list[int]) -> torch.Tensor:
    """Mixed-radix digits (channel 0 least significant), centred and scaled by floor(L / 2), one code at a time."""
    rows = []
    for code in range(torch.tensor(levels).prod().item()):
        row, rest = [], code
        for level in levels:
            digit, rest = rest % level, rest // level
            row.append((digit - level // 2) / (level // 2))
        rows.append(row)
    return torch.tensor(rows)


def test_coordinates_are_the_fsq_codes_by_hand():
    model = tiny(0)
    factors = model.enable_code_factors(LEVELS)
    assert torch.equal(factors.coords, hand_coords(LEVELS))
    assert f"{CODE_FACTOR_PREFIX}coords" in model.state_dict()  # persistent: a state dict folds on its own


def test_zero_initialised_factors_change_nothing():
    seed = int(torch.randint(0, 10_000, ()).item())
    plain, factored = tiny(seed), tiny(seed)
    factored.enable_code_factors(LEVELS)
    ids = torch.randint(0, plain.config.vocab_size, (3, 9))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids), factored(input_ids=ids))
        hidden = plain(input_ids=ids)
        assert torch.equal(plain.image_logits(hidden), factored.image_logits(hidden))


def test_effective_rows_and_fold_match_a_hand_built_plain_decoder():
    model = with_random_factors(int(torch.randint(0, 10_000, ()).item()))
    offset, coords = model.config.image_token_offset, hand_coords(LEVELS)
    with torch.no_grad():
        table = model.embed.weight.clone()
        table[offset:] += coords @ model.code_factors.embed
        head = model.image_head.weight + coords @ model.code_factors.head
        torch.testing.assert_close(model.embedding_weight(), table)
        torch.testing.assert_close(model.image_head_weight, head)
        # A plain decoder given those rows by hand, and one loaded from the folded state dict, compute the same.
        by_hand = ARDecoder(model.config).eval()
        state = {k: v for k, v in model.state_dict().items() if not k.startswith(CODE_FACTOR_PREFIX)}
        by_hand.load_state_dict({**state, "embed.weight": table, "image_head.weight": head})
        folded = ARDecoder(model.config).eval()
        folded.load_state_dict(fold_code_factors(model.state_dict(), offset))  # strict: no code_factors keys left
        ids = torch.randint(0, model.config.vocab_size, (2, 13))
        expected = model.image_logits(model(input_ids=ids))
        for plain in (by_hand, folded):
            torch.testing.assert_close(plain.image_logits(plain(input_ids=ids)), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(plain.text_logits(plain(input_ids=ids)), model.text_logits(model(input_ids=ids)),
                                       atol=1e-5, rtol=1e-5)
    plain_state = tiny(1).state_dict()
    assert fold_code_factors(plain_state, offset) is plain_state


def test_factor_gradients_are_the_chain_rule_of_the_image_rows():
    model = with_random_factors(int(torch.randint(0, 10_000, ()).item()))
    model.train()
    offset = model.config.image_token_offset
    folded = ARDecoder(model.config)
    folded.load_state_dict(fold_code_factors(model.state_dict(), offset))
    ids = torch.cat([torch.randint(0, offset, (2, 5)), torch.randint(offset, model.config.vocab_size, (2, 7))], 1)
    for net in (model, folded):
        net.image_logits(net(input_ids=ids)).logsumexp(-1).sum().backward()
    coords = hand_coords(LEVELS)
    # d loss / d A = coords^T (d loss / d rows), with the rows' gradient taken from the plain decoder.
    torch.testing.assert_close(model.code_factors.embed.grad, coords.T @ folded.embed.weight.grad[offset:],
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.code_factors.head.grad, coords.T @ folded.image_head.weight.grad,
                               atol=1e-5, rtol=1e-4)
    assert model.code_factors.embed.grad.abs().sum() > 0
    # Text-only input: the embedding factors get no gradient (only image rows carry them).
    model.zero_grad()
    model.text_logits(model(input_ids=ids[:, :5])).logsumexp(-1).sum().backward()
    assert model.code_factors.embed.grad is None or model.code_factors.embed.grad.abs().sum() == 0


def test_sampler_uses_the_effective_rows():
    model = with_random_factors(int(torch.randint(0, 10_000, ()).item()))
    folded = ARDecoder(model.config).eval()
    folded.load_state_dict(fold_code_factors(model.state_dict(), model.config.image_token_offset))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, model.config.num_text_and_special, (n,), generator=g).tolist() for n in (2, 6, 4)]
    greedy = SamplingConfig(temperature=0.0)
    codes = sample_image_codes(model, prompts, 8, greedy)  # the packed KV-cache decoder
    assert torch.equal(codes, sample_image_codes(folded, prompts, 8, greedy))
    assert torch.equal(codes, sample_image_codes(model, prompts, 8, greedy, kv_cache=False))
    model.code_factors = None  # the same table and head without the factors' terms draw other codes: not vacuous
    assert not torch.equal(codes, sample_image_codes(model, prompts, 8, greedy))
    assert len({tuple(r) for r in codes.tolist()}) > 1


def test_levels_must_match_the_codebook():
    with pytest.raises(ValueError, match=r"give 16 codes but the model has 32 image codes"):
        tiny(0).enable_code_factors([4, 4])
