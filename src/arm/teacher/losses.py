"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", eq. 1), and
its variant with extra hard-negative text columns (NegCLIP, Yuksekgonul et al. 2023).

Every image/text pair of the batch is an independent binary problem: label +1 for the matching pair (diagonal),
-1 otherwise; logit = t * <x_i, y_j> + b with t = exp(logit_scale). The loss is
``-1/|B| * sum_i sum_j log sigmoid(label_ij * logit_ij)``, i.e. summed over the row and averaged over rows, as in
the paper. Used to train the teacher here and, in paper §1, as L_sig of the tokenizer.

``sigmoid_contrastive_loss_with_negatives`` appends M extra texts (hard negatives) as columns B..B+M-1 with label
-1 for every image, giving a (B, B+M) logit and label matrix; the row sum and the 1/|B| are unchanged, so with
M = 0 it equals the plain loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_loss_from_labels(img_emb: torch.Tensor, txt_emb: torch.Tensor, labels: torch.Tensor,
                             logit_scale: torch.Tensor, logit_bias: torch.Tensor) -> torch.Tensor:
    """The sigmoid loss for any (B, N) ``labels`` in {+1, -1} between B images and N texts (both normalised)."""
    logits = logit_scale.exp() * img_emb @ txt_emb.t() + logit_bias  # (B, N)
    if labels.shape != logits.shape:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected {tuple(logits.shape)}")
    return -F.logsigmoid(labels.to(logits.dtype) * logits).sum() / logits.shape[0]


def sigmoid_contrastive_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor,
                             logit_bias: torch.Tensor) -> torch.Tensor:
    """``img_emb`` and ``txt_emb`` (B, E), already L2-normalised; scalar ``logit_scale`` (log t) and bias b."""
    logits = logit_scale.exp() * img_emb @ txt_emb.t() + logit_bias  # (B, B)
    labels = 2.0 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1.0  # +1 diag, -1 off
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def hard_negative_labels(batch: int, extra: int, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, B + M) labels: +1 on the diagonal of the first B columns, -1 everywhere else."""
    labels = -torch.ones(batch, batch + extra, device=device, dtype=dtype)
    labels[:, :batch] += 2.0 * torch.eye(batch, device=device, dtype=dtype)
    return labels


def sigmoid_contrastive_loss_with_negatives(img_emb: torch.Tensor, txt_emb: torch.Tensor, neg_emb: torch.Tensor,
                                            logit_scale: torch.Tensor, logit_bias: torch.Tensor) -> torch.Tensor:
    """Positives ``txt_emb`` (B, E) plus M hard-negative texts ``neg_emb`` (M, E), negative for every image."""
    labels = hard_negative_labels(img_emb.shape[0], neg_emb.shape[0], img_emb.device, img_emb.dtype)
    return sigmoid_loss_from_labels(img_emb, torch.cat([txt_emb, neg_emb]), labels, logit_scale, logit_bias)


def hard_negative_ranking_loss(img_emb: torch.Tensor, pos_emb: torch.Tensor, neg_emb: torch.Tensor,
                               logit_scale: torch.Tensor) -> torch.Tensor:
    """NegCLIP-style ranking (Yuksekgonul et al. 2023): per image, softmax cross-entropy over its own caption and
    its K hard negatives. ``img_emb``/``pos_emb`` (B, E), ``neg_emb`` (K*B, E) ordered negative-major (row k*B + i is
    image i's k-th negative), all L2-normalised; logits are ``exp(logit_scale) * cosine``."""
    n = img_emb.shape[0]
    pos = (img_emb * pos_emb).sum(-1)  # (B,)
    neg = (img_emb.repeat(neg_emb.shape[0] // n, 1) * neg_emb).sum(-1).view(-1, n)  # (K, B)
    logits = torch.cat([pos[None], neg]).T * logit_scale.exp()  # (B, 1 + K): own caption first
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.long, device=logits.device))
