"""The language-aligned teacher: a small image/text dual encoder trained here on ShapeWorld (paper §1).

ARM distils a frozen language-aligned vision encoder (SigLIP2-SO400M at 512 px) into its tokenizer and uses its
text tower for L_sig. SigLIP2 cannot be fetched here, so the embedded default is this dual encoder, trained with
SigLIP's sigmoid loss (``arm.teacher.losses``) on ShapeWorld captions; ``arm.teacher.clip_teacher`` offers the same
interface over local OpenAI CLIP weights.

Deliberate simplifications against SigLIP(2):
- Image tower: patch-embedding conv, learned absolute positions, bidirectional RMSNorm/SwiGLU blocks from
  ``arm.nn`` (no LayerNorm/GELU ViT, no MAP attention-pooling head): pooling is the mean or the max over patches.
- Text tower: causal blocks with RoPE; the embedding is read at the last real token (the caller appends EOS).
- The learnable temperature and bias of the loss live in the model so that they are saved with it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arm.io import read_export, save_export
from arm.nn import Transformer, TransformerConfig


@dataclass
class TeacherConfig:
    """Sizes of the dual encoder.

    Attributes:
        image_size: expected square image side in pixels.
        patch_size: patch side; ``image_size`` must be a multiple of it.
        image_dim, image_layers, image_heads: width, depth and heads of the image tower.
        text_dim, text_layers, text_heads: width, depth and heads of the text tower.
        embed_dim: size of the shared (L2-normalised) embedding space.
        vocab_size: text token ids; ``None`` means "take it from the text tokenizer" (resolved by the module).
        max_text_len: text tokens kept (EOS included); longer captions are truncated.
        norm_eps: RMSNorm epsilon of both towers.
        stem: ``"patch"``: one (patch_size, stride patch_size) conv, the plain ViT patchify. ``"conv"``: a small
            convolutional stem (Xiao et al. 2021, "Early convolutions help transformers see better"): a
            (p/2, stride p/2) conv to ``image_dim // 3`` channels, ReLU, then a 3x3 stride-2 conv to ``image_dim``;
            the same N = (image_size / patch_size)^2 tokens, but each sees a 1.5p x 1.5p window, overlapping its
            neighbours. Costs ~0.03 s per 128 images on one CPU core.
            ``"cnn"``: log2(p) stride-2 3x3 convs with ReLU between them (widths image_dim/4, image_dim/2, ...,
            image_dim), a small CNN stem as in hybrid ViTs (Dosovitskiy et al. 2021 §3.1): every token sees a
            receptive field larger than its patch, built from local edge detectors, which is what telling a star
            from a cross at 14 px needs. ``patch_size`` must be a power of two.
            ``"convnorm"``: a normalised convolutional stem: a 3x3 conv at full resolution to ``stem_width``
            channels, then log2(p) stride-2 3x3 convs (widths 1.5 x stem_width, then image_dim ...), each but the
            last followed by GroupNorm(8) and GELU, plus the plain linear patchify added (``ConvNormStem``). Measured (experiments/LOG.md, 2026-12-04):
            with a supervised shape-presence head, 300 steps of batch 128 reach single-class shape accuracy 0.99
            with this stem (width 16) against 0.33 / 0.32 / 0.38 for ``patch`` / ``conv`` / ``cnn``: the
            normalisation and the full-resolution first layer, not the receptive field, are what the shape
            signal needs in a short schedule.
        stem_width: channels of the full-resolution layer of the ``convnorm`` stem.
        pool: how patch features become the image embedding: ``"mean"`` (default) or ``"max"`` over patches.
            Max pooling keeps a small object's evidence from being averaged away by background patches.
    """

    image_size: int = 64
    patch_size: int = 8
    image_dim: int = 128
    image_layers: int = 4
    image_heads: int = 4
    text_dim: int = 128
    text_layers: int = 4
    text_heads: int = 4
    embed_dim: int = 128
    vocab_size: int | None = None
    max_text_len: int = 64
    norm_eps: float = 1e-6
    stem: str = "patch"
    stem_width: int = 16
    pool: str = "mean"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class DualEncoder(nn.Module):
    """Image and text towers mapping into one normalised embedding space.

    Images are float (B, 3, H, W) in [0, 1]; they are normalised to [-1, 1] inside. Text is token ids (B, T)
    with a mask (B, T), True for real tokens, right-padded.
    """

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("TeacherConfig.vocab_size is None; set it (the TeacherModule takes it from the tokenizer)")
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        self.config = config
        c = config
        if c.stem == "patch":
            self.patch_embed = nn.Conv2d(3, c.image_dim, kernel_size=c.patch_size, stride=c.patch_size)
        elif c.stem == "conv":
            if c.patch_size % 2:
                raise ValueError(f"stem 'conv' needs an even patch_size, got {c.patch_size}")
            half, mid = c.patch_size // 2, max(8, c.image_dim // 3)
            self.patch_embed = nn.Sequential(nn.Conv2d(3, mid, kernel_size=half, stride=half), nn.ReLU(),
                                             nn.Conv2d(mid, c.image_dim, kernel_size=3, stride=2, padding=1))
        elif c.stem == "cnn":
            self.patch_embed = cnn_stem(c.patch_size, c.image_dim)
        elif c.stem == "convnorm":
            self.patch_embed = ConvNormStem(c.patch_size, c.stem_width, c.image_dim)
        else:
            raise ValueError(f"unknown stem {c.stem!r}; expected 'patch', 'conv', 'cnn' or 'convnorm'")
        check_pool(c.pool)
        self.image_pos = nn.Parameter(torch.randn(1, c.num_patches, c.image_dim) * 0.02)
        self.image_tower = Transformer(TransformerConfig(
            dim=c.image_dim, num_layers=c.image_layers, num_heads=c.image_heads, rope=False, causal=False,
            norm_eps=c.norm_eps))
        self.image_proj = nn.Linear(c.image_dim, c.embed_dim, bias=False)
        self.token_embed = nn.Embedding(c.vocab_size, c.text_dim)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        self.text_tower = Transformer(TransformerConfig(
            dim=c.text_dim, num_layers=c.text_layers, num_heads=c.text_heads, rope=True, causal=True,
            norm_eps=c.norm_eps, max_positions=c.max_text_len))
        self.text_proj = nn.Linear(c.text_dim, c.embed_dim, bias=False)
        # SigLIP's initialisation: t = exp(logit_scale) = 10, b = -10, so that the many negatives start near zero loss.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.tokenizer = None  # a TextTokenizer, set by load_teacher, for embed_texts

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings (B, E) of strings, through the tokenizer saved with the teacher."""
        if self.tokenizer is None:
            raise ValueError("this teacher has no text tokenizer; load it with load_teacher from an exported folder")
        ids, mask = tokenize_texts(self.tokenizer, list(texts), self.config.max_text_len, self.logit_scale.device)
        return self.text_embedding(ids, mask)

    def _check_images(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != size or images.shape[3] != size:
            raise ValueError(f"teacher expects images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}")

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch features (B, N, D_image) of images (B, 3, H, W) in [0, 1], in row-major patch order."""
        self._check_images(images)
        x = self.patch_embed(images * 2.0 - 1.0)  # (B, D, H/p, W/p)
        x = x.flatten(2).transpose(1, 2) + self.image_pos  # (B, N, D)
        return self.image_tower(x)  # (B, N, D)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised image embedding (B, E)."""
        return self.pool(self.patch_features(images))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Patch features (B, N, D_image) -> pooled, L2-normalised image embedding (B, E)."""
        return F.normalize(self.image_proj(pool_patches(features, self.config.pool)), dim=-1)

    def text_embedding(self, token_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised text embedding (B, E) read at the last real token of right-padded ids (B, T)."""
        if mask is None:
            mask = torch.ones_like(token_ids, dtype=torch.bool)
        x = self.text_tower(self.token_embed(token_ids), mask=mask)  # (B, T, D)
        last = mask.long().sum(dim=1).clamp(min=1) - 1  # (B,) index of the last real token
        pooled = x[torch.arange(x.shape[0], device=x.device), last]  # (B, D)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_embedding(images), self.text_embedding(token_ids, mask)


def cnn_stem(patch_size: int, dim: int) -> nn.Sequential:
    """log2(patch_size) stride-2 3x3 convs, widths doubling up to ``dim``, ReLU between them (not after the last)."""
    depth = patch_size.bit_length() - 1
    if patch_size < 2 or 2**depth != patch_size:
        raise ValueError(f"stem 'cnn' needs a power-of-two patch_size, got {patch_size}")
    widths = [max(8, dim // 2 ** (depth - 1 - i)) for i in range(depth)]
    widths[-1] = dim
    layers: list[nn.Module] = []
    in_ch = 3
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(in_ch, width, kernel_size=3, stride=2, padding=1))
        if i < depth - 1:
            layers.append(nn.ReLU())
        in_ch = width
    return nn.Sequential(*layers)


POOLS = ("mean", "max")
"""How patch features (B, N, D) become one vector per image (``TeacherConfig.pool``, ``TokenizerConfig.pool``)."""


def check_pool(pool: str) -> None:
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {list(POOLS)}")


def pool_patches(features: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, N, D) -> (B, D): the mean or the max over the N patches."""
    return features.amax(dim=1) if pool == "max" else features.mean(dim=1)


class ConvNormStem(nn.Module):
    """A 3x3 conv at full resolution to ``width`` channels, then log2(patch_size) stride-2 3x3 convs (the first to
    1.5 x width, the rest to ``dim``), GroupNorm(8 groups) + GELU after every conv but the last, PLUS the plain
    linear patch embedding (a (p, stride p) conv) added to its output (TeacherConfig).

    Why the linear path: GroupNorm removes each channel group's mean over the image, so a uniform background's
    colour, and absolute colour levels in general, are normalised away; a first version without the path
    reconstructed scenes on the wrong background (experiments/LOG.md, 2026-12-04). The linear patchify keeps
    every pixel's value linearly readable, as the plain ViT stem does."""

    def __init__(self, patch_size: int, width: int, dim: int) -> None:
        super().__init__()
        depth = patch_size.bit_length() - 1
        if patch_size < 2 or 2**depth != patch_size:
            raise ValueError(f"stem 'convnorm' needs a power-of-two patch_size, got {patch_size}")
        if width % 8 or (3 * width // 2) % 8 or dim % 8:
            raise ValueError(f"stem 'convnorm' needs stem_width, 1.5 x stem_width and image_dim divisible by 8 "
                             f"(GroupNorm with 8 groups); got stem_width {width}, image_dim {dim}")
        widths = [width] + [3 * width // 2 if i == 1 else dim for i in range(1, depth)] + [dim]
        layers: list[nn.Module] = []
        for i in range(depth + 1):
            layers.append(nn.Conv2d(3 if i == 0 else widths[i - 1], widths[i], kernel_size=3,
                                    stride=1 if i == 0 else 2, padding=1))
            if i < depth:
                layers += [nn.GroupNorm(8, widths[i]), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.convs(images) + self.linear(images)


def tokenize_texts(tokenizer, texts: list[str], max_len: int, device: torch.device | str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and mask (B, T) of texts, each followed by EOS and cut to ``max_len`` tokens.

    Truncation keeps EOS as the last token so the pooled position always has the same meaning.
    """
    rows = [ids[: max_len - 1] + [tokenizer.eos_id] for ids in tokenizer.encode_batch(texts)]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return ids.to(device), mask.to(device)


# ------------------------------------------------------------------------------------------ save / load

TOKENIZER_FILE = "tokenizer.json"
TRAIN_COMMAND = "arm teacher fit --config experiments/teacher/shapeworld.yaml"


def save_teacher(model: DualEncoder, config: TeacherConfig, directory: str, tokenizer_path: str | None = None) -> str:
    """Write ``model.safetensors`` and ``config.json`` (and a copy of the text tokenizer) into ``directory``."""
    copies = {TOKENIZER_FILE: tokenizer_path} if tokenizer_path is not None else None
    return save_export(directory, model, dataclasses.asdict(config), copies)


def load_teacher(directory: str) -> DualEncoder:
    """A ``DualEncoder`` (eval mode) from a folder written by ``save_teacher``; ``.config`` holds its config and,
    when the folder has ``tokenizer.json``, ``.tokenizer`` the text tokenizer (else ``None``)."""
    state, meta = read_export(directory, "teacher", TRAIN_COMMAND)
    config = TeacherConfig(**meta)
    model = DualEncoder(config)
    model.load_state_dict(state)
    tok = os.path.join(directory, TOKENIZER_FILE)
    if os.path.isfile(tok):
        from arm.data.text_tokenizer import TextTokenizer

        model.tokenizer = TextTokenizer.from_file(tok)
    return model.eval()
