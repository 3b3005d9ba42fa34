"""``GRPOModule``: GRPO on the image tokens of the unified AR model, with verifiable rewards (ARM §3).

Each training step takes a batch of prompts of one task (``arm.rl.data``), draws ``group_size`` images per
prompt with the policy (``arm.rl.rollout``), scores them (``arm.rl.rewards``), turns the rewards into group-
normalised advantages and takes ``num_passes`` optimiser steps on the GRPO loss (``arm.rl.grpo``: clipped ratio
on image tokens, k3 KL to the reference) over the rollout batch, in micro-batches of ``micro_batch`` rows whose
gradients are accumulated. The policy starts from an AR export (``arm ar fit`` writes ``<root>/ar``); the
reference is a frozen copy of it. At the end of fit the policy is exported in the AR export format to
``<default_root_dir>/ar``, so ``arm generate|edit|ask --ckpt``, ``arm eval`` and the next recipe
(``model.init_from``) read it.

Logged (TensorBoard): ``reward/total`` and every component ``reward/<name>/<part>`` (mean over the rows it scores)
with ``reward_std/...`` (spread over the batch), ``reward_tag/<GenEval tag>`` and ``reward_edit/<edit type>``
(mean total per tag / type), ``train/loss``, ``train/policy_loss``, ``train/kl`` (k3, per token), ``train/
clip_fraction``, ``train/ratio``, ``train/entropy`` (of the scored distribution, per image token),
``train/zero_spread_groups`` (groups whose rewards are all equal: no signal), ``train/ptx_nll`` (the
understanding anchor's cross-entropy, when ``ptx_weight > 0``), ``rollout/images_per_s`` (sampled, decoded and
scored) and ``rollout/seconds``. Validation: one image per val prompt, ``val/reward/...`` and
``val/geneval_correct`` / ``val/edit_match`` when those rewards are configured.

Deliberate simplifications against the paper (ARM §3, DeepSeekMath's GRPO):
- Log-probabilities for the ratio, the KL and the entropy are those of the policy's *unguided conditional*
  distribution with logits divided by the sampling temperature (as TRL's GRPO trainer does), over the full
  codebook. Rollouts are drawn with CFG and top-k / top-p, so they are slightly off-policy for that distribution;
  the ratio of the first pass is exactly 1 (old = current weights), as in DeepSeekMath with one pass.
- ``trainer.max_steps`` counts optimiser steps: ``num_passes`` per rollout batch.
- Outcome rewards only (one advantage per image), no process supervision, no reward model training.
- Beyond the paper, off by default: ``trainable`` restricts the update to the parameters whose names match
  (for example the attention projections only), leaving the rest at the starting checkpoint's values.
- Beyond the paper, off by default: ``merge_alpha < 1`` exports ``base + merge_alpha * (policy - base)`` instead of
  the policy (weight-space interpolation toward the SFT or starting weights: WiSE-FT, Wortsman et al. 2022; the
  LITI step of WARP, Rame et al. 2024), trading part of the reward gain for what the base model could do; the
  chained Table 8 recipes use it to keep VQA (measured in experiments/LOG.md).
- Beyond the paper, off by default: ``ptx_weight > 0`` mixes an SFT loss on understanding examples into every
  update (``arm.rl.anchor``, InstructGPT's PPO-ptx), so that RL on image tokens keeps the model's answers.
- The reference and the image tokenizer stay whole on every rank (not sharded) and are left out of Lightning
  checkpoints (they are reloaded from the export named by ``init_from``).
- Rewards run on the CPU, one image at a time (the ShapeWorld detector is numpy).
- The prompt stream is stateless: a resumed run restarts its epoch's prompts from the beginning (weights,
  optimiser, schedule and step count resume exactly; the rollout generator is seeded by the step).
"""

from __future__ import annotations

import copy
import os
import random
import re
from typing import Any

import lightning as L
import torch

from arm.ar.module import EXPORT_DIR, load_ar_bundle, save_ar
from arm.optim import adamw_warmup_cosine, trainer_total_steps
from arm.rl.anchor import anchor_nll, understanding_examples, understanding_texts
from arm.rl.grpo import group_advantages, grpo_loss
from arm.rl.rewards import Reward, RewardSet
from arm.rl.rollout import Rollout, RolloutConfig, as_numpy_record, rollout, source_codes

FROZEN_PREFIXES = ("reference.", "image_tokenizer.")
"""State-dict prefixes left out of Lightning checkpoints: reloaded from the export instead."""


def image_token_logprobs(model, prompts: list[list[int]], codes: torch.Tensor, temperature: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probability (B, N) of ``codes`` after each prompt, and the entropy (B, N) of the scored
    distribution (image-head logits / temperature). Sequences are right-padded: causal attention needs no mask."""
    B, N = codes.shape
    device = codes.device
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max()) + N - 1
    ids = torch.zeros(B, width, dtype=torch.long, device=device)
    image_ids = model.image_ids(codes)  # (B, N)
    for i, prompt in enumerate(prompts):
        ids[i, :len(prompt)] = torch.tensor(prompt, device=device)
        ids[i, len(prompt): len(prompt) + N - 1] = image_ids[i, :-1]
    hidden = model(input_ids=ids)  # (B, W, D)
    positions = (lengths - 1)[:, None] + torch.arange(N, device=device)[None]  # (B, N): output predicting code j
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, N, D)
    logp_all = (model.image_logits(picked).float() / temperature).log_softmax(-1)  # (B, N, C)
    logp = logp_all.gather(-1, codes[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def restrict_trainable(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Freeze every parameter of ``model`` whose name matches none of ``patterns`` (``re.search``); return the
    names left trainable. A pattern that matches no parameter is an error (a typo would silently freeze all)."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"trainable pattern {pattern!r} is not a valid regular expression: {err}") from None
    names = [name for name, _ in model.named_parameters()]
    for pattern, regex in zip(patterns, compiled):
        if not any(regex.search(name) for name in names):
            raise ValueError(f"trainable pattern {pattern!r} matches no parameter of the policy; names look like "
                             f"{names[0]!r}, {names[len(names) // 2]!r}, {names[-1]!r}")
    kept = []
    for name, param in model.named_parameters():
        keep = any(regex.search(name) for regex in compiled)
        param.requires_grad_(keep)
        if keep:
            kept.append(name)
    return kept


def check_same_layout(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    """ValueError unless ``state`` and the merge ``base`` hold the same names and shapes."""
    if set(state) != set(base):
        only = sorted(set(state) ^ set(base))
        raise ValueError(f"cannot interpolate weights with different names (e.g. {only[:3]}); the merge base must be "
                         f"an export of the same architecture as the policy")
    for name, value in state.items():
        if value.shape != base[name].shape:
            raise ValueError(f"cannot interpolate {name!r}: policy shape {tuple(value.shape)}, merge base shape "
                             f"{tuple(base[name].shape)}; the merge base must be an export of the same model size")


def interpolate_weights(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor], alpha: float
                        ) -> dict[str, torch.Tensor]:
    """``base + alpha * (state - base)`` for every tensor (computed in float32, returned in ``state``'s dtypes):
    alpha 1 is ``state``, 0 is ``base``. Both must hold the same names and shapes."""
    check_same_layout(state, base)
    merged = {}
    for name, value in state.items():
        start = base[name].to(device=value.device, dtype=torch.float32)
        merged[name] = torch.lerp(start, value.float(), alpha).to(value.dtype)  # exact at alpha 0 and 1
    return merged


class GRPOModule(L.LightningModule):
    def __init__(
        self,
        init_from: str,
        rewards: list[Reward],
        rollout: RolloutConfig | None = None,
        lr: float = 3e-5,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        clip_eps: float = 0.2,
        beta: float = 0.01,
        reduction: str = "sequence",
        num_passes: int = 1,
        micro_batch: int | None = None,
        grad_clip: float = 1.0,
        adv_eps: float = 1e-4,
        adv_std: bool = True,
        ptx_weight: float = 0.0,
        trainable: list[str] | None = None,
        merge_alpha: float = 1.0,
        merge_base: str | None = None,
        val_group_size: int = 1,
        activation_checkpointing: bool = False,
        reference_dtype: str = "float32",
        export: bool = True,
    ) -> None:
        """
        Args:
            init_from: AR export folder of the starting policy (``arm ar fit`` or a previous ``arm rl fit``
                writes ``<root>/ar``); the reference is a frozen copy of it.
            rewards: the rewards (``class_path`` + ``init_args`` each, see ``arm.rl.rewards``), summed with their
                weights.
            rollout: group size, sampling and decoding settings (``arm.rl.rollout.RolloutConfig``).
            lr: AdamW learning rate (ARM: 3e-5 for T2I RL, 5e-5 for edit RL).
            betas: AdamW betas (ARM §2: 0.9, 0.95).
            weight_decay: AdamW decoupled weight decay on matrices.
            warmup_steps: linear warm-up (optimiser steps) before the cosine decay to ``trainer.max_steps``.
            clip_eps: clipping range of the importance ratio (ARM: 0.2).
            beta: weight of the k3 KL to the reference (ARM: 0.01).
            reduction: ``sequence`` (mean over each image's tokens, then images) or ``token`` (``arm.rl.grpo``).
            num_passes: optimiser steps per rollout batch (1 = on-policy).
            micro_batch: rows per forward/backward of the loss (gradients accumulated); ``None`` = all at once.
            grad_clip: gradient-norm clipping (0 = off); set here, not on the trainer (manual optimisation).
            adv_eps: added to the group standard deviation.
            adv_std: divide advantages by the group's standard deviation (GRPO); False keeps only the centring
                (Dr. GRPO, ``arm.rl.grpo.group_advantages``).
            ptx_weight: weight of the understanding anchor (``arm.rl.anchor``, InstructGPT's PPO-ptx): the SFT
                cross-entropy of every VQA / MME / caption text of each prompt's own ShapeWorld sample, on its
                image, added to every update; 0 (the paper's GRPO) turns it off.
            trainable: regular expressions over the policy's parameter names (``re.search``, e.g.
                ``["attn\\."]`` for the attention projections of every block); only matching parameters are
                updated, the rest keep the starting checkpoint's values. ``None`` (the paper) trains everything.
            merge_alpha: the export is ``base + merge_alpha * (policy - base)`` (WiSE-FT weight interpolation);
                1 (the paper) exports the policy as trained, 0 the base. Lightning checkpoints keep the policy.
            merge_base: AR export folder to interpolate toward (e.g. the SFT export of a chained recipe); ``None``
                = ``init_from``. Read only when ``merge_alpha < 1``.
            val_group_size: images per val prompt.
            activation_checkpointing: recompute the policy's block activations in backward (with
                ``ModelParallelStrategy``).
            reference_dtype: dtype of the frozen reference's weights (``bfloat16`` halves its memory; its
                log-probabilities are computed in float32 either way).
            export: write ``<default_root_dir>/ar`` at the end of fit.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["rewards"])
        self.automatic_optimization = False
        if num_passes < 1:
            raise ValueError(f"num_passes must be >= 1, got {num_passes}")
        if ptx_weight < 0:
            raise ValueError(f"ptx_weight must be >= 0 (0 = no understanding anchor), got {ptx_weight}")
        if not 0.0 <= merge_alpha <= 1.0:
            raise ValueError(f"merge_alpha must be in [0, 1] (1 = export the policy as trained), got {merge_alpha}")
        self.rollout_config = rollout or RolloutConfig()
        bundle = load_ar_bundle(init_from)
        if bundle.image_tokenizer is None:
            raise ValueError(f"the AR export {init_from!r} names no image tokenizer export; GRPO needs it to decode "
                             f"rollouts for the rewards")
        self.policy = bundle.model.train()
        if trainable is not None:
            restrict_trainable(self.policy, list(trainable))
        self._merge_state = None  # a plain attribute, not a buffer: never in checkpoints
        if merge_alpha < 1.0:
            if merge_base is None or os.path.abspath(merge_base) == os.path.abspath(init_from):
                # the starting weights, copied before any update changes them in place
                self._merge_state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
            else:  # a model loaded for this alone: its tensors need no copy
                self._merge_state = load_ar_bundle(merge_base, image_tokenizer=False).model.state_dict()
            check_same_layout(self.policy.state_dict(), self._merge_state)  # fail now, not after training
        dtype = getattr(torch, reference_dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"reference_dtype {reference_dtype!r} is not a torch dtype; use float32 or bfloat16")
        self.reference = copy.deepcopy(bundle.model).to(dtype).eval().requires_grad_(False)
        self.image_tokenizer = bundle.image_tokenizer
        self.builder, self.meta = bundle.builder, bundle.meta
        self.rewards = RewardSet(rewards)
        self.rewards.setup(self.policy, self.builder)

    # ------------------------------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"].update({k: v for k, v in self.state_dict().items() if k.startswith(FROZEN_PREFIXES)})

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            from arm.parallel import parallelize

            parallelize(self.policy, self.device_mesh["data_parallel"], self.policy.body.blocks,
                        self.hparams.activation_checkpointing)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(self.policy.parameters(), hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps,
                                   trainer_total_steps(self))

    # ---------------------------------------------------------------------------------------------- rollouts

    def _generator(self, stage: str) -> torch.Generator:
        """Seeded by (step, rank, stage): a resumed run draws what the uninterrupted one would have."""
        seed = random.Random(f"rl/{stage}/{self.global_step}/{self.global_rank}").getrandbits(62)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _rollout(self, records: list[dict], stage: str, group_size: int | None = None) -> Rollout:
        self.policy.eval()
        try:
            return rollout(self.policy, self.builder, self.image_tokenizer, records, self.rollout_config,
                           self.rewards, self._generator(stage), group_size)
        finally:
            self.policy.train()

    def _log_rewards(self, out: Rollout, prefix: str) -> None:
        B = len(out.records)
        for key, values in out.rewards.items():
            name = "total" if key == "total" else key
            valid = values[~torch.isnan(values)]
            if valid.numel():
                self.log(f"{prefix}reward/{name}", valid.mean(), batch_size=B)
                if prefix == "" and valid.numel() > 1:
                    self.log(f"reward_std/{name}", valid.std(), batch_size=B)
        for field, group in (("tag", "reward_tag"), ("edit_type", "reward_edit")):
            labels = [r.get(field) for r in out.records]
            for label in sorted({x for x in labels if x}):
                rows = torch.tensor([x == label for x in labels])
                self.log(f"{prefix}{group}/{label}", out.rewards["total"][rows].mean(), batch_size=int(rows.sum()))

    # ---------------------------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp, config = self.hparams, self.rollout_config
        out = self._rollout(list(batch["record"]), "train")
        advantages = group_advantages(out.rewards["total"], config.group_size, hp.adv_eps, hp.adv_std).to(self.device)
        codes = out.codes.to(self.device)
        rows = codes.shape[0]
        micro = hp.micro_batch or rows
        chunks = [slice(i, i + micro) for i in range(0, rows, micro)]
        with torch.no_grad():
            ref_logp = torch.cat([image_token_logprobs(self.reference, out.prompts[c], codes[c], config.temperature)[0]
                                  for c in chunks]) if hp.beta else None
            old_logp = None
            if hp.num_passes > 1:  # later passes need the sampling policy's log-probs; pass 1 has ratio 1 anyway
                old_logp = torch.cat([image_token_logprobs(self.policy, out.prompts[c], codes[c],
                                                           config.temperature)[0] for c in chunks])
        anchor = self._anchor_examples(list(batch["record"])) if hp.ptx_weight > 0 else []
        opt, sched = self.optimizers(), self.lr_schedulers()
        for _ in range(hp.num_passes):
            totals: dict[str, float] = {}
            if anchor:
                nll = anchor_nll(self.policy, anchor, self.builder.tokenizer.pad_id)
                self.manual_backward(hp.ptx_weight * nll)
                totals["ptx_nll"] = float(nll.detach())
            for c in chunks:
                logp, entropy = image_token_logprobs(self.policy, out.prompts[c], codes[c], config.temperature)
                old = logp.detach() if old_logp is None else old_logp[c]
                loss, stats = grpo_loss(logp, old, None if ref_logp is None else ref_logp[c], advantages[c],
                                        torch.ones_like(logp, dtype=torch.bool), hp.clip_eps, hp.beta, hp.reduction)
                share = (min(c.stop, rows) - c.start) / rows
                self.manual_backward(loss * share)
                stats = {**stats, "loss": loss.detach(), "entropy": entropy.detach().mean()}
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value) * share
            if hp.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        self.log_dict({f"train/{k}": v for k, v in totals.items()}, batch_size=rows)
        groups = out.rewards["total"].view(-1, config.group_size)
        self.log("train/zero_spread_groups", (groups.max(1).values == groups.min(1).values).float().mean(),
                 batch_size=rows)
        self.log("rollout/images_per_s", rows / max(out.seconds, 1e-9), prog_bar=True, batch_size=rows)
        self.log("rollout/seconds", out.seconds, batch_size=rows)
        self._log_rewards(out, "")

    def _anchor_examples(self, records: list[dict]) -> list:
        """The step's understanding examples (``arm.rl.anchor``): each record's own image, encoded by the policy's
        image tokenizer, with every one of its understanding texts."""
        field = "source_image" if records[0]["task"] == "edit" else "scene_image"
        usable = [as_numpy_record(r) for r in records if r.get(field) is not None and understanding_texts(r)]
        if not usable:
            return []
        codes = source_codes(self.image_tokenizer, usable, self.device, field)
        return understanding_examples(usable, codes, self.builder)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self._rollout(list(batch["record"]), "val", self.hparams.val_group_size)
        self._log_rewards(out, "val/")
        for key, name in (("geneval/correct", "val/geneval_correct"), ("edit/match", "val/edit_match")):
            values = out.rewards.get(key)
            if values is not None and not bool(torch.isnan(values).all()):
                valid = values[~torch.isnan(values)]
                self.log(name, valid.mean(), batch_size=valid.numel(), sync_dist=True)

    # ------------------------------------------------------------------------------------------------ export

    def export_dir(self) -> str:
        return os.path.join(self.trainer.default_root_dir, EXPORT_DIR)

    def on_fit_end(self) -> None:
        if not self.hparams.export:
            return
        from arm.parallel import full_state_dict

        state = full_state_dict(self.policy)  # a collective under FSDP: every rank takes part
        if self.trainer.is_global_zero:
            if self._merge_state is not None:
                state = interpolate_weights(state, self._merge_state, self.hparams.merge_alpha)
            source = self.hparams.init_from
            save_ar(state, self.policy.config, tuple(self.meta["grid"]), self.export_dir(),
                    os.path.join(source, self.meta["text_tokenizer"]), self.meta.get("tokenizer_export"),
                    # sampled and evaluated as its initialisation is, so Table 8 compares like with like
                    self.meta.get("sampling"), self.builder.edit_layout)  # the loader's, old exports' default included
