"""Decoder-like image damage, used to check that ShapeWorld scoring survives imperfect generated images.

A generative model's decoder (VQ tokenizer, diffusion VAE) returns images that are a little noisy, blurred,
compressed and colour-shifted; the detector (``detector.py``) must still recover the scene. Each damage is a
function ``f(image, rng) -> image`` on uint8 ``(H, W, 3)`` arrays, with ``rng`` a ``numpy.random.Generator``
(deterministic damages ignore it, so all share one signature):

- ``noise``: additive Gaussian noise, sigma 0.05 in [0, 1] units.
- ``jpeg``: a JPEG round trip through PIL at quality 50 (PIL's default 4:2:0 chroma subsampling).
- ``blur``: Gaussian blur, sigma 0.7 px, per channel (``scipy.ndimage.gaussian_filter``).
- ``jitter``: brightness, contrast and saturation factors each uniform in [0.92, 1.08], applied in that fixed
  order with PIL ``ImageEnhance`` semantics (contrast about the mean grey level, saturation about each pixel's
  grey). Simplification: torchvision's ``ColorJitter`` shuffles the order; a fixed order keeps it reproducible.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

NOISE_SIGMA = 0.05
JPEG_QUALITY = 50
BLUR_SIGMA = 0.7
JITTER = 0.08

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R 601-2 luma weights, as PIL's ``convert("L")`` (which ``ImageEnhance`` uses) applies them."""


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = NOISE_SIGMA) -> np.ndarray:
    """Add i.i.d. Gaussian noise of ``sigma`` (in [0, 1] units) to every channel of every pixel."""
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma * 255.0, size=image.shape).astype(np.float32)
    return _to_uint8(noisy)


def jpeg(image: np.ndarray, rng: np.random.Generator | None = None, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Encode to JPEG at ``quality`` with PIL and decode again."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def blur(image: np.ndarray, rng: np.random.Generator | None = None, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur of ``sigma`` px on each channel separately (sigma 0 along the channel axis)."""
    return _to_uint8(ndimage.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0)))


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = JITTER) -> np.ndarray:
    """Random brightness, contrast and saturation, each factor uniform in [1 - strength, 1 + strength].

    Values are clipped to [0, 255] after each step, as PIL does when it stores each intermediate image.
    """
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    out = np.clip(image.astype(np.float32) * brightness, 0, 255)
    mean_grey = float((out @ _LUMA).mean())
    out = np.clip((out - mean_grey) * contrast + mean_grey, 0, 255)
    grey = (out @ _LUMA)[:, :, None]
    out = np.clip((out - grey) * saturation + grey, 0, 255)
    return _to_uint8(out)


def no_damage(image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Identity, so "none" can sit in the same loop as the damages."""
    return image


Damage = Callable[[np.ndarray, np.random.Generator], np.ndarray]

DAMAGES: dict[str, Damage] = {
    "noise": gaussian_noise,
    "jpeg": jpeg,
    "blur": blur,
    "jitter": color_jitter,
}
"""The four decoder-like damages by name; ``no_damage`` is deliberately not in here."""
