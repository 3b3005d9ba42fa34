"""Lightning training of the teacher dual encoder with SigLIP's sigmoid loss, and its zero-shot validation.

Training: image + caption pairs, ``arm.teacher.losses.sigmoid_contrastive_loss``, AdamW with linear warm-up then
cosine decay to zero at ``trainer.max_steps`` (constant after warm-up when there is no step budget, because a
streaming loader has no length). Weight decay applies to matrices only, not to norms, biases, the temperature or
the bias of the loss.

Validation: the loss on val captions, and zero-shot classification as in CLIP/SigLIP: each val image is assigned
the prompt ("a red shape", "a circle"...) whose text embedding is closest. The true label needs the scene, so the
DataModule should run task ``scene`` (the batch then holds the parsed json as ``meta``; training reads the caption
from it). A val image counts for colour if all its objects share one colour, for shape if all share one class.
With task ``caption`` only ``val/loss`` is logged.

At the end of fit, rank 0 exports ``model.safetensors``, ``config.json`` and ``tokenizer.json`` to
``<default_root_dir>/teacher/`` from ``on_fit_end`` (``export: false`` turns it off).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import lightning as L
import torch

from arm.data.shapeworld.world import CLASSES, COLORS
from arm.data.text_tokenizer import TextTokenizer
from arm.teacher.losses import sigmoid_contrastive_loss
from arm.teacher.model import DualEncoder, TeacherConfig, save_teacher, tokenize_texts


def batch_captions(batch: dict[str, Any]) -> list[str]:
    """Captions of a ``caption`` batch (``text``) or a ``scene`` batch (``meta[i]["caption"]``)."""
    if "text" in batch:
        return list(batch["text"])
    if "meta" in batch:
        return [m["caption"] for m in batch["meta"]]
    raise ValueError(f"teacher batches need 'text' (task caption) or 'meta' (task scene); got {sorted(batch)}")


def scene_label(meta: dict, field: str) -> str | None:
    """The one value of ``field`` ("color" or "class") shared by all objects of a scene, else ``None``."""
    values = {o[field] for o in meta["scene"]["objects"]}
    return values.pop() if len(values) == 1 else None


class TeacherModule(L.LightningModule):
    def __init__(
        self,
        tokenizer_path: str,
        config: TeacherConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        betas: tuple[float, float] = (0.9, 0.95),
        color_prompt: str = "a {} shape",
        shape_prompt: str = "a {}",
        export: bool = True,
    ) -> None:
        """
        Args:
            tokenizer_path: the text tokenizer (``tokenizer.json``) captions are encoded with.
            config: tower sizes; ``vocab_size`` left ``None`` is taken from the tokenizer.
            lr: peak AdamW learning rate.
            weight_decay: AdamW weight decay on weight matrices.
            warmup_steps: linear warm-up steps from 0 to ``lr``.
            betas: AdamW betas.
            color_prompt, shape_prompt: zero-shot prompt templates; ``{}`` is replaced by a colour / class name.
            export: write the trained teacher to ``<default_root_dir>/teacher/`` at the end of fit.
        """
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = TextTokenizer.from_file(tokenizer_path)
        config = config or TeacherConfig()
        if config.vocab_size is None:
            config = dataclasses.replace(config, vocab_size=self.tokenizer.vocab_size)
        elif config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"config.vocab_size {config.vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        self.config = config
        self.model = DualEncoder(config)
        self.model.tokenizer = self.tokenizer
        self.prompts = {"color": [color_prompt.format(c) for c in COLORS],
                        "class": [shape_prompt.format(c) for c in CLASSES]}
        self.names = {"color": list(COLORS), "class": list(CLASSES)}
        self._prompt_emb: dict[str, torch.Tensor] = {}  # field -> (K, E), recomputed each validation
        self._zero_shot: dict[str, torch.Tensor] = {}  # "<field>_correct" / "<field>_total" counts

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize_texts(self.tokenizer, texts, self.config.max_text_len, self.device)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid loss of the batch and its image embeddings (B, E)."""
        ids, mask = self._encode(batch_captions(batch))
        img, txt = self.model(batch["image"], ids, mask)
        return sigmoid_contrastive_loss(img, txt, self.model.logit_scale, self.model.logit_bias), img

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", self.model.logit_scale.exp().detach(), batch_size=n)
        return loss

    # ------------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._prompt_emb = {}
        with torch.no_grad():
            for field, prompts in self.prompts.items():
                self._prompt_emb[field] = self.model.text_embedding(*self._encode(prompts))  # (K, E)
        self._zero_shot = {f"{field}_{kind}": torch.zeros((), device=self.device)
                           for field in self.prompts for kind in ("correct", "total")}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, img = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=img.shape[0], sync_dist=True)
        if "meta" not in batch:
            return
        for field, names in self.names.items():
            labels = [scene_label(m, field) for m in batch["meta"]]
            keep = [i for i, label in enumerate(labels) if label is not None]
            if not keep:
                continue
            pred = (img[keep] @ self._prompt_emb[field].t()).argmax(dim=-1)  # (n,)
            target = torch.tensor([names.index(labels[i]) for i in keep], device=self.device)
            self._zero_shot[f"{field}_correct"] += (pred == target).sum()
            self._zero_shot[f"{field}_total"] += len(keep)

    def on_validation_epoch_end(self) -> None:
        for field, key in (("color", "val/zero_shot_color_acc"), ("class", "val/zero_shot_shape_acc")):
            counts = torch.stack([self._zero_shot[f"{field}_correct"], self._zero_shot[f"{field}_total"]])
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")  # over ranks
            if counts[1] > 0:
                self.log(key, counts[0] / counts[1], prog_bar=True)

    # -------------------------------------------------------------------------------------- optimizer

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        warmup = max(1, self.hparams.warmup_steps)
        total = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else None

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if total is None or total <= warmup:
                return 1.0
            progress = min(1.0, (step - warmup) / (total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ----------------------------------------------------------------------------------------- export

    def export_dir(self) -> str:
        return os.path.join(self.trainer.default_root_dir, "teacher")

    def on_fit_end(self) -> None:
        if self.hparams.export and self.trainer.is_global_zero:
            save_teacher(self.model, self.config, self.export_dir(), self.hparams.tokenizer_path)
