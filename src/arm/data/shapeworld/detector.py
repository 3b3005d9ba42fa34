"""A weight-free ShapeWorld detector: colour segmentation, coverage (alpha) estimation and template matching.

ShapeWorld's scorers (GenEval rules in ``judge.py``; ``../shared/paper.md`` §4) need each object's class, colour,
size and box. GenEval runs Mask2Former plus a CLIP colour classifier (Ghosh et al. 2023, §3); here the renderer
is known exactly (``render.py``), so a detector with no learned weights recovers scenes exactly, fast enough to
serve as an RL reward.

Pipeline, per image:
1. Background = per-channel median of the one-pixel border (objects keep >= 1 px from the border).
2. Foreground = pixels farther than ``FOREGROUND_DISTANCE`` (RGB) from the background; 8-connected components
   (``MIN_GAP_PX`` keeps objects apart); components under ``MIN_AREA_FRACTION`` of the image are noise.
3. Colour = the palette colour most of the component's core pixels (its most distant ones) are nearest to.
4. Coverage ("alpha") per pixel = projection of (pixel - background) onto (core colour - background), clipped to
   [0, 1]: the renderer blends colour into background by exactly the shape's coverage, so this inverts it. The
   projection uses YCbCr with chroma down-weighted (``CHROMA_WEIGHT``): JPEG keeps chroma at half resolution, so
   luma carries edges more faithfully; chroma still decides where luma is flat. Component pixels off the colour
   line that vote for another colour (a neighbour JPEG merged in) are split off and fitted on their own.
5. Box and class: candidate boxes per class from the alpha >= 0.5 extent (through the template's own insets) and
   from the alpha mass and centroid (which blur and noise preserve); every class is scored on every candidate by
   the soft IoU ``sum(min) / sum(max)`` against ``shape_coverage``; the best (class, box) is hill-climbed by
   one-pixel side moves. ``score`` = that IoU; components below ``MIN_SCORE`` look like no shape and are dropped.
   A poorly fitting component whose high-coverage core falls apart is split when every part fits better.

Deliberate simplifications: one object per component unless a split above applies, so same-coloured shapes that
truly touch (never in ShapeWorld renders) become one low-scoring detection or none; boxes stay within
``MAX_ASPECT`` of square; colour is the nearest palette colour in plain RGB with no white balance; ``size`` is
the nearest of ShapeWorld's two box sides; float image arrays are read as 0-255 values.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from arm.data.shapeworld.render import shape_coverage
from arm.data.shapeworld.scene import Scene, ShapeObject
from arm.data.shapeworld.world import BACKGROUNDS, CLASSES, COLORS, SIZES, size_px

FOREGROUND_DISTANCE = 55.0
"""RGB distance to the background above which a pixel is foreground. Every colour is >= 91 from every background,
so objects' inner pixels always pass, while sigma-0.05 noise (~13 per channel) passes in ~0.03 % of pixels and
JPEG ringing across a 3 px gap rarely does (at 40, JPEG merged neighbours in ~1 % of scenes)."""

MIN_AREA_FRACTION = 0.004
"""Components smaller than this fraction of the image (16 px at 64 x 64) are noise; the smallest object, a small
star, covers ~75 px at 64 x 64."""

MIN_SCORE = 0.5
"""Best template IoU below which a component is not reported. Clean renders score ~0.998, damaged ones >= 0.56
(median 0.84-0.88); a diamond scores 0.5 against the square of its own box."""

CHROMA_WEIGHT = 0.1
"""Weight of Cb and Cr against Y in the alpha projection. Measured on 300 JPEG'd test scenes: exact recovery
0.83 at 1.0, 0.92 at 0.5, 0.96 at 0.25, 0.98 at 0.1 and 0.05; other damages unaffected."""

ALPHA_THRESHOLD = 0.5
CORE_FRACTION = 0.8
"""Core pixels (used for the colour) are at >= this fraction of the component's 90th-percentile distance."""

MAX_ASPECT = 1.25
"""Box refinement keeps width / height within this ratio: ShapeWorld boxes are square, and letting a square
template stretch would make elongated blobs (e.g. two touching circles) look like good squares."""

MAX_COMPONENTS = 16
"""At most this many components (the largest) are fitted per image, 4x ShapeWorld's maximum object count, so a
noise-like generated image costs milliseconds rather than seconds."""

MAX_FITS = 24
"""At most this many component fits per image, splits included (each costs ~0.3 ms)."""

SPLIT_BELOW = 0.8
"""A component fitting worse than this is tested for being two touching same-coloured objects. Clean single
objects score >= 0.9, so well-fitting components never pay for the test."""

SPLIT_ALPHA = 0.75
"""Coverage above which pixels count as an object's core when testing a component for a split."""

MAX_SPLITS = 3
"""Most times one component may shed pixels of another colour (bounds the work on a pathological image)."""

_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], np.float32)
_BACKGROUND_NAMES = tuple(BACKGROUNDS)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], np.float32)
_EIGHT_CONNECTED = np.ones((3, 3), bool)
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_WEIGHTED_YCBCR = np.diag([1.0, CHROMA_WEIGHT**0.5, CHROMA_WEIGHT**0.5]) @ _YCBCR
_METRIC = (_WEIGHTED_YCBCR.T @ _WEIGHTED_YCBCR).astype(np.float32)
"""Inner product on RGB differences that equals a plain dot product in chroma-weighted YCbCr."""


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """A uint8 ``(H, W, 3)`` array from a PIL image or an array (grey and RGBA arrays are converted)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
    return arr


def estimate_background(image: np.ndarray) -> np.ndarray:
    """Background RGB (float32): the per-channel median of the one-pixel border."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]]).astype(np.float32)
    return np.median(border, axis=0)


def nearest_background(rgb: np.ndarray) -> str:
    return _BACKGROUND_NAMES[int(np.argmin(((_BACKGROUND_RGB - rgb) ** 2).sum(1)))]


def nearest_color(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(1)))]


@lru_cache(maxsize=16)
def _template_table(max_side: int) -> np.ndarray:
    """``(classes, 7, max_side)``: per class and square side s, the insets (left, right, top, bottom) of the
    template's ``>= ALPHA_THRESHOLD`` region, its fill ratio (area / s^2) and its centroid as a fraction of s;
    they turn an observed alpha extent, or an observed alpha mass and centroid, back into a box."""
    table = np.zeros((len(CLASSES), 7, max_side), np.float64)
    table[:, 4, :] = 1.0  # fill ratio placeholder for sides < 2, never selected
    for k, cls in enumerate(CLASSES):
        for side in range(2, max_side):
            template = shape_coverage(cls, side, side).astype(np.float64)
            ys, xs = np.nonzero(template >= ALPHA_THRESHOLD)
            if len(xs):
                table[k, :4, side] = (xs.min(), side - 1 - xs.max(), ys.min(), side - 1 - ys.max())
            mass = template.sum()
            centre = np.arange(side) + 0.5
            table[k, 4:, side] = (mass / side**2, template.sum(0) @ centre / mass / side,
                                  template.sum(1) @ centre / mass / side)
    return table


@lru_cache(maxsize=4096)
def _template_bank(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """All classes' templates for one box size, stacked ``(classes, h, w)``, and their areas."""
    bank = np.stack([shape_coverage(cls, width, height) for cls in CLASSES])
    return bank, bank.sum(axis=(1, 2))


def _boxes_from_extent(lo: int, hi: int, inset_lo: np.ndarray, inset_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the box [start, end) on one axis whose thresholded template spans the observed [lo, hi);
    ``inset_lo`` and ``inset_hi`` are ``(classes, sides)`` rows of ``_template_table``."""
    sides = np.arange(inset_lo.shape[1])
    spans = sides - inset_lo - inset_hi
    side = 2 + np.argmin(np.abs(spans[:, 2:] - (hi - lo)), axis=1)
    start = lo - inset_lo[np.arange(len(side)), side]
    return start, start + side


def _boxes_from_moments(mass: float, mean_x: float, mean_y: float, table: np.ndarray) -> np.ndarray:
    """Per class, the square box whose template has the observed alpha mass and centroid: ``(classes, 4)``."""
    classes = np.arange(table.shape[0])
    max_side = table.shape[2] - 1
    side = np.full(len(classes), min(max(2, round(np.sqrt(mass / 0.6))), max_side))
    for _ in range(3):  # fill ratios vary slowly with the side, so this settles in a step or two
        side = np.clip(np.rint(np.sqrt(mass / table[classes, 4, side])), 2, max_side).astype(np.int64)
    x0 = np.rint(mean_x - table[classes, 5, side] * side)
    y0 = np.rint(mean_y - table[classes, 6, side] * side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.int64)


def _class_ious(alpha: np.ndarray, alpha_total: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """Soft IoU of the window's alpha with every class's template filling ``box`` (window coordinates).

    sum(max(a, t)) = sum(a) + sum(t) - sum(min(a, t)), and min(a, t) is 0 outside the overlap, so only the
    overlap needs summing; template area outside the window still counts in the union through the template sum.
    """
    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros(len(CLASSES))
    bank, areas = _template_bank(x1 - x0, y1 - y0)
    h, w = alpha.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return np.zeros(len(CLASSES))
    overlap = alpha[cy0:cy1, cx0:cx1]
    inter = np.minimum(overlap, bank[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]).sum(axis=(1, 2))
    return inter / np.maximum(alpha_total + areas - inter, 1e-9)


def _best_class_and_box(alpha: np.ndarray, candidates: set[tuple[int, int, int, int]]) -> tuple[int, tuple, float]:
    """Best (class index, box, IoU) over the candidate boxes, then hill-climbed by one-pixel side moves."""
    alpha_total = float(alpha.sum())
    best = (0, next(iter(candidates)), -1.0)
    for box in candidates:
        ious = _class_ious(alpha, alpha_total, box)
        k = int(np.argmax(ious))
        if ious[k] > best[2]:
            best = (k, box, float(ious[k]))
    for _ in range(6):
        k, box, score = best
        for side in range(4):
            for step in (-1, 1):
                cand = list(box)
                cand[side] += step
                w, h = cand[2] - cand[0], cand[3] - cand[1]
                if max(w, h) > MAX_ASPECT * min(w, h):
                    continue
                ious = _class_ious(alpha, alpha_total, tuple(cand))
                j = int(np.argmax(ious))
                if ious[j] > best[2] + 1e-6:
                    best = (j, tuple(cand), float(ious[j]))
        if best[1] == box:
            break
    return best


class _Image:
    """Per-image arrays shared by the component fits."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]
        self.background = estimate_background(rgb)
        self.diff = rgb.astype(np.float32) - self.background
        self.dist2 = np.einsum("ijk,ijk->ij", self.diff, self.diff)
        self.labels, self.count = ndimage.label(self.dist2 > FOREGROUND_DISTANCE**2, structure=_EIGHT_CONNECTED)
        self.min_area = max(4, int(MIN_AREA_FRACTION * self.height * self.width))
        self.margin = max(2, round(3 * min(self.height, self.width) / 64))
        self.max_side = max(self.height, self.width) + 2 * self.margin + 4
        self.fits_left = MAX_FITS

    def window(self, rows: slice, cols: slice) -> tuple[slice, slice]:
        m = self.margin
        return (slice(max(rows.start - m, 0), min(rows.stop + m, self.height)),
                slice(max(cols.start - m, 0), min(cols.stop + m, self.width)))

    def new_components(self, mask: np.ndarray, window: tuple[slice, slice]) -> list[tuple[int, tuple]]:
        """Give each large-enough 8-connected part of ``mask`` (window coordinates) a fresh label."""
        parts, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        found = []
        for j, sl in enumerate(ndimage.find_objects(parts), start=1):
            part = parts == j
            if sl is None or part.sum() < self.min_area:
                continue
            self.count += 1
            self.labels[window][part] = self.count
            oy, ox = window[0].start, window[1].start
            rows = slice(sl[0].start + oy, sl[0].stop + oy)
            cols = slice(sl[1].start + ox, sl[1].stop + ox)
            found.append((self.count, self.window(rows, cols)))
        return found


def _core_color(rgb: np.ndarray, dist2: np.ndarray) -> tuple[str, np.ndarray]:
    """The component's colour name and measured RGB, from its core: the palette colour most core pixels are
    nearest to (a vote, so pixels of a merged neighbour cannot drag the colour), and those pixels' median."""
    top = np.partition(dist2, int(0.9 * (len(dist2) - 1)))[int(0.9 * (len(dist2) - 1))]
    core = rgb[dist2 >= (CORE_FRACTION**2) * top].astype(np.float32)
    nearest = np.argmin(((core[:, None, :] - _PALETTE[None]) ** 2).sum(-1), axis=1)
    vote = int(np.argmax(np.bincount(nearest, minlength=len(_PALETTE_NAMES))))
    return _PALETTE_NAMES[vote], np.median(core[nearest == vote], axis=0)


def _fit_component(im: _Image, label: int, window: tuple[slice, slice], queue: list, splits: int = 0) -> list[dict]:
    """Colour, class, box and score of one component (several when it splits; none when it is empty or flat).
    Pixels of another colour are relabelled as new components and appended to ``queue``."""
    im.fits_left -= 1
    if im.fits_left < 0:
        return []
    region_labels = im.labels[window]
    own = region_labels == label
    if not own.any():
        return []
    diff = im.diff[window]
    color, core_rgb = _core_color(im.rgb[window][own], im.dist2[window][own])
    line = core_rgb - im.background
    direction = _METRIC @ line
    norm2 = float(direction @ line)
    if norm2 <= 1e-6:
        return []
    raw_alpha = diff @ (direction / norm2)
    alpha = np.clip(raw_alpha, 0.0, 1.0)

    # Own pixels far off the background->colour line belong to something else (e.g. a neighbour JPEG merged in).
    residual = diff - alpha[:, :, None] * line
    stray = own & (np.einsum("ijk,ijk->ij", residual, residual) > FOREGROUND_DISTANCE**2)
    if splits < MAX_SPLITS and stray.sum() >= im.min_area:
        # An opening keeps only parts >= 3 px thick: JPEG's off-hue fringes along edges are mostly thinner; the
        # colour check rejects the rest (a fringe of a yellow square still votes yellow, a merged neighbour not).
        stray = ndimage.binary_opening(stray, structure=_EIGHT_CONNECTED)
    if (
        splits < MAX_SPLITS
        and stray.sum() >= im.min_area
        and _core_color(im.rgb[window][stray], im.dist2[window][stray])[0] != color
    ):
        new = im.new_components(stray, window)
        if new:
            queue.extend(new)
            return _fit_component(im, label, window, queue, splits + 1)

    # Exclude pixels of other components: another object's edge is not part of this one.
    allowed = (region_labels == 0) | own
    alpha *= allowed
    ys, xs = np.nonzero((alpha >= ALPHA_THRESHOLD) & own)
    if len(xs) == 0:
        return []
    # Moments from unclipped alpha: zero-mean noise then averages out instead of inflating the mass.
    raw_alpha *= allowed
    mass = float(raw_alpha.sum())
    if mass <= 1.0:
        return []
    mean_x = float(raw_alpha.sum(0) @ (np.arange(alpha.shape[1]) + 0.5)) / mass
    mean_y = float(raw_alpha.sum(1) @ (np.arange(alpha.shape[0]) + 0.5)) / mass
    lo_x, hi_x, lo_y, hi_y = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    table = _template_table(im.max_side)
    x0, x1 = _boxes_from_extent(lo_x, hi_x, table[:, 0], table[:, 1])
    y0, y1 = _boxes_from_extent(lo_y, hi_y, table[:, 2], table[:, 3])
    extent_boxes = np.stack([x0, y0, x1, y1], axis=1)
    moment_boxes = _boxes_from_moments(mass, mean_x, mean_y, table)
    widths, heights = extent_boxes[:, 2] - extent_boxes[:, 0], extent_boxes[:, 3] - extent_boxes[:, 1]
    squarish = np.maximum(widths, heights) <= MAX_ASPECT * np.minimum(widths, heights)
    candidates = {tuple(int(v) for v in box) for box in np.concatenate([extent_boxes[squarish], moment_boxes])}
    k, (x0, y0, x1, y1), score = _best_class_and_box(alpha, candidates)
    oy, ox = window[0].start, window[1].start
    fit = {"class": CLASSES[k], "color": color, "bbox": [x0 + ox, y0 + oy, x1 + ox, y1 + oy], "score": score}
    if score < SPLIT_BELOW and splits < MAX_SPLITS:
        parts = _split_touching(im, own & (alpha >= SPLIT_ALPHA), own, window, queue, splits, score)
        if parts is not None:
            return parts
    return [fit]


def _split_touching(
    im: _Image, cores: np.ndarray, own: np.ndarray, window: tuple[slice, slice], queue: list, splits: int, score: float
) -> list[dict] | None:
    """Split a poorly fitting component whose high-coverage core falls apart into >= 2 sizeable parts (two
    same-coloured objects joined by a faint bridge); each of its pixels goes to the nearest part. The split is
    kept only when every part fits better than the whole did; otherwise the labels are restored."""
    parts, n = ndimage.label(cores, structure=_EIGHT_CONNECTED)
    if n < 2:
        return None
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= im.min_area)
    if len(keep) < 2:
        return None
    seeds = np.where(np.isin(parts, keep), parts, 0)
    nearest_index = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    nearest = seeds[nearest_index[0], nearest_index[1]]
    saved = im.labels[window].copy()
    im.labels[window][own] = 0
    found = []
    for j in keep:
        for label, sub_window in im.new_components(own & (nearest == j), window):
            found.extend(_fit_component(im, label, sub_window, queue, splits + 1))
    if len(found) >= 2 and min(d["score"] for d in found) > score:
        return found
    im.labels[window] = saved
    return None


def _size_name(side: float, resolution: int) -> str:
    return min(SIZES, key=lambda s: abs(size_px(s, resolution) - side))


def detect(image: np.ndarray | Image.Image, min_score: float = MIN_SCORE) -> list[dict]:
    """Objects in a ShapeWorld image: dicts with ``class``, ``color``, ``size``, ``bbox`` (x0, y0, x1, y1 ints,
    exclusive max) and ``score`` (template soft IoU in [0, 1]), sorted by score, highest first."""
    rgb = as_rgb_array(image)
    if rgb.shape[0] < 3 or rgb.shape[1] < 3:
        return []
    im = _Image(rgb)
    if im.count == 0:
        return []
    areas = np.bincount(im.labels.ravel(), minlength=im.count + 1)
    # Largest components first, and only so many: a noise-like generated image must not cost seconds.
    largest = [label for label in np.argsort(-areas[1:], kind="stable")[:MAX_COMPONENTS] + 1
               if areas[label] >= im.min_area]
    slices = ndimage.find_objects(im.labels)
    queue = [(int(label), im.window(*slices[label - 1])) for label in largest]
    detections = []
    while queue:
        label, window = queue.pop(0)
        for found in _fit_component(im, label, window, queue):
            if found["score"] < min_score:
                continue
            x0, y0, x1, y1 = found["bbox"]
            found["size"] = _size_name(((x1 - x0) + (y1 - y0)) / 2, min(im.height, im.width))
            detections.append(found)
    detections.sort(key=lambda d: -d["score"])
    return detections


def detect_scene(image: np.ndarray | Image.Image, min_score: float = MIN_SCORE) -> Scene:
    """The scene an image shows: the detected objects and the nearest named background."""
    rgb = as_rgb_array(image)
    objects = [ShapeObject(d["class"], d["color"], d["size"], tuple(d["bbox"])) for d in detect(rgb, min_score)]
    return Scene(objects=objects, background=nearest_background(estimate_background(rgb)), resolution=rgb.shape[0])
