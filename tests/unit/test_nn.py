"""Shared building blocks: causality, reference attention, GQA equivalence, RoPE relativity, RMSNorm."""

from __future__ import annotations

import math

import torch

from arm.nn import Attention, RMSNorm, RotaryEmbedding, Transformer, TransformerConfig, apply_rotary


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=1e-5)


def test_causal_output_ignores_future_tokens():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(dim=32, num_layers=2, num_heads=4, num_kv_heads=2, causal=True)).eval()
    x = torch.randn(2, 10, 32)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 32)
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_bidirectional_output_sees_future_tokens():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(dim=32, num_layers=1, num_heads=4, causal=False)).eval()
    x = torch.randn(1, 6, 32)
    y = x.clone()
    y[:, 5] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, 0], model(y)[:, 0])


def _reference(attn: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    B, T, D = x.shape
    H, Dh = attn.num_heads, attn.head_dim
    q = attn.q(x).view(B, T, H, Dh).transpose(1, 2)
    k = attn.k(x).view(B, T, H, Dh).transpose(1, 2)
    v = attn.v(x).view(B, T, H, Dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.out(y.transpose(1, 2).reshape(B, T, H * Dh))


def test_attention_matches_hand_written_reference():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 24)
    for causal in (True, False):
        attn = Attention(24, num_heads=3, num_kv_heads=3, qkv_bias=True, causal=causal)
        with torch.no_grad():
            torch.testing.assert_close(attn(x), _reference(attn, x, causal), atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    dim, heads, kv_heads = 32, 8, 2
    gqa = Attention(dim, heads, kv_heads, qkv_bias=True)
    mha = Attention(dim, heads, heads, qkv_bias=True)
    head_dim, group = dim // heads, heads // kv_heads
    with torch.no_grad():
        mha.q.load_state_dict(gqa.q.state_dict())
        mha.out.load_state_dict(gqa.out.state_dict())
        for name in ("k", "v"):
            src, dst = getattr(gqa, name), getattr(mha, name)
            w = src.weight.view(kv_heads, head_dim, dim).repeat_interleave(group, 0).reshape(heads * head_dim, dim)
            dst.weight.copy_(w)
            dst.bias.copy_(src.bias.view(kv_heads, head_dim).repeat_interleave(group, 0).reshape(-1))
        x = torch.randn(2, 5, dim)
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_padding_mask_hides_padded_keys():
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=False)
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask=mask)[:, :4], attn(y, mask=mask)[:, :4])
        torch.testing.assert_close(attn(x, mask=mask)[:, :4], attn(x[:, :4]))


def test_rope_score_depends_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, theta=10000.0, max_positions=8)  # also exercises growth of the cache
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> torch.Tensor:
        cos, sin = rope(1, offset=m)
        qm = apply_rotary(q, cos[0], sin[0])
        cos, sin = rope(1, offset=n)
        return (qm * apply_rotary(k, cos[0], sin[0])).sum()

    torch.testing.assert_close(score(5, 2), score(105, 102), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score(3, 9), score(40, 46), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rope_offset_matches_slice_of_longer_table():
    rope = RotaryEmbedding(8)
    cos_all, sin_all = rope(10)
    cos, sin = rope(3, offset=4)
    torch.testing.assert_close(cos, cos_all[4:7])
    torch.testing.assert_close(sin, sin_all[4:7])
