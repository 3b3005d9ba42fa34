"""The small caption LM that the tokenizer's L_cap reads z_q with (paper §1), trained here on ShapeWorld captions.

The paper's L_cap is the next-token cross-entropy of the caption from a frozen small LLM (Qwen2.5-0.5B) that reads
the projected z_q as a prefix. The embedded default has no pretrained LLM, so ``CaptionLMModule`` trains a tiny
text-only ``ARDecoder`` (Qwen2 architecture, ``num_image_codes=0``) on the world's captions; the tokenizer stage
then loads it with ``load_lm`` and calls ``arm.ar.model.prefix_caption_loss``. A real Qwen2.5 imported with
``arm.ar.hf_import.from_hf`` plays the same role at scale.

Sequences: ``[eos] caption [eos]`` -- end-of-text doubles as the begin token (GPT-2 style), so the first word is
predicted too -- right-padded with the tokenizer's pad id and truncated to ``max_len``. The loss is the mean
next-token cross-entropy over real tokens; ``val/ppl`` is ``exp`` of the token-weighted mean val loss over the
whole val set (summed over ranks). AdamW with betas (0.9, 0.95) (ARM §2), linear warm-up then cosine decay to
zero at ``trainer.max_steps`` (constant after warm-up without a step budget: a streaming loader has no length).

At the end of fit rank 0 writes ``model.safetensors``, ``config.json`` (the ``ARConfig`` plus the tokenizer's
original path) and a copy ``tokenizer.json`` to ``<default_root_dir>/lm/``, each file atomically.

Deliberate simplifications: the image batches' pixels are decoded and ignored (the caption task carries them);
weight decay, when set, applies to matrices only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import lightning as L
import torch

from arm.ar.model import ARConfig, ARDecoder, lm_loss
from arm.data.text_tokenizer import TextTokenizer
from arm.io import read_export, save_export
from arm.optim import adamw_warmup_cosine, trainer_total_steps

TOKENIZER_FILE = "tokenizer.json"
CREATE_COMMAND = "arm lm fit --config experiments/lm/shapeworld.yaml"


def encode_captions(tokenizer: TextTokenizer, texts: list[str], max_len: int,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``[eos] text [eos]`` per caption, right-padded: ids (B, T) and mask (B, T), T <= max_len."""
    rows = [[tokenizer.eos_id, *ids, tokenizer.eos_id][:max_len] for ids in tokenizer.encode_batch(texts)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids.to(device), mask.to(device)


class CaptionLMModule(L.LightningModule):
    def __init__(
        self,
        tokenizer_path: str,
        config: ARConfig | None = None,
        max_len: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        export: bool = True,
    ) -> None:
        """
        Args:
            tokenizer_path: the text tokenizer's ``tokenizer.json`` (``arm data text-tokenizer``).
            config: decoder size; ``text_vocab_size`` ``None`` takes the tokenizer's size, ``num_image_codes``
                must be 0 (a text-only LM). Default: 4 layers, width 128.
            max_len: longest training sequence, begin/end tokens included (longer captions are cut).
            lr: peak learning rate.
            weight_decay: AdamW decoupled weight decay on matrices (ARM §2 uses none).
            betas: AdamW betas.
            warmup_steps: linear warm-up steps.
            export: write ``<default_root_dir>/lm/`` at the end of fit.
        """
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = TextTokenizer.from_file(tokenizer_path)
        config = config or ARConfig(dim=128, num_layers=4, num_heads=4, num_kv_heads=4, mlp_hidden=352,
                                    max_seq_len=max_len)
        if config.text_vocab_size is None:
            config = dataclasses.replace(config, text_vocab_size=self.tokenizer.vocab_size)
        elif config.text_vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"config.text_vocab_size {config.text_vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size}")
        if config.num_image_codes:
            raise ValueError("the caption LM is text-only: set config.num_image_codes to 0")
        self.config = config
        self.model = ARDecoder(config)
        self._val_nll = self._val_tokens = None

    def _batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_captions(self.tokenizer, list(batch["text"]), self.hparams.max_len, self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        ids, mask = self._batch(batch)
        loss = lm_loss(self.model, ids, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=ids.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_nll = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_tokens = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        ids, mask = self._batch(batch)
        loss = lm_loss(self.model, ids, mask)
        tokens = mask[:, 1:].sum()
        self._val_nll += loss.double() * tokens
        self._val_tokens += tokens
        self.log("val/loss", loss, prog_bar=True, batch_size=ids.shape[0], sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        totals = self.trainer.strategy.reduce(torch.stack([self._val_nll, self._val_tokens]), reduce_op="sum")
        if totals[1] > 0:
            self.log("val/ppl", torch.exp(totals[0] / totals[1]).float(), prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(self.model.parameters(), hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps,
                                   trainer_total_steps(self))

    def export_dir(self) -> str:
        return os.path.join(self.trainer.default_root_dir, "lm")

    def on_fit_end(self) -> None:
        if self.hparams.export and self.trainer.is_global_zero:
            save_lm(self.model, self.export_dir(), self.hparams.tokenizer_path)


def save_lm(model: ARDecoder, directory: str, tokenizer_path: str | None = None) -> str:
    """Write ``model.safetensors``, ``config.json`` (and a copy of the tokenizer) into ``directory``, atomically."""
    meta = {"ar_config": dataclasses.asdict(model.config), "tokenizer_path": tokenizer_path}
    copies = {}
    if tokenizer_path:
        copies[TOKENIZER_FILE] = tokenizer_path
        meta["tokenizer"] = TOKENIZER_FILE
    return save_export(directory, model, meta, copies)


def load_lm(directory: str, device: torch.device | str = "cpu") -> tuple[ARDecoder, ARConfig]:
    """The exported caption LM in ``directory`` (safetensors only), in eval mode."""
    state, meta = read_export(directory, "caption LM", CREATE_COMMAND)
    config = ARConfig(**meta["ar_config"])
    model = ARDecoder(config)
    model.load_state_dict(state)
    return model.to(device).eval(), config
