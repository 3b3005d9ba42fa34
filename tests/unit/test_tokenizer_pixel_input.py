"""The tokenizer's pixel input (``TokenizerConfig.pixel_input``, our addition): the projection's encoder reads each
token's own pixel patch beside the teacher's feature, or with ``colour_input`` that patch's mean colour. Checked: a
fresh one computes what the plain projection does, the patches and colours are the image's own (hand-sliced), it
learns from the first step, and the errors say what to pass."""

from __future__ import annotations

import pytest
import torch

from arm.nn import TransformerConfig
from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig
from arm.tokenizer.pixel_decoder import PixelDiTConfig
from arm.tokenizer.projection import CodeProjection


def _projection(pixel_dim: int) -> CodeProjection:
    cfg = TransformerConfig(dim=32, num_layers=1, num_heads=4)
    return CodeProjection(24, 4, [4, 4, 4, 4], cfg, pixel_dim=pixel_dim)


def _tokenizer(pixel_input: bool, image_size: int = 16, patch_size: int = 4, colour_input: bool = False
               ) -> SemanticTokenizer:
    config = TokenizerConfig(levels=[4, 4, 4], projection=TransformerConfig(dim=32, num_layers=1, num_heads=4),
                             decoder=PixelDiTConfig(image_size=image_size, patch_size=patch_size, dim=32,
                                                    num_layers=1, num_heads=4),
                             feature_dim=24, text_embed_dim=8, pixel_input=pixel_input, colour_input=colour_input)
    return SemanticTokenizer(config)


def test_fresh_pixel_input_changes_nothing_until_trained():
    torch.manual_seed(0)
    plain, with_pixels = _projection(0), _projection(48)
    missing, unexpected = with_pixels.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["pix_in.weight"] and unexpected == []
    feats, pixels = torch.randn(2, 9, 24), torch.randn(2, 9, 48)
    z_plain, _, idx_plain = plain.encode(feats)
    z_pix, _, idx_pix = with_pixels.encode(feats, pixels)
    torch.testing.assert_close(z_pix, z_plain)
    assert torch.equal(idx_pix, idx_plain)


def test_encoder_input_is_features_plus_linear_map_of_own_pixels():
    torch.manual_seed(1)
    proj = _projection(48)
    torch.nn.init.normal_(proj.pix_in.weight)
    seen = []
    proj.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    feats, pixels = torch.randn(2, 9, 24), torch.randn(2, 9, 48)
    proj.encode(feats, pixels)
    expected = feats @ proj.enc_in.weight.T + proj.enc_in.bias + pixels @ proj.pix_in.weight.T
    torch.testing.assert_close(seen[0], expected)


def test_pixel_map_gets_a_gradient_from_zero():
    torch.manual_seed(2)
    proj = _projection(48)
    z_q, _, _ = proj(torch.randn(2, 9, 24), torch.randn(2, 9, 48))
    z_q.pow(2).mean().backward()
    assert proj.pix_in.weight.grad is not None and proj.pix_in.weight.grad.abs().sum() > 0


def test_pixel_patches_are_each_tokens_own_patch_in_raster_order():
    torch.manual_seed(3)
    tok = _tokenizer(True)
    images = torch.rand(2, 3, 16, 16)
    patches = tok.pixel_patches(torch.zeros(2, 16, 24), images)
    assert patches.shape == (2, 16, 48)
    for token in range(16):
        row, col = divmod(token, 4)
        own = images[:, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4].reshape(2, -1) * 2 - 1  # channel-first
        torch.testing.assert_close(patches[:, token], own)
    assert _tokenizer(False).pixel_patches(torch.zeros(2, 16, 24), images) is None


def test_quantize_with_pixels_depends_on_the_images_and_config_round_trips():
    torch.manual_seed(4)
    tok = _tokenizer(True).eval()
    torch.nn.init.normal_(tok.projection.pix_in.weight)
    feats, images = torch.randn(1, 16, 24), torch.rand(1, 3, 16, 16)
    other = images.clone()
    other[:, :, :4, :4] = 1 - other[:, :, :4, :4]
    with torch.no_grad():
        z_a, _ = tok.quantize(feats, images)
        z_b, _ = tok.quantize(feats, other)
    assert not torch.allclose(z_a, z_b)
    config = TokenizerConfig.from_json(tok.config.to_json())
    assert config.pixel_input is True
    legacy = tok.config.to_json()
    del legacy["pixel_input"]  # an export written before the option reads as without it
    assert TokenizerConfig.from_json(legacy).pixel_input is False


def test_errors_say_what_to_pass():
    tok = _tokenizer(True)
    with pytest.raises(ValueError, match=r"pass the images to quantize\(features, images\)"):
        tok.quantize(torch.randn(1, 16, 24))
    with pytest.raises(ValueError, match=r"64 pixel patches against 16 feature tokens; set model.decoder.patch_size"):
        _tokenizer(True, patch_size=2).quantize(torch.randn(1, 16, 24), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"pass pixels of shape \(1, 16, 48\), got \(1, 16, 12\)"):
        tok.projection.encode(torch.randn(1, 16, 24), torch.randn(1, 16, 12))


def test_colour_input_is_each_tokens_mean_colour_and_moves_the_codes():
    """``colour_input``: a (B, N, 3) input, each token's own patch's per-channel mean in [-1, 1] (hand-sliced)."""
    seed = int(torch.randint(0, 2**31 - 1, ()))
    gen = torch.Generator().manual_seed(seed)
    tok = _tokenizer(False, colour_input=True).eval()
    assert tok.projection.pix_in.weight.shape == (32, 3)
    images = torch.rand(2, 3, 16, 16, generator=gen)
    colours = tok.pixel_patches(torch.zeros(2, 16, 24), images)
    assert colours.shape == (2, 16, 3)
    for token in range(16):
        row, col = divmod(token, 4)
        own = images[:, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4].mean(dim=(2, 3)) * 2 - 1  # (2, 3)
        torch.testing.assert_close(colours[:, token], own, msg=f"token {token}, seed {seed}")
    torch.nn.init.normal_(tok.projection.pix_in.weight, generator=gen)
    feats = torch.randn(1, 16, 24, generator=gen)
    flat, tinted = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.5)
    tinted[:, 0] = 0.9  # the same flat image, redder: only the colour input differs
    with torch.no_grad():
        z_flat, _, _ = tok.projection.encode(feats, tok.pixel_patches(feats, flat))
        z_tint, _, _ = tok.projection.encode(feats, tok.pixel_patches(feats, tinted))
    assert not torch.allclose(z_flat, z_tint), f"seed {seed}"
    config = TokenizerConfig.from_json(tok.config.to_json())
    assert config.colour_input is True and config.pixel_input is False
    legacy = tok.config.to_json()
    del legacy["colour_input"]  # an export written before the option reads as without it
    assert TokenizerConfig.from_json(legacy).colour_input is False


def test_colour_input_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="set colour_input or pixel_input, not both"):
        _tokenizer(True, colour_input=True)
    with pytest.raises(ValueError, match=r"\(colour_input\): pass the images to quantize\(features, images\)"):
        _tokenizer(False, colour_input=True).quantize(torch.randn(1, 16, 24))
