"""Tokenizer metrics (ARM paper §1, Table 7): reconstruction, code use, semantics.

- ``psnr``: peak signal-to-noise ratio of images in [0, 1], per image then averaged (dB).
- ``code_usage`` / ``code_perplexity``: the fraction of the codebook used over a set of images, and
  exp(entropy) of the code histogram (the effective number of codes).
- ``fsq_level_occupancy``: for each FSQ channel, the share of tokens at each of its levels (the code histogram's
  marginals). It says why usage is what it is: a channel with one dominant level (plain background patches all
  quantise alike) leaves most of the product grid unvisited.
- ``frechet_distance``: the Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017,
  the formula behind FID). With Inception features it is FID; with the teacher's features we report it as
  ``fd_teacher`` and never call it FID.
- ``InceptionFeatures``: torch-fidelity's InceptionV3 (the network FID is defined with, 2048-d pool features) from
  a local weights file; ``rfid`` is ``frechet_distance`` of its features of originals and reconstructions.
- ``linear_probe_accuracy``: a multinomial logistic regression on frozen features, fit on one set and scored on
  another (L-BFGS on the full batch, L2-regularised; features standardised with the fit set's statistics).
"""

from __future__ import annotations

import math
import os
import pickle

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


def fsq_level_occupancy(hist: torch.Tensor, levels: list[int]) -> list[list[float]]:
    """Per FSQ channel, the fraction of counted tokens at each level: ``out[i][l]`` for channel i, level l.
    ``hist`` is a code histogram over the ``prod(levels)`` indices of ``FSQ(levels)``, whose digits say which level
    of each channel a code sits at."""
    from arm.tokenizer.fsq import FSQ

    fsq = FSQ(levels)
    if hist.numel() != fsq.codebook_size:
        raise ValueError(f"a histogram of {hist.numel()} codes does not match FSQ levels {fsq.levels} "
                         f"({fsq.codebook_size} codes)")
    digits = fsq.indices_to_digits(torch.arange(fsq.codebook_size))  # (K, d)
    counts, total = hist.double().flatten(), float(hist.sum().clamp_min(1))
    return [(torch.zeros(n, dtype=torch.float64).index_add_(0, digits[:, i], counts) / total).tolist()
            for i, n in enumerate(fsq.levels)]


def code_perplexity(hist: torch.Tensor) -> float:
    """exp(entropy) of the empirical code distribution: equals k when k codes are used uniformly."""
    p = hist.double() / hist.sum().clamp_min(1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (n, d) and ``b`` (m, d):
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))`` with unbiased covariances.

    With fewer samples than dimensions (reconstruction sets of a few hundred images, 2048-d Inception features)
    the trace term is taken exactly without a d x d matrix square root: with centred features A and B,
    S_a S_b = A'A B'B / ((n-1)(m-1)) has the same non-zero eigenvalues as (B A')(B A')', so
    tr((S_a S_b)^(1/2)) is the sum of the singular values of the n x m matrix A B', over sqrt((n-1)(m-1)).
    Otherwise ``scipy.linalg.sqrtm`` of the d x d product, as FID codes do.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs two (n, d) feature sets of equal d, got {a.shape} and {b.shape}")
    (n, d), m = a.shape, b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {n} and {m}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac, bc = a - mu_a, b - mu_b
    trace_a, trace_b = (ac**2).sum() / (n - 1), (bc**2).sum() / (m - 1)
    if n * m <= d * d:
        cross = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / math.sqrt((n - 1) * (m - 1))
    else:
        cov_a, cov_b = ac.T @ ac / (n - 1), bc.T @ bc / (m - 1)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            # Near-singular products: regularise both covariances, as FID codes do.
            offset = np.eye(d) * 1e-6
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
        cross = np.trace(covmean.real)
    return float(((mu_a - mu_b) ** 2).sum() + trace_a + trace_b - 2 * cross)


class InceptionFeatures:
    """2048-d pool features of torch-fidelity's ``inception-v3-compat`` network, weights from a local file.

    The file is torch-fidelity's ``pt_inception-2015-12-05`` state dict (what it downloads; nothing is fetched
    here). It is read once with ``weights_only=True`` first, so a file that holds anything but tensors is refused
    before torch-fidelity loads it again (it calls ``torch.load`` without ``weights_only``). Images in [0, 1] are
    rounded to uint8, the input torch-fidelity expects (it resizes to 299 px inside), as a PNG written from them
    would be.
    """

    def __init__(self, weights_path: str) -> None:
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"no Inception weights at {weights_path!r}: give a local copy of torch-fidelity's "
                                    f"pt_inception-2015-12-05 weights file, or leave the Inception weights unset to "
                                    f"report fd_teacher only")
        try:
            torch.load(weights_path, map_location="cpu", weights_only=True)
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=weights_path).eval()
        except (RuntimeError, KeyError, EOFError, AttributeError, TypeError, pickle.UnpicklingError) as err:
            # not a weights-only file, not a state dict, or not Inception's
            raise ValueError(f"{weights_path!r} is not torch-fidelity's InceptionV3 state dict "
                             f"({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None
        self.net.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> features (B, 2048) float32 on the CPU."""
        self.net.to(images.device)
        pixels = (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return self.net(pixels)[0].float().cpu()


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
