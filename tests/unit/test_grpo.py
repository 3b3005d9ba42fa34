"""The GRPO loss against hand-computed values: advantages, ratio 1, clipping on both sides, the k3 KL."""

from __future__ import annotations

import math

import pytest
import torch

from arm.rl.grpo import group_advantages, grpo_loss, k3_kl


def test_group_advantages_two_groups_by_hand():
    # Group 1: rewards 1, 0 -> mean 0.5, population std 0.5 -> +1, -1. Group 2: rewards 2, 2 -> no spread -> 0, 0.
    adv = group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), 2, eps=1e-12)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))
    # K = 4: rewards 0, 0, 0, 1 -> mean 1/4, std sqrt(3)/4 -> (-1/sqrt 3, ..., 3/sqrt 3).
    adv = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), 4, eps=0.0)
    s3 = math.sqrt(3)
    torch.testing.assert_close(adv, torch.tensor([-1 / s3, -1 / s3, -1 / s3, 3 / s3]))
    # Dr. GRPO (scale=False): centred only. Rewards 0.30, 0.31 -> -0.005, +0.005 (GRPO would make them -1, +1).
    adv = group_advantages(torch.tensor([0.30, 0.31, 1.0, 0.0]), 2, scale=False)
    torch.testing.assert_close(adv, torch.tensor([-0.005, 0.005, 0.5, -0.5]))


def test_group_advantages_refuses_a_ragged_batch():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_ratio_one_and_reference_equal_gives_minus_mean_advantage_and_zero_kl():
    torch.manual_seed(0)
    logp = torch.randn(4, 5).requires_grad_()
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(4, 5, dtype=torch.bool))
    torch.testing.assert_close(loss, -adv.mean())
    assert stats["kl"].item() == 0.0 and stats["clip_fraction"].item() == 0.0 and stats["ratio"].item() == 1.0
    # d loss / d logp = -A / T per token at ratio 1 (KL gradient is zero where policy == reference).
    loss.backward()
    torch.testing.assert_close(logp.grad, (-adv / 5 / 4)[:, None].expand(4, 5))


def test_clipping_engages_outside_the_range():
    old = torch.zeros(2, 1)
    # Row 0: A = +1, ratio 1.5 -> min(1.5, 1.2) = 1.2. Row 1: A = -1, ratio 0.5 -> min(-0.5, -0.8) = -0.8.
    logp = torch.log(torch.tensor([[1.5], [0.5]])).requires_grad_()
    loss, stats = grpo_loss(logp, old, None, torch.tensor([1.0, -1.0]), torch.ones(2, 1), beta=0.0)
    torch.testing.assert_close(loss, torch.tensor(-(1.2 - 0.8) / 2))
    assert stats["clip_fraction"].item() == 1.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 1))  # clipped tokens pass no gradient
    # Inside the range (ratio 1.1, A = +1) the surrogate is rho * A: loss -1.1, not clipped.
    inside, stats = grpo_loss(torch.log(torch.tensor([[1.1]])), torch.zeros(1, 1), None, torch.tensor([1.0]),
                              torch.ones(1, 1), beta=0.0)
    torch.testing.assert_close(inside, torch.tensor(-1.1))
    assert stats["clip_fraction"].item() == 0.0


def test_k3_kl_by_hand_and_in_the_loss():
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    # d = log(0.25 / 0.5) = -log 2: exp(d) - d - 1 = 0.5 + log 2 - 1.
    expected = 0.5 + math.log(2) - 1
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([[expected]]))
    loss, stats = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 1), beta=0.01)
    torch.testing.assert_close(loss, torch.tensor(0.01 * expected))
    torch.testing.assert_close(stats["kl"], torch.tensor(expected))


def test_k3_kl_is_an_unbiased_estimate_of_the_true_kl():
    # Tokens drawn from the policy p: E_p[k3] = KL(p || q). Two categorical distributions, many samples.
    torch.manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    draws = torch.multinomial(p, 200_000, replacement=True)
    estimate = k3_kl(p.log()[draws], q.log()[draws]).mean()
    exact = (p * (p / q).log()).sum()
    assert estimate.item() == pytest.approx(exact.item(), abs=0.01)


def test_sequence_and_token_mean_differ_only_with_unequal_masks():
    torch.manual_seed(1)
    logp, old = torch.randn(2, 4), torch.randn(2, 4)
    adv = torch.tensor([1.0, -0.5])
    full = torch.ones(2, 4, dtype=torch.bool)
    seq, _ = grpo_loss(logp, old, None, adv, full, beta=0.0)
    tok, _ = grpo_loss(logp, old, None, adv, full, beta=0.0, reduction="token")
    torch.testing.assert_close(seq, tok)
    ragged = torch.tensor([[True, True, True, True], [True, False, False, False]])
    seq, _ = grpo_loss(logp, old, None, adv, ragged, beta=0.0)
    tok, _ = grpo_loss(logp, old, None, adv, ragged, beta=0.0, reduction="token")
    rho = torch.exp(logp - old)
    per = -torch.minimum(rho * adv[:, None], rho.clamp(0.8, 1.2) * adv[:, None])
    torch.testing.assert_close(seq, (per[0].mean() + per[1, 0]) / 2)
    torch.testing.assert_close(tok, (per[0].sum() + per[1, 0]) / 5)
