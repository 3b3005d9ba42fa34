"""TokenizerModule: trains ARM's semantic discrete tokenizer with its four losses on z_q (paper §1).

frozen teacher patch features (B, N, F) -> projection -> FSQ codes -> symmetric projection -> z_q (B, N, F), then
  L = w_cap L_cap + w_pix L_pix + w_sig L_sig + w_feat L_feat   (paper: 1, 5, 5, 1)
- L_feat: mean cosine distance between z_q and the teacher's patch features;
- L_sig:  SigLIP sigmoid loss between the pooled-z_q embedding and the teacher's text embedding of the caption,
          with the tokenizer's own learnable temperature and bias;
- L_cap:  next-token cross-entropy of the caption from the frozen caption LM reading adapter(z_q) as a prefix;
- L_pix:  rectified-flow velocity loss of the pixel decoder conditioned on z_q (with condition dropout for
          decoder-side CFG).
A weight of 0 skips that branch's forward pass entirely (and, for L_cap, loading the LM is optional).

Validation logs the losses and, on the first ``val_recon_images`` images, reconstructions sampled with
``val_decode_steps`` Euler steps and decoder CFG ``val_cfg_scale``: ``val/psnr``, ``val/ssim``,
``val/semantic_recon_acc`` (the ShapeWorld detector parses the reconstruction to the same scene; where it fails:
``val/recon_background_acc`` and ``val/recon_object_recall/<class>_<size>``), ``val/fd_teacher`` (Fréchet distance between the teacher's mean-pooled
patch features of originals and reconstructions: not FID) and, when ``inception_weights`` names a local
torch-fidelity Inception file, ``val/rfid`` (FID between those originals and reconstructions); over the whole val set ``val/code_usage``,
``val/code_perplexity``, ``val/zero_shot_color_acc``, ``val/zero_shot_shape_acc`` (pooled z_q against the teacher's
text embeddings of "a {colour} shape" / "a {class}", scored on images whose objects share the label; read through
the sigmoid head, or, when ``w_sig == 0`` leaves that head untrained, through the teacher's own pooling and image
projection: ``TokenizerConfig.readout``), and
``val/caption_ppl``. A reconstruction grid (originals over reconstructions) goes to TensorBoard.

Deliberate simplifications: the teacher and LM run in eval mode without gradients into their weights (gradients
reach z_q through the frozen LM); the linear probe is computed by ``arm tokenizer eval`` only, since it needs
train features.

Knobs beyond the paper, off by default (the paper's recipe) and set in the embedded default's YAML by measurement
(experiments/LOG.md, 2026-12-04): ``semantic_grad_scale`` < 1 lets L_cap, L_sig and L_feat reach the FSQ encoder
with a scaled gradient (the layers after FSQ get theirs in full), so the codes stay fitted to the pixels;
``sig_pool="map"`` pools z_q for L_sig with a learned attention head rather than the teacher's fixed pooling;
``sig_queue`` > 0 gives L_sig, in training, the text embeddings of earlier batches' captions as extra negatives.
``pix_repeats`` > 1 draws several (noise, time) pairs per image for L_pix (MAR's diffusion batch multiplier).
``decoder_steps`` > 0 ends the run with that many steps of the pixel decoder alone on the frozen codes (below).
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from arm.nn import TransformerConfig
from arm.optim import adamw_warmup_cosine, trainer_total_steps, two_phase_factor
from arm.teacher.losses import sigmoid_contrastive_loss, sigmoid_contrastive_loss_with_negatives
from arm.tokenizer.evaluate import TokenizerEvaluator
from arm.tokenizer.metrics import InceptionFeatures
from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig, load_tokenizer_teacher, save_tokenizer
from arm.tokenizer.pixel_decoder import PixelDiTConfig

#: L_colour's "plain" target: a patch is flat when no pixel channel is further than this from the patch's mean, in
#: [-1, 1] units (about 2.5 of 255). On ShapeWorld's lossless renders 75% of val patches pass: plain background,
#: and (2.4% of those) the inside of a large object; no patch an outline crosses does.
PLAIN_PATCH_TOL = 0.02


class TokenizerModule(L.LightningModule):
    """Frozen teacher (+ frozen caption LM) and the trainable ``SemanticTokenizer``.

    Args:
        teacher_dir: exported teacher folder (``arm teacher fit`` writes ``<root>/teacher``), or a local OpenAI CLIP
            ViT weights file (``arm.teacher.clip_teacher``), which resizes images to its own input size.
        lm_dir: exported caption LM folder (``arm lm fit``), needed when ``w_cap > 0``.
        levels: FSQ levels per code dimension.
        projection: transformer on each side of FSQ.
        decoder: pixel DiT sizes; its ``image_size`` is the data's (and, for an exported teacher, the teacher's).
        w_cap, w_pix, w_sig, w_feat: loss weights (paper: 1, 5, 5, 1); 0 removes the branch.
        w_colour: weight of L_colour (our addition, not in ARM; 0, the default, removes it): the mean squared error of
            a linear read-out of each token's z_q against its patch's mean colour (in [-1, 1]), with the gradient
            in full into the codes as L_pix's. Why: the pixel decoder learns early to ignore the condition on plain
            background patches (the background can be read off x_t at almost every training time), after which
            L_pix sends the codes no gradient there, and the codes end up carrying no background colour at all
            (experiments/LOG.md, thirty-second session); a linear head's gradient does not vanish that way.
            Measured there: at 10 the codes still carry no background (the other losses crowd it out); at 100 with
            ``colour_target="image"`` background right 0.893 -> 1.000 and semantic reconstruction 0.685 -> 0.720,
            but code usage 0.460 -> 0.418, and the AR recipe on those codes loses VQA at three seeds (pooled
            -0.031) for GEdit (+0.121): MIXED, 0 in every YAML.
        colour_target: what L_colour reads: "patch" (each token's z_q against its own patch's mean colour),
            "image" (the mean-pooled z_q against the whole image's mean colour, which on ShapeWorld is mostly the
            background's: about a bit a picture instead of a colour for every token), or "plain" (as "patch", on
            the tokens of flat patches only, every pixel within ``PLAIN_PATCH_TOL`` of its patch's mean: nearly all
            the background's tokens, so the tokens that draw outlines are not asked for a colour). Measured in the
            thirty-third session: at 100 background right 1.000, code usage 0.477 (0.460), semantic reconstruction
            0.715, geneval_recon 0.758 -> 0.718; at 30 background right 0.934, code usage 0.505, semantic 0.715,
            geneval_recon 0.761. The AR recipe on either's codes (seed 0) loses GenEval beyond its interval (-0.029
            at 100, -0.060 at 30, whose codes the AR model finds harder: val image perplexity 7.6 -> 10.2) for
            GEdit (+0.30 both): NEGATIVE, 0 in every YAML.
        cond_drop_prob: probability of dropping z_q for the pixel decoder (decoder-side CFG).
        pix_repeats: in training, L_pix draws this many (noise, time) pairs per image, the batch of z_q repeated
            (MAR's diffusion batch multiplier, Li et al. 2024): more decoder signal per encoder pass at the cost of
            the decoder's share of a step only. Validation always draws one.
        sig_pool: how L_sig, zero-shot and the probes pool z_q: ``"teacher"`` (mean or max, as the teacher pools
            its features) or ``"map"`` (a learned attention-pooling head, ``arm.tokenizer.model.AttentionPool``).
        sig_queue: in training, L_sig also scores every image against the teacher's text embeddings of the last
            ``sig_queue`` captions of earlier batches, as negatives (MoCo's queue, He et al. 2020; the text tower is
            frozen, so the queued embeddings are exact, not stale, and need no momentum encoder). A small batch then
            keeps the negatives a larger one had. The queue is not checkpointed (a resumed run refills it within
            a few steps); validation scores the batch alone, so ``val/loss_sig`` does not depend on it.
        semantic_grad_scale: factor on the gradient that L_cap, L_sig and L_feat send through the codes into the
            projection's encoder (the symmetric projection after FSQ and the heads get it in full; L_pix always
            in full). 1 is the paper; less keeps the codes for the pixels (experiments/LOG.md, 2026-12-04).
        pixel_input: the projection's encoder also reads each token's own pixel patch beside the teacher's feature
            (``arm.tokenizer.model.TokenizerConfig.pixel_input``; not in ARM, whose codes see only the encoder).
        colour_input: the projection's encoder also reads each token's mean colour (``TokenizerConfig.colour_input``;
            not in ARM).
        lr, weight_decay, warmup_steps, betas: AdamW with warm-up and cosine decay to ``trainer.max_steps``.
        decoder_lr_scale: the pixel decoder trains at ``lr x decoder_lr_scale`` (everything else at ``lr``), since
            a higher rate for the whole tokenizer destabilises the codes (LOG, eighth session). Measured at 2 on the
            embedded default (LOG, tenth session): semantic reconstruction and PSNR unchanged, code usage and
            zero-shot shape lower, so every YAML keeps 1.
        caption_max_len: caption tokens kept for L_cap.
        caption_batch: in training, L_cap reads only the first ``caption_batch`` samples of each batch (0 = all): an
            unbiased estimate of the same loss at a fraction of the frozen LM's forward and backward cost, the
            largest share of a step (validation always uses the whole batch).
        val_recon_images: val images reconstructed per validation (PSNR, SSIM, semantic, FD).
        val_decode_steps, val_cfg_scale: Euler steps and decoder CFG for those reconstructions.
        compile_blocks: ``torch.compile`` the transformer blocks of the projection on both sides of FSQ and of the
            pixel decoder (its training pass only) (``arm.nn.compile_blocks``, ``compiled_stacks``). Single-process
            only; exports and checkpoints are unchanged.
        decoder_steps: the last ``decoder_steps`` of ``trainer.max_steps`` train the pixel decoder alone (our
            addition; ARM trains the four losses jointly): the projection and the heads stop, so the codes are
            final, and each step computes z_q without gradients and L_pix only. The joint phase is scheduled as a
            run of ``max_steps - decoder_steps`` alone (the same codes, bit for bit); the decoder's rate then warms
            up and decays again (``arm.optim.two_phase_factor``). A decoder step costs ~0.6 of a joint one (no
            caption LM, text tower or backward through the projection). Measured on the embedded default
            (experiments/LOG.md, eighteenth session): 1,200 decoder steps after 1,350 joint ones take semantic
            reconstruction from 0.479 / 0.484 to 0.578 / 0.613 (two seeds) and PSNR from 28.4 / 28.7 to 29.8 /
            30.2 dB; a short phase in place of joint steps is worse (the warm-up first costs the decoder some of
            what it had). The shapeworld YAML runs 1,000 after 1,350 joint steps (LOG, twenty-second session:
            0.480 / 0.492 -> 0.569 / 0.590). 0: none. Untested under ``ModelParallelStrategy``.
        decoder_phase_lr_scale: the decoder phase's peak rate is ``lr x decoder_lr_scale x decoder_phase_lr_scale``
            (the joint phase keeps its own; ``decoder_lr_scale`` would raise the decoder's rate in both phases, which
            costs code usage and zero-shot shape, LOG tenth session). Measured on the embedded default's 1,000-step
            phase (LOG, twenty-third session; 1,000 val images): 2 moves semantic reconstruction by +0.018 / +0.013
            (seed 0, two harnesses) and -0.010 / +0.002 (seed 1), PSNR +0.1-0.3 dB (3: +0.010, 4: -0.021 at seed
            0): NEUTRAL on the exact-scene figure, so the YAMLs keep 1.
        decoder_phase_times: the decoder phase's logit-normal [mean, std] of training times (our addition); null
            keeps the decoder's own (``decoder.time_mean`` / ``time_std``, chosen for the joint phase, where noisy
            times push the codes). The frozen codes need no such push, and the sampler's late steps (where the
            outlines of small shapes are drawn) are times the joint phase's distribution rarely draws. Measured
            NEGATIVE on the embedded default (LOG, thirty-second session; same codes): [0, 1] semantic reconstruction
            0.685 -> 0.640, [-1.2, 0.8] 0.673; null in every YAML.
        export: write the trained tokenizer to ``<default_root_dir>/tokenizer`` at the end of fit.
        inception_weights: local torch-fidelity InceptionV3 weights file; validation then logs ``val/rfid``.
    """

    def __init__(
        self,
        teacher_dir: str,
        lm_dir: str | None = None,
        levels: list[int] | None = None,
        projection: TransformerConfig | None = None,
        decoder: PixelDiTConfig | None = None,
        w_cap: float = 1.0,
        w_pix: float = 5.0,
        w_sig: float = 5.0,
        w_feat: float = 1.0,
        w_colour: float = 0.0,
        colour_target: str = "patch",
        cond_drop_prob: float = 0.1,
        pix_repeats: int = 1,
        sig_pool: str = "teacher",
        sig_queue: int = 0,
        semantic_grad_scale: float = 1.0,
        pixel_input: bool = False,
        colour_input: bool = False,
        lr: float = 1e-3,
        decoder_lr_scale: float = 1.0,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        betas: tuple[float, float] = (0.9, 0.95),
        caption_max_len: int = 64,
        caption_batch: int = 0,
        val_recon_images: int = 128,
        val_decode_steps: int = 10,
        val_cfg_scale: float = 1.0,
        compile_blocks: bool = False,
        decoder_steps: int = 0,
        decoder_phase_lr_scale: float = 1.0,
        decoder_phase_times: list[float] | None = None,
        export: bool = True,
        inception_weights: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= semantic_grad_scale <= 1.0:
            raise ValueError(f"model.semantic_grad_scale must lie in [0, 1] (1 = the paper), got {semantic_grad_scale}")
        if sig_queue < 0:
            raise ValueError(f"model.sig_queue must be >= 0 (0 = the batch's own captions only), got {sig_queue}")
        if decoder_lr_scale <= 0:
            raise ValueError(f"model.decoder_lr_scale must be > 0 (1 = the same rate as the rest), got {decoder_lr_scale}")
        if decoder_steps < 0 or (decoder_steps > 0 and w_pix <= 0):
            raise ValueError(f"model.decoder_steps must be >= 0 and needs the pixel decoder (w_pix > 0), got "
                             f"decoder_steps={decoder_steps}, w_pix={w_pix}")
        if decoder_phase_times is not None and (len(decoder_phase_times) != 2 or decoder_phase_times[1] <= 0):
            raise ValueError(f"model.decoder_phase_times is the decoder phase's logit-normal [mean, std] of training "
                             f"times (std > 0), or null for the decoder's own; got {decoder_phase_times}")
        if decoder_phase_lr_scale <= 0:
            raise ValueError(f"model.decoder_phase_lr_scale must be > 0 (1 = the joint phase's peak rate), got "
                             f"{decoder_phase_lr_scale}")
        if pix_repeats < 1:
            raise ValueError(f"model.pix_repeats must be >= 1 (1 = one noise draw per image), got {pix_repeats}")
        if caption_batch < 0:
            raise ValueError(f"model.caption_batch must be >= 0 (0 = every caption), got {caption_batch}")
        self.save_hyperparameters()
        self.teacher = load_tokenizer_teacher(teacher_dir).requires_grad_(False)
        self.lm, self.lm_tokenizer = None, None
        if w_cap > 0:
            if not lm_dir:
                raise ValueError("w_cap > 0 needs a caption LM: set model.lm_dir (arm lm fit) or model.w_cap=0")
            from arm.ar.lm_module import load_lm
            from arm.data.text_tokenizer import TextTokenizer

            self.lm, lm_config = load_lm(lm_dir)
            self.lm.requires_grad_(False)
            self.lm_tokenizer = TextTokenizer.from_file(os.path.join(lm_dir, "tokenizer.json"))
        tc = self.teacher.config
        config = TokenizerConfig(
            levels=list(levels) if levels else [4, 4, 4, 4, 4, 4],
            projection=projection or TransformerConfig(dim=128, num_layers=2, num_heads=4),
            decoder=decoder or PixelDiTConfig(image_size=tc.image_size),
            feature_dim=tc.image_dim, text_embed_dim=tc.embed_dim,
            lm_dim=self.lm.config.dim if self.lm is not None else 0,
            pool=getattr(tc, "pool", "mean"), sig_pool=sig_pool, pixel_input=pixel_input,
            colour_input=colour_input,
            # Without L_sig the sigmoid head stays random: read z_q the teacher's way, where the teacher can pool
            # patch features itself (ours can; a CLIP teacher's embedding needs its class token, so it cannot).
            readout="teacher" if w_sig == 0 and callable(getattr(self.teacher, "pool", None)) else "head",
        )
        # A teacher that resizes its input (CLIP) lets the decoder work at the data's resolution; the others read
        # images at their own size only, so the data, the teacher and the decoder share it.
        if config.decoder.image_size != tc.image_size and not getattr(self.teacher, "resizes_input", False):
            raise ValueError(f"decoder.image_size {config.decoder.image_size} differs from the teacher's image size "
                             f"{tc.image_size}: set model.decoder.image_size={tc.image_size}")
        self.model = SemanticTokenizer(config)
        if w_colour < 0:
            raise ValueError(f"model.w_colour must be >= 0 (0 removes L_colour), got {w_colour}")
        if colour_target not in ("patch", "image", "plain"):
            raise ValueError(f"model.colour_target must be 'patch' (each token's own patch), 'image' (the mean-pooled "
                             f"z_q against the whole image's mean colour) or 'plain' (flat patches' tokens only), got "
                             f"{colour_target!r}")
        if w_colour > 0 and config.decoder.num_patches != tc.num_patches:
            raise ValueError(f"w_colour needs the pixel decoder's patch grid to match the teacher's: "
                             f"{config.decoder.num_patches} patches against {tc.num_patches} tokens; set "
                             f"model.decoder.patch_size so that (image_size / patch_size)^2 = {tc.num_patches}")
        # A training aid only: not part of the exported tokenizer.
        self.colour_head = nn.Linear(config.feature_dim, config.decoder.channels) if w_colour > 0 else None
        self._text_queue: torch.Tensor | None = None  # (<= sig_queue, E) earlier batches' caption embeddings
        # Built here so that a bad path fails before training; not a submodule: never checkpointed or sharded.
        self._inception = InceptionFeatures(inception_weights) if inception_weights and w_pix > 0 else None

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy``: FSDP2-shard the trainable tokenizer per transformer block
        (``arm.parallel``); the frozen teacher and caption LM stay whole on every rank (moved to its device)."""
        if self.device_mesh is None:
            if self.hparams.compile_blocks and self.model.decoder.compiled_blocks is None:
                from arm.nn import compile_blocks

                for stack in self.compiled_stacks():
                    compile_blocks(stack, dynamic=False)  # one static graph per shape: train and val batches
            return
        if self.hparams.compile_blocks:
            raise ValueError("model.compile_blocks is single-process only: it is untested under "
                             "ModelParallelStrategy (FSDP2); set model.compile_blocks false")
        from arm.parallel import parallelize

        device = self.trainer.strategy.root_device
        for frozen in (self.teacher, self.lm):
            if frozen is not None:
                frozen.to(device)
        proj, dec = self.model.projection, self.model.decoder
        parallelize(self.model, self.device_mesh["data_parallel"],
                    [*proj.encoder.blocks, *proj.decoder.blocks, *dec.blocks],
                    forward_methods=("quantize", "quantize_scaled", "pooled_embedding"))

    def compiled_stacks(self) -> list[torch.nn.Module]:
        """The block stacks ``compile_blocks`` compiles: the projection on both sides of FSQ and the pixel decoder,
        whose shapes are fixed by the batch. The frozen towers stay eager: the teacher's image tower bought nothing
        measurable, and the caption LM and the text tower see a new length with every batch of captions, each a
        recompile (experiments/LOG.md, sixteenth session)."""
        proj = self.model.projection
        return [proj.encoder, proj.decoder, self.model.decoder]

    # ------------------------------------------------------------------------------------------ losses

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen towers stay in eval mode (no dropout / norm updates) whatever Lightning asks
        if self.lm is not None:
            self.lm.eval()
        return self

    @staticmethod
    def _images_and_captions(batch: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        if "meta" in batch:
            return batch["image"], [m["caption"] for m in batch["meta"]]
        if "text" in batch:
            return batch["image"], list(batch["text"])
        raise ValueError(f"tokenizer batches need 'meta' (task scene) or 'text' (task caption); got {sorted(batch)}")

    def losses(self, images: torch.Tensor, captions: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Weighted-sum ingredients: {name: loss}, plus z_q (B, N, F) and code indices (B, N)."""
        hp = self.hparams
        size = self.model.config.decoder.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"the data's images have shape {tuple(images.shape[1:])} but the tokenizer decodes "
                             f"(3, {size}, {size}): set model.decoder.image_size to the data's image size")
        with torch.no_grad():
            feats = self.teacher.patch_features(images)  # (B, N, F)
        semantic = hp.w_feat > 0 or hp.w_sig > 0 or hp.w_cap > 0
        scale = hp.semantic_grad_scale if (semantic and self.training) else 1.0
        z_q, z_sem, indices = self.model.quantize_scaled(feats, scale, images)  # z_sem: z_q for the semantic losses
        out: dict[str, torch.Tensor] = {}
        if hp.w_feat > 0:
            out["feat"] = (1 - F.cosine_similarity(z_sem, feats, dim=-1)).mean()
        if hp.w_sig > 0:
            with torch.no_grad():
                text = self.teacher.embed_texts(captions)  # (B, E)
            out["sig"] = self._sig_loss(self.model.pooled_embedding(z_sem), text)
        if hp.w_cap > 0:
            from arm.ar.lm_module import encode_captions
            from arm.ar.model import prefix_caption_loss

            keep = hp.caption_batch if (self.training and 0 < hp.caption_batch < len(captions)) else len(captions)
            ids, mask = encode_captions(self.lm_tokenizer, captions[:keep], hp.caption_max_len, images.device)
            ids, mask = ids[:, 1:], mask[:, 1:]  # the z_q prefix takes the place of the leading [eos]
            out["cap"] = prefix_caption_loss(self.lm, self.model.cap_adapter(z_sem[:keep]), ids, mask)
        if hp.w_pix > 0:
            out["pix"] = self._pix_loss(images, z_q)
        if self.colour_head is not None:
            plain = hp.colour_target == "plain"  # only it needs the patches' spread
            colours = self.model.patch_colours(images, with_spread=plain)  # (B, N, C); grids checked in __init__
            if hp.colour_target == "image":  # one colour a picture: the background's, mostly
                out["colour"] = F.mse_loss(self.colour_head(z_q.mean(dim=1)).float(), colours.mean(dim=1))
            elif plain:  # flat patches only; a batch without one adds 0, not NaN
                colours, spread = colours
                flat = (spread <= PLAIN_PATCH_TOL).float()[..., None]  # (B, N, 1)
                error = (self.colour_head(z_q).float() - colours).square() * flat
                out["colour"] = error.sum() / (flat.sum() * colours.shape[-1]).clamp(min=1.0)
            else:
                out["colour"] = F.mse_loss(self.colour_head(z_q).float(), colours)
        return out, z_q, indices

    def _pix_loss(self, images: torch.Tensor, z_q: torch.Tensor,
                  logit_normal: tuple[float, float] | None = None) -> torch.Tensor:
        """L_pix with ``pix_repeats`` (noise, time) draws per image in training, one in validation; ``logit_normal``
        (mean, std) replaces the decoder's own time distribution (the decoder phase's)."""
        k = self.hparams.pix_repeats if self.training else 1
        # repeat (not expand): each copy gets its own noise, time and condition dropout; z_q's gradient sums over
        # the copies, and the mean over the k-times batch keeps the loss's scale.
        pix_images, pix_cond = (images.repeat(k, 1, 1, 1), z_q.repeat(k, 1, 1)) if k > 1 else (images, z_q)
        return self.model.decoder.loss(pix_images, pix_cond, self.hparams.cond_drop_prob, logit_normal=logit_normal)

    def _sig_loss(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """L_sig of pooled image embeddings (B, E) against their captions' (B, E), plus, in training, the queued
        captions of earlier batches as negatives (``sig_queue``); the queue then takes this batch's captions."""
        scale, bias = self.model.logit_scale, self.model.logit_bias
        queue = self._text_queue if self.training else None
        if queue is None or len(queue) == 0:
            loss = sigmoid_contrastive_loss(image, text, scale, bias)
        else:
            loss = sigmoid_contrastive_loss_with_negatives(image, text, queue.to(text.dtype), scale, bias)
        if self.training and self.hparams.sig_queue > 0:
            fresh = text.detach().float()
            self._text_queue = (fresh if queue is None else torch.cat([fresh, queue]))[: self.hparams.sig_queue]
        return loss

    def _total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(getattr(self.hparams, f"w_{name}") * value for name, value in parts.items())

    def check_step_budget(self, max_steps: int | None) -> None:
        """A ValueError unless ``trainer.max_steps`` leaves a joint phase before the ``decoder_steps``."""
        steps = self.hparams.decoder_steps
        if steps and (max_steps is None or max_steps <= steps):
            raise ValueError(f"model.decoder_steps={steps} needs a longer run: set trainer.max_steps above it (the "
                             f"joint phase gets max_steps - decoder_steps), got max_steps={max_steps}")

    def in_decoder_phase(self) -> bool:
        """True during the last ``decoder_steps`` steps of the run (the pixel decoder alone on frozen codes)."""
        total, steps = trainer_total_steps(self), self.hparams.decoder_steps
        return bool(steps) and total is not None and self.global_step >= total - steps

    def decoder_phase_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_pix alone on z_q computed without gradients: the codes stay as the joint phase left them."""
        with torch.no_grad():
            z_q, _ = self.model.quantize(self.teacher.patch_features(images), images)
        times = self.hparams.decoder_phase_times
        return {"pix": self._pix_loss(images, z_q, tuple(times) if times is not None else None)}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, captions = self._images_and_captions(batch)
        if self.in_decoder_phase():
            parts = self.decoder_phase_losses(images)
        else:
            parts, _, _ = self.losses(images, captions)
        loss = self._total(parts)
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, batch_size=bs)
        return loss

    # -------------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        hp = self.hparams
        self._evaluator = TokenizerEvaluator(self.model, self.teacher, hp.val_recon_images if hp.w_pix > 0 else 0,
                                             hp.val_decode_steps, hp.val_cfg_scale, self._inception)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, captions = self._images_and_captions(batch)
        parts, z_q, indices = self.losses(images, captions)
        parts["total"] = self._total(parts)
        self._evaluator.update(images, batch.get("meta"), z_q, indices, parts)

    def on_validation_epoch_end(self) -> None:
        for name, value in self._evaluator.compute().items():
            self.log(f"val/{name}", value)
        self._log_grid(self._evaluator.grid)

    def _log_grid(self, images: torch.Tensor | None) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger
        from torchvision.utils import make_grid

        if images is None or not isinstance(self.logger, TensorBoardLogger):
            return
        grid = make_grid(images, nrow=max(1, len(images) // 2), pad_value=1.0)
        self.logger.experiment.add_image("val/reconstructions", grid, self.global_step)

    # -------------------------------------------------------------------------------------- optimiser

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decoder = list(self.model.decoder.parameters())
        ids = {id(p) for p in decoder}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        if self.colour_head is not None:
            rest += list(self.colour_head.parameters())
        total = trainer_total_steps(self)
        factor = None
        if hp.decoder_steps:  # the joint phase scheduled as a run of its own; the decoder's phase warms up again
            self.check_step_budget(total)
            factor = two_phase_factor(hp.warmup_steps, total - hp.decoder_steps, total, hp.decoder_phase_lr_scale)
        return adamw_warmup_cosine([(rest, 1.0), (decoder, hp.decoder_lr_scale)], hp.lr, hp.weight_decay, hp.betas,
                                   hp.warmup_steps, total, factor)

    def export_dir(self) -> str:
        return os.path.join(self.trainer.default_root_dir, "tokenizer")

    def on_fit_end(self) -> None:
        if not self.hparams.export:
            return
        from arm.parallel import full_state_dict

        state = full_state_dict(self.model)  # a collective under FSDP2: every rank takes part, rank 0 gets it all
        if self.trainer.is_global_zero:
            decode = {"steps": self.hparams.val_decode_steps, "cfg": self.hparams.val_cfg_scale}
            save_tokenizer(self.model, self.export_dir(), self.hparams.teacher_dir, self.hparams.lm_dir, state,
                           decode)

    def state_dict(self, *args, **kwargs):
        # Checkpoints hold the trainable tokenizer only; the frozen teacher and LM are loaded from their folders.
        return {k: v for k, v in super().state_dict(*args, **kwargs).items()
                if not k.startswith(("teacher.", "lm."))}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing = [k for k in super().state_dict() if k.startswith(("teacher.", "lm."))]
        merged = dict(state_dict)
        current = super().state_dict()
        for k in missing:
            merged.setdefault(k, current[k])
        return super().load_state_dict(merged, strict=strict, assign=assign)
