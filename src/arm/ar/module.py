"""``ARModule``: the unified AR model (ARM §2) trained on code-shard sequences, with its validation metrics and export.

One ``ARDecoder`` learns every task of ``arm.ar.sequences`` by next-token prediction. The loss is
``text_loss_weight * CE_text + image_loss_weight * CE_image``: the text head's cross-entropy averaged over the
scored text tokens of the batch (answers, captions, ``<eos>`` and ``<eoi>``) plus the image head's cross-entropy
averaged over the scored image tokens (generated and edited images), and, with ``condition_image_weight`` > 0
(our addition), that weight times the image head's mean cross-entropy over the codes of the images a sequence
reads (understanding images, edit sources; ``train/loss_condition``). AdamW with betas (0.9, 0.95), no weight
decay by default, linear warm-up then cosine decay (``arm.optim``), gradient clipping by the trainer (ARM §2).
With ``contrast_weight`` > 0, training adds ``contrast_weight * L_contrast`` (``arm.ar.contrast``; our addition;
experiments/ar/shapeworld.yaml uses it on the colour words) and logs ``train/loss_contrast`` and
``train/contrast_gap``; with ``contrast_words`` set, validation logs ``val/contrast_gap`` (see the argument).
With ``inventory_weight`` > 0 (our addition), a linear head on the hidden state of every image block's last code
predicts that image's object inventory (``arm.data.shapeworld.inventory``), adding ``inventory_weight`` times its
mean cross-entropy (``train/loss_inventory``, ``val/loss_inventory``, ``val/inventory_acc``: the share of images
whose every count is right). The head is training-only: exports hold the decoder alone.

Logged: ``train/loss``, ``train/loss_text``, ``train/loss_image``, ``train/loss_<task>`` (mean CE over the scored
tokens of that task's sequences), ``train/tokens_per_s`` (real, unpadded tokens per wall second between steps,
data loading included), ``train/padding`` (padded share of the batch). Validation: ``val/loss``,
``val/ppl_text`` (answers and captions), ``val/ppl_image`` (generated and edited images), ``val/loss_<task>``,
and, by decoding ``val_generate`` val images' questions greedily, ``val/vqa_acc`` (exact match of the normalised
answer, as VQAv2's normalised answers), ``val/mme_acc`` and ``val/mme_acc_plus`` (MME: a pair of yes/no questions
per image, acc+ = both right; Fu et al. 2023), and TensorBoard grids: text-to-image (top: generated with CFG,
bottom: the val image's own codes decoded) and editing (source, edited, target), decoded by the image tokenizer.

Vocabulary: text rows from the text tokenizer (or the imported LLM), ``len(SPECIAL_TOKENS)`` specials, image
codes from the tokenizer export (``num_image_codes`` when there is none). A checkpoint or export whose vocabulary
does not match is a one-line error.

Export at the end of fit (rank 0): ``<default_root_dir>/ar/`` holds ``model.safetensors``, ``config.json`` (the
``ARConfig``, the specials, the code grid, the tokenizer export's absolute path, and ``sampling``: the validation's
sampling settings, which ``arm eval`` reuses so that eval and training metrics sample alike) and ``tokenizer.json``
(a copy of the text tokenizer): everything ``arm generate|edit|ask --ckpt`` needs (``load_ar_bundle``). With
``code_factors`` the export holds the folded plain rows (``arm.ar.model.fold_code_factors``).

Deliberate simplifications:
- Generation metrics and grids run on one process only (``world_size == 1``); a sharded run skips them with a
  logged note (greedy decoding stops at different steps per rank, which sharded forwards cannot) and is
  evaluated from its export. They also need ``arm.ar.sampling``.
- Training passes no attention mask: sequences are right-padded and attention is causal, so real tokens never
  see padding and padded positions are not scored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from arm.ar.contrast import contrast_loss, row_logprob, swap_table, swapped_negatives
from arm.ar.model import ARConfig, ARDecoder, fold_code_factors
from arm.ar.sequences import SPECIAL_TOKENS, TASKS, SequenceBuilder, VocabLayout, check_edit_layout
from arm.data.text_tokenizer import TextTokenizer
from arm.io import CONFIG_FILE, read_export, save_export
from arm.optim import adamw_warmup_cosine, trainer_total_steps
from arm.tokenizer.code_colours import load_code_colours

EXPORT_DIR = "ar"
TOKENIZER_FILE = "tokenizer.json"
CREATE_COMMAND = "arm ar fit --config experiments/ar/shapeworld.yaml"


def tokenizer_export_config(directory: str) -> dict[str, Any]:
    """The ``tokenizer_config`` of an image-tokenizer export, read from its config.json alone."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no image tokenizer export at {directory!r} (missing {CONFIG_FILE}); create it with "
                                f"`arm tokenizer fit --config experiments/tokenizer/shapeworld.yaml`")
    return json.loads(path.read_text())["tokenizer_config"]


def tokenizer_export_info(directory: str) -> tuple[int, tuple[int, int]]:
    """(codebook size, code grid) of an image-tokenizer export, read from its config.json alone."""
    config = tokenizer_export_config(directory)
    codebook = math.prod(int(level) for level in config["levels"])
    side = int(config["decoder"]["image_size"]) // int(config["decoder"]["patch_size"])
    return codebook, (side, side)


def token_nll(model: ARDecoder, ids: torch.Tensor, loss_mask: torch.Tensor,
              condition_images: bool = False, keep_hidden: bool = False) -> dict[str, torch.Tensor]:
    """Per-token cross-entropies of the scored tokens of right-padded sequences ``ids`` (B, T).

    Returns ``image`` / ``text`` (the NLLs of scored image / text targets, flat) and ``image_rows`` / ``text_rows``
    (the batch row of each). Heads are applied to the scored positions only. With ``condition_images`` also
    ``condition`` / ``condition_rows``: the NLLs of the image codes that are not scored, i.e. the codes of the
    images a sequence reads (understanding images, edit sources), each predicted from what precedes it. With
    ``keep_hidden`` also ``hidden``: the final hidden states (B, T-1, D) of ``ids[:, :-1]``.
    """
    hidden = model(input_ids=ids[:, :-1])  # (B, T-1, D); causal + right padding: no mask needed
    out = {"hidden": hidden} if keep_hidden else {}
    hidden = hidden.flatten(0, 1)
    targets, scored = ids[:, 1:].flatten(), loss_mask[:, 1:].flatten()  # (B*(T-1),)
    offset = model.config.image_token_offset
    is_image = targets >= offset
    width = ids.shape[1] - 1
    groups = [("image", scored & is_image), ("text", scored & ~is_image)]
    if condition_images:
        groups.append(("condition", ~scored & is_image))
    for name, select in groups:
        # index_select (backward: index_add) rather than boolean indexing, whose backward is slower on the CPU
        index = select.nonzero().squeeze(1)  # (N,)
        h = hidden.index_select(0, index)  # (N, D)
        target = targets.index_select(0, index)
        image = name != "text"
        logits = model.image_logits(h) if image else model.text_logits(h)
        out[name] = F.cross_entropy(logits.float(), target - offset if image else target, reduction="none")
        out[f"{name}_rows"] = torch.div(index, width, rounding_mode="floor")
    return out


class ARModule(L.LightningModule):
    def __init__(
        self,
        tokenizer_path: str,
        tokenizer_export: str | None = None,
        preset: str = "shapeworld",
        overrides: dict[str, Any] | None = None,
        init_from: str | None = None,
        num_image_codes: int | None = None,
        image_grid: int | None = None,
        text_loss_weight: float = 1.0,
        image_loss_weight: float = 1.0,
        condition_image_weight: float = 0.0,
        inventory_weight: float = 0.0,
        inventory_images: str = "all",
        edit_layout: str = "source_first",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        activation_checkpointing: bool = False,
        compile_blocks: bool = False,
        code_factors: bool = False,
        code_colours: str | None = None,
        contrast_weight: float = 0.0,
        contrast_words: list[list[str]] | None = None,
        contrast_rows: int = 8,
        contrast_beta: float = 1.0,
        contrast_start: int = 0,
        val_generate: int = 64,
        grid_images: int = 8,
        val_cfg: float = 2.0,
        val_edit_text_cfg: float | None = None,
        val_edit_image_cfg: float = 1.25,
        val_edit_temperature: float = 1.0,
        val_top_k: int = 50,
        val_decode_steps: int = 10,
        val_decoder_cfg: float = 1.0,
        val_edit_decoder_cfg: float = 1.0,
        export: bool = True,
    ) -> None:
        """
        Args:
            tokenizer_path: the text tokenizer's ``tokenizer.json`` (``arm data text-tokenizer``, or an imported
                LLM's); the code DataModule reads the same file.
            tokenizer_export: the image tokenizer's export folder (``arm tokenizer fit`` writes
                ``<root>/tokenizer``): gives the codebook size and code grid, and decodes the val grids.
                ``None``: set ``num_image_codes`` and ``image_grid``; the grids are skipped.
            preset: ``ARConfig`` preset name (``tiny``, ``shapeworld``, ``qwen2.5-0.5b`` ...).
            overrides: ``ARConfig`` fields replacing the preset's (``dim``, ``num_layers``, ``max_seq_len`` ...);
                the vocabulary fields are always set from the tokenizers.
            init_from: a local Hugging Face Qwen2/Llama folder to initialise from (``arm.ar.hf_import``); the
                preset and overrides are then ignored.
            num_image_codes: codebook size when no tokenizer export is given (must match it when one is).
            image_grid: side of the square code grid when no tokenizer export is given.
            text_loss_weight: weight of the text head's mean cross-entropy.
            image_loss_weight: weight of the image head's mean cross-entropy.
            condition_image_weight: weight of the image head's mean cross-entropy over the codes of the images a
                sequence reads (understanding images, edit sources), which are otherwise input only; logged as
                ``train/loss_condition``; 0 = off (those codes are not even sent through the head). Our addition,
                not ARM's (Emu3, Wang et al. 2024, trains on every token of an image-text pair): these codes follow
                ``<eos> <boi> <hH> <wW>``, the unconditional prompt of text-to-image CFG, so they train the image
                prior and the guidance's unconditional branch at no extra forward pass. Measured (experiments/LOG.md,
                twentieth session; the shipped YAML at 0.5, training seeds 0 / 1): val image perplexity 8.90 -> 7.93
                / 8.92 -> 8.09, but GenEval -0.003 / +0.023, VQA +0.017 / -0.010, WISE +0.010 / +0.027 and GEdit's
                instruction score SC -0.025 / -0.020 (-0.104 at 1.0): off in every YAML.
            inventory_weight: weight of the inventory head's mean cross-entropy (see the module docstring; 0 =
                off, no head). The data must carry each image's scene (ShapeWorld code shards do); ``arm ar``
                switches ``data.inventory`` on with it. Our addition, aimed at the counting, existence and
                two-object failures (experiments/LOG.md, twenty-sixth session).
            inventory_images: which image blocks the inventory head reads: ``all``, or ``read`` (the images a
                sequence reads: understanding images and edit sources, not the ones it draws).
            edit_layout: where an edit sequence's instruction goes: ``source_first`` (ARM's: source image,
                instruction, target) or ``instruction_first`` (ours: instruction, source, target, so each target
                code sits a fixed distance after its cell's source code; ``arm.ar.sequences``). ``arm ar`` passes
                it to the DataModule, and the export records it, so every sampler of the export builds the same
                prompts. Measured (experiments/LOG.md, twenty-first session; with ``arm tokenizer encode
                --anchor-edits`` codes, training seeds 0 / 1): the model copies unchanged cells, GEdit SC 0.455 /
                0.674 against 0.490 / 0.417, edit success 0.014 / 0.034 against 0.006 / 0.003, but val t2i loss
                +0.08 nats a code at both seeds and GenEval -0.058 / -0.002: the YAMLs keep ``source_first``.
            lr: peak learning rate.
            weight_decay: AdamW decoupled weight decay on matrices (ARM §2 uses none).
            betas: AdamW betas (ARM: 0.9, 0.95).
            warmup_steps: linear warm-up steps before the cosine decay.
            activation_checkpointing: recompute block activations in backward (with ``ModelParallelStrategy``).
            compile_blocks: ``torch.compile`` each transformer block for the no-cache passes (training and val
                scoring; ``arm.ar.model.compile_for_training``); cached sampling stays eager. ``make bench``
                measures the step ratio; the first steps pay the compilation. Single-process only (not with
                ``ModelParallelStrategy``, where it is untested).
            code_factors: give the image rows of the embedding and of the image head a shared term linear in each
                code's FSQ coordinates (``arm.ar.model.CodeFactors``; our addition, not ARM's), read from the
                tokenizer export's levels; folded into plain rows at export, so exports and everything that reads
                them are unchanged. Needs ``tokenizer_export``. Measured (experiments/LOG.md): alone, image
                perplexity 7.65 against 8.63 after 1,200 steps but GenEval -0.022 (seventh session), +0.013 after
                2,400 (fourteenth); with ``code_colours`` GenEval +0.050 / +0.004 on two training seeds, so the
                shipped YAMLs set both.
            code_colours: a ``code_colours.safetensors`` (``arm tokenizer encode`` writes one beside the train split's
                code shards; ``arm.tokenizer.code_colours``): the code factors' basis also holds each code's palette
                histogram, so the rows of all codes of one colour move together (with ``code_factors`` false, the
                colours alone). Our addition, not ARM's; folded into plain rows at export like ``code_factors``.
                Measured (experiments/LOG.md, fourteenth session; means of 3 sampling seeds): GenEval 0.119 plain,
                0.144 colours alone, 0.169 with ``code_factors`` (colours tag 0.03 -> 0.24) for training seed 0;
                0.131 plain, 0.135 with both for training seed 1 (colour words not learnt); VQA within noise.
            contrast_weight: weight of L_contrast (``arm.ar.contrast``: a generation sequence's matched prompt must
                explain its image better than the prompt with one ``contrast_words`` word swapped); 0 = off.
                Measured (experiments/LOG.md, thirteenth session): alone, GenEval's colours tag 0.011 -> 0.22 with
                colour swaps at 0.1, but single object 0.44 -> 0.29 and GenEval overall unchanged; beside the code
                colours, 0.05 on the colour words with 4 rows lifts GenEval at both training seeds measured (0.169 ->
                0.188, 0.135 -> 0.175; fifteenth session), as experiments/ar/shapeworld.yaml ships it.
            contrast_words: groups of interchangeable single-token words (e.g. the colour names, the shape
                names); a negative swaps one word of a prompt for another of its group. Given, validation logs
                ``val/contrast_gap`` (whatever the weight): the mean log-likelihood by which a val image's own
                prompt beats the prompt with one word swapped, i.e. how far the model reads those words.
            contrast_rows: negatives per training batch at most (each costs one more row in the forward pass).
            contrast_beta: scale of the log-likelihood gap inside L_contrast's logistic loss.
            contrast_start: the training step from which L_contrast is added (0 = from the first; later makes it a
                fine-tuning phase, as CCA is).
            val_generate: val images whose VQA and MME questions are answered by greedy decoding (0 = skip).
            grid_images: images per TensorBoard grid (0 = no grids).
            val_cfg: CFG scale of the val text-to-image grid.
            val_edit_text_cfg: text-guidance scale of the edit grid (None = ``val_cfg``).
            val_edit_image_cfg: image-guidance scale of the edit grid.
            val_edit_temperature: sampling temperature of the edit grid (the text-to-image grid samples at 1).
                Measured (experiments/LOG.md, eleventh session): below 1 edited images lose their objects as
                text-to-image ones do (greedy: 0.78 objects per edit against 2.60 at 1), so the YAMLs keep 1.
            val_top_k: top-k of the grids' sampling.
            val_decode_steps: pixel-decoder steps of the grids.
            val_decoder_cfg: pixel-decoder guidance scale of the text-to-image grid (and of the images ``arm eval``
                draws from text).
            val_edit_decoder_cfg: pixel-decoder guidance scale of the edit grid (and of ``arm eval``'s edits), apart
                from text-to-image's. Measured (experiments/LOG.md, twenty-second and twenty-third sessions): decoder
                CFG 2 lifts GenEval ~0.02 but costs WISE 0.01-0.03 (its realism term) and GEdit's picture quality
                0.4-0.5, so the YAMLs keep 1 for both.
                The grids' settings are stored in the export as its sampling defaults (``validation_sampling``), which
                ``arm eval`` uses unless ``--sampling`` says otherwise.
            export: write ``<default_root_dir>/ar`` at the end of fit.
        """
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = TextTokenizer.from_file(tokenizer_path)
        grid = (image_grid, image_grid) if image_grid else None
        if tokenizer_export:
            codebook, export_grid = tokenizer_export_info(tokenizer_export)
            if num_image_codes is not None and num_image_codes != codebook:
                raise ValueError(f"num_image_codes {num_image_codes} differs from the tokenizer export's codebook "
                                 f"{codebook}; leave num_image_codes unset")
            if grid is not None and grid != export_grid:
                raise ValueError(f"image_grid {image_grid} differs from the tokenizer export's grid {export_grid}; "
                                 f"leave image_grid unset")
            num_image_codes, grid = codebook, export_grid
        if compile_blocks and activation_checkpointing:
            raise ValueError("compile_blocks with activation_checkpointing is untested: set one of them to false")
        if code_factors and not tokenizer_export:
            raise ValueError("model.code_factors needs model.tokenizer_export (the FSQ levels come from it); set it "
                             "or set model.code_factors false")
        if not num_image_codes or grid is None:
            raise ValueError("the AR model needs the image codebook and grid: set model.tokenizer_export (or both "
                             "model.num_image_codes and model.image_grid)")
        if inventory_images not in ("all", "read"):
            raise ValueError(f"model.inventory_images must be 'all' or 'read', got {inventory_images!r}")
        if inventory_weight < 0:
            raise ValueError(f"model.inventory_weight must be >= 0 (0 = off), got {inventory_weight}")
        if condition_image_weight < 0:
            raise ValueError(f"model.condition_image_weight must be >= 0 (0 = off), got {condition_image_weight}")
        if min(contrast_weight, contrast_rows, contrast_start) < 0 or contrast_beta <= 0:
            raise ValueError(f"model.contrast_weight, contrast_rows and contrast_start must be >= 0 and contrast_beta "
                             f"> 0, got {contrast_weight}, {contrast_rows}, {contrast_start}, {contrast_beta}")
        if contrast_weight > 0 and not contrast_words:
            raise ValueError("model.contrast_weight > 0 needs model.contrast_words (groups of words to swap, e.g. "
                             "[[red, green, blue], [circle, square]]); set them or set contrast_weight 0")
        self._code_colours = load_code_colours(code_colours, num_image_codes) if code_colours else None
        self._swaps = swap_table(self.tokenizer, contrast_words or [])
        self.data_layout = VocabLayout(self.tokenizer.vocab_size, num_image_codes)
        self.config = self._make_config(num_image_codes)
        self.layout = VocabLayout(self.config.text_vocab_size, num_image_codes)
        self.data_layout.check_model(self.config.text_vocab_size, self.config.num_special_tokens,
                                     self.config.num_image_codes, "the model")
        self.grid = grid
        self.builder = SequenceBuilder(self.tokenizer, self.layout, grid, edit_layout=edit_layout)
        self.model: ARDecoder | None = None
        self.inventory_head: nn.Linear | None = None
        self._bundle = None
        self._eval_samples: list[dict] | None = None
        self._last_step_time: float | None = None
        self._val: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------- model

    def _make_config(self, num_image_codes: int) -> ARConfig:
        hp = self.hparams
        if hp.init_from:
            from arm.ar.hf_import import config_from_hf, read_hf_config

            return config_from_hf(read_hf_config(hp.init_from), num_image_codes, len(SPECIAL_TOKENS))
        vocab = {"text_vocab_size": self.tokenizer.vocab_size, "num_image_codes": num_image_codes,
                 "num_special_tokens": len(SPECIAL_TOKENS)}
        clash = sorted(set(hp.overrides or {}) & set(vocab))
        if clash:
            raise ValueError(f"model.overrides may not set {clash}: the vocabulary comes from the tokenizers")
        return ARConfig.preset(hp.preset, **{**(hp.overrides or {}), **vocab})

    def configure_model(self) -> None:
        if self.model is None:
            if self.hparams.init_from:
                from arm.ar.hf_import import from_hf

                self.model = from_hf(self.hparams.init_from, self.config.num_image_codes, len(SPECIAL_TOKENS))
            else:
                self.model = ARDecoder(self.config)
            levels = (tokenizer_export_config(self.hparams.tokenizer_export)["levels"] if self.hparams.code_factors
                      else None)
            if levels is not None or self._code_colours is not None:
                self.model.enable_code_factors(levels, self._code_colours)
        if self.hparams.inventory_weight > 0 and self.inventory_head is None:
            from arm.data.shapeworld.inventory import INVENTORY_BINS, INVENTORY_HEADS

            if self.device_mesh is not None:
                raise ValueError("model.inventory_weight is single-process only (its head is not sharded); set it "
                                 "to 0 under ModelParallelStrategy")
            self.inventory_head = nn.Linear(self.config.dim, INVENTORY_HEADS * INVENTORY_BINS)
        if self.device_mesh is not None:
            from arm.parallel import parallelize

            if self.hparams.compile_blocks:
                raise ValueError("model.compile_blocks is single-process only: it is untested under "
                                 "ModelParallelStrategy (FSDP2); set model.compile_blocks false")
            parallelize(self.model, self.device_mesh["data_parallel"], self.model.body.blocks,
                        self.hparams.activation_checkpointing)
        elif self.hparams.compile_blocks and self.model.body.compiled_blocks is None:
            from arm.ar.model import compile_for_training

            compile_for_training(self.model)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("_bundle.")]:
            del state[key]  # the grids' frozen image tokenizer, saved by runs before it left the module tree
        rows = state.get("model.embed.weight")
        if rows is not None and rows.shape[0] != self.config.vocab_size:
            raise ValueError(f"the checkpoint's vocabulary has {rows.shape[0]} ids but this model has "
                             f"{self.config.vocab_size} (text {self.config.text_vocab_size} + "
                             f"{self.config.num_special_tokens} specials + {self.config.num_image_codes} codes); "
                             f"resume with the text and image tokenizers it was trained with")

    # -------------------------------------------------------------------------------------------- loss

    def _ids(self, batch: dict[str, Any]) -> torch.Tensor:
        ids = self.data_layout.remap(batch["ids"], self.layout)
        top = int(ids.max())
        if top >= self.config.vocab_size:
            raise ValueError(f"a batch holds id {top} but the vocabulary has {self.config.vocab_size}: the code "
                             f"shards were written by an image tokenizer with a larger codebook than the model's")
        return ids

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        ids, mask, hp = self._ids(batch), batch["loss_mask"], self.hparams
        negatives, pairs = ids[:0], torch.zeros(0, dtype=torch.long)
        train = self.training and hp.contrast_weight > 0 and self.global_step >= hp.contrast_start
        if train or (not self.training and self._swaps):  # validation scores every swappable generation row
            generator = torch.Generator().manual_seed(self.global_step * 1009 + self.global_rank)
            rows = hp.contrast_rows if self.training else ids.shape[0]
            negatives, pairs = swapped_negatives(ids, mask, batch["task"], self._swaps, rows, generator)
        B, K = ids.shape[0], negatives.shape[0]
        conditioned = hp.condition_image_weight > 0
        kinds = ("text", "image", "condition") if conditioned else ("text", "image")
        inventory = self.inventory_head is not None
        nll = token_nll(self.model, torch.cat([ids, negatives]) if K else ids,
                        torch.cat([mask, mask[pairs.to(mask.device)]]) if K else mask, conditioned, inventory)
        if K:  # the negatives' rows take part in L_contrast only
            logp = row_logprob(nll, B + K)
            for kind in kinds:
                keep = nll[f"{kind}_rows"] < B
                nll[kind], nll[f"{kind}_rows"] = nll[kind][keep], nll[f"{kind}_rows"][keep]
        means = {k: nll[k].sum() / max(1, nll[k].numel()) for k in kinds}
        loss = hp.text_loss_weight * means["text"] + hp.image_loss_weight * means["image"]
        if conditioned:
            loss = loss + hp.condition_image_weight * means["condition"]
        if inventory:
            means["inventory"], nll["inventory_right"], nll["inventory_n"] = self._inventory_loss(
                batch, nll.pop("hidden")[:B])
            loss = loss + hp.inventory_weight * means["inventory"]
        if K:
            means["contrast"], means["contrast_gap"] = contrast_loss(logp[pairs.to(logp.device)], logp[B:],
                                                                     hp.contrast_beta)
            means["contrast_pairs"] = torch.tensor(float(K))
            if self.training:
                loss = loss + hp.contrast_weight * means["contrast"]
        return loss, means, nll

    def _inventory_loss(self, batch: dict[str, Any], hidden: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean cross-entropy over every count of every image, images with every count right, images) from the
        hidden states (B, T-1, D) at the batch's ``inventory_pos``."""
        if "inventory_pos" not in batch:
            raise ValueError("model.inventory_weight > 0 but the batch has no inventory targets: set "
                             "data.inventory true (arm ar links it from model.inventory_weight)")
        pos, counts = batch["inventory_pos"], batch["inventory"]  # (B, I), (B, I, H)
        keep = pos >= 0
        if self.hparams.inventory_images == "read":  # a drawn image's codes are scored, a read one's are not
            keep &= ~batch["loss_mask"].gather(1, pos.clamp_min(0))
        rows, slots = keep.nonzero(as_tuple=True)
        h = hidden[rows, pos[rows, slots]]  # (N, D)
        target = counts[rows, slots]  # (N, H)
        logits = self.inventory_head(h).float().unflatten(1, (target.shape[1], -1))  # (N, H, bins)
        # a batch without an image to count (e.g. "read" with text-to-image rows only) adds 0, not NaN
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten()) if target.numel() else logits.sum()
        with torch.no_grad():
            right = (logits.argmax(-1) == target).all(dim=1).sum()
        return loss, right, torch.tensor(target.shape[0], device=right.device)

    def _task_sums(self, batch: dict[str, Any], nll: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """task -> (summed NLL, scored tokens) over the batch's rows of that task."""
        B = batch["ids"].shape[0]
        with torch.no_grad():
            row_nll = -row_logprob(nll, B)
        row_n = torch.zeros(B, device=self.device, dtype=torch.float32)
        for kind in ("text", "image"):
            row_n.index_add_(0, nll[f"{kind}_rows"], torch.ones_like(nll[kind]))
        out = {}
        for task in set(batch["task"]):
            rows = torch.tensor([t == task for t in batch["task"]], device=self.device)
            out[task] = (row_nll[rows].sum(), row_n[rows].sum())
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, means, nll = self._losses(batch)
        B = batch["ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if "contrast_gap" in means:  # mean log-likelihood gap, matched prompt minus swapped (nats per image)
            self.log("train/contrast_gap", means.pop("contrast_gap"), batch_size=B)
            means.pop("contrast_pairs")
        self.log_dict({f"train/loss_{k}": v for k, v in means.items()}, batch_size=B)
        for task, (total, n) in self._task_sums(batch, nll).items():
            self.log(f"train/loss_{task}", total / n.clamp_min(1), batch_size=B)
        real = int(batch["length"].sum())
        self.log("train/padding", 1.0 - real / batch["ids"].numel(), batch_size=B)
        now = time.perf_counter()
        if self._last_step_time is not None:
            self.log("train/tokens_per_s", real / max(now - self._last_step_time, 1e-9), prog_bar=True,
                     batch_size=B)
        self._last_step_time = now
        return loss

    # -------------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        names = ["text", "text_n", "image", "image_n", "inventory", "inventory_right", "inventory_n"]
        names += [f"{t}{s}" for t in TASKS for s in ("", "_n")]
        self._val = {k: torch.zeros((), device=self.device, dtype=torch.float64) for k in names}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, means, nll = self._losses(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["ids"].shape[0], sync_dist=True)
        if "contrast_gap" in means:  # how much better the matched prompt explains the image than a swapped one
            self.log("val/contrast_gap", means["contrast_gap"], batch_size=int(means["contrast_pairs"]),
                     sync_dist=True)
        for kind in ("text", "image"):
            self._val[kind] += nll[kind].sum().double()
            self._val[f"{kind}_n"] += nll[kind].numel()
        if "inventory" in means:
            self._val["inventory"] += means["inventory"].double() * nll["inventory_n"]
            self._val["inventory_right"] += nll["inventory_right"].double()
            self._val["inventory_n"] += nll["inventory_n"].double()
        for task, (total, n) in self._task_sums(batch, nll).items():
            self._val[task] += total.double()
            self._val[f"{task}_n"] += n.double()

    def on_validation_epoch_end(self) -> None:
        names = list(self._val)
        totals = dict(zip(names, self.trainer.strategy.reduce(torch.stack([self._val[k] for k in names]),
                                                              reduce_op="sum")))
        for kind in ("text", "image"):
            if totals[f"{kind}_n"] > 0:
                self.log(f"val/ppl_{kind}", torch.exp(totals[kind] / totals[f"{kind}_n"]).float())
        for task in TASKS:
            if totals[f"{task}_n"] > 0:
                self.log(f"val/loss_{task}", (totals[task] / totals[f"{task}_n"]).float())
        if totals["inventory_n"] > 0:
            self.log("val/loss_inventory", (totals["inventory"] / totals["inventory_n"]).float())
            self.log("val/inventory_acc", (totals["inventory_right"] / totals["inventory_n"]).float())
        if not self.trainer.sanity_checking:
            self._generation_metrics()

    def _generation_metrics(self) -> None:
        hp = self.hparams
        if not (hp.val_generate or hp.grid_images):
            return
        if self.trainer.world_size > 1:
            rank_zero_info("ARModule: generation metrics and grids skipped on a multi-process run; evaluate the "
                           "export instead")
            return
        try:
            import arm.ar.sampling  # noqa: F401
        except ImportError:
            rank_zero_info("ARModule: arm.ar.sampling is not available; generation metrics and grids skipped")
            return
        from arm.ar.commands import answer_accuracy

        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "eval_samples"):
            return
        if self._eval_samples is None:
            self._eval_samples = datamodule.eval_samples("val", max(hp.val_generate, hp.grid_images))
        with self.trainer.precision_plugin.forward_context():
            if hp.val_generate:
                metrics = answer_accuracy(self.model, self.builder, self._eval_samples[: hp.val_generate])
                self.log_dict({f"val/{k}": v for k, v in metrics.items()})
            if hp.grid_images:
                self._log_grids()

    def _log_grids(self) -> None:
        from arm.ar.commands import sample_grids

        hp = self.hparams
        if not hp.tokenizer_export:
            rank_zero_info("ARModule: no model.tokenizer_export configured, so the t2i and edit grids are skipped")
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        if self._bundle is None:
            from arm.tokenizer.model import TokenizerBundle

            # Not a submodule (object.__setattr__ skips nn.Module's registration): the frozen image tokenizer that
            # draws the grids stays out of state_dict, so checkpoints saved after a validation resume.
            object.__setattr__(self, "_bundle", TokenizerBundle.load(hp.tokenizer_export).to(self.device))
        generator = torch.Generator(device=self.device).manual_seed(0)
        grids = sample_grids(self.model, self.builder, self._bundle, self._eval_samples[: hp.grid_images],
                             hp.val_cfg, hp.val_edit_image_cfg, hp.val_top_k, hp.val_decode_steps, generator,
                             edit_text_cfg=edit_text_scale(hp), edit_temperature=hp.val_edit_temperature,
                             decoder_cfg=hp.val_decoder_cfg, edit_decoder_cfg=hp.val_edit_decoder_cfg)
        for name, image in grids.items():
            experiment.add_image(f"val/{name}_grid", image, self.global_step)

    # ---------------------------------------------------------------------------------- optimiser/export

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = list(self.model.parameters())
        if self.inventory_head is not None:
            params += list(self.inventory_head.parameters())
        return adamw_warmup_cosine(params, hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps,
                                   trainer_total_steps(self))

    def export_dir(self) -> str:
        return os.path.join(self.trainer.default_root_dir, EXPORT_DIR)

    def on_fit_end(self) -> None:
        if not self.hparams.export:
            return
        from arm.parallel import full_state_dict

        state = full_state_dict(self.model)  # a collective under FSDP: every rank takes part
        if self.trainer.is_global_zero:
            state = fold_code_factors(state, self.config.image_token_offset)  # exports are plain decoders
            save_ar(state, self.config, self.grid, self.export_dir(), self.hparams.tokenizer_path,
                    self.hparams.tokenizer_export, validation_sampling(self.hparams), self.hparams.edit_layout)


# ------------------------------------------------------------------------------------------------ export


def validation_sampling(hparams: Any = None) -> dict[str, Any]:
    """How ``ARModule``'s validation samples (grids; answers are greedy): from a run's ``hparams``, or
    ``ARModule``'s defaults when none are given (an export written without them)."""
    import inspect

    if hparams is None:
        hparams = {name: p.default for name, p in inspect.signature(ARModule.__init__).parameters.items()}
    return {"cfg": float(hparams["val_cfg"]), "text_cfg": edit_text_scale(hparams),
            "image_cfg": float(hparams["val_edit_image_cfg"]), "temperature": 1.0,
            # runs saved before the option sampled their edit grids at 1
            "edit_temperature": float(hparams.get("val_edit_temperature", 1.0)), "top_k": int(hparams["val_top_k"]),
            "top_p": 1.0, "decoder_steps": int(hparams["val_decode_steps"]),
            # runs saved before the options decoded every grid at 1
            "decoder_cfg": float(hparams.get("val_decoder_cfg", 1.0)),
            "edit_decoder_cfg": float(hparams.get("val_edit_decoder_cfg", 1.0))}


def edit_text_scale(hparams: Any) -> float:
    """The edit grid's text-guidance scale: ``val_edit_text_cfg``, or ``val_cfg`` when that is None (or absent, as in
    runs saved before it existed)."""
    scale = hparams.get("val_edit_text_cfg")
    return float(hparams["val_cfg"] if scale is None else scale)


def save_ar(state: dict[str, torch.Tensor], config: ARConfig, grid: tuple[int, int], directory: str,
            tokenizer_path: str, tokenizer_export: str | None, sampling: dict[str, Any] | None = None,
            edit_layout: str = "source_first") -> str:
    """Write the AR export: weights, config.json (config, specials, grid, edit layout, tokenizer export path, the
    sampling settings of ``validation_sampling`` when given), tokenizer copy."""
    meta = {"ar_config": dataclasses.asdict(config), "special_tokens": list(SPECIAL_TOKENS), "grid": list(grid),
            "edit_layout": check_edit_layout(edit_layout),
            "tokenizer_export": os.path.abspath(tokenizer_export) if tokenizer_export else None,
            "text_tokenizer": TOKENIZER_FILE, "text_tokenizer_source": os.path.abspath(tokenizer_path),
            "sampling": sampling}
    return save_export(directory, SimpleNamespace(state_dict=lambda: state), meta, {TOKENIZER_FILE: tokenizer_path})


@dataclasses.dataclass
class ARBundle:
    """An exported AR model with everything around it: text tokenizer, sequence builder, image tokenizer."""

    model: ARDecoder
    builder: SequenceBuilder
    image_tokenizer: Any  # arm.tokenizer.model.TokenizerBundle, or None when the export names none
    meta: dict


def load_ar_bundle(directory: str, device: torch.device | str = "cpu", image_tokenizer: bool = True) -> ARBundle:
    """Load an AR export (safetensors) and what it points to; a vocabulary mismatch is a one-line error."""
    state, meta = read_export(directory, "AR model", CREATE_COMMAND)
    config = ARConfig(**meta["ar_config"])
    if meta.get("special_tokens") != list(SPECIAL_TOKENS):
        raise ValueError(f"the AR export {directory!r} was written with other special tokens than this code "
                         f"defines; retrain it (`{CREATE_COMMAND}`) or use the code version that wrote it")
    tokenizer = TextTokenizer.from_file(os.path.join(directory, meta["text_tokenizer"]))
    codebook, bundle = config.num_image_codes, None
    if image_tokenizer and meta.get("tokenizer_export"):
        from arm.tokenizer.model import TokenizerBundle

        codebook, _ = tokenizer_export_info(meta["tokenizer_export"])
        bundle = TokenizerBundle.load(meta["tokenizer_export"]).to(device)
    VocabLayout(tokenizer.vocab_size, codebook).check_model(
        config.text_vocab_size, config.num_special_tokens, config.num_image_codes, f"the AR export {directory!r}")
    model = ARDecoder(config)
    model.load_state_dict(state)
    # No max_len: inference checks prompt + new tokens against the context (sequences.check_fits) instead.
    # Exports written before the layout was recorded are source first, the only layout then.
    builder = SequenceBuilder(tokenizer, VocabLayout(config.text_vocab_size, config.num_image_codes),
                              tuple(meta["grid"]), edit_layout=meta.get("edit_layout", "source_first"))
    return ARBundle(model.to(device).eval(), builder, bundle, meta)

