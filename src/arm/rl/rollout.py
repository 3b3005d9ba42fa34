"""Rollouts: K images per prompt sampled by the policy, decoded by the image tokenizer, scored by the rewards.

For a batch of records (``arm.rl.data``) of one task:

1. edit records: the source image is encoded by the image tokenizer (the same codes ``arm tokenizer encode``
   writes), so the policy reads it as it did in SFT;
2. each record is repeated ``group_size`` times (a GRPO group) and its prompt built by ``arm.ar.sequences``:
   text-to-image with CFG against the empty prompt (``cfg_scale``), editing with two-branch guidance
   (``edit_text_scale``, ``edit_image_scale``), as ARM samples (``../shared/paper.md`` §2);
3. ``arm.ar.sampling.sample_image_codes`` draws the codes (temperature, top-k, top-p), one batched call;
4. the tokenizer's pixel decoder turns codes into images (``decode_steps``, ``decoder_cfg``);
5. the ``RewardSet`` scores them; records get the generated ``codes`` (the self-judge reads them).

``Rollout`` keeps what the loss needs: the conditional prompt ids of each row, the sampled codes, the rewards.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from arm.ar.sampling import SamplingConfig, sample_image_codes
from arm.ar.sequences import check_fits
from arm.rl.rewards import RewardSet

ROLLOUT_DECODE_DTYPE = torch.bfloat16
"""Matrix dtype of the rollout sampler's packed decoder (``arm.nn.decode``); ``torch.float32`` samples with the
policy's exact float32 logits (several times slower on the CPU)."""


@dataclass
class RolloutConfig:
    """How rollouts are drawn (ARM §3: K 16, top-k 1000, top-p 1.0; temperature 0.7 for T2I, 1.0 for edits).

    Attributes:
        group_size: images per prompt (K).
        temperature: sampling temperature (also divides the logits the loss scores, see ``arm.rl.module``).
        top_k: keep the k most probable codes (0 = off).
        top_p: nucleus mass (1.0 = off).
        cfg_scale: text-to-image guidance scale (1.0 = no unconditional branch).
        edit_text_scale: editing guidance, instruction branch.
        edit_image_scale: editing guidance, source-image branch.
        decode_steps: pixel-decoder Euler steps.
        decoder_cfg: pixel-decoder guidance scale.
    """

    group_size: int = 16
    temperature: float = 0.7
    top_k: int = 1000
    top_p: float = 1.0
    cfg_scale: float = 1.5
    edit_text_scale: float = 1.5
    edit_image_scale: float = 1.25
    decode_steps: int = 10
    decoder_cfg: float = 1.0

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages compare samples of one prompt), got "
                             f"{self.group_size}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              cfg_scale=self.cfg_scale, text_scale=self.edit_text_scale,
                              image_scale=self.edit_image_scale)


@dataclass
class Rollout:
    """One batch of rollouts, rows in groups of ``group_size`` consecutive rows.

    Attributes:
        prompts: (B*K) conditional prompt ids (the sequence the image codes follow).
        codes: (B*K, N) sampled image codes.
        images: (B*K, 3, H, W) decoded images in [0, 1].
        records: (B*K) records, each with the generated ``codes`` added.
        rewards: ``RewardSet`` output: ``total`` and every component, (B*K,) each.
        seconds: wall time of sampling, decoding and scoring.
    """

    prompts: list[list[int]]
    codes: torch.Tensor
    images: torch.Tensor
    records: list[dict]
    rewards: dict[str, torch.Tensor]
    seconds: float


def as_numpy_record(record: Mapping) -> dict:
    """A record with its array fields as numpy arrays (a DataLoader turns numpy arrays into tensors)."""
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in record.items()}


@torch.no_grad()
def source_codes(tokenizer_bundle, records: Sequence[Mapping], device: torch.device, field: str = "source_image"
                 ) -> list[list[int]]:
    """Codes of each record's image ``field`` (uint8 (H, W, 3); an edit's source by default), resized to the
    tokenizer's side if needed."""
    import torch.nn.functional as F

    pixels = torch.stack([torch.as_tensor(np.array(r[field])) for r in records]).permute(0, 3, 1, 2)
    images = pixels.float().div_(255.0).to(device)  # (B, 3, H, W)
    side = tokenizer_bundle.image_size
    if images.shape[-1] != side:
        images = F.interpolate(images, size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)
    return tokenizer_bundle.encode(images).tolist()


@torch.no_grad()
def rollout(policy, builder, tokenizer_bundle, records: Sequence[Mapping], config: RolloutConfig,
            rewards: RewardSet, generator: torch.Generator | None = None, group_size: int | None = None) -> Rollout:
    """Sample, decode and score ``group_size`` (default ``config.group_size``) images per record."""
    start = time.perf_counter()
    records = [as_numpy_record(r) for r in records]
    k = group_size or config.group_size
    tasks = {r["task"] for r in records}
    if len(tasks) != 1:
        raise ValueError(f"a rollout batch must hold one task, got {sorted(tasks)} (PromptDataModule does this)")
    task = tasks.pop()
    device = next(policy.parameters()).device
    num = builder.grid[0] * builder.grid[1]
    if task == "t2i":
        pairs = [builder.t2i_prompts(r["text"]) for r in records for _ in range(k)]
        prompts, uncond, image_only = [p for p, _ in pairs], [u for _, u in pairs], None
        if config.cfg_scale == 1.0:
            uncond = None
        sources = [None] * len(prompts)
    elif task == "edit":
        codes_of = source_codes(tokenizer_bundle, records, device)
        sources = [c for c in codes_of for _ in range(k)]
        triples = [builder.edit_prompts(c, r["text"]) for c, r in zip(codes_of, records) for _ in range(k)]
        prompts, image_only, uncond = [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]
    else:
        raise ValueError(f"rollouts draw images for t2i or edit records, got task {task!r}")
    for prompt in prompts:
        check_fits(len(prompt), num, policy.config.max_seq_len)
    # bf16 packed weights + compiled attention: the sampler's fast setting (arm.ar.sampling); the policy's
    # log-probabilities are recomputed by the training step, so the rollout only needs draws.
    codes = sample_image_codes(policy, prompts, num, config.sampling(), uncond=uncond, image_only=image_only,
                               generator=generator, decode_dtype=ROLLOUT_DECODE_DTYPE,
                               compile_attention=ROLLOUT_DECODE_DTYPE == torch.bfloat16)  # (B*K, N)
    images = tokenizer_bundle.decode(codes, config.decode_steps, config.decoder_cfg, generator).float()
    rows = [{**r, "codes": c, "source_codes": s}
            for r, c, s in zip([r for r in records for _ in range(k)], codes.tolist(), sources)]
    scores = rewards(images.clamp(0, 1).cpu(), rows)
    return Rollout(prompts, codes, images, rows, scores, time.perf_counter() - start)
