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


def test_attention_pool_is_permutation_invariant_and_reads_a_single_token_as_its_value():
    from arm.tokenizer.model import AttentionPool

    torch.manual_seed(int(torch.randint(0, 10_000, ()).item()))
    pool = AttentionPool(dim=16, num_heads=4)
    x = torch.randn(3, 7, 16)
    perm = torch.randperm(7)
    torch.testing.assert_close(pool(x[:, perm]), pool(x), atol=1e-5, rtol=1e-5)
    # One token: attention returns its value whatever the query, so the head is out(v) + MLP(LN(out(v))).
    one = x[:, :1]
    _, v = pool.kv(pool.norm(one)).chunk(2, dim=-1)
    pooled = pool.out(v[:, 0])
    torch.testing.assert_close(pool(one), pooled + pool.mlp(pool.mlp_norm(pooled)), atol=1e-5, rtol=1e-5)


def test_sig_pool_map_drives_the_probe_pooling_and_bad_names_fail_in_one_line():
    from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig
    from arm.tokenizer.pixel_decoder import PixelDiTConfig

    def config(sig_pool):
        return TokenizerConfig(levels=[3, 3], projection=TransformerConfig(dim=16, num_layers=1, num_heads=2),
                               decoder=PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=2),
                               feature_dim=16, text_embed_dim=8, pool="max", sig_pool=sig_pool)

    tok = SemanticTokenizer(config("map"))
    z = torch.randn(2, 16, 16)
    torch.testing.assert_close(tok.pool(z), tok.sig_pool(z))
    assert tok.pooled_embedding(z).shape == (2, 8)
    assert TokenizerConfig.from_json(config("map").to_json()).sig_pool == "map"
    torch.testing.assert_close(SemanticTokenizer(config("teacher")).pool(z), z.amax(dim=1))
    with pytest.raises(ValueError, match="sig_pool must be"):
        SemanticTokenizer(config("avg"))


def test_quantize_scaled_scales_only_the_encoders_gradient():
    from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig
    from arm.tokenizer.pixel_decoder import PixelDiTConfig

    torch.manual_seed(int(torch.randint(0, 10_000, ()).item()))
    tok = SemanticTokenizer(TokenizerConfig(
        levels=[5, 5, 5], projection=TransformerConfig(dim=16, num_layers=1, num_heads=2),
        decoder=PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=2),
        feature_dim=16, text_embed_dim=8))
    feats, target = torch.randn(2, 16, 16), torch.randn(2, 16, 16)
    scale = float(torch.empty(()).uniform_(0.1, 0.9))

    def grads(s):
        tok.zero_grad()
        z_q, z_sem, idx = tok.quantize_scaled(feats, s)
        torch.testing.assert_close(z_sem, z_q)  # same values, only the gradient differs
        ((z_sem - target) ** 2).sum().backward()
        enc = tok.projection.enc_in.weight.grad  # None when no gradient reached the encoder
        enc = torch.zeros_like(tok.projection.enc_in.weight) if enc is None else enc.clone()
        return enc, tok.projection.dec_out.weight.grad.clone(), idx

    enc_1, dec_1, idx_1 = grads(1.0)
    enc_s, dec_s, idx_s = grads(scale)
    enc_0, _, _ = grads(0.0)
    assert torch.equal(idx_1, idx_s)
    torch.testing.assert_close(enc_s, scale * enc_1, atol=1e-6, rtol=1e-4)  # the encoder: scaled
    torch.testing.assert_close(dec_s, dec_1)  # the symmetric projection after FSQ: in full
    assert enc_0.abs().max() == 0 and enc_1.abs().max() > 0


def test_readout_teacher_reads_z_q_as_the_teacher_reads_its_own_features():
    """Under readout "teacher", zero-shot is the teacher's own zero-shot when z_q equals its patch features, and the
    probes get the teacher's pooling; under "head" both go through the (MAP-pooled) sigmoid head."""
    from arm.teacher.model import DualEncoder, TeacherConfig
    from arm.tokenizer.evaluate import TokenizerEvaluator
    from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig
    from arm.tokenizer.pixel_decoder import PixelDiTConfig

    torch.manual_seed(int(torch.randint(0, 10_000, ()).item()))
    teacher = DualEncoder(TeacherConfig(image_size=16, patch_size=4, image_dim=16, image_layers=1, image_heads=2,
                                        text_dim=16, text_layers=1, text_heads=2, embed_dim=8, vocab_size=64,
                                        pool="max")).eval()

    def config(readout):
        return TokenizerConfig(levels=[3, 3], projection=TransformerConfig(dim=16, num_layers=1, num_heads=2),
                               decoder=PixelDiTConfig(image_size=16, patch_size=4, dim=48, num_layers=1, num_heads=2),
                               feature_dim=16, text_embed_dim=8, pool="max", sig_pool="map", readout=readout)

    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        feats = teacher.patch_features(images)  # (3, 16, 16): stands in for a z_q equal to the teacher's features
        by_teacher = SemanticTokenizer(config("teacher")).eval()
        head = SemanticTokenizer(config("head")).eval()
        ev = TokenizerEvaluator.__new__(TokenizerEvaluator)  # only zero_shot_embedding: no prompts or decoder needed
        ev.teacher, ev.tokenizer = teacher, by_teacher
        torch.testing.assert_close(ev.zero_shot_embedding(feats), teacher.image_embedding(images))
        torch.testing.assert_close(by_teacher.probe_features(feats), feats.amax(dim=1))
        ev.tokenizer = head
        torch.testing.assert_close(ev.zero_shot_embedding(feats), head.pooled_embedding(feats))
        torch.testing.assert_close(head.probe_features(feats), head.sig_pool(feats))
    assert TokenizerConfig.from_json(config("teacher").to_json()).readout == "teacher"
    old = config("head").to_json()
    del old["readout"]  # an export written before the field existed reads as "head"
    assert TokenizerConfig.from_json(old).readout == "head"
    with pytest.raises(ValueError, match="readout must be") as err:
        SemanticTokenizer(config("pooled"))
    assert "\n" not in str(err.value)
