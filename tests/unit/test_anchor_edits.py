"""``arm.tokenizer.tools.anchor_edit_codes``: an edit target's unchanged patches take the source's codes."""

import pytest
import torch

from arm.tokenizer.tools import anchor_edit_codes


def _expected(src_codes, tgt_codes, sources, targets, side):
    """Patch by patch with plain loops: the source's code where all the patch's pixels are equal."""
    out = tgt_codes.clone()
    patch = sources.shape[-1] // side
    for b in range(sources.shape[0]):
        for r in range(side):
            for c in range(side):
                ys, xs = slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)
                if torch.equal(sources[b, :, ys, xs], targets[b, :, ys, xs]):
                    out[b, r * side + c] = src_codes[b, r * side + c]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unchanged_patches_take_the_source_code(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, side, patch = 3, 4, 5
    sources = torch.rand(batch, 3, side * patch, side * patch, generator=gen)
    targets = sources.clone()
    altered = torch.zeros(batch, side * side, dtype=torch.bool)  # the patches this test changes, kept as it goes
    # change single pixels (one channel) at random places: a patch differs if any of its pixels does
    for _ in range(6):
        b, ch = (int(torch.randint(batch, (1,), generator=gen)), int(torch.randint(3, (1,), generator=gen)))
        y, x = (int(v) for v in torch.randint(side * patch, (2,), generator=gen))
        targets[b, ch, y, x] += 0.5  # values lie in [0, 1): the pixel always changes
        altered[b, (y // patch) * side + x // patch] = True
    src_codes = torch.randint(100, (batch, side * side), generator=gen)
    tgt_codes = torch.randint(100, (batch, side * side), generator=gen)
    got = anchor_edit_codes(src_codes, tgt_codes, sources, targets)
    assert torch.equal(got, _expected(src_codes, tgt_codes, sources, targets, side))
    # from how the targets were made, not from comparing pixels: the altered patches keep the target's codes
    assert torch.equal(got, torch.where(altered, tgt_codes, src_codes))


def test_identical_images_copy_every_code_and_shapes_are_checked():
    images = torch.rand(2, 3, 8, 8)
    src, tgt = torch.randint(50, (2, 4)), torch.randint(50, (2, 4))
    assert torch.equal(anchor_edit_codes(src, tgt, images, images.clone()), src)
    with pytest.raises(ValueError, match="do not tile"):
        anchor_edit_codes(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long), images, images)
    with pytest.raises(ValueError, match="differ in shape"):
        anchor_edit_codes(src, tgt[:1], images, images)
