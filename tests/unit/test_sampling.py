"""arm.ar.sampling: guidance arithmetic, top-k/top-p, greedy = argmax decoding, seeds, eos, scoring, errors."""

from __future__ import annotations

import pytest
import torch

from arm.ar.model import ARConfig, ARDecoder
from arm.ar.sampling import (
    SamplingConfig,
    continuation_logprobs,
    filter_logits,
    generate_text,
    guide_logits,
    sample_image_codes,
    sample_logits,
)


def tiny(seed: int = 0, **overrides) -> ARDecoder:
    torch.manual_seed(seed)
    model = ARDecoder(ARConfig.preset("tiny", **overrides)).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy paths differ between prompts
        model.embed.weight.mul_(50)
        if model.image_head is not None:
            model.image_head.weight.mul_(50)
    return model


def random_prompts(model: ARDecoder, lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, model.config.num_text_and_special, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def greedy_reference(model: ARDecoder, prompt: list[int], num_tokens: int, image: bool = True) -> list[int]:
    """Greedy decoding by a full forward over the whole sequence at every step (no cache, no padding)."""
    seq, out = list(prompt), []
    for _ in range(num_tokens):
        hidden = model(input_ids=torch.tensor([seq]))[:, -1]
        if image:
            code = int(model.image_logits(hidden).argmax(-1))
            out.append(code)
            seq.append(model.image_token_offset + code)
        else:
            token = int(model.text_logits(hidden).argmax(-1))
            out.append(token)
            seq.append(token)
    return out


class StubDecoder(ARDecoder):
    """Each row's hidden state is the one-hot of its first real prompt token, so its image logits are a fixed row
    of ``table`` at every step: the sampler's guidance can be checked against hand-computed logits."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(ARConfig(text_vocab_size=table.shape[0], num_image_codes=table.shape[1], dim=8,
                                  num_layers=1, num_heads=2, num_kv_heads=2, mlp_hidden=8, max_seq_len=5000))
        self.table = table
        self.rows = None

    def forward(self, input_ids=None, inputs_embeds=None, mask=None, offset=0, cache=None):
        if input_ids.shape[1] > 1 or self.rows is None:  # prefill: remember each row's first real token
            first = mask.float().argmax(1) if mask is not None else torch.zeros(len(input_ids), dtype=torch.long)
            marker = input_ids.gather(1, first[:, None]).squeeze(1)
            self.rows = torch.nn.functional.one_hot(marker, self.table.shape[0]).float()  # (R, M)
        return self.rows[:, None].expand(-1, input_ids.shape[1], -1)

    def image_logits(self, hidden):
        return hidden @ self.table


def test_guide_logits_by_hand():
    c, i, u = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]])
    cfg = SamplingConfig(cfg_scale=1.5, text_scale=2.0, image_scale=0.5)
    # CFG: u + 1.5 (c - u) = (0 + 3, 3 - 4.5)
    torch.testing.assert_close(guide_logits(c, cfg, u), torch.tensor([[3.0, -1.5]]))
    # Edit: u + 0.5 (i - u) + 2 (c - i) = (0 + 0.5 + 2, 3 - 1 - 2)
    torch.testing.assert_close(guide_logits(c, cfg, u, i), torch.tensor([[2.5, 0.0]]))
    torch.testing.assert_close(guide_logits(c, cfg), c)
    with pytest.raises(ValueError, match="uncond"):
        guide_logits(c, cfg, None, i)


def test_sampler_mixes_branches_as_computed_by_hand():
    torch.manual_seed(0)
    B, C = 2, 5
    table = torch.randn(3 * B, C) * 2  # markers 0..1 cond, 2..3 image-only, 4..5 uncond
    stub = StubDecoder(table)
    prompts, image_only, uncond = [[0, 9], [1]], [[2, 9], [3]], [[4], [5, 9, 9]]
    cfg = SamplingConfig(temperature=0.0, cfg_scale=3.0, text_scale=1.5, image_scale=1.25)
    t2i = table[4:] + 3.0 * (table[:2] - table[4:])
    edit = table[4:] + 1.25 * (table[2:4] - table[4:]) + 1.5 * (table[:2] - table[2:4])
    # The guided choices differ from the conditional branch's own, so the check below sees the mixing.
    assert not torch.equal(t2i.argmax(-1), table[:2].argmax(-1)) and not torch.equal(edit.argmax(-1), t2i.argmax(-1))
    got = sample_image_codes(stub, prompts, 3, cfg, uncond=uncond)
    assert got.tolist() == [[int(t2i[b].argmax())] * 3 for b in range(B)]
    got = sample_image_codes(stub, prompts, 3, cfg, uncond=uncond, image_only=image_only)
    assert got.tolist() == [[int(edit[b].argmax())] * 3 for b in range(B)]
    # Stochastic: empirical code frequencies follow softmax(guided / temperature).
    n, temp = 3000, 0.8
    cfg = SamplingConfig(temperature=temp, text_scale=1.5, image_scale=1.25)
    got = sample_image_codes(stub, prompts, n, cfg, uncond=uncond, image_only=image_only,
                             generator=torch.Generator().manual_seed(0))
    freq = torch.stack([torch.bincount(row, minlength=C) for row in got]).float() / n
    torch.testing.assert_close(freq, (edit / temp).softmax(-1), atol=0.03, rtol=0)


def reference_filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Row by row with plain Python: the set of kept tokens as a boolean mask."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for r, row in enumerate(logits.tolist()):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        if top_k:
            order = order[:top_k]
        probs = torch.tensor([row[j] for j in order]).softmax(0).tolist()
        mass = 0.0
        for j, p in zip(order, probs):
            keep[r, j] = True
            mass += p
            if mass >= top_p:
                break
    return keep


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.5), (5, 0.8), (1, 0.3), (0, 0.999)])
def test_top_k_top_p_match_reference(top_k, top_p):
    logits = torch.randn(6, 12) * 2
    kept = torch.isfinite(filter_logits(logits, top_k, top_p))
    assert torch.equal(kept, reference_filter(logits, top_k, top_p))
    assert torch.equal(filter_logits(logits, top_k, top_p)[kept], logits[kept])


def test_temperature_zero_is_argmax_and_config_checks():
    logits = torch.randn(4, 9)
    assert torch.equal(sample_logits(logits, SamplingConfig(temperature=0.0, top_k=3)), logits.argmax(-1))
    for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_greedy_image_codes_equal_full_recomputation_with_padding():
    model = tiny()
    prompts = random_prompts(model, [3, 7, 1])
    got = sample_image_codes(model, prompts, 6, SamplingConfig(temperature=0.0))
    expected = [greedy_reference(model, p, 6) for p in prompts]
    assert got.tolist() == expected
    assert len({tuple(r) for r in expected}) > 1  # the rows really differ, so the check is not vacuous


def test_seeds_determinism_and_code_range():
    model = tiny()
    prompts = random_prompts(model, [4, 2, 5])
    uncond = random_prompts(model, [1, 1, 1], seed=1)
    cfg = SamplingConfig(temperature=1.0, top_k=20, top_p=0.95, cfg_scale=1.5)

    def draw(seed: int, **kw) -> torch.Tensor:
        return sample_image_codes(model, prompts, 12, cfg, uncond=uncond, generator=torch.Generator().manual_seed(seed),
                                  **kw)

    a = draw(0)
    assert torch.equal(a, draw(0))
    assert not torch.equal(a, draw(1))
    assert torch.equal(a, draw(0, kv_cache=False))  # the cache changes speed, not samples
    assert a.shape == (3, 12) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < model.config.num_image_codes


def test_generate_text_stops_at_eos():
    model = tiny(num_image_codes=8)
    prompts = random_prompts(model, [2, 5])
    free = [greedy_reference(model, p, 8, image=False) for p in prompts]
    eos = free[0][3]
    cut = free[0].index(eos)
    got = generate_text(model, prompts, 8, eos_id=eos)
    assert got[0] == free[0][:cut]
    assert got[1] == (free[1][:free[1].index(eos)] if eos in free[1] else free[1])
    assert generate_text(model, prompts, 0, eos_id=eos) == [[], []]
    with pytest.raises(ValueError, match="eos_id"):
        generate_text(model, prompts, 4, eos_id=model.image_token_offset)


def test_continuation_logprobs_equal_hand_sum():
    model = tiny()
    prefixes = random_prompts(model, [3, 1, 6], seed=2)
    conts = random_prompts(model, [2, 4, 0], seed=3)
    got = continuation_logprobs(model, prefixes, conts)
    for i, (p, c) in enumerate(zip(prefixes, conts)):
        with torch.no_grad():
            logp = model.text_logits(model(input_ids=torch.tensor([p + c]))[0]).log_softmax(-1)
        expected = sum(float(logp[len(p) - 1 + j, tok]) for j, tok in enumerate(c))
        assert abs(float(got[i]) - expected) < 1e-4
    assert float(got[2]) == 0.0


def test_errors_are_one_line_and_say_what_to_do():
    model = tiny()  # max_seq_len 128
    with pytest.raises(ValueError, match=r"prompts\[1\] has 100 tokens but the context is 128.*at most 78"):
        sample_image_codes(model, [[1], [1] * 100], 50)
    with pytest.raises(ValueError, match="at most 120"):
        generate_text(model, [[1] * 125], 8, eos_id=1)
    with pytest.raises(ValueError, match="uncond"):
        sample_image_codes(model, [[1]], 2, uncond=[[1], [2]])
    with pytest.raises(ValueError, match="editing guidance needs uncond"):
        sample_image_codes(model, [[1]], 2, image_only=[[1]])
    with pytest.raises(ValueError, match="outside"):
        sample_image_codes(model, [[model.config.vocab_size]], 2)
    with pytest.raises(ValueError, match="no image head"):
        sample_image_codes(tiny(num_image_codes=0), [[1]], 2)


def test_bf16_autocast_sampling_runs():
    model = tiny()
    prompts = random_prompts(model, [3, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sample_image_codes(model, prompts, 4, SamplingConfig(cfg_scale=1.5),
                                   uncond=[[1], [1]], generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 4) and codes.max() < model.config.num_image_codes
