"""The shared optimiser: AdamW groups (decay on matrices only, per-part learning-rate scales), warm-up + cosine."""

import math

import numpy as np
import pytest
import torch

from arm.optim import adamw_warmup_cosine, two_phase_factor, warmup_cosine_factor


def _two_parts():
    torch.manual_seed(int(torch.randint(0, 10_000, ()).item()))
    a, b = torch.nn.Linear(4, 3), torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    return a, b


def test_factor_is_linear_warmup_then_cosine_to_zero():
    f = warmup_cosine_factor(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_factor(10, None)(500) == 1.0


def test_plain_parameters_decay_matrices_only():
    a, b = _two_parts()
    opt = adamw_warmup_cosine([*a.parameters(), *b.parameters()], 1e-3, 0.1, (0.9, 0.95), 0, None)["optimizer"]
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_decay[0.1] == {id(a.weight), id(b[0].weight)}
    assert by_decay[0.0] == {id(a.bias), id(b[0].bias), id(b[1].weight), id(b[1].bias)}
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups)


def test_scaled_parts_follow_the_same_schedule_at_their_own_rate():
    a, b = _two_parts()
    lr, scale, warmup, total = 2e-3, 3.0, 5, 40
    out = adamw_warmup_cosine([(a.parameters(), 1.0), (b.parameters(), scale)], lr, 0.0, (0.9, 0.95), warmup, total)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    factor = warmup_cosine_factor(warmup, total)
    ids_b = {id(p) for p in b.parameters()}
    for step in range(total):
        for g in opt.param_groups:
            in_b = {id(p) for p in g["params"]} <= ids_b
            assert g["lr"] == pytest.approx(lr * (scale if in_b else 1.0) * factor(step))
        opt.step()
        sched.step()
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(a.parameters())) + len(list(b.parameters()))


def test_bad_parts_are_errors():
    a, b = _two_parts()
    with pytest.raises(ValueError, match="two learning-rate groups"):
        adamw_warmup_cosine([(a.parameters(), 1.0), (a.parameters(), 2.0)], 1e-3, 0.0, (0.9, 0.95), 0, None)
    with pytest.raises(ValueError, match="must be > 0"):
        adamw_warmup_cosine([(b.parameters(), 0.0)], 1e-3, 0.0, (0.9, 0.95), 0, None)


def test_two_phase_factor_restarts_the_warmup_and_cosine_at_the_boundary():
    f = two_phase_factor(10, 110, 160)
    assert f(0) == pytest.approx(0.1) and f(60) == pytest.approx(0.5)  # the first phase: warm-up 10, cosine to 110
    assert f(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert f(110) == pytest.approx(0.1) and f(119) == pytest.approx(1.0)  # a fresh warm-up over the 50 last steps
    assert f(135) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 40)))
    for first, total in ((0, 10), (10, 10)):
        with pytest.raises(ValueError, match="must end inside the run"):
            two_phase_factor(2, first, total)
    scale = float(np.random.default_rng().uniform(0.2, 5.0))
    g = two_phase_factor(10, 110, 160, second_scale=scale)  # the second phase's peak only
    assert [g(s) for s in range(110)] == [f(s) for s in range(110)]
    assert [g(s) for s in range(110, 160)] == pytest.approx([scale * f(s) for s in range(110, 160)])
    with pytest.raises(ValueError, match="scale must be > 0"):
        two_phase_factor(2, 5, 10, second_scale=0.0)
