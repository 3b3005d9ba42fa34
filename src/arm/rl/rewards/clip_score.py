"""CLIP-score reward for real data: cosine similarity of a local CLIP's image and text embeddings.

CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning") is
``2.5 * max(cos(E_image, E_text), 0)``; the reward drops the display factor 2.5, so it is ``max(cos, 0)`` and,
like the other rewards, at most 1. Both ``cosine`` and the reward are returned. Weights come from a local file
(``arm.teacher.clip_teacher``: a TorchScript archive or a ``torch.save``-d state dict); nothing is downloaded.
The text is the record's ``target_text`` when present (an edit's description of the result: the instruction
itself does not describe the edited image), else its ``text``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from arm.rl.rewards.base import Reward, as_float_images


class ClipScoreReward(Reward):
    """``max(cos(CLIP image, CLIP text), 0)`` from local CLIP weights.

    Args:
        weights: a local CLIP ViT checkpoint (TorchScript archive or state dict).
        weight: multiplier in the run's total.
        text_heads: text-transformer heads when the checkpoint's width is not a multiple of 64.
        tasks: the tasks it scores.
    """

    name = "clip"
    wants_uint8 = False

    def __init__(self, weights: str, weight: float = 1.0, text_heads: int | None = None,
                 tasks: tuple[str, ...] = ("t2i", "edit")) -> None:
        from arm.teacher.clip_teacher import ClipTeacher

        super().__init__(weight)
        self.tasks = tuple(tasks)
        self.clip = ClipTeacher.from_file(weights, text_heads).requires_grad_(False)

    @torch.no_grad()
    def score(self, images, records: list[Mapping]) -> dict[str, list[float]]:
        device = self.clip.mean.device
        texts = [str(r.get("target_text") or r["text"]) for r in records]
        image_emb = self.clip.image_embedding(as_float_images(images).to(device))  # (B, E), unit norm
        text_emb = self.clip.text_embedding(texts)  # (B, E), unit norm
        cosine = (image_emb * text_emb).sum(-1).float().cpu()
        return {"reward": cosine.clamp_min(0).tolist(), "cosine": cosine.tolist()}
