"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", eq. 1).

Every image/text pair of the batch is an independent binary problem: label +1 for the matching pair (diagonal),
-1 otherwise; logit = t * <x_i, y_j> + b with t = exp(logit_scale). The loss is
``-1/|B| * sum_i sum_j log sigmoid(label_ij * logit_ij)``, i.e. summed over the row and averaged over rows, as in
the paper. Used to train the teacher here and, in paper §1, as L_sig of the tokenizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_contrastive_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor,
                             logit_bias: torch.Tensor) -> torch.Tensor:
    """``img_emb`` and ``txt_emb`` (B, E), already L2-normalised; scalar ``logit_scale`` (log t) and bias b."""
    logits = logit_scale.exp() * img_emb @ txt_emb.t() + logit_bias  # (B, B)
    labels = 2.0 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1.0  # +1 diag, -1 off
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]
