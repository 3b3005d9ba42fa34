"""The GRPO objective (Shao et al. 2024, "DeepSeekMath", §4.1), on image tokens only (ARM §3).

For each prompt, K images are sampled (a group). With rewards ``r`` (G, K):

- advantage ``A = (r - mean_group(r)) / (std_group(r) + eps)``, one value per image, shared by all its tokens
  (outcome supervision); ``std`` is the population standard deviation of the group (divide by K), so a group
  whose rewards are all equal has zero advantage;
- ratio ``rho = exp(logp - logp_old)`` per image token, ``logp_old`` from the policy that sampled the group;
- clipped surrogate (PPO, Schulman et al. 2017) ``min(rho * A, clip(rho, 1 - eps_clip, 1 + eps_clip) * A)``;
- KL to the frozen reference with Schulman's k3 estimator, as DeepSeekMath's eq. 4:
  ``KL ~ exp(logp_ref - logp) - (logp_ref - logp) - 1`` (unbiased, always >= 0, zero where the two agree);
- loss per token ``-(surrogate) + beta * KL``, averaged over the image tokens of each sequence, then over the
  sequences ("sequence-mean", DeepSeekMath's ``1/G sum_i 1/|o_i| sum_t``). ``reduction="token"`` averages over all
  tokens of the batch instead (DAPO's token-level mean); an image is always ``H x W`` tokens, so the two agree
  unless the mask drops tokens.

ARM §3 / DeepSeekMath settings: ``eps_clip = 0.2``, ``beta = 0.01``. Only image tokens enter (``mask``): the prompt
is the condition, not an action.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """(N,) rewards in consecutive groups of ``group_size`` -> (N,) group-normalised advantages.

    ``scale=False`` keeps only the centring, ``A = r - mean_group(r)`` (Dr. GRPO: Liu et al. 2025, "Understanding
    R1-Zero-Like Training: A Critical Perspective", §3.1): dividing by the group's standard deviation turns a group
    whose rewards differ only by a little noise (a continuous quality proxy, say) into unit-size advantages."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}; sample group_size "
                         f"images per prompt")
    groups = rewards.float().view(-1, group_size)  # (G, K)
    centred = groups - groups.mean(1, keepdim=True)
    if not scale:
        return centred.view(-1)
    return (centred / (groups.std(1, unbiased=False, keepdim=True) + eps)).view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(policy || reference) per token: ``exp(d) - d - 1`` with ``d = ref - logp``."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.01,
              reduction: str = "sequence") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss (module docstring) and its diagnostics.

    Args:
        logp: (B, T) log-probabilities of the sampled tokens under the policy being optimised (with gradient).
        old_logp: (B, T) the same under the policy that sampled them (no gradient).
        ref_logp: (B, T) the same under the frozen reference; ``None`` when ``beta == 0``.
        advantages: (B,) one advantage per sequence.
        mask: (B, T) True on the tokens that count (image tokens).
        clip_eps: clipping range of the ratio.
        beta: weight of the KL term.
        reduction: ``"sequence"`` (mean over each sequence's tokens, then over sequences) or ``"token"``.

    Returns ``(loss, stats)``; stats (detached scalars): ``kl`` (mean k3 per token), ``clip_fraction`` (share of
    tokens whose ratio lies outside ``[1 - eps, 1 + eps]``), ``ratio`` (mean), ``policy_loss``.
    """
    if reduction not in ("sequence", "token"):
        raise ValueError(f"reduction must be 'sequence' or 'token', got {reduction!r}")
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp.detach())  # (B, T)
    adv = advantages.detach().to(logp.dtype)[:, None]  # (B, 1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss needs ref_logp when beta != 0")
        kl = k3_kl(logp, ref_logp.detach())
        per_token = per_token + beta * kl

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if reduction == "token":
            return (x * mask).sum() / mask.sum().clamp_min(1.0)
        return ((x * mask).sum(1) / mask.sum(1).clamp_min(1.0)).mean()

    loss = reduce(per_token)
    with torch.no_grad():
        n = mask.sum().clamp_min(1.0)
        stats = {"kl": (kl * mask).sum() / n, "ratio": (ratio * mask).sum() / n,
                 "clip_fraction": (((ratio - 1.0).abs() > clip_eps).to(mask.dtype) * mask).sum() / n,
                 "policy_loss": reduce(-surrogate)}
    return loss, stats
