"""Anti-aliased rendering of ShapeWorld scenes, and the per-shape coverage templates the detector matches against.

Each shape is a polygon (or an ellipse) in unit box coordinates, stretched to fill its box exactly. Scenes are
drawn at ``SUPERSAMPLE`` x the target resolution with PIL and reduced with a box filter, so every pixel holds the
exact area fraction each colour covers (up to the supersampling grid). The detector uses ``shape_coverage`` —
the same drawing code — as its templates, so renderer and detector cannot drift apart.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from arm.data.shapeworld.scene import Scene, ShapeObject
from arm.data.shapeworld.world import BACKGROUNDS, CLASSES, COLORS

SUPERSAMPLE = 4
"""Sub-pixels per pixel side used to compute coverage."""


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / points
        pts.append((r * math.cos(a), r * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    # Stretch to the unit box so the star touches all four sides, like every other shape.
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in pts]


_T = 1 / 3  # arm half-width of the cross, as a fraction of the box
POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "cross": [
        (_T, 0), (1 - _T, 0), (1 - _T, _T), (1, _T), (1, 1 - _T), (1 - _T, 1 - _T),
        (1 - _T, 1), (_T, 1), (_T, 1 - _T), (0, 1 - _T), (0, _T), (_T, _T),
    ],
    "star": _star(),
}
"""Unit-box outlines; ``circle`` is drawn as an ellipse instead."""


def _draw_shape(draw: ImageDraw.ImageDraw, cls: str, box: tuple[float, float, float, float], fill) -> None:
    """Draw one shape filling ``box`` (in canvas pixels, exclusive max) on a supersampled canvas."""
    x0, y0, x1, y1 = box
    # PIL fills the closed outline, boundary pixels included: end one canvas pixel short of the exclusive max.
    w, h = x1 - x0 - 1, y1 - y0 - 1
    if cls == "circle":
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
    elif cls in POLYGONS:
        draw.polygon([(x0 + u * w, y0 + v * h) for u, v in POLYGONS[cls]], fill=fill)
    else:
        raise ValueError(f"unknown class {cls!r}; expected one of {list(CLASSES)}")


def render(scene: Scene) -> np.ndarray:
    """Render a scene to a ``(H, W, 3)`` uint8 array.

    Each object is blended into the background through its cached coverage template; since objects never overlap
    and the box filter is local, this equals drawing the whole supersampled canvas, at a fraction of the cost.
    """
    res = scene.resolution
    img = np.empty((res, res, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, res), min(y1, res)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        cov = shape_coverage(o.cls, x1 - x0, y1 - y0)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
        patch = img[cy0:cy1, cx0:cx1]
        patch += cov * (np.asarray(COLORS[o.color], np.float32) - patch)
    return (img + 0.5).astype(np.uint8)


def render_pil(scene: Scene) -> Image.Image:
    """Render a scene to a PIL RGB image at ``scene.resolution``."""
    return Image.fromarray(render(scene))


@lru_cache(maxsize=4096)
def shape_coverage(cls: str, width: int, height: int, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel a shape covers when it fills a ``width`` x ``height`` box: ``(height, width)``."""
    s = supersample
    canvas = Image.new("L", (width * s, height * s), 0)
    _draw_shape(ImageDraw.Draw(canvas), cls, (0, 0, width * s, height * s), 255)
    cov = np.asarray(canvas.resize((width, height), Image.BOX), dtype=np.float32) / 255.0
    cov.setflags(write=False)
    return cov


def object_coverage(obj: ShapeObject, resolution: int) -> np.ndarray:
    """Coverage of one object over the whole image, ``(H, W)`` float32 in [0, 1]."""
    x0, y0, x1, y1 = obj.bbox
    out = np.zeros((resolution, resolution), np.float32)
    cov = shape_coverage(obj.cls, x1 - x0, y1 - y0)
    # Clip to the image, in case a (hand-made) box runs off the edge.
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, resolution), min(y1, resolution)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0:cy1, cx0:cx1] = cov[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return out


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes (PNG spec, RFC 2083) of a uint8 ``(H, W, 3)`` RGB or ``(H, W)`` grey array.

    Written by hand because PIL's encoder costs ~6x more per 64 x 64 image, which dominated world generation.
    No filter, zlib at ``level``, no timestamp: equal pixels always give equal bytes.
    """
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        color_type, channels = 0, 1
    elif arr.ndim == 3 and arr.shape[2] == 3:
        color_type, channels = 2, 3
    else:
        raise ValueError(f"encode_png takes (H, W) or (H, W, 3) uint8 arrays, got shape {arr.shape}")
    h, w = arr.shape[:2]
    raw = np.zeros((h, w * channels + 1), np.uint8)  # a leading 0 per row: filter type "None"
    raw[:, 1:] = arr.reshape(h, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def decode_png(data: bytes) -> np.ndarray:
    """Decode image bytes to a ``(H, W, 3)`` uint8 array (grey or RGBA inputs are converted)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
