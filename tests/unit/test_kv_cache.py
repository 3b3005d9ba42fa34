"""KV cache (arm.nn.kv_cache): incremental decoding gives the full forward's logits, also for left-padded batches."""

from __future__ import annotations

import random

import pytest
import torch

from arm.ar.model import ARConfig, ARDecoder
from arm.nn import Transformer, TransformerConfig
from arm.nn.kv_cache import KVCache


def random_model(rng: random.Random) -> ARDecoder:
    heads = rng.choice([2, 4])
    kv_heads = rng.choice([h for h in (1, 2, 4) if heads % h == 0])
    config = ARConfig(text_vocab_size=rng.randint(20, 50), num_special_tokens=rng.randint(0, 3),
                      num_image_codes=rng.randint(8, 40), dim=heads * rng.choice([8, 16]),
                      num_layers=rng.randint(1, 3), num_heads=heads, num_kv_heads=kv_heads,
                      mlp_hidden=rng.choice([32, 48]), qkv_bias=rng.random() < 0.5,
                      rope_theta=rng.choice([1e4, 1e6]), max_seq_len=64)
    torch.manual_seed(rng.randint(0, 10_000))
    return ARDecoder(config).eval()


def full_logits(model: ARDecoder, ids: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids)
    return torch.cat([model.text_logits(hidden), model.image_logits(hidden)], -1)  # (B, T, V)


@pytest.mark.parametrize("seed", range(4))
@torch.no_grad()
def test_incremental_equals_full_forward(seed):
    rng = random.Random(seed)
    model = random_model(rng)
    B, T, prefill = rng.randint(1, 3), rng.randint(8, 20), rng.randint(1, 6)
    ids = torch.randint(0, model.config.vocab_size, (B, T))
    expected = full_logits(model, ids)
    cache = model.new_cache(B, T + rng.randint(0, 5))
    outs = [model(input_ids=ids[:, :prefill], cache=cache)]
    t = prefill
    while t < T:  # steps of one token, sometimes a chunk of several
        step = 1 if rng.random() < 0.7 else min(3, T - t)
        outs.append(model(input_ids=ids[:, t:t + step], cache=cache))
        t += step
    hidden = torch.cat(outs, 1)
    got = torch.cat([model.text_logits(hidden), model.image_logits(hidden)], -1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert cache.length == T


@pytest.mark.parametrize("seed", range(3))
@torch.no_grad()
def test_left_padded_batch_matches_each_unpadded_row(seed):
    rng = random.Random(100 + seed)
    model = random_model(rng)
    lengths = [rng.randint(1, 12) for _ in range(4)]
    width, new = max(lengths), 6
    rows = [torch.randint(0, model.config.vocab_size, (n + new,)) for n in lengths]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, (row, n) in enumerate(zip(rows, lengths)):
        ids[b, width - n:] = row[:n]
        mask[b, width - n:] = True
        ids[b, :width - n] = rng.randint(0, model.config.vocab_size - 1)  # pads hold arbitrary ids
    cache = model.new_cache(len(rows), width + new)
    hidden = [model(input_ids=ids, mask=mask, cache=cache)[:, -1:]]
    for t in range(new - 1):
        step = torch.stack([row[n + t] for row, n in zip(rows, lengths)])[:, None]
        hidden.append(model(input_ids=step, cache=cache))
    hidden = torch.cat(hidden, 1)  # (B, new, D): the states that predict tokens n .. n + new - 1
    for b, (row, n) in enumerate(zip(rows, lengths)):
        reference = model(input_ids=row[None, :n + new - 1])[0, n - 1:]
        torch.testing.assert_close(model.image_logits(hidden[b]), model.image_logits(reference), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.text_logits(hidden[b]), model.text_logits(reference), atol=1e-5, rtol=0)


@torch.no_grad()
def test_cache_is_written_in_place_and_bounded():
    model = random_model(random.Random(7))
    cache = model.new_cache(2, 5)
    pointers = (cache.keys.data_ptr(), cache.values.data_ptr(), cache.valid.data_ptr())
    model(input_ids=torch.randint(0, 10, (2, 3)), cache=cache)
    model(input_ids=torch.randint(0, 10, (2, 1)), cache=cache)
    model(input_ids=torch.randint(0, 10, (2, 1)), cache=cache)
    assert (cache.keys.data_ptr(), cache.values.data_ptr(), cache.valid.data_ptr()) == pointers
    assert cache.length == 5 and cache.valid.all() and cache.num_real.tolist() == [5, 5]
    with pytest.raises(ValueError, match="do not fit"):
        model(input_ids=torch.randint(0, 10, (2, 1)), cache=cache)
    with pytest.raises(ValueError, match="rows"):
        model(input_ids=torch.randint(0, 10, (3, 1)), cache=model.new_cache(2, 5))
    with pytest.raises(ValueError, match="context"):
        model.new_cache(1, model.config.max_seq_len + 1)
    with pytest.raises(ValueError, match="offset"):
        model(input_ids=torch.randint(0, 10, (2, 1)), offset=3, cache=model.new_cache(2, 5))
    cache.reset()
    assert cache.length == 0 and not cache.valid.any()


def test_append_token_is_append_mask_write_advance():
    L, B, Hkv, Dh = 2, 3, 2, 4
    a, b = KVCache(L, B, Hkv, Dh, 6), KVCache(L, B, Hkv, Dh, 6)
    for cache in (a, b):
        cache.append_mask(torch.tensor([[False, True], [True, True], [False, False]]))
        cache.advance(2)
    keys, values = torch.randn(L, B, Hkv, Dh), torch.randn(L, B, Hkv, Dh)
    a.append_token(keys, values)
    b.append_mask(torch.ones(B, 1, dtype=torch.bool))
    for i in range(L):
        b.write(i, keys[i][:, :, None], values[i][:, :, None])
    b.advance(1)
    for name in ("keys", "values", "valid", "bias", "num_real"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.length == b.length == 3
    keys_view, values_view, bias_view = a.filled()
    assert keys_view.shape == (L, B, Hkv, 3, Dh) and bias_view.shape == (B, 3)
    assert keys_view.data_ptr() == a.keys.data_ptr() and values_view.data_ptr() == a.values.data_ptr()


@torch.no_grad()
def test_gqa_cache_holds_only_kv_heads():
    model = ARDecoder(ARConfig.preset("tiny")).eval()
    cache = model.new_cache(3, 10)
    c = model.config
    assert cache.keys.shape == (c.num_layers, 3, c.num_kv_heads, 10, c.head_dim)
    assert cache.valid.shape == (3, 10)


@torch.no_grad()
def test_left_padding_without_cache_is_finite():
    """Padded queries that see no valid key attend to themselves, so nothing becomes NaN."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(dim=16, num_layers=2, num_heads=2)).eval()
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out = model(torch.randn(2, 4, 16), mask)
    assert torch.isfinite(out).all()


def test_bidirectional_transformer_refuses_a_cache():
    model = Transformer(TransformerConfig(dim=16, num_layers=1, num_heads=2, causal=False))
    with pytest.raises(ValueError, match="causal"):
        model(torch.randn(1, 2, 16), cache=model.new_cache(1, 4))
