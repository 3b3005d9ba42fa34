"""What every figure of ``arm figures`` shares: the Agg backend, one resolution, fixed panel sizes, atomic PNG+PDF.

Figures are saved at ``DPI`` without ``bbox_inches="tight"``, so a figure's pixel size is its ``figsize`` times
``DPI``: an image grid of R rows and C columns is ``grid_figsize(R, C, ...)`` inches, which tests check against
the grid they asked for.
"""

from __future__ import annotations

import io
import os
import re
import textwrap
from pathlib import Path

import numpy as np

from arm.io import write_atomic

DPI = 100
PANEL_IN = 1.5
"""Side of one image panel in inches (150 px at ``DPI``): big enough to see a 64x64 ShapeWorld image."""
TITLE_IN = 0.45
CAPTION_IN = 0.42
LABEL_IN = 0.9
MIN_WIDTH_IN = 3.0
"""A grid of one or two columns still gets room for a readable title."""
FONT_SIZE = 8


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE, "figure.titlesize": FONT_SIZE + 1})
    return plt


def grid_figsize(rows: int, cols: int, caption: bool = False, row_labels: bool = False) -> tuple[float, float]:
    """Inches of an image grid: ``PANEL_IN`` per cell (at least ``MIN_WIDTH_IN`` wide), room for a caption above
    each cell, a label left of each row and a title on top."""
    width = max(cols * PANEL_IN, MIN_WIDTH_IN) + (LABEL_IN if row_labels else 0.0)
    height = rows * (PANEL_IN + (CAPTION_IN if caption else 0.0)) + TITLE_IN
    return width, height


def pixel_size(figsize: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a figure of ``figsize`` inches saved by ``save_figure``."""
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def save_figure(fig, png: str | os.PathLike) -> list[Path]:
    """Write ``fig`` to ``png`` and to the PDF beside it, atomically; close it; return both paths."""
    plt = pyplot()
    png = Path(png)
    written = []
    for path, fmt in ((png, "png"), (png.with_suffix(".pdf"), "pdf")):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI)
        write_atomic(path, buf.getvalue())
        written.append(path)
    plt.close(fig)
    return written


def read_png(path: str | os.PathLike) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 array."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (a folder path, a tag, a task type)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", str(text)).strip("-") or "root"


def image_panel(ax, image: np.ndarray, title: str = "", border: str | None = None) -> None:
    """One image in an axis: no ticks, an optional coloured frame (a correct / wrong mark) and a short title."""
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border is not None:
            spine.set_color(border)
            spine.set_linewidth(3)
    if title:
        ax.set_title(title, fontsize=FONT_SIZE - 1)


def suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (two lines at most, the room ``TITLE_IN`` leaves)."""
    width = max(int(fig.get_figwidth() * 72 / (0.6 * (FONT_SIZE + 1))), 20)  # a character is ~0.6 em wide
    fig.suptitle("\n".join(textwrap.wrap(text, width)[:2]))
