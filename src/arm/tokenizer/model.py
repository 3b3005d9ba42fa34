"""ARM's semantic discrete tokenizer as a plain module (paper §1), and its export format.

``SemanticTokenizer`` holds the trainable parts: the projection to FSQ codes and back (z_q), the pixel
rectified-flow decoder (the detokenizer), the pooled-z_q head for the sigmoid loss, and the adapter that maps z_q
into the caption LM's embedding space. The frozen teacher and caption LM are not part of it: the export's
``config.json`` points to them by path, so one folder "holds or points to" everything needed to encode and decode.

``TokenizerBundle`` = teacher + tokenizer, the object other stages use: ``encode(images) -> indices (B, N)`` and
``decode(indices) -> images``.
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
from arm.nn import TransformerConfig
from arm.tokenizer.pixel_decoder import PixelDiT, PixelDiTConfig
from arm.tokenizer.projection import CodeProjection

CREATE_COMMAND = "arm tokenizer fit --config experiments/tokenizer/shapeworld.yaml"


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
    """

    levels: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 4, 4])
    projection: TransformerConfig = field(default_factory=lambda: TransformerConfig(dim=128, num_layers=2, num_heads=4))
    decoder: PixelDiTConfig = field(default_factory=PixelDiTConfig)
    feature_dim: int = 0
    text_embed_dim: int = 0
    lm_dim: int = 0

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict) -> TokenizerConfig:
        return TokenizerConfig(levels=list(d["levels"]), projection=TransformerConfig(**d["projection"]),
                               decoder=PixelDiTConfig(**d["decoder"]), feature_dim=d["feature_dim"],
                               text_embed_dim=d["text_embed_dim"], lm_dim=d["lm_dim"])


class SemanticTokenizer(nn.Module):
    """Projection + FSQ, pixel decoder, sigmoid head and caption adapter; all read z_q (B, N, feature_dim)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if config.feature_dim <= 0 or config.text_embed_dim <= 0:
            raise ValueError("TokenizerConfig.feature_dim and text_embed_dim must be set (from the teacher)")
        self.config = config
        self.projection = CodeProjection(config.feature_dim, len(config.levels), config.levels, config.projection)
        self.decoder = PixelDiT(config.feature_dim, config.decoder)
        self.sig_head = nn.Linear(config.feature_dim, config.text_embed_dim, bias=False)
        # SigLIP's initialisation (t = 10, b = -10), as in the teacher.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.cap_adapter = nn.Linear(config.feature_dim, config.lm_dim) if config.lm_dim > 0 else None

    @property
    def codebook_size(self) -> int:
        return self.projection.codebook_size

    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher features (B, N, F) -> (z_q (B, N, F), indices (B, N))."""
        z_q, _, indices = self.projection(features)
        return z_q, indices

    def pooled_embedding(self, z_q: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (B, E) of mean-pooled z_q, comparable with the teacher's text embeddings."""
        return F.normalize(self.sig_head(z_q.mean(dim=1)), dim=-1)

    @torch.no_grad()
    def decode_indices(self, indices: torch.Tensor, steps: int = 10, cfg_scale: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Code indices (B, N) -> images (B, 3, H, W) in [0, 1] through the pixel decoder."""
        z_q = self.projection.decode_indices(indices)
        return self.decoder.sample(z_q, steps=steps, cfg_scale=cfg_scale, generator=generator)


def save_tokenizer(model: SemanticTokenizer, directory: str, teacher_dir: str, lm_dir: str | None,
                   state: dict[str, torch.Tensor] | None = None) -> str:
    """Write ``model.safetensors`` and ``config.json`` (sizes + the teacher/LM paths) into ``directory``.

    ``state``: the weights to write instead of ``model.state_dict()``; an FSDP2-sharded model passes its gathered
    ``arm.parallel.full_state_dict`` here, because its own state dict holds shards.
    """
    meta = {"tokenizer_config": model.config.to_json(), "teacher_dir": os.path.abspath(teacher_dir),
            "lm_dir": os.path.abspath(lm_dir) if lm_dir else None}
    weights = model if state is None else SimpleNamespace(state_dict=lambda: state)
    return save_export(directory, weights, meta)


def load_tokenizer(directory: str) -> tuple[SemanticTokenizer, dict]:
    """The exported tokenizer (safetensors only) in eval mode, and its config.json."""
    state, meta = read_export(directory, "tokenizer", CREATE_COMMAND)
    model = SemanticTokenizer(TokenizerConfig.from_json(meta["tokenizer_config"]))
    model.load_state_dict(state)
    return model.eval(), meta


class TokenizerBundle(nn.Module):
    """Frozen teacher + trained tokenizer: images <-> code indices. Load with ``TokenizerBundle.load(dir)``."""

    def __init__(self, teacher: nn.Module, tokenizer: SemanticTokenizer) -> None:
        super().__init__()
        self.teacher, self.tokenizer = teacher.eval(), tokenizer.eval()
        self.requires_grad_(False)

    @classmethod
    def load(cls, directory: str) -> TokenizerBundle:
        from arm.teacher.model import load_teacher

        tokenizer, meta = load_tokenizer(directory)
        return cls(load_teacher(meta["teacher_dir"]), tokenizer)

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.decoder.image_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> code indices (B, N)."""
        return self.tokenizer.quantize(self.teacher.patch_features(images))[1]

    @torch.no_grad()
    def decode(self, indices: torch.Tensor, steps: int = 10, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Code indices (B, N) -> images (B, 3, H, W) in [0, 1]."""
        return self.tokenizer.decode_indices(indices, steps, cfg_scale, generator)
