"""The packed decode path (arm.nn.decode) against the model's own cached forward, and the sampler's draws."""

import pytest
import torch

from arm.ar.model import ARConfig, ARDecoder
from arm.ar.sampling import SamplingConfig, draw, generate_text, sample_image_codes
from arm.nn.decode import PackedDecoder

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
UNCOND = [[4, 5], [8], [11]]


def tiny(seed: int = 0) -> ARDecoder:
    torch.manual_seed(seed)
    return ARDecoder(ARConfig.preset("tiny")).eval()  # GQA: 4 query heads over 2 kv heads


@torch.no_grad()
def test_packed_fp32_steps_match_the_cached_forward_with_left_padding():
    model = tiny()
    ids = torch.tensor([[0, 0, 3, 4, 5], [6, 7, 8, 9, 10]])
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    caches = [model.new_cache(2, 12) for _ in range(2)]
    for cache in caches:
        model(input_ids=ids, mask=mask, cache=cache)
    packed = PackedDecoder(model.body, torch.float32)
    for token in ([70, 71], [72, 99], [98, 73]):
        step = torch.tensor(token)
        eager = model(input_ids=step[:, None], cache=caches[0])[:, -1]
        fast = packed.step(model.embed(step), caches[1])
        torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
    # and the recomputation over the whole sequence agrees too (cached == uncached)
    full = torch.cat([ids, torch.tensor([[70, 72, 98], [71, 99, 73]])], 1)
    torch.testing.assert_close(fast, model(input_ids=full, mask=torch.cat([mask, torch.ones(2, 3, dtype=torch.bool)],
                                                                          1))[:, -1], atol=1e-5, rtol=1e-5)


def test_fast_fp32_sampling_equals_the_previous_path():
    model = tiny()
    for config in (SamplingConfig(temperature=0.0, cfg_scale=1.5), SamplingConfig(temperature=1.0, cfg_scale=1.5)):
        old = sample_image_codes(model, PROMPTS, 20, config, uncond=UNCOND, fast=False,
                                 generator=torch.Generator().manual_seed(3))
        new = sample_image_codes(model, PROMPTS, 20, config, uncond=UNCOND, fast=True,
                                 generator=torch.Generator().manual_seed(3))
        assert torch.equal(old, new)
    assert generate_text(model, PROMPTS, 10, eos_id=0, fast=False) == generate_text(model, PROMPTS, 10, eos_id=0)


@torch.no_grad()
def test_bf16_compiled_decode_tracks_the_eager_fp32_logits_and_greedy_choices():
    # Teacher-forced over the same tokens: bf16 rounding only flips near-ties, which a random tiny model has
    # plenty of (a free-running greedy sequence then diverges from the first flip), so compare step by step.
    model = tiny()
    ids = torch.tensor(PROMPTS[0] * 2)[None].repeat(4, 1)  # (4, 10)
    steps = torch.randint(68, 100, (12, 4), generator=torch.Generator().manual_seed(0))
    ref_cache, cache = model.new_cache(4, 22), model.new_cache(4, 22, torch.bfloat16)
    head = model.image_head.weight
    ref = [model(input_ids=ids, cache=ref_cache)[:, -1]]
    got = [model(input_ids=ids, cache=cache)[:, -1]]
    packed = PackedDecoder(model.body, torch.bfloat16, compile_attention=True)
    for step in steps:
        ref.append(model(input_ids=step[:, None], cache=ref_cache)[:, -1])
        got.append(packed.step(model.embed(step), cache))
    ref_logits = torch.stack(ref) @ head.T  # (13, 4, C)
    got_logits = (torch.stack(got).bfloat16() @ head.T.bfloat16()).float()
    scale = ref_logits.std()
    assert (got_logits - ref_logits).abs().max() < 0.05 * scale
    top2 = ref_logits.topk(2, -1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.1 * scale  # not a near-tie
    assert clear.sum() > 20
    assert torch.equal(got_logits.argmax(-1)[clear], ref_logits.argmax(-1)[clear])


def test_fast_sampling_is_deterministic_per_seed():
    model = tiny()
    config = SamplingConfig(temperature=1.0, top_k=8, cfg_scale=1.5)

    def run(seed: int) -> torch.Tensor:
        return sample_image_codes(model, PROMPTS, 16, config, uncond=UNCOND, decode_dtype=torch.bfloat16,
                                  generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_draw_follows_the_distribution_and_skips_zero_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(40_000, 1)
    picks = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=6).float() / len(picks)
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    assert freq[[0, 2, 5]].sum() == 0


def test_a_failing_compiled_attention_falls_back_to_eager(monkeypatch):
    import arm.nn.decode as decode

    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(decode._COMPILED, "attend_one", broken)
    model = tiny()
    config = SamplingConfig(temperature=0.0, cfg_scale=1.5)
    with pytest.warns(UserWarning, match="compiled decode attention failed"):
        got = sample_image_codes(model, PROMPTS, 6, config, uncond=UNCOND, decode_dtype=torch.bfloat16,
                                 compile_attention=True)
    assert got.shape == (3, 6)
