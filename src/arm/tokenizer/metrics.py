"""Tokenizer metrics (ARM paper §1, Table 7): reconstruction, code use, semantics.

- ``psnr``: peak signal-to-noise ratio of images in [0, 1], per image then averaged (dB).
- ``code_usage`` / ``code_perplexity``: the fraction of the codebook used over a set of images, and
  exp(entropy) of the code histogram (the effective number of codes).
- ``frechet_distance``: the Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017,
  the formula behind FID). With Inception features it is FID; with the teacher's features we report it as
  ``fd_teacher`` and never call it FID.
- ``linear_probe_accuracy``: a multinomial logistic regression on frozen features, fit on one set and scored on
  another (L-BFGS on the full batch, L2-regularised; features standardised with the fit set's statistics).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg


def psnr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Per-image PSNR in dB for images in [0, 1], shape (B, ...) -> (B,)."""
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / (mse + eps))


def code_histogram(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts of each code index over any shape of indices."""
    return torch.bincount(indices.flatten().long(), minlength=codebook_size)


def code_usage(hist: torch.Tensor) -> float:
    """Fraction of codes used at least once."""
    return float((hist > 0).float().mean())


def code_perplexity(hist: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution: equals k when k codes are used uniformly."""
    p = hist.double() / hist.sum().clamp_min(1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (n, d) and ``b`` (m, d)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs two (n, d) feature sets of equal d, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Near-singular products (few samples, many dims): regularise both covariances, as FID codes do.
        offset = np.eye(a.shape[1]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    weight_decay: float = 1e-4, max_iter: int = 200,
) -> float:
    """Accuracy on (val_x, val_y) of a logistic-regression probe fit on (train_x, train_y)."""
    train_x, val_x = train_x.float(), val_x.float()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xt, xv = (train_x - mean) / std, (val_x - mean) / std
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    w = torch.zeros(xt.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, train_y.long()) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xv @ w + b).argmax(1) == val_y).float().mean())
