"""The visual-quality proxy: exactly 1 on clean renders, lower under damage, and hand-computed on a speck."""

import numpy as np

from arm.data.shapeworld.damage import gaussian_noise
from arm.data.shapeworld.render import render
from arm.data.shapeworld.scene import Scene, scene_for
from arm.eval.quality import STRAY_ZERO, quality_parts, quality_score


def test_clean_renders_score_one_and_damage_lowers_it():
    rng = np.random.default_rng()
    for i in rng.integers(0, 10_000, 4):
        image = render(scene_for(0, "test", int(i)))
        assert quality_parts(image) == {"palette": 1.0, "parse": 1.0, "stray": 1.0}
        assert quality_score(gaussian_noise(image, rng)) < 0.95
    assert quality_score(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)) < 0.05


def test_off_palette_speck_by_hand():
    image = render(Scene(objects=[], background="gray", resolution=64))
    image[30:33, 30:33] = (0, 255, 0)  # 9 px far from every background-to-palette segment, too small to detect
    parts = quality_parts(image)
    assert parts["palette"] == 1 - 9 / 4096
    assert parts["parse"] == 1.0  # nothing detected, nothing mis-parsed
    assert np.isclose(parts["stray"], 1 - 9 / (STRAY_ZERO * 4096))
    assert np.isclose(quality_score(image), parts["palette"] * parts["stray"])
