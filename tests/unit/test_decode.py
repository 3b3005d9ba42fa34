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


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_compiled_fp32_step_matches_the_cached_forward(seed):
    # Fresh random weights, prompts and tokens per seed: GQA (4 query heads over 2 kv heads) with left padding,
    # then qkv biases, another depth and a different batch (the graph is reused: the sizes are not baked in).
    rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = ARConfig(text_vocab_size=40, num_special_tokens=2, num_image_codes=24, dim=32, num_layers=2 + seed,
                      num_heads=4, num_kv_heads=2, mlp_hidden=48, qkv_bias=seed == 1, max_seq_len=64)
    model = ARDecoder(config).eval()
    B, W = 3 + seed, 6
    ids = torch.randint(0, config.vocab_size, (B, W), generator=rng)
    mask = torch.arange(W)[None] >= torch.randint(0, W - 1, (B, 1), generator=rng)  # left padding
    ref_cache, cache = model.new_cache(B, W + 8), model.new_cache(B, W + 8)
    model(input_ids=ids, mask=mask, cache=ref_cache)
    model(input_ids=ids, mask=mask, cache=cache)
    packed = PackedDecoder(model.body, torch.float32, compile_step=True)
    for _ in range(8):
        step = torch.randint(0, config.vocab_size, (B,), generator=rng)
        ref = model(input_ids=step[:, None], cache=ref_cache)[:, -1]
        got = packed.step(model.embed(step), cache)
        # float32 throughout; only the summation order differs (fused reductions, the merged softmax)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.image_logits(got), model.image_logits(ref), atol=1e-5, rtol=1e-5)
    assert packed.graph is not None  # compiled, not the eager fallback
    assert cache.length == ref_cache.length and torch.equal(cache.num_real, ref_cache.num_real)
    assert torch.equal(cache.valid, ref_cache.valid) and torch.equal(cache.bias, ref_cache.bias)
    torch.testing.assert_close(cache.keys, ref_cache.keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.values, ref_cache.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compile_step", [False, True])
@torch.no_grad()
def test_bf16_compiled_decode_tracks_the_eager_fp32_logits_and_greedy_choices(compile_step):
    # Teacher-forced over the same tokens: bf16 rounding only flips near-ties, which a random tiny model has
    # plenty of (a free-running greedy sequence then diverges from the first flip), so compare step by step.
    model = tiny()
    ids = torch.tensor(PROMPTS[0] * 2)[None].repeat(4, 1)  # (4, 10)
    steps = torch.randint(68, 100, (12, 4), generator=torch.Generator().manual_seed(0))
    ref_cache, cache = model.new_cache(4, 22), model.new_cache(4, 22, torch.bfloat16)
    head = model.image_head.weight
    ref = [model(input_ids=ids, cache=ref_cache)[:, -1]]
    got = [model(input_ids=ids, cache=cache)[:, -1]]
    packed = PackedDecoder(model.body, torch.bfloat16, compile_attention=True, compile_step=compile_step)
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
    assert (packed.graph is not None) == compile_step


def test_fast_sampling_is_deterministic_per_seed():
    model = tiny()
    config = SamplingConfig(temperature=1.0, top_k=8, cfg_scale=1.5)

    def run(seed: int) -> torch.Tensor:
        return sample_image_codes(model, PROMPTS, 16, config, uncond=UNCOND, decode_dtype=torch.bfloat16,
                                  generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))


def test_compiled_step_sampling_is_deterministic_per_seed():
    model = tiny()
    config = SamplingConfig(temperature=1.0, top_k=8, top_p=0.9, cfg_scale=1.5)

    def run(seed: int) -> torch.Tensor:
        return sample_image_codes(model, PROMPTS, 16, config, uncond=UNCOND, decode_dtype=torch.bfloat16,
                                  compile_attention=True, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
    text = generate_text(model, PROMPTS, 6, eos_id=0, decode_dtype=torch.bfloat16, compile_attention=True)
    assert text == generate_text(model, PROMPTS, 6, eos_id=0, decode_dtype=torch.bfloat16, compile_attention=True)


def test_draw_follows_the_distribution_and_skips_zero_mass():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(40_000, 1)
    picks = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=6).float() / len(picks)
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    assert freq[[0, 2, 5]].sum() == 0


@pytest.mark.parametrize("graph, message, compile_step", [("attend_one", "compiled decode attention failed", False),
                                                            ("decode_step", "compiled decode step failed", True)])
def test_a_failing_compiled_graph_falls_back_to_eager(monkeypatch, graph, message, compile_step):
    import arm.nn.decode as decode

    def broken(*args):
        raise RuntimeError("no compiler")

    monkeypatch.setitem(decode._COMPILED, graph, broken)
    model = tiny()
    config = SamplingConfig(temperature=0.0, cfg_scale=1.5)
    with pytest.warns(UserWarning, match=message):
        got = sample_image_codes(model, PROMPTS, 6, config, uncond=UNCOND, decode_dtype=torch.bfloat16,
                                 compile_attention=True, compile_step=compile_step)
    assert got.shape == (3, 6)
    if compile_step:  # the failed step left the cache untouched: the eager steps give the compiled-attention path's
        assert torch.equal(got, sample_image_codes(model, PROMPTS, 6, config, uncond=UNCOND,
                                                   decode_dtype=torch.bfloat16, compile_attention=True,
                                                   compile_step=False))
