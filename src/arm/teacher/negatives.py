"""Compositional hard negatives for the teacher (NegCLIP, Yuksekgonul et al. 2023, "When and why vision-language
models behave like bags-of-words, and what to do about it").

A hard negative of a ShapeWorld sample is a caption of the SAME scene with exactly ONE attribute of ONE object
changed: its class (with probability ``shape_prob``) or else its colour. The caption is written by
``arm.data.shapeworld.text.caption`` on the perturbed scene, so it has the same wording distribution as the
positives and differs only in what the image contradicts. Deliberate choices:

- Perturbations that would create a held-out combination (``scene.heldout_combinations``: a held-out colour x
  shape pair or relation) are never drawn, so train text still never names one.
- A scene without objects gets its background changed instead (the only attribute it has).
- Everything is a pure function of ``(key, step, k)``: the rng is seeded from a CRC32 of them, so a resumed run
  draws the same negatives and worker count does not matter.
"""

from __future__ import annotations

import random
import zlib

from arm.data.shapeworld.scene import Scene, heldout_combinations
from arm.data.shapeworld.text import caption
from arm.data.shapeworld.world import BACKGROUNDS, CLASSES, COLORS


def negative_rng(key: str, step: int, k: int = 0) -> random.Random:
    """The deterministic rng of the ``k``-th hard negative of sample ``key`` at optimizer step ``step``."""
    return random.Random(zlib.crc32(f"{key}|{step}|{k}".encode()))


def perturb_scene(scene: Scene, rng: random.Random, shape_prob: float = 0.75) -> tuple[Scene, str]:
    """A copy of ``scene`` with one attribute changed; returns it and which field changed
    ("class", "color" or "background"). Never introduces a held-out combination the scene did not already have."""
    out, field, _ = perturb_object(scene, rng, shape_prob)
    return out, field


def perturb_object(scene: Scene, rng: random.Random, shape_prob: float = 0.75) -> tuple[Scene, str, int]:
    """``perturb_scene`` that also returns the index of the changed object (-1 for the background)."""
    if not scene.objects:
        out = scene.copy()
        out.background = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return out, "background", -1
    before = set(heldout_combinations(scene))  # a val/test scene may hold some already; add none
    fields = ("class", "color") if rng.random() < shape_prob else ("color", "class")
    for field in fields:  # the preferred field first; the other only when no legal change of it exists
        candidates = []
        for i, o in enumerate(scene.objects):
            values = CLASSES if field == "class" else tuple(COLORS)
            current = o.cls if field == "class" else o.color
            candidates += [(i, v) for v in values if v != current]
        rng.shuffle(candidates)
        for i, value in candidates:
            out = scene.copy()
            if field == "class":
                out.objects[i].cls = value
            else:
                out.objects[i].color = value
            if not set(heldout_combinations(out)) - before:
                return out, field, i
    raise ValueError(f"no legal one-attribute perturbation of scene {scene.to_json()}")  # pragma: no cover


SHORT_TEMPLATES = ("a photo of a {}", "an image of a {}", "a picture of a {}", "a {}", "a drawing of a {}")
"""GenEval-like wordings of short texts; ``{}`` is "<colour> <class>", "<colour> shape" or "<class>"."""


def short_pair(scene: Scene, rng: random.Random, shape_prob: float = 0.75) -> tuple[str, str] | None:
    """A short positive about one object of ``scene`` ("a photo of a red circle", "a red shape", "a circle") and
    its hard negative with that object's class or colour changed ("a photo of a red square"), both with the same
    wording; ``None`` when the negative would also be true of the scene (another object matches it)."""
    out, field, i = perturb_object(scene, rng, shape_prob)
    if i < 0:
        return None
    old, new = scene.objects[i], out.objects[i]
    if field == "class":  # name the class, with the colour half of the time
        with_color = rng.random() < 0.5
        true = any(o.cls == new.cls and (not with_color or o.color == new.color) for o in scene.objects)
        names = (f"{old.color} {old.cls}", f"{new.color} {new.cls}") if with_color else (old.cls, new.cls)
    else:  # name the colour, with the class half of the time
        with_class = rng.random() < 0.5
        true = any(o.color == new.color and (not with_class or o.cls == new.cls) for o in scene.objects)
        names = ((f"{old.color} {old.cls}", f"{new.color} {new.cls}") if with_class
                 else (f"{old.color} shape", f"{new.color} shape"))
    if true:
        return None
    template = rng.choice(SHORT_TEMPLATES)
    return tuple(template.format(n).replace("a a", "an a").replace("a o", "an o") for n in names)


def hard_negative_captions(metas: list[dict], step: int, k: int = 1, shape_prob: float = 0.75) -> list[str]:
    """``k`` hard-negative captions per sample, ordered negative-major: ``[n0 of all samples, n1 of all, ...]``."""
    out = []
    for j in range(k):
        for m in metas:
            rng = negative_rng(str(m.get("key", m.get("index", ""))), step, j)
            scene, _ = perturb_scene(Scene.from_json(m["scene"]), rng, shape_prob)
            out.append(caption(scene, rng))
    return out
