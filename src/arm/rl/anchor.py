"""Understanding anchor for GRPO: the SFT loss on understanding examples mixed into the RL gradient (PPO-ptx).

GRPO (``arm.rl.module``) scores image tokens only, yet every update moves the shared transformer that also answers
questions, so RL on generation can cost understanding (issue 5 caps the VQA drop at 0.02). InstructGPT's PPO-ptx
(Ouyang et al. 2022, §3.5, "mixing the pretraining gradients into the PPO gradients") adds ``gamma`` times the
pretraining log-likelihood to the RL objective; here the "pretraining" data are the AR stage's understanding
sequences (``arm.ar.sequences``: ``<eos> IMAGE QUESTION <answer> | ANSWER <eos>`` and captions), built from the very
ShapeWorld samples whose prompts the RL batch holds, so the anchor needs no second data stream:

- the sample's own image (the scene a t2i prompt describes, an edit's source) is encoded by the policy's image
  tokenizer, exactly as the AR stage's code shards were;
- every understanding text of the sample (its VQA questions, its MME yes/no pair, its caption) becomes one
  example, so 4 prompts give ~28 examples over 4 encoded images (one example per prompt is a batch-of-4 SFT
  whose noise AdamW turns into full-size steps on the text head, which GRPO alone never moves);
- the loss is the mean cross-entropy over the answer tokens (``arm.ar.module.token_nll``), the SFT loss of those
  tasks.

Simplifications: no separate weighting of VQA, MME and captions; the anchor is a plain SFT term, not a KL to the
reference's answers.

Measured on the embedded default (experiments/LOG.md, 2026-12-04 fifth session), NEGATIVE so far: with the
text-to-image recipe, weight 1.0 (one example per prompt) left GenEval where SFT was and VQA lower than GRPO alone;
weight 0.1 (every example) halved the GenEval gain and kept VQA no better than GRPO alone. The recipes ship
without it (``ptx_weight: 0``); the tiny twin exercises it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from arm.ar.sequences import Example, SequenceBuilder, collate_examples


def understanding_texts(record: Mapping) -> list[tuple[str, str | None, str]]:
    """The sample's understanding items ``(task, question, answer)``: VQA and MME questions, and its caption as
    ``("caption", None, caption)``; empty when the record carries none (``arm.rl.data.prompt_record``)."""
    items = [(item.get("task", "vqa"), item["question"], item["answer"]) for item in record.get("understanding") or []]
    if record.get("caption"):
        items.append(("caption", None, record["caption"]))
    return items


def understanding_examples(records: Sequence[Mapping], codes: Sequence[Sequence[int]], builder: SequenceBuilder
                           ) -> list[Example]:
    """Every understanding item of every record as an example over that record's image ``codes``."""
    examples = []
    for record, image in zip(records, codes):
        for task, question, answer in understanding_texts(record):
            examples.append(builder.caption(image, answer) if task == "caption"
                            else builder.understanding(image, question, answer, task))
    return examples


def anchor_nll(policy, examples: Sequence[Example], pad_id: int) -> torch.Tensor | None:
    """Mean cross-entropy of the examples' answer tokens under ``policy``; ``None`` without examples."""
    from arm.ar.module import token_nll

    if not examples:
        return None
    device = next(policy.parameters()).device
    batch = collate_examples(examples, pad_id)
    nll = token_nll(policy, batch["ids"].to(device), batch["loss_mask"].to(device))
    scored = torch.cat([nll["text"], nll["image"]])
    return scored.mean()
