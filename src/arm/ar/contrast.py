"""Condition contrast for the generation tasks: a matched prompt must explain its image better than a prompt with one
attribute word swapped (our addition to ARM §2's next-token loss).

Why: on the embedded default the next-token loss alone teaches the AR model to follow a prompt's shape words but
hardly its colour words. Teacher-forced, swapping the colour word of a val prompt raises the image's NLL by 0.5 nats
of ~88, swapping its shape word by 9 (experiments/LOG.md, thirteenth session), and GenEval's colour prompts score
~0.01. The prompt is worth a few nats of an image's NLL; most of the loss is which of the many likely codes comes
next, so the gradient that ties the image to the words is a small share of the whole.

What: for up to ``rows`` generation sequences of a batch (text-to-image, and edits, whose instruction is their
text) whose prompt holds a word of a swap group (e.g. the colour names), a negative copy has that word replaced by
another of its group. Both are scored in the same forward pass; with ``l`` the summed log-probability of the
scored tokens (the image's codes and ``<eoi>``),

    L_contrast = mean over pairs of softplus(-beta (l(x | c) - l(x | c_swapped)))

the pairwise logistic loss of DPO (Rafailov et al. 2023) with the matched condition preferred and no reference
model; CCA (Chen et al. 2024) tunes AR image models with matched and mismatched conditions in the same spirit. The
next-token loss is computed on the matched rows only, as before. Because a swapped word is one token, a negative
row has its positive's length and layout, so no padding changes.

Scale: L_contrast sums log-probabilities over a sequence's ~65 scored tokens, while the next-token loss averages
over a batch's N (~3,000 on the embedded default), so with K pairs each token of a pair weighs about
w beta sigmoid(-beta gap) N / K next-token targets (~9 at w 0.05, K 8, gap 0). Weight 1 with 8 rows drove the val
image perplexity from 10.2 to 30 by step 1,200; 0.05 left it unchanged (experiments/LOG.md, thirteenth session).

Simplifications: one word swapped per negative, chosen uniformly among the prompt's swappable words, and its
replacement uniformly among the rest of its group; words must be single tokens of the text tokenizer (with a
leading space, as they occur mid-sentence), checked when the table is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

GENERATION_TASKS = ("t2i", "edit")


def swap_table(tokenizer, groups: Sequence[Sequence[str]]) -> dict[int, list[int]]:
    """token id -> the ids it may be swapped for (its group's other words); a one-line error names any word that
    is not a single token (``" " + word``) or appears in two groups."""
    table: dict[int, list[int]] = {}
    for group in groups:
        ids = []
        for word in group:
            encoded = tokenizer.encode(" " + word)
            if len(encoded) != 1:
                raise ValueError(f"contrast word {word!r} is {len(encoded)} tokens of the text tokenizer (' {word}' "
                                 f"-> {encoded}); contrast words must be single tokens: drop it from its group")
            ids.append(encoded[0])
        if len(set(ids)) < 2:
            raise ValueError(f"contrast group {list(group)} needs at least two distinct words")
        for i in ids:
            if i in table:
                raise ValueError(f"contrast word id {i} appears in two groups; give each word one group")
            table[i] = [j for j in ids if j != i]
    return table


def swapped_negatives(ids: torch.Tensor, loss_mask: torch.Tensor, tasks: Sequence[str], table: dict[int, list[int]],
                      rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative ids (K, T), index of each one's positive row (K,)) for at most ``rows`` generation rows of the
    right-padded batch ``ids`` (B, T) whose prompt (the ids before the first scored one) holds a swappable id.
    K = 0 when none does. Draws from ``generator`` only (deterministic under a seed)."""
    if not table or rows <= 0:
        return ids[:0], torch.zeros(0, dtype=torch.long)
    swappable = torch.isin(ids, torch.tensor(list(table), device=ids.device))
    first_scored = torch.where(loss_mask.any(1), loss_mask.float().argmax(1), torch.zeros_like(ids[:, 0]))
    in_prompt = torch.arange(ids.shape[1], device=ids.device)[None] < first_scored[:, None]
    candidates = swappable & in_prompt
    eligible = [b for b in range(ids.shape[0]) if tasks[b] in GENERATION_TASKS and bool(candidates[b].any())]
    if not eligible:
        return ids[:0], torch.zeros(0, dtype=torch.long)
    order = torch.randperm(len(eligible), generator=generator)[:rows].tolist()
    chosen = [eligible[i] for i in order]
    negatives = ids[chosen].clone()
    for k, b in enumerate(chosen):
        places = candidates[b].nonzero().squeeze(1).tolist()
        place = places[int(torch.randint(len(places), (1,), generator=generator))]
        others = table[int(ids[b, place])]
        negatives[k, place] = others[int(torch.randint(len(others), (1,), generator=generator))]
    return negatives, torch.tensor(chosen, dtype=torch.long)


def row_logprob(nll: dict[str, torch.Tensor], num_rows: int) -> torch.Tensor:
    """(num_rows,) summed log-probability of each row's scored tokens, from ``token_nll``'s output."""
    total = torch.zeros(num_rows, device=nll["image"].device, dtype=torch.float32)
    for kind in ("image", "text"):
        total = total.index_add(0, nll[f"{kind}_rows"], -nll[kind].float())
    return total


def contrast_loss(positive: torch.Tensor, negative: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_contrast, mean log-likelihood gap) of paired summed log-probabilities (K,)."""
    gap = positive - negative
    return F.softplus(-beta * gap).mean(), gap.detach().mean()
