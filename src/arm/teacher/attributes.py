"""Attribute texts with exact multi-positive labels for the teacher's sigmoid loss.

SigLIP's loss (Zhai et al. 2023) treats every image/text pair as its own binary problem; the paper's labels are
"+1 on the diagonal" only because web captions have no ground truth beyond their own image. ShapeWorld does:
whether "a photo of a red circle" is true of a scene is a program. So every training step also scores each image
against a set of short attribute texts — every colour ("a red shape"), every class ("a circle") and every legal
colour x class pair ("a red circle") — with label +1 exactly when some object of the scene satisfies the text
(an exact, multi-positive label matrix instead of the diagonal).

Why (experiments/LOG.md, 2026-11-28 and 2026-12-04): with diagonal labels on captions, colour and position
identify a caption inside a batch, so the image tower never needs shape; one shape-changed hard negative per image
is one term among B + K*B and moved shape zero-shot only from 0.21 to 0.26. Attribute texts put every shape
question to every image at every step, a signal as dense as a supervised multi-label head but still a text/image
sigmoid loss through the text tower, so the learnt embeddings stay language-aligned.

Deliberate choices:
- Held-out colour x shape pairs (``HELDOUT_COLOR_SHAPE``) are never named, so train text still never names one.
- The wordings (``ATTRIBUTE_TEMPLATES``) do not include the zero-shot evaluation prompts' own wordings
  ("a {} shape" as a whole prompt, "a {}"): a template is drawn per text per step from the list below, so the
  zero-shot score also measures that the alignment carries over to an unseen wording.
- The template draw is a pure function of the step (resumed runs draw the same texts).
"""

from __future__ import annotations

import random
import zlib

import torch

from arm.data.shapeworld.world import CLASSES, COLORS, HELDOUT_COLOR_SHAPE

ATTRIBUTE_TEMPLATES = ("a photo of a {}", "an image with a {}", "a picture of a {}", "a drawing of a {}",
                       "there is a {} in the image")
"""Wordings of training attribute texts; ``{}`` is "<colour> <class>", "<colour> shape" or "<class>"."""


def presence_concepts() -> list[tuple[str | None, str | None]]:
    """Every colour alone, then every class alone (None = any): the presence head's 16 targets, in this order."""
    return [(c, None) for c in COLORS] + [(None, k) for k in CLASSES]


def attribute_concepts() -> list[tuple[str | None, str | None]]:
    """Every (colour, class) concept named in training: colour only, class only, and legal pairs (None = any)."""
    return presence_concepts() + [(c, k) for c in COLORS for k in CLASSES if (c, k) not in HELDOUT_COLOR_SHAPE]


def concept_name(color: str | None, cls: str | None) -> str:
    """"red circle", "red shape" or "circle"."""
    if color is None and cls is None:
        raise ValueError("a concept needs a colour, a class or both")
    return f"{color} {cls}" if color and cls else (f"{color} shape" if color else str(cls))


def concept_labels(scenes: list[dict], concepts: list[tuple[str | None, str | None]]) -> torch.Tensor:
    """(B, T) labels in {+1, -1}: +1 where some object of scene ``b`` (a scene json) matches concept ``t``."""
    labels = -torch.ones(len(scenes), len(concepts))
    for b, scene in enumerate(scenes):
        pairs = {(o["color"], o["class"]) for o in scene["objects"]}
        for t, (color, cls) in enumerate(concepts):
            if any((color is None or color == c) and (cls is None or cls == k) for c, k in pairs):
                labels[b, t] = 1.0
    return labels


def attribute_texts(step: int, concepts: list[tuple[str | None, str | None]] | None = None) -> list[str]:
    """One text per concept, each in a template drawn from ``ATTRIBUTE_TEMPLATES`` by an rng seeded with ``step``."""
    concepts = attribute_concepts() if concepts is None else concepts
    rng = random.Random(zlib.crc32(f"attributes|{step}".encode()))
    texts = []
    for color, cls in concepts:
        text = rng.choice(ATTRIBUTE_TEMPLATES).format(concept_name(color, cls))
        texts.append(text.replace(" a a", " an a").replace(" a o", " an o"))
    return texts
