"""Lightning training of the teacher dual encoder with SigLIP's sigmoid loss, and its zero-shot validation.

Training: image + caption pairs, ``arm.teacher.losses.sigmoid_contrastive_loss``, AdamW with linear warm-up then
cosine decay to zero at ``trainer.max_steps`` (constant after warm-up when there is no step budget, because a
streaming loader has no length). Weight decay applies to matrices only, not to norms, biases, the temperature or
the bias of the loss.

Compositional hard negatives (NegCLIP, Yuksekgonul et al. 2023; ``arm.teacher.negatives``): with
``hard_negatives`` = K > 0 and a ``scene`` batch, every sample also gets K captions of its own scene with ONE
attribute of ONE object changed (the class with probability ``hard_negative_shape_prob``, else the colour),
written by ``text.caption`` with an rng seeded by (sample key, global step, k). They enter the sigmoid loss as K*B
extra text columns with label -1 for every image (``sigmoid_contrastive_loss_with_negatives``). Why: in a batch of
128 random scenes colour and position alone identify the caption, so the plain loss never needs shape (measured:
shape zero-shot 0.21); a negative that differs only in one object's class can only be rejected by seeing shape.
K = 0 (the default, for real data without scene json) is the plain SigLIP loss.

Short texts: with probability ``short_text_prob`` a training sample's positive is a short GenEval-like text about
one of its objects ("a photo of a red circle", "an image of a star", "a red shape"; ``negatives.short_pair``)
instead of its caption, and its first hard negative is the same wording with that object's class or colour
changed ("a photo of a red square"), so that the zero-shot prompts ("a red shape", "a circle") are in
distribution. The pair is skipped (full caption kept) when the changed text would still be true of the scene.
Not the sample's own GenEval prompt: a first version used it (run D of the 2026-11-28 LOG entry) with full-caption
negatives, and the image then learnt "short text = positive, caption = negative" (hard-negative accuracy fell to
0.48); a hard negative must share the positive's wording. Short texts in a batch are true of other images more
often than captions are (false negatives); the sigmoid loss treats each pair alone, so they are only label noise.

Cost: positives and hard negatives go through the text tower together, in length-sorted buckets of 64 padded
to their own longest text (``_embed_texts_bucketed``; exact, the text tower is causal and pools at the last real
token), which halves the padded tokens: with K = 1 a step costs ~10-15% more than the plain loss. Patch size
stays 8: patch 4 measured 2-5x the image-tower cost. ``train/hard_negative_acc`` logs how often an image's
positive beats its own hard negative(s).

Measured (experiments/LOG.md, 2026-11-28): colour rises to 1.00, but shape stays near chance (0.19-0.26) in the
450-step budget; this loss alone does not reach the 0.95 shape target.

Captioning decoder (LocCa, Wan et al. 2024, as used by SigLIP 2, Tschannen et al. 2025): with ``caption_weight``
> 0 a small causal decoder (an ``arm.ar.model.ARDecoder`` of ``caption_layers`` blocks at the text width) reads
the image tower's patch features, linearly projected, as a prefix and predicts the sample's full caption token by
token; its cross-entropy is added to the loss with that weight. Why: the caption names every object's class,
colour, size and position, so each image gets a dense, per-object signal, where the contrastive loss is satisfied
by colour and position alone (see the LOG). The decoder is training machinery only: it is saved in Lightning
checkpoints but not exported with the teacher. Simplification against LocCa: no referring-expression or box
tasks, a decoder-only prefix LM instead of cross-attention, and no parallel-prediction mode.

Attribute texts (``attribute_weight``; ``arm.teacher.attributes``): every step also scores each image against
every colour, class and legal colour x class text ("a photo of a red circle") with EXACT multi-positive labels from
the scene (+1 iff some object matches), under the sigmoid loss with its own learnable bias.

Presence head (``presence_weight``): a linear layer on the image embedding predicting which of the 10 colours and 6
classes the scene holds (binary cross-entropy). A deliberate shortcut, stated here: ARM's teacher (SigLIP2) learnt
shape from billions of pairs; ours has ~4 minutes. Measured (experiments/LOG.md, 2026-12-04): through the text
tower alone (captions, hard negatives, caption decoder or exact attribute texts) the image and text towers sit at
a symmetric saddle for shape (zero-shot shape stays at chance 0.17-0.30 in 300-450 steps) while colour, linear in
the pixels, is learnt at once; a free linear head breaks the symmetry: the image tower then learns shape within
~200 steps and the attribute texts align the text tower to it (zero-shot shape 0.975 at 300 steps with weight
100 in a stand-alone check). The head is training machinery: saved in Lightning checkpoints, not exported.

Validation: the plain loss on val captions (no hard negatives, no short texts, comparable across settings), and zero-shot classification as in CLIP/SigLIP: each val image is assigned
the prompt ("a red shape", "a circle"...) whose text embedding is closest. The true label needs the scene, so the
DataModule should run task ``scene`` (the batch then holds the parsed json as ``meta``; training reads the caption
from it). A val image counts for colour if all its objects share one colour, for shape if all share one class.
With task ``caption`` only ``val/loss`` is logged.

At the end of fit, rank 0 exports ``model.safetensors``, ``config.json`` and ``tokenizer.json`` to
``<default_root_dir>/teacher/`` from ``on_fit_end`` (``export: false`` turns it off).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from arm.data.shapeworld.scene import Scene, scene_label
from arm.data.shapeworld.world import CLASSES, COLORS
from arm.data.text_tokenizer import TextTokenizer
from arm.optim import adamw_warmup_cosine, trainer_total_steps
from arm.teacher.attributes import attribute_concepts, attribute_texts, concept_labels, presence_concepts
from arm.teacher.losses import (
    hard_negative_ranking_loss,
    sigmoid_contrastive_loss,
    sigmoid_contrastive_loss_with_negatives,
    sigmoid_loss_from_labels,
)
from arm.teacher.model import DualEncoder, TeacherConfig, save_teacher, tokenize_texts
from arm.teacher.negatives import hard_negative_captions, negative_rng, short_pair


def batch_captions(batch: dict[str, Any]) -> list[str]:
    """Captions of a ``caption`` batch (``text``) or a ``scene`` batch (``meta[i]["caption"]``)."""
    if "text" in batch:
        return list(batch["text"])
    if "meta" in batch:
        return [m["caption"] for m in batch["meta"]]
    raise ValueError(f"teacher batches need 'text' (task caption) or 'meta' (task scene); got {sorted(batch)}")


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
        hard_negatives: int = 0,
        hard_negative_shape_prob: float = 0.75,
        short_text_prob: float = 0.0,
        hard_negative_weight: float = 0.0,
        caption_weight: float = 0.0,
        caption_layers: int = 2,
        attribute_weight: float = 0.0,
        presence_weight: float = 0.0,
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
            hard_negatives: one-attribute-changed captions per training image (0 = off; needs task ``scene``).
            hard_negative_shape_prob: probability that a hard negative changes an object's class, else its colour.
            short_text_prob: probability that a training positive (and its first hard negative) is a short text.
            hard_negative_weight: weight of a NegCLIP-style ranking term: per image, softmax cross-entropy over
                its caption and its K hard negatives (the sigmoid loss alone gives each hard negative one term
                among B + K*B, too weak a signal to learn shape in a short schedule; see experiments/LOG.md).
            caption_weight: weight of the LocCa captioning loss (0 = no caption decoder is built or run).
            caption_layers: blocks of the caption decoder.
            attribute_weight: weight of the sigmoid loss against every attribute text ("a photo of a red circle")
                with exact multi-positive labels from the scene (``arm.teacher.attributes``; 0 = off; needs task
                ``scene``). It has its own learnable bias: its labels are ~30% positive, the captions' 1/B.
            presence_weight: weight of a supervised presence head (0 = off; needs task ``scene``): a linear layer
                on 10 x the image embedding predicting which colours and classes the scene holds, mean binary
                cross-entropy. Training machinery, not exported. See "Presence head" above.
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
        self.caption_prefix = self.caption_head = None
        if caption_weight > 0:
            from arm.ar.model import ARConfig, ARDecoder

            d = config.text_dim
            self.caption_prefix = torch.nn.Linear(config.image_dim, d)
            self.caption_head = ARDecoder(ARConfig(
                text_vocab_size=config.vocab_size, dim=d, num_layers=caption_layers, num_heads=config.text_heads,
                num_kv_heads=config.text_heads, mlp_hidden=8 * (d * 8 // 3 // 8), qkv_bias=False,
                max_seq_len=config.num_patches + config.max_text_len))
        self.presence_head = None
        if presence_weight > 0:
            self.presence_head = torch.nn.Linear(config.embed_dim, len(COLORS) + len(CLASSES))
        self.attribute_bias = None
        if attribute_weight > 0:
            self.concepts = attribute_concepts()
            self.attribute_bias = torch.nn.Parameter(torch.zeros(()))

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize_texts(self.tokenizer, texts, self.config.max_text_len, self.device)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain sigmoid loss of the batch's captions and its image embeddings (B, E)."""
        ids, mask = self._encode(batch_captions(batch))
        img, txt = self.model(batch["image"], ids, mask)
        return sigmoid_contrastive_loss(img, txt, self.model.logit_scale, self.model.logit_bias), img

    def training_texts(self, batch: dict[str, Any], step: int) -> tuple[list[str], list[str]]:
        """Positive texts (B) and hard-negative captions (K*B, negative-major) of a training batch."""
        texts = batch_captions(batch)
        metas = batch.get("meta")
        if metas is None:
            if self.hparams.hard_negatives or self.hparams.short_text_prob:
                raise ValueError("hard_negatives / short_text_prob need the scene json: use data task 'scene'")
            return texts, []
        k, shape_prob = self.hparams.hard_negatives, self.hparams.hard_negative_shape_prob
        negatives = hard_negative_captions(metas, step, k, shape_prob) if k else []
        if self.hparams.short_text_prob > 0:
            for i, m in enumerate(metas):
                rng = negative_rng(str(m.get("key", m.get("index", i))), step, -1)
                if rng.random() >= self.hparams.short_text_prob:
                    continue
                pair = short_pair(Scene.from_json(m["scene"]), rng, shape_prob)
                if pair is not None:
                    texts[i] = pair[0]
                    if k:
                        negatives[i] = pair[1]  # the first hard negative in the same short wording
        return texts, negatives

    def _caption_loss(self, features: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """LocCa captioning loss: the caption decoder reads the projected patch features (B, N, D) as a prefix."""
        from arm.ar.model import prefix_caption_loss

        ids, mask = self._encode(captions)
        return prefix_caption_loss(self.caption_head, self.caption_prefix(features), ids, mask)

    def _train_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        captions = batch_captions(batch)
        texts, negatives = self.training_texts(batch, self.global_step)
        n = len(texts)
        features = self.model.patch_features(batch["image"])  # (B, N, D)
        img = self.model.pool(features)
        extra = 0.0
        if self.caption_head is not None:
            caption = self._caption_loss(features, captions)
            self.log("train/caption_loss", caption.detach(), batch_size=n)
            extra = self.hparams.caption_weight * caption
        if self.attribute_bias is not None:
            extra = extra + self.hparams.attribute_weight * self._attribute_loss(img, batch)
        if self.presence_head is not None:
            extra = extra + self.hparams.presence_weight * self._presence_loss(img, batch)
        txt = self._embed_texts_bucketed(texts + negatives)
        scale, bias = self.model.logit_scale, self.model.logit_bias
        if not negatives:
            return sigmoid_contrastive_loss(img, txt, scale, bias) + extra
        with torch.no_grad():  # how often the image prefers its caption to its own hard negative(s)
            pos = (img * txt[:n]).sum(-1)  # (B,)
            neg = (img.repeat(len(negatives) // n, 1) * txt[n:]).sum(-1).view(-1, n)  # (K, B)
            self.log("train/hard_negative_acc", (pos > neg).float().mean(), batch_size=n)
        loss = sigmoid_contrastive_loss_with_negatives(img, txt[:n], txt[n:], scale, bias)
        if self.hparams.hard_negative_weight > 0:
            ranking = hard_negative_ranking_loss(img, txt[:n], txt[n:], scale)
            self.log("train/hard_negative_ranking", ranking.detach(), batch_size=n)
            loss = loss + self.hparams.hard_negative_weight * ranking
        return loss + extra

    def _attribute_loss(self, img: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Sigmoid loss of the image embeddings (B, E) against every attribute text, with exact labels."""
        if "meta" not in batch:
            raise ValueError("attribute_weight > 0 needs the scene json: use data task 'scene'")
        labels = concept_labels([m["scene"] for m in batch["meta"]], self.concepts).to(img)
        txt = self._embed_texts_bucketed(attribute_texts(self.global_step, self.concepts))
        loss = sigmoid_loss_from_labels(img, txt, labels, self.model.logit_scale, self.attribute_bias)
        with torch.no_grad():
            logits = self.model.logit_scale.exp() * img @ txt.t() + self.attribute_bias
            self.log("train/attribute_acc", ((logits > 0) == (labels > 0)).float().mean(), batch_size=len(labels))
        self.log("train/attribute_loss", loss.detach(), batch_size=len(labels))
        return loss

    def _presence_loss(self, img: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Mean BCE of the presence head on 10 x the image embeddings (B, E) against the scenes' colours and classes."""
        if "meta" not in batch:
            raise ValueError("presence_weight > 0 needs the scene json: use data task 'scene'")
        target = (concept_labels([m["scene"] for m in batch["meta"]], presence_concepts()) > 0).to(img)  # (B, 16)
        # 10 = SigLIP's initial temperature: the head reads the unit-norm embedding at the scale the loss does.
        logits = self.presence_head(10.0 * img)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        self.log("train/presence_loss", loss.detach(), batch_size=len(img))
        self.log("train/presence_shape_acc", ((logits[:, len(COLORS):] > 0) == (target[:, len(COLORS):] > 0))
                 .float().mean(), batch_size=len(img))
        return loss

    def _embed_texts_bucketed(self, texts: list[str], bucket: int = 64) -> torch.Tensor:
        """Text embeddings (N, E) computed in length-sorted buckets, each padded only to its own longest text.

        Exact: the text tower is causal and pools at the last real token, so right padding never changes a real
        position. With 2B texts of ~27 tokens padded to ~56 this halves the text tower's tokens."""
        ids, mask = self._encode(texts)
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths)
        out = torch.empty(len(texts), self.config.embed_dim, device=self.device)
        for start in range(0, len(texts), bucket):
            idx = order[start:start + bucket]
            width = int(lengths[idx].max())
            # .to: under bf16 autocast (precision bf16-mixed) the tower returns bf16 and the buffer is fp32
            out[idx] = self.model.text_embedding(ids[idx, :width], mask[idx, :width]).to(out.dtype)
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._train_loss(batch)
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
        hp = self.hparams
        return adamw_warmup_cosine(self.parameters(), hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps,
                                   trainer_total_steps(self))

    # ----------------------------------------------------------------------------------------- export

    def export_dir(self) -> str:
        return os.path.join(self.trainer.default_root_dir, "teacher")

    def on_fit_end(self) -> None:
        if self.hparams.export and self.trainer.is_global_zero:
            save_teacher(self.model, self.config, self.export_dir(), self.hparams.tokenizer_path)
