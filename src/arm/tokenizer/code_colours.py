"""What colour each image code draws: per-code palette histograms, measured while encoding (our addition, not ARM's).

`arm tokenizer encode` counts, for every code, the pixels of the patches it was given to, by their nearest palette
colour, and writes ``OUT/code_colours.safetensors``: ``histogram`` (num_codes, K), the mean share of each palette
colour in a code's patches (a row sums to 1; all zeros for a code never used), ``count`` (num_codes,) patches per
code and ``palette`` (K, 3) in [0, 1].

Why: the codes are contextual (experiments/LOG.md, thirteenth session): an object's colour sits only in ~1,500 rare
object codes, each seen a few dozen times an epoch, so an AR model whose table rows each learn alone hardly reads the
prompt's colour word (swapping it costs 0.5 nats an image, swapping the shape word 9). ``ARModule(code_colours=...)``
gives every code's embedding and image-head row a shared term linear in this histogram (``arm.ar.model.CodeFactors``),
so one direction of the hidden state raises every red code at once.

Palettes: ``shapeworld`` (the default: the embedded world's ten object colours and three backgrounds, so each
histogram bin is one colour name) or ``grid:L`` (L x L x L RGB centres, for real images). Simplification: a pixel
counts wholly for its nearest palette colour (anti-aliased edges are split between bins only across pixels).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from arm.io import write_atomic

CODE_COLOURS_FILE = "code_colours.safetensors"


def palette_from_spec(spec: str) -> torch.Tensor:
    """``shapeworld`` or ``grid:L`` -> (K, 3) float32 RGB in [0, 1]."""
    if spec == "shapeworld":
        from arm.data.shapeworld.world import BACKGROUNDS, COLORS

        return torch.tensor([*COLORS.values(), *BACKGROUNDS.values()], dtype=torch.float32) / 255.0
    if spec.startswith("grid:") and spec[5:].isdigit() and 2 <= int(spec[5:]) <= 16:
        levels = torch.linspace(0.0, 1.0, int(spec[5:]))
        return torch.cartesian_prod(levels, levels, levels).float()
    raise ValueError(f"unknown palette {spec!r}: use 'shapeworld' (the embedded world's 13 colours) or 'grid:L' "
                     f"(L x L x L RGB centres, 2 <= L <= 16) for other images")


def patch_palette_shares(images: torch.Tensor, palette: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, gh * gw, K): each patch's share of pixels nearest each palette colour,
    patches in the tokenizer's raster order."""
    b, _, h, w = images.shape
    gh, gw = grid
    if h % gh or w % gw:
        raise ValueError(f"images of {h} x {w} do not split into a {gh} x {gw} code grid")
    pixels = images.float().permute(0, 2, 3, 1).reshape(-1, 3)
    with torch.autocast(pixels.device.type, enabled=False):  # encode may run under bf16 autocast: stay exact
        nearest = torch.cdist(pixels, palette.to(pixels)).argmin(1)
    onehot = F.one_hot(nearest, palette.shape[0]).float().reshape(b, gh, h // gh, gw, w // gw, -1)
    return onehot.mean((2, 4)).reshape(b, gh * gw, -1)


class CodeColourStats:
    """Accumulates per-code palette histograms over batches of (codes, images)."""

    def __init__(self, num_codes: int, palette: torch.Tensor) -> None:
        self.palette = palette.float()
        self.sums = torch.zeros(num_codes, palette.shape[0], dtype=torch.float64)
        self.count = torch.zeros(num_codes, dtype=torch.float64)

    def update(self, codes: torch.Tensor, images: torch.Tensor, grid: tuple[int, int]) -> None:
        """``codes`` (B, gh * gw) indices of ``images`` (B, 3, H, W) in [0, 1]."""
        shares = patch_palette_shares(images, self.palette, grid).reshape(-1, self.palette.shape[0]).cpu()
        flat = codes.reshape(-1).long().cpu()
        self.sums.index_add_(0, flat, shares.double())
        self.count.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))

    def histogram(self) -> torch.Tensor:
        """(num_codes, K) float32 mean shares; zero rows for codes never seen."""
        return (self.sums / self.count.clamp_min(1.0)[:, None]).float()

    def save(self, path: str | os.PathLike) -> None:
        tensors = {"histogram": self.histogram(), "count": self.count.float(), "palette": self.palette}
        write_atomic(path, save_safetensors(tensors, metadata={"format": "arm.code_colours/1"}))


def load_code_colours(path: str | os.PathLike, num_codes: int) -> torch.Tensor:
    """(num_codes, K) histogram from a ``code_colours.safetensors`` (safetensors: nothing is unpickled)."""
    path = Path(path)
    if path.is_dir():
        path = path / CODE_COLOURS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no code colour table at {path}: `arm tokenizer encode --out DIR` writes "
                                f"DIR/{CODE_COLOURS_FILE} (use the train split's)")
    histogram = load_safetensors(path.read_bytes()).get("histogram")
    if histogram is None or histogram.ndim != 2:
        raise ValueError(f"{path} holds no (num_codes, K) 'histogram'; write it again with `arm tokenizer encode`")
    if histogram.shape[0] != num_codes:
        raise ValueError(f"{path} describes {histogram.shape[0]} codes but the model has {num_codes}: it was "
                         f"written for another image tokenizer; encode with this one")
    return histogram.float()
