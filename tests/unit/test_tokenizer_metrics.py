"""Tokenizer metrics against hand-computed values and known invariants."""

import math

import numpy as np
import pytest
import torch

from arm.tokenizer.metrics import (
    code_histogram,
    code_perplexity,
    code_usage,
    frechet_distance,
    linear_probe_accuracy,
    psnr,
)


def test_psnr_hand_computed():
    target = torch.zeros(2, 3, 4, 4)
    pred = torch.full_like(target, 0.1)  # mse 0.01 -> 20 dB
    pred[1] = 0.5  # mse 0.25 -> 10*log10(4) = 6.0206 dB
    assert psnr(pred, target).tolist() == pytest.approx([20.0, 10 * math.log10(4)], abs=1e-4)


def test_code_usage_and_perplexity():
    hist = code_histogram(torch.tensor([[0, 1], [2, 3]]), codebook_size=8)
    assert hist.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert code_usage(hist) == 0.5
    assert code_perplexity(hist) == pytest.approx(4.0)
    skewed = torch.tensor([3, 1])  # p = (3/4, 1/4): exp(H) = exp(-(.75 ln .75 + .25 ln .25)) = 1.7548
    assert code_perplexity(skewed) == pytest.approx(1.7548, abs=1e-4)


def test_frechet_distance_gaussian_closed_form():
    rng = np.random.default_rng()
    a = rng.normal(0.0, 1.0, size=(20000, 1))
    b = rng.normal(3.0, 2.0, size=(20000, 1))
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 = 9 + 1
    assert frechet_distance(a, b) == pytest.approx(10.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    x = rng.normal(size=(500, 8))
    shift = rng.normal(size=8)
    assert frechet_distance(x, x + shift) == pytest.approx(float((shift**2).sum()), rel=1e-6)
    with pytest.raises(ValueError, match="equal d"):
        frechet_distance(x, x[:, :3])


def test_linear_probe_separable_and_random():
    g = torch.Generator().manual_seed(int(torch.randint(0, 10**6, ())))
    centers = torch.randn(3, 16, generator=g) * 4
    y = torch.randint(0, 3, (600,), generator=g)
    x = centers[y] + torch.randn(600, 16, generator=g)
    assert linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:]) > 0.97
    noise = torch.randn(600, 16, generator=g)
    assert linear_probe_accuracy(noise[:400], y[:400], noise[400:], y[400:]) < 0.6
