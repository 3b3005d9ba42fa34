"""ARM's semantic discrete tokenizer as a plain module (paper §1), and its export format.

``SemanticTokenizer`` holds the trainable parts: the projection to FSQ codes and back (z_q), the pixel
rectified-flow decoder (the detokenizer), the pooled-z_q head for the sigmoid loss, and the adapter that maps z_q
into the caption LM's embedding space. The frozen teacher and caption LM are not part of it: the export's
``config.json`` points to them by path, so one folder "holds or points to" everything needed to encode and decode.

``TokenizerBundle`` = teacher + tokenizer, the object other stages use: ``encode(images) -> indices (B, N)`` and
``decode(indices) -> images``. The teacher is an ``arm teacher fit`` export folder or a local OpenAI CLIP file
(``load_tokenizer_teacher``); the pixel decoder works at the data's resolution, which equals the teacher's input
size for the former and may differ from it for CLIP (which resizes its input).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from arm.io import read_export, save_export
from arm.nn import SwiGLU, TransformerConfig
from arm.teacher.model import check_pool, pool_patches
from arm.tokenizer.pixel_decoder import PixelDiT, PixelDiTConfig
from arm.tokenizer.projection import CodeProjection

CREATE_COMMAND = "arm tokenizer fit --config experiments/tokenizer/shapeworld.yaml"
TEACHER_COMMAND = "arm teacher fit --config experiments/teacher/shapeworld.yaml"


@dataclass
class TokenizerConfig:
    """Sizes of the trainable tokenizer parts.

    Attributes:
        levels: FSQ levels per code dimension (codebook size = their product). Paper: 16 x [2].
        projection: the transformer on each side of FSQ (``causal`` is forced off).
        decoder: the pixel DiT.
        feature_dim: the teacher's patch-feature width (set from the teacher by the module).
        text_embed_dim: the teacher's text-embedding width, target of the sigmoid head (set from the teacher).
        lm_dim: the caption LM's width, or 0 without an LM (set from the LM).
        pool: how z_q is pooled over patches for the sigmoid head and the linear probes, ``"mean"`` or ``"max"``
            (set from the teacher's own ``pool``, so that pooled z_q is read the way the teacher's features were).
        sig_pool: ``"teacher"`` pools z_q as ``pool`` says before the sigmoid head's linear map; ``"map"`` pools it
            with a learned attention-pooling head instead (SigLIP's MAP head, Zhai et al. 2023: one learned query
            attends over the N tokens, then a residual MLP), which then also gives the probes their pooled z_q.
        readout: how zero-shot and the linear probes read z_q. ``"head"``: through the sigmoid head (and the MAP
            pool, if any) that L_sig trains. ``"teacher"``: as the teacher reads its own patch features (its pooling
            and image projection for zero-shot, its pooling for the probes); the module sets it when ``w_sig == 0``,
            because then that head is never trained and reading through it measures a random projection. This is
            how a tokenizer distilled by L_feat alone can still be scored zero-shot (the paper's Table 7 row
            "L_feat only", 58.1).
        pixel_input: the projection's encoder also reads each token's own pixel patch (the pixel decoder's
            patches, so its grid must be the teacher's), through a zero-initialised linear map added to its
            features' (``CodeProjection``). Our addition, not in ARM, whose codes see only the frozen encoder: a
            contrastive encoder drops the edges a reconstruction needs (a linear read-out of our teacher's patch
            features recovers R^2 0.77 of its pixels against 0.91 at random init; its reconstructions come out with
            rounded corners; experiments/LOG.md, session 3 and eighth session).
        colour_input: the projection's encoder also reads each token's mean colour (3 values per patch of the
            pixel decoder's grid), through the same zero-initialised map. Our addition, not in ARM: the background
            colour is a weak direction of our teacher's patch features (0.7% of their variance over plain patches),
            and codes trained on them alone carry none of it (experiments/LOG.md, thirty-first and thirty-second
            sessions). Exclusive with ``pixel_input``, which already holds the colours. Measured alone (LOG,
            thirty-second session): the map is used, but with nothing asking for the background the codes still
            carry none (semantic reconstruction 0.645 against 0.685); off in every YAML.
    """

    levels: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 4, 4])
    projection: TransformerConfig = field(default_factory=lambda: TransformerConfig(dim=128, num_layers=2, num_heads=4))
    decoder: PixelDiTConfig = field(default_factory=PixelDiTConfig)
    feature_dim: int = 0
    text_embed_dim: int = 0
    lm_dim: int = 0
    pool: str = "mean"
    sig_pool: str = "teacher"
    readout: str = "head"
    pixel_input: bool = False
    colour_input: bool = False

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> TokenizerConfig:
        return TokenizerConfig(levels=list(d["levels"]), projection=TransformerConfig(**d["projection"]),
                               decoder=PixelDiTConfig(**d["decoder"]), feature_dim=d["feature_dim"],
                               text_embed_dim=d["text_embed_dim"], lm_dim=d["lm_dim"], pool=d.get("pool", "mean"),
                               sig_pool=d.get("sig_pool", "teacher"), readout=d.get("readout", "head"),
                               pixel_input=d.get("pixel_input", False), colour_input=d.get("colour_input", False))


class AttentionPool(nn.Module):
    """Multihead attention pooling (SigLIP's MAP head): (B, N, D) -> (B, D).

    One learned query attends over the tokens (pre-normed keys/values), then a residual SwiGLU MLP. Why a learned
    pooling for L_sig: a fixed mean or max pool makes every patch's z_q carry the caption's semantics in the same
    few directions, which the pixel decoder then has to read through; a learned head lets the pooling adapt to the
    codes instead (experiments/LOG.md, 2026-12-04)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentionPool: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.norm = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = SwiGLU(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.num_heads
        k, v = self.kv(self.norm(x)).chunk(2, dim=-1)  # (B, N, D) each
        q = self.q(self.query).expand(B, 1, D)  # (B, 1, D)
        split = lambda t: t.reshape(B, t.shape[1], h, D // h).transpose(1, 2)  # noqa: E731  (B, h, L, D/h)
        pooled = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (B, h, 1, D/h)
        pooled = self.out(pooled.transpose(1, 2).reshape(B, D))  # (B, D)
        return pooled + self.mlp(self.mlp_norm(pooled))


class SemanticTokenizer(nn.Module):
    """Projection + FSQ, pixel decoder, sigmoid head and caption adapter; all read z_q (B, N, feature_dim)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if config.feature_dim <= 0 or config.text_embed_dim <= 0:
            raise ValueError("TokenizerConfig.feature_dim and text_embed_dim must be set (from the teacher)")
        check_pool(config.pool)
        if config.sig_pool not in ("teacher", "map"):
            raise ValueError(f"sig_pool must be 'teacher' (pool z_q as the teacher does) or 'map' (a learned "
                             f"attention-pooling head), got {config.sig_pool!r}")
        if config.readout not in ("head", "teacher"):
            raise ValueError(f"readout must be 'head' (the sigmoid head L_sig trains) or 'teacher' (read z_q as the "
                             f"teacher reads its features), got {config.readout!r}")
        self.config = config
        if config.pixel_input and config.colour_input:
            raise ValueError("pixel_input already gives the projection each patch's pixels, colours included: set "
                             "colour_input or pixel_input, not both")
        dec = config.decoder
        pixel_dim = dec.channels * dec.patch_size**2 if config.pixel_input else dec.channels if config.colour_input else 0
        self.projection = CodeProjection(config.feature_dim, len(config.levels), config.levels, config.projection,
                                         pixel_dim=pixel_dim)
        self.decoder = PixelDiT(config.feature_dim, config.decoder)
        self.sig_pool = AttentionPool(config.feature_dim, 4) if config.sig_pool == "map" else None
        self.sig_head = nn.Linear(config.feature_dim, config.text_embed_dim, bias=False)
        # SigLIP's initialisation (t = 10, b = -10), as in the teacher.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.cap_adapter = nn.Linear(config.feature_dim, config.lm_dim) if config.lm_dim > 0 else None

    @property
    def codebook_size(self) -> int:
        return self.projection.codebook_size

    def pixel_patches(self, features: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor | None:
        """The encoder's pixel input: under ``config.pixel_input`` ``images`` (B, 3, H, W) in [0, 1] as the pixel
        decoder's patches (B, N, 3 p p) in [-1, 1], under ``config.colour_input`` those patches' mean colours
        (B, N, 3); ``None`` without either."""
        if not (self.config.pixel_input or self.config.colour_input):
            return None
        which = "pixel_input" if self.config.pixel_input else "colour_input"
        if images is None:
            raise ValueError(f"this tokenizer's codes read the images' pixels beside the teacher's features "
                             f"({which}): pass the images to quantize(features, images)")
        patches = self.patch_colours(images) if self.config.colour_input else self.decoder.patchify(images * 2 - 1)
        if patches.shape[1] != features.shape[1]:
            raise ValueError(f"{which} needs the pixel decoder's patch grid to match the teacher's: "
                             f"{patches.shape[1]} pixel patches against {features.shape[1]} feature tokens; set "
                             f"model.decoder.patch_size so that (image_size / patch_size)^2 = {features.shape[1]}")
        return patches

    def patch_colours(self, images: torch.Tensor, with_spread: bool = False
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``images`` (B, C, H, W) in [0, 1] -> each pixel-decoder patch's mean colour (B, N, C) in [-1, 1], raster
        order (``colour_input``'s encoder input and L_colour's target); ``with_spread`` also returns each patch's
        largest absolute deviation of a pixel channel from that mean (B, N), 0 for a patch of one flat colour."""
        patches = self.decoder.patchify(images.float() * 2 - 1)  # (B, N, C p p), channel-major
        patches = patches.reshape(*patches.shape[:2], self.config.decoder.channels, -1)
        means = patches.mean(-1)
        if not with_spread:
            return means
        return means, (patches - means[..., None]).abs().amax(dim=(-2, -1))

    def quantize(self, features: torch.Tensor, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher features (B, N, F) [and, under ``pixel_input``, their images] -> (z_q (B, N, F), indices (B, N))."""
        z_q, _, indices = self.projection(features, self.pixel_patches(features, images))
        return z_q, indices

    def quantize_scaled(self, features: torch.Tensor, grad_scale: float, images: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher features (B, N, F) [and images, as ``quantize``] -> (z_q, z_q_scaled, indices): both z_q are the
        same values; gradients reaching the codes through ``z_q_scaled`` are multiplied by ``grad_scale`` before
        the encoder sees them (the symmetric projection after FSQ gets them in full). ``grad_scale == 1`` is plain
        ``quantize``."""
        _, codes, indices = self.projection.encode(features, self.pixel_patches(features, images))
        z_q = self.projection.decode(codes)
        if grad_scale == 1.0:
            return z_q, z_q, indices
        scaled = codes.detach() if grad_scale == 0.0 else codes * grad_scale + codes.detach() * (1.0 - grad_scale)
        return z_q, self.projection.decode(scaled), indices

    def pool(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q (B, N, F) -> (B, F): the learned attention pooling when ``config.sig_pool == "map"``, else the mean
        or max over patches as ``config.pool`` says."""
        if self.sig_pool is not None:
            return self.sig_pool(z_q)
        return pool_patches(z_q, self.config.pool)

    def probe_features(self, z_q: torch.Tensor) -> torch.Tensor:
        """z_q (B, N, F) -> (B, F) for the linear probes: ``pool`` under ``readout == "head"``, else the teacher's
        fixed pooling (a MAP head that no loss trained would only scramble the features)."""
        return self.pool(z_q) if self.config.readout == "head" else pool_patches(z_q, self.config.pool)

    def pooled_embedding(self, z_q: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, E) of pooled z_q, comparable with the teacher's text embeddings."""
        return F.normalize(self.sig_head(self.pool(z_q)), dim=-1)

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor, steps: int = 10, cfg_scale: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Code indices (B, N) -> images (B, 3, H, W) in [0, 1] through the pixel decoder."""
        z_q = self.projection.decode_indices(indices)
        return self.decoder.sample(z_q, steps=steps, cfg_scale=cfg_scale, generator=generator)


DEFAULT_DECODE = {"steps": 10, "cfg": 1.0}
"""Euler steps and decoder CFG of an export that records none (written before exports recorded them)."""


def check_decode(steps: int, cfg_scale: float) -> tuple[int, float]:
    """``(steps, cfg_scale)`` as ``(int, float)``; one-line ``ValueError`` for steps < 1 or a negative scale."""
    steps, cfg_scale = int(steps), float(cfg_scale)
    if steps < 1 or cfg_scale < 0:
        raise ValueError(f"decoding needs steps >= 1 and a CFG scale >= 0, got {steps} and {cfg_scale}: pass "
                         f"--steps / --cfg (or val_decode_steps / val_cfg_scale) in range")
    return steps, cfg_scale


def save_tokenizer(model: SemanticTokenizer, directory: str, teacher_dir: str, lm_dir: str | None,
                   state: dict[str, torch.Tensor] | None = None, decode: dict | None = None) -> str:
    """Write ``model.safetensors`` and ``config.json`` (sizes + the teacher/LM paths) into ``directory``.

    ``state``: the weights to write instead of ``model.state_dict()``; an FSDP2-sharded model passes its gathered
    ``arm.parallel.full_state_dict`` here, because its own state dict holds shards.
    ``decode``: the export's default decoder sampling, ``{"steps": int, "cfg": float}`` (``TokenizerModule`` writes
    its ``val_decode_steps`` and ``val_cfg_scale``); `arm tokenizer eval|decode` use it unless told otherwise.
    """
    decode = {**DEFAULT_DECODE, **(decode or {})}
    steps, cfg_scale = check_decode(decode["steps"], decode["cfg"])
    meta = {"tokenizer_config": model.config.to_json(), "teacher_dir": os.path.abspath(teacher_dir),
            "lm_dir": os.path.abspath(lm_dir) if lm_dir else None, "decode": {"steps": steps, "cfg": cfg_scale}}
    weights = model if state is None else SimpleNamespace(state_dict=lambda: state)
    return save_export(directory, weights, meta)


def load_tokenizer(directory: str) -> tuple[SemanticTokenizer, dict]:
    """The exported tokenizer (safetensors only) in eval mode, and its config.json."""
    state, meta = read_export(directory, "tokenizer", CREATE_COMMAND)
    model = SemanticTokenizer(TokenizerConfig.from_json(meta["tokenizer_config"]))
    model.load_state_dict(state)
    return model.eval(), meta


def load_tokenizer_teacher(path: str) -> nn.Module:
    """The frozen teacher named by ``path`` (eval mode): an ``arm teacher fit`` export folder (``DualEncoder``) or
    a local OpenAI CLIP ViT weights file (``ClipTeacher``: a TorchScript archive or a ``torch.save``-d state dict).
    Either has ``patch_features``, ``embed_texts`` and a ``config`` with ``image_size``, ``image_dim`` (patch-feature
    width) and ``embed_dim`` (text-embedding width)."""
    if os.path.isfile(path):
        from arm.teacher.clip_teacher import ClipTeacher

        return ClipTeacher.from_file(path).eval()
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no teacher at {path!r}: point model.teacher_dir to an exported teacher folder "
                                f"(`{TEACHER_COMMAND}` writes <root>/teacher) or to a local OpenAI CLIP ViT weights file")
    from arm.teacher.model import load_teacher

    return load_teacher(path)


def check_teacher_fits(teacher: nn.Module, config: TokenizerConfig, teacher_path: str, where: str) -> None:
    """One-line ``ValueError`` when the teacher's feature or text-embedding width differs from the tokenizer's."""
    tc = teacher.config
    if (tc.image_dim, tc.embed_dim) != (config.feature_dim, config.text_embed_dim):
        raise ValueError(f"{where} was trained on a teacher with {config.feature_dim}-wide patch features and "
                         f"{config.text_embed_dim}-wide text embeddings, but the teacher at {teacher_path!r} has "
                         f"{tc.image_dim} and {tc.embed_dim}: use the teacher it was trained with (teacher_dir in its "
                         f"config.json) or retrain the tokenizer on this one (`{CREATE_COMMAND}`)")


class TokenizerBundle(nn.Module):
    """Frozen teacher + trained tokenizer: images <-> code indices. Load with ``TokenizerBundle.load(dir)``."""

    def __init__(self, teacher: nn.Module, tokenizer: SemanticTokenizer, decode: dict | None = None) -> None:
        super().__init__()
        self.teacher, self.tokenizer = teacher.eval(), tokenizer.eval()
        self.decode_defaults = {**DEFAULT_DECODE, **(decode or {})}  # the export's recorded decoder sampling
        self.requires_grad_(False)

    def decode_settings(self, steps: int | None = None, cfg_scale: float | None = None) -> tuple[int, float]:
        """Euler steps and decoder CFG: the ones given, else the export's recorded defaults (``DEFAULT_DECODE``
        for an export that records none); one-line ``ValueError`` for steps < 1 or a negative scale."""
        return check_decode(self.decode_defaults["steps"] if steps is None else steps,
                            self.decode_defaults["cfg"] if cfg_scale is None else cfg_scale)

    @classmethod
    def load(cls, directory: str, teacher_path: str | None = None) -> TokenizerBundle:
        """The export in ``directory`` with the teacher its config.json names (or ``teacher_path``)."""
        tokenizer, meta = load_tokenizer(directory)
        teacher_path = teacher_path or meta["teacher_dir"]
        teacher = load_tokenizer_teacher(teacher_path)
        check_teacher_fits(teacher, tokenizer.config, teacher_path, f"the tokenizer export {directory!r}")
        return cls(teacher, tokenizer, meta.get("decode"))

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.decoder.image_size

    def check_images(self, images: torch.Tensor) -> None:
        """One-line ``ValueError`` unless ``images`` is (B, 3, S, S) with S the size the tokenizer decodes to."""
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"this tokenizer encodes and decodes {size}x{size} RGB images, got a batch of shape "
                             f"{tuple(images.shape)}: resize the images to {size}x{size} (or train a tokenizer "
                             f"with model.decoder.image_size set to their size)")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> code indices (B, N)."""
        self.check_images(images)
        return self.tokenizer.quantize(self.teacher.patch_features(images), images)[1]

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, steps: int | None = None, cfg_scale: float | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Code indices (B, N) in [0, codebook_size) -> images (B, 3, H, W) in [0, 1]; ``steps`` / ``cfg_scale``
        default to the export's (``decode_settings``)."""
        steps, cfg_scale = self.decode_settings(steps, cfg_scale)
        size, tokens = self.tokenizer.codebook_size, self.teacher.config.num_patches
        if indices.ndim != 2 or indices.shape[1] != tokens:
            raise ValueError(f"this tokenizer decodes {tokens} codes per image, got codes of shape "
                             f"{tuple(indices.shape)}: pass (B, {tokens}) codes from its `arm tokenizer encode`")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
            raise ValueError(f"codes must lie in [0, {size}) for this tokenizer, got [{int(indices.min())}, "
                             f"{int(indices.max())}]: decode codes written by this tokenizer's `arm tokenizer encode`")
        return self.tokenizer.decode_indices(indices, steps, cfg_scale, generator)
