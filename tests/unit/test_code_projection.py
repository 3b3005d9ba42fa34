"""CodeProjection (ARM paper §1): shapes, bidirectionality, gradient through FSQ, index path, clear errors."""

from __future__ import annotations

import pytest
import torch

from arm.nn import TransformerConfig
from arm.tokenizer.projection import CodeProjection


def _tiny(levels=(2,) * 16, feature_dim=24) -> CodeProjection:
    cfg = TransformerConfig(dim=32, num_layers=2, num_heads=4, causal=True)  # causal is overridden
    return CodeProjection(feature_dim, len(levels), list(levels), cfg)


def test_shapes_and_dtypes():
    torch.manual_seed(0)
    proj = _tiny()
    feats = torch.randn(3, 10, 24)
    z, codes, idx = proj.encode(feats)
    assert z.shape == codes.shape == (3, 10, 16) and idx.shape == (3, 10)
    assert codes.dtype == torch.float32 and idx.dtype == torch.long
    assert idx.min() >= 0 and idx.max() < proj.codebook_size == 65_536
    z_q = proj.decode(codes)
    assert z_q.shape == (3, 10, 24)
    zq2, codes2, idx2 = proj(feats)
    torch.testing.assert_close(zq2, z_q)
    torch.testing.assert_close(proj.decode_indices(idx), z_q)


def test_encoder_is_bidirectional():
    torch.manual_seed(1)
    proj = _tiny().eval()
    assert proj.config.causal is False
    x = torch.randn(1, 8, 24)
    y = x.clone()
    y[:, -1] += 3.0
    with torch.no_grad():
        za, zb = proj.encode(x)[0], proj.encode(y)[0]
    assert not torch.allclose(za[:, 0], zb[:, 0])


def test_gradient_reaches_encoder_through_fsq():
    torch.manual_seed(2)
    proj = _tiny(levels=(8, 5, 5, 5))
    z_q, _, _ = proj(torch.randn(2, 6, 24))
    z_q.pow(2).mean().backward()
    assert proj.enc_in.weight.grad is not None and proj.enc_in.weight.grad.abs().sum() > 0


def test_bf16_autocast_runs_and_codes_are_fp32():
    torch.manual_seed(3)
    proj = _tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, codes, idx = proj.encode(torch.randn(2, 5, 24))
        z_q = proj.decode(codes)
    assert codes.dtype == torch.float32 and z_q.shape == (2, 5, 24)


def test_fsq_sees_and_returns_fp32_under_bf16_autocast_and_indices_round_trip():
    torch.manual_seed(4)
    proj = _tiny(levels=(8, 5, 5, 5))
    seen = []
    proj.fsq.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    feats = torch.randn(2, 7, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, codes, idx = proj.encode(feats)
        assert proj.enc_in(feats).dtype == torch.bfloat16  # autocast is on around FSQ
    assert seen == [(torch.float32, torch.float32)] and z.dtype == torch.float32
    assert torch.equal(proj.fsq.indices_to_codes(idx), codes)
    assert torch.equal(proj.fsq.codes_to_indices(proj.fsq.indices_to_codes(idx)), idx)
    # the codes are FSQ's fp32 quantisation of that z, not a bf16 rounding of it
    assert torch.equal(codes, proj.fsq(z))


def test_mismatched_dims_give_one_line_error():
    proj = _tiny()
    with pytest.raises(ValueError, match=r"last dim 30 .* feature_dim=24: set feature_dim=30") as err:
        proj.encode(torch.randn(1, 4, 30))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="code_dim=16"):
        proj.decode(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="one level per code dim"):
        CodeProjection(24, 4, [2, 2], TransformerConfig(dim=32, num_layers=1, num_heads=4))
