"""OpenAI CLIP (Radford et al. 2021) from a local weights file, behind the teacher interface (paper §1).

ARM's teacher is SigLIP2; where real weights are at hand but the network is not, a local CLIP ViT checkpoint is
the nearest language-aligned encoder the installed ``clip`` package can build. ``ClipTeacher`` exposes what the
tokenizer stage needs: ``patch_features`` (B, N, width), ``image_embedding`` (B, E) and ``text_embedding`` of
strings (B, E), both L2-normalised.

Loading. The file is either a TorchScript archive (what ``clip.load`` downloads; its ``state_dict()`` is read) or
a plain state dict saved with ``torch.save`` (read with ``weights_only=True``). The model is then rebuilt here
rather than with ``clip.model.build_model``, for two reasons: ``build_model`` assumes 64-wide attention heads
(``transformer_heads = width // 64``), which fails for widths under 64 and mis-sizes any other head width, so
``text_heads`` can be passed; and it casts weights to fp16, which CPU inference and exact comparisons do not
want, so the weights stay float32. Only ViT checkpoints are supported (ResNet CLIP has no patch tokens).

Images in [0, 1] are resized (bicubic, antialiased) to the checkpoint's resolution when they differ, then
normalised with CLIP's mean and std, so images of any size go in (``resizes_input``: the tokenizer's pixel decoder
can then work at the data's resolution, e.g. 512 px data through a 224 or 336 px CLIP). ``patch_features`` are the
ViT's final tokens after ``ln_post``, without the class token and before the projection. ``config`` names the sizes
``TokenizerModule`` reads from any teacher (``ClipTeacherConfig``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_clip_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict of a TorchScript CLIP archive or of a ``torch.save``-d state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no CLIP weights at {path!r}; copy a local CLIP ViT checkpoint (e.g. ViT-B-32.pt) there")
    try:
        return {k: v for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
    except RuntimeError:  # not TorchScript: a plain state dict
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path!r} holds a {type(state).__name__}, not a CLIP state dict") from None
        return state


def build_clip(state: dict[str, torch.Tensor], text_heads: int | None = None) -> nn.Module:
    """A float32 ``clip.model.CLIP`` (eval) sized from its state dict; ``text_heads`` defaults to width // 64."""
    from clip.model import CLIP

    if "visual.proj" not in state:
        raise ValueError("only CLIP ViT checkpoints are supported (this one has no visual.proj: a ResNet CLIP?)")
    vision_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    width = state["ln_final.weight"].shape[0]
    text_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
    text_heads = text_heads or width // 64
    if text_heads < 1 or width % text_heads:
        raise ValueError(f"text width {width} cannot be split into {text_heads} heads; pass text_heads")
    model = CLIP(embed_dim=state["text_projection"].shape[1], image_resolution=patch * grid,
                 vision_layers=vision_layers, vision_width=vision_width, vision_patch_size=patch,
                 context_length=state["positional_embedding"].shape[0],
                 vocab_size=state["token_embedding.weight"].shape[0], transformer_width=width,
                 transformer_heads=text_heads, transformer_layers=text_layers)
    # TorchScript archives carry three non-parameter entries that the module does not have.
    skip = {"input_resolution", "context_length", "vocab_size"}
    model.load_state_dict({k: v.float() for k, v in state.items() if k not in skip})
    return model.float().eval()


@dataclass(frozen=True)
class ClipTeacherConfig:
    """The sizes of a CLIP teacher, named as ``arm.teacher.model.TeacherConfig`` names them.

    Attributes:
        image_size: the ViT's input side (images of other sizes are resized to it).
        patch_size: the ViT's patch side; ``(image_size / patch_size)^2`` patch features per image.
        image_dim: width of the patch features (the vision transformer's width).
        embed_dim: width of the image and text embeddings (the joint space).
    """

    image_size: int
    patch_size: int
    image_dim: int
    embed_dim: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ClipTeacher(nn.Module):
    """A CLIP ViT with the teacher interface; see the module docstring."""

    resizes_input = True
    """Images of any size are accepted and resized to ``config.image_size`` (``DualEncoder`` requires its own)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.clip = clip_model
        visual = clip_model.visual
        self.image_size = visual.input_resolution
        self.config = ClipTeacherConfig(image_size=visual.input_resolution, patch_size=visual.conv1.kernel_size[0],
                                        image_dim=visual.conv1.out_channels, embed_dim=visual.proj.shape[1])
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str, text_heads: int | None = None) -> ClipTeacher:
        return cls(build_clip(load_clip_state_dict(path), text_heads))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> CLIP-normalised (B, 3, S, S)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP teacher expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   antialias=True, align_corners=False).clamp(0, 1)
        return (images - self.mean) / self.std

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All ViT tokens after ``ln_post``, class token first: (B, 1 + N, width)."""
        v = self.clip.visual
        x = v.conv1(self.preprocess(images)).flatten(2).transpose(1, 2)  # (B, N, W)
        cls_tok = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
        x = v.ln_pre(torch.cat([cls_tok, x], dim=1) + v.positional_embedding.to(x.dtype))
        x = v.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # clip's blocks are sequence-first
        return v.ln_post(x)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch features (B, N, width), class token dropped."""
        return self._tokens(images)[:, 1:]

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embedding (B, E): the projected class token, as ``CLIP.encode_image``."""
        return F.normalize(self._tokens(images)[:, 0] @ self.clip.visual.proj, dim=-1)

    def text_embedding(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embedding (B, E) of strings (tokenized by ``clip.tokenize``, truncated)."""
        import clip

        ids = clip.tokenize(list(texts), context_length=self.clip.context_length, truncate=True)
        return F.normalize(self.clip.encode_text(ids.to(self.mean.device)), dim=-1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Same as ``text_embedding``: the string interface shared with ``DualEncoder.embed_texts``."""
        return self.text_embedding(texts)
