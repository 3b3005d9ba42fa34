"""A visual-quality proxy for ShapeWorld images: how much an image looks like something the renderer could draw.

Real benchmarks ask a VLM about naturalness and artifacts (GEdit's PQ, WISE's realism and aesthetics). In
ShapeWorld "natural" has an exact meaning: a named background, objects in palette colours blended into it only
along their edges, and every coloured pixel belonging to a recognisable shape. Three parts, each in [0, 1] and
exactly 1 on a clean render:

- ``palette``: the share of pixels within ``PALETTE_TOL`` (RGB distance) of a colour the renderer can produce
  on this image: a point on the segment from the nearest named background to one of the ten palette colours
  (flat background, flat object interior and every anti-aliased edge lie on such a segment). Catches noise,
  off-palette colours, a background that is no named background, smudges.
- ``parse``: how well the foreground parses as shapes: the area-weighted mean over detections of
  ``min(1, score / PARSE_GOOD)``, where ``score`` is the detector's template IoU (clean renders ~0.998, damaged
  ones 0.84-0.88 in median; ``arm.data.shapeworld.detector``); 1 with no detections.
- ``stray``: ``1 - unexplained / (STRAY_ZERO x image area)``, floored at 0, where ``unexplained`` counts
  foreground pixels (farther than the detector's ``FOREGROUND_DISTANCE`` from the background) outside every
  detected box grown by one pixel: blobs that are no shape, fragments, specks.

``quality_score`` is their product, so it is 1 only when all three are, and falls with each. The RL stage's
visual-quality reward reuses it; GEdit's ShapeWorld judge maps ``palette`` onto naturalness and
``parse x stray`` onto "no artifacts" (``arm.eval.judges``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from arm.data.shapeworld.detector import FOREGROUND_DISTANCE, as_rgb_array, detect, estimate_background
from arm.data.shapeworld.world import BACKGROUNDS, COLORS

PALETTE_TOL = 20.0
"""RGB distance within which a pixel counts as drawable. Rendering rounds each channel by at most 0.5 (distance
<= 0.87); the damage module's Gaussian noise (sigma 0.05, ~13 per channel) pushes ~9 % of pixels beyond it and
its JPEG (quality 50) ~3 % (measured on five test scenes)."""

PARSE_GOOD = 0.9
"""Template IoU at and above which a detection counts as a perfectly parsed shape."""

STRAY_ZERO = 0.02
"""Unexplained foreground covering this share of the image (82 px at 64 x 64, a small shape's area) scores 0."""

_PALETTE = np.array(list(COLORS.values()), np.float32)  # (10, 3)
_BACKGROUNDS = np.array(list(BACKGROUNDS.values()), np.float32)  # (3, 3)


def palette_distance(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Distance of each pixel ``(N, 3)`` to the nearest background-to-palette-colour segment: ``(N,)``."""
    p = pixels.astype(np.float32)[:, None, :]  # (N, 1, 3)
    direction = _PALETTE - background  # (10, 3)
    t = ((p - background) * direction).sum(-1) / (direction**2).sum(-1)  # (N, 10)
    closest = background + np.clip(t, 0.0, 1.0)[..., None] * direction  # (N, 10, 3)
    return np.sqrt(((p - closest) ** 2).sum(-1)).min(axis=1)


def quality_parts(image: np.ndarray | Image.Image, detections: list[dict] | None = None) -> dict[str, float]:
    """``{"palette", "parse", "stray"}`` of one image (see the module docstring); ``detections`` from
    ``detect(image)`` may be passed to save detecting twice."""
    rgb = as_rgb_array(image)
    h, w = rgb.shape[:2]
    estimated = estimate_background(rgb)
    named = _BACKGROUNDS[int(np.argmin(((_BACKGROUNDS - estimated) ** 2).sum(1)))]
    pixels = rgb.reshape(-1, 3)
    palette = float((palette_distance(pixels, named) <= PALETTE_TOL).mean())

    found = detect(rgb) if detections is None else detections
    foreground = np.sqrt(((rgb.astype(np.float32) - estimated) ** 2).sum(-1)) > FOREGROUND_DISTANCE  # (H, W)
    explained = np.zeros((h, w), bool)
    areas, scores = [], []
    for det in found:
        x0, y0, x1, y1 = (int(v) for v in det["bbox"])
        explained[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        areas.append(max(x1 - x0, 1) * max(y1 - y0, 1))
        scores.append(min(1.0, float(det["score"]) / PARSE_GOOD))
    # With nothing detected there is nothing mis-parsed; foreground that no detection explains costs in `stray`.
    parse = float(np.average(scores, weights=areas)) if areas else 1.0
    unexplained = float((foreground & ~explained).sum())
    stray = max(0.0, 1.0 - unexplained / (STRAY_ZERO * h * w))
    return {"palette": palette, "parse": parse, "stray": stray}


def quality_score(image: np.ndarray | Image.Image, detections: list[dict] | None = None) -> float:
    """Visual quality in [0, 1]: ``palette x parse x stray`` (1 on a clean ShapeWorld render)."""
    parts = quality_parts(image, detections)
    return parts["palette"] * parts["parse"] * parts["stray"]
