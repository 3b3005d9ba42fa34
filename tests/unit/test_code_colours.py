"""Per-code palette histograms (``arm.tokenizer.code_colours``): patch shares by hand, accumulation, the file, and the
AR decoder's colour factors built from them (``ARDecoder.enable_code_factors(levels, colours)``)."""

from __future__ import annotations

import pytest
import torch

from arm.ar.model import COLOUR_FACTOR_SCALE, ARConfig, ARDecoder, fold_code_factors
from arm.data.shapeworld.world import BACKGROUNDS, COLORS
from arm.tokenizer.code_colours import (
    CODE_COLOURS_FILE,
    CodeColourStats,
    load_code_colours,
    palette_from_spec,
    patch_palette_shares,
)

PALETTE = palette_from_spec("shapeworld")
NAMES = [*COLORS, *BACKGROUNDS]


def rgb(name: str) -> torch.Tensor:
    return torch.tensor((COLORS | BACKGROUNDS)[name], dtype=torch.float32) / 255.0


def painted(cells: list[list[str]], patch: int = 4) -> torch.Tensor:
    """(3, H, W) image whose patch (i, j) is filled with colour cells[i][j]."""
    rows = [torch.cat([rgb(c)[:, None, None].expand(3, patch, patch) for c in row], 2) for row in cells]
    return torch.cat(rows, 1)


def test_palettes():
    assert PALETTE.shape == (13, 3)
    torch.testing.assert_close(PALETTE[NAMES.index("gray")], torch.tensor([128, 128, 128]) / 255.0)
    grid = palette_from_spec("grid:3")
    assert grid.shape == (27, 3) and set(grid.unique().tolist()) == {0.0, 0.5, 1.0}
    for bad in ("rainbow", "grid:1", "grid:x", "grid:99"):
        with pytest.raises(ValueError, match="unknown palette"):
            palette_from_spec(bad)


def test_patch_shares_by_hand():
    image = painted([["red", "gray"], ["blue", "gray"]])
    image[:, 0:2, 4:8] = rgb("green")[:, None, None]  # top-right patch: half green (2 of 4 rows), half gray
    # Slightly off-palette pixels go to their nearest colour.
    image[:, 4:8, 0:4] = (image[:, 4:8, 0:4] + 0.03).clamp(0, 1)
    shares = patch_palette_shares(image[None], PALETTE, (2, 2))[0]
    expected = torch.zeros(4, 13)
    expected[0, NAMES.index("red")] = 1
    expected[1, NAMES.index("green")] = expected[1, NAMES.index("gray")] = 0.5
    expected[2, NAMES.index("blue")] = 1
    expected[3, NAMES.index("gray")] = 1
    torch.testing.assert_close(shares, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as under `arm tokenizer encode --precision bf16`
        assert torch.equal(patch_palette_shares(image[None], PALETTE, (2, 2))[0], shares)
    with pytest.raises(ValueError, match="do not split"):
        patch_palette_shares(image[None], PALETTE, (3, 3))


def test_stats_average_each_codes_patches_and_round_trip(tmp_path):
    colours = list(COLORS)
    g = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ()).item()))
    cells = [[colours[int(i)] for i in torch.randint(0, 10, (2,), generator=g)] for _ in range(2)]
    images = torch.stack([painted(cells), painted([["gray", "gray"], ["gray", "gray"]])])
    codes = torch.tensor([[5, 5, 7, 2], [5, 2, 2, 2]])
    stats = CodeColourStats(9, PALETTE)
    stats.update(codes, images, (2, 2))
    hist = stats.histogram()
    onehot = torch.eye(13)
    gray = onehot[NAMES.index("gray")]
    c = [onehot[NAMES.index(name)] for row in cells for name in row]
    torch.testing.assert_close(hist[5], (c[0] + c[1] + gray) / 3)
    torch.testing.assert_close(hist[7], c[2])
    torch.testing.assert_close(hist[2], (c[3] + 3 * gray) / 4)
    assert hist[[0, 1, 3, 4, 6, 8]].abs().sum() == 0 and stats.count.tolist() == [0, 0, 4, 0, 0, 3, 0, 1, 0]

    stats.save(tmp_path / CODE_COLOURS_FILE)
    torch.testing.assert_close(load_code_colours(tmp_path, 9), hist)  # a folder reads its code_colours file
    torch.testing.assert_close(load_code_colours(tmp_path / CODE_COLOURS_FILE, 9), hist)
    with pytest.raises(ValueError, match="describes 9 codes but the model has 16"):
        load_code_colours(tmp_path, 16)
    with pytest.raises(FileNotFoundError, match="arm tokenizer encode"):
        load_code_colours(tmp_path / "nowhere", 9)


def tiny(seed: int) -> ARDecoder:
    torch.manual_seed(seed)
    return ARDecoder(ARConfig.preset("tiny")).eval()


def test_colour_factors_basis_zero_start_and_exact_fold():
    seed = int(torch.randint(0, 10_000, ()).item())
    colours = torch.rand(32, 13)
    colours /= colours.sum(1, keepdim=True)
    plain, model = tiny(seed), tiny(seed)
    factors = model.enable_code_factors([4, 2, 4], colours)
    assert factors.coords.shape == (32, 3 + 13)
    torch.testing.assert_close(factors.coords[:, 3:], COLOUR_FACTOR_SCALE * colours)
    ids = torch.randint(0, plain.config.vocab_size, (2, 11))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids), model(input_ids=ids))  # zero-initialised: nothing changes
        factors.embed.normal_(0.0, 1.0)
        factors.head.normal_(0.0, 1.0)
        offset = model.config.image_token_offset
        head = model.image_head.weight + factors.coords @ factors.head  # the rows by hand
        torch.testing.assert_close(model.image_head_weight, head)
        folded = ARDecoder(model.config).eval()
        folded.load_state_dict(fold_code_factors(model.state_dict(), offset))
        torch.testing.assert_close(folded.image_logits(folded(input_ids=ids)), model.image_logits(model(input_ids=ids)),
                                   atol=1e-5, rtol=1e-5)
    only = tiny(seed).enable_code_factors(None, colours)
    torch.testing.assert_close(only.coords, COLOUR_FACTOR_SCALE * colours)
    with pytest.raises(ValueError, match="do not fit a model with 32 image codes"):
        tiny(seed).enable_code_factors(None, colours[:16])
    with pytest.raises(ValueError, match="need FSQ levels, code colours or both"):
        tiny(seed).enable_code_factors(None, None)
