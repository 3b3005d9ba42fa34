"""The unified autoregressive decoder: a Qwen2-architecture LM whose vocabulary holds text, specials and image codes.

ARM §2: a decoder-only LLM (initialised from Qwen2.5) with its vocabulary extended by the tokenizer's image codes
and a *separate* linear head that predicts image tokens. The body is the Qwen2 decoder (Qwen2 technical report,
Yang et al. 2024): pre-norm RMSNorm blocks, grouped-query attention with bias on q/k/v, SwiGLU MLP, rotary
positions in the rotate-half layout, a final RMSNorm. It is built from the shared blocks of ``arm.nn``.

Id layout of the single embedding table (``vocab_size`` rows)::

    [0, text_vocab_size)                      text ids (the LLM's own vocabulary, padded rows included)
    [text_vocab_size, image_token_offset)     special ids (<boi>, <eoi>, image-shape tokens ... defined by callers)
    [image_token_offset, vocab_size)          image code c  <->  id image_token_offset + c

Heads: ``text_logits`` scores text + special ids (tied to the first rows of the embedding table, or its own
matrix); ``image_logits`` scores the ``num_image_codes`` image codes with its own bias-free linear.

Deliberate simplifications:
- No sampling here (``arm.ar.sampling`` owns decoding); ``forward(..., cache=...)`` only appends to a
  ``arm.nn.KVCache`` made by ``new_cache``.
- No dropout (Qwen2.5 uses none) and no sliding-window attention (Qwen2.5 configs leave it off).
- The tied text head is the slice ``embed.weight[:num_text_and_special]``, not a parameter of its own, so
  checkpoints hold the shared matrix once; image rows of the table are never tied to the image head.
- Initialisation is normal(0, ``initializer_range``) for every matrix (Qwen2's, 0.02 by default), zero biases,
  unit norms.

Optional FSQ code factors (``ARDecoder.enable_code_factors``; not in ARM, our addition): with an FSQ image
tokenizer every code is a point on a ``levels`` grid, so its embedding row and its image-head row get a shared term
linear in the code's coordinates, ``row(c) = table[c] + coords(c) @ A``, with one small ``A`` (d, D) each for the
embedding and the head. Every image token of a batch then trains ``A``, where a table row only learns from its own
code (4,096 codes, each seen a few times a batch), so neighbouring codes share what they mean from the first steps.
The term is linear in parameters that only ever appear as ``coords @ A``, so ``fold_code_factors`` adds it into the
plain rows exactly: exports are ordinary decoders. The basis may also (or instead) hold each code's colours, the
palette histogram of the patches it encodes (``arm.tokenizer.code_colours``): then one direction of the hidden state
raises every code of a colour at once, which the rare object codes' own rows cannot learn from their few
occurrences (experiments/LOG.md, fourteenth session).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arm.nn import KVCache, Transformer, TransformerConfig, compile_blocks, uncompile_blocks
from arm.tokenizer.fsq import FSQ

ROPE_CACHE_CAP = 4096
"""Rotary tables are built for at most this many positions up front; ``RotaryEmbedding`` grows them on demand,
so a 128k-context preset does not allocate 128k-row tables at construction."""


@dataclass
class ARConfig:
    """Size and vocabulary layout of an ``ARDecoder``.

    Attributes:
        text_vocab_size: rows of the text vocabulary (the LLM's ``vocab_size``, or the text tokenizer's size).
            ``None`` is only allowed until a caller fills it in (e.g. from a tokenizer).
        num_image_codes: image codes predicted by the image head (FSQ codebook size); 0 = a text-only LM.
        num_special_tokens: extra ids after the text vocabulary (begin/end of image, shape tokens ...).
        dim: residual stream width.
        num_layers: transformer blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``.
        mlp_hidden: SwiGLU hidden width.
        qkv_bias: bias on q/k/v projections (Qwen2: True, Llama: False).
        rope_theta: rotary base (Qwen2.5: 1e6).
        norm_eps: RMSNorm epsilon.
        tie_embeddings: the text head reuses the embedding rows of text + special ids.
        max_seq_len: longest sequence the model is meant for (from ``max_position_embeddings``).
        initializer_range: standard deviation of the normal init of every matrix (Qwen2's ``initializer_range``,
            0.02). Imported weights replace it; for a model trained from scratch it sets how fast attention learns
            to look things up (experiments/LOG.md, twenty-ninth session).
    """

    text_vocab_size: int | None = None
    num_image_codes: int = 0
    num_special_tokens: int = 0
    dim: int = 256
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 4
    mlp_hidden: int = 704
    qkv_bias: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    max_seq_len: int = 1024
    initializer_range: float = 0.02

    @property
    def num_text_and_special(self) -> int:
        """Ids the text head scores: text plus specials."""
        return int(self.text_vocab_size or 0) + self.num_special_tokens

    @property
    def image_token_offset(self) -> int:
        """Id of image code 0."""
        return self.num_text_and_special

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table."""
        return self.num_text_and_special + self.num_image_codes

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def special_id(self, index: int) -> int:
        """Id of special token ``index`` (0-based)."""
        if not 0 <= index < self.num_special_tokens:
            raise IndexError(f"special token {index} out of range: the config has {self.num_special_tokens}")
        return int(self.text_vocab_size or 0) + index

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(dim=self.dim, num_layers=self.num_layers, num_heads=self.num_heads,
                                 num_kv_heads=self.num_kv_heads, mlp_hidden=self.mlp_hidden, qkv_bias=self.qkv_bias,
                                 rope=True, rope_theta=self.rope_theta, norm_eps=self.norm_eps, causal=True,
                                 max_positions=min(self.max_seq_len, ROPE_CACHE_CAP))

    @classmethod
    def preset(cls, name: str, **overrides) -> ARConfig:
        """A named size (``PRESETS``) with fields replaced by ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown ARConfig preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, ARConfig] = {
    # Unit tests: everything tiny, but GQA (2 kv heads for 4 query heads) and both heads exercised.
    "tiny": ARConfig(text_vocab_size=64, num_image_codes=32, num_special_tokens=4, dim=32, num_layers=2, num_heads=4,
                     num_kv_heads=2, mlp_hidden=64, max_seq_len=128),
    # Embedded default placeholder (ShapeWorld, CPU): the vocab sizes are filled in by the stage that builds it.
    "shapeworld": ARConfig(text_vocab_size=None, dim=256, num_layers=6, num_heads=4, num_kv_heads=4, mlp_hidden=704,
                           max_seq_len=1024),
    # Qwen2.5 shapes, from the config.json of Qwen/Qwen2.5-{0.5B,1.5B,7B} on the Hugging Face hub
    # (hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size, vocab_size,
    # tie_word_embeddings, rope_theta, rms_norm_eps, max_position_embeddings), written here from memory.
    "qwen2.5-0.5b": ARConfig(text_vocab_size=151936, dim=896, num_layers=24, num_heads=14, num_kv_heads=2,
                             mlp_hidden=4864, qkv_bias=True, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True,
                             max_seq_len=32768),
    "qwen2.5-1.5b": ARConfig(text_vocab_size=151936, dim=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                             mlp_hidden=8960, qkv_bias=True, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True,
                             max_seq_len=131072),
    "qwen2.5-7b": ARConfig(text_vocab_size=152064, dim=3584, num_layers=28, num_heads=28, num_kv_heads=4,
                           mlp_hidden=18944, qkv_bias=True, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=False,
                           max_seq_len=131072),
}
"""Named sizes; ``ARConfig.preset(name, num_image_codes=..., ...)`` returns a copy."""


CODE_FACTOR_PREFIX = "code_factors."
COLOUR_FACTOR_SCALE = 2.0
"""Colour histograms (rows summing to 1) enter the basis times 2, so a one-colour code's features have about the
norm of an FSQ code's coordinates (up to sqrt(6) for six dimensions in [-1, 1]); measured at this scale only."""


class CodeFactors(nn.Module):
    """The shared terms of the image rows (see the module docstring): ``row(c) += coords(c) @ A``.

    ``coords`` (num_codes, d) is each code's fixed basis: its normalised FSQ coordinates (``FSQ.indices_to_codes``,
    so code ``c`` here is code ``c`` of the tokenizer), its colour features, or both side by side; a persistent
    buffer, so that a state dict can be folded on its own. ``embed`` and ``head`` (d, D) start at zero: an enabled
    model computes exactly what the plain one does until the first update.
    """

    def __init__(self, basis: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("coords", basis.detach().float().clone())  # (N, d)
        self.embed = nn.Parameter(torch.zeros(basis.shape[1], dim))
        self.head = nn.Parameter(torch.zeros(basis.shape[1], dim))

    def extra_repr(self) -> str:
        return f"codes={self.coords.shape[0]}, coords={self.coords.shape[1]}, dim={self.embed.shape[1]}"


class ARDecoder(nn.Module):
    """Qwen2 decoder over [text | special | image] ids with a text head and a separate image head (ARM §2)."""

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        if not config.text_vocab_size:
            raise ValueError("ARConfig.text_vocab_size must be set (e.g. from the text tokenizer's vocab_size)")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.body = Transformer(config.transformer_config())
        # Tied: the head is a view of the embedding's first rows (see text_head_weight), no parameter of its own.
        self.text_head = (None if config.tie_embeddings
                          else nn.Linear(config.dim, config.num_text_and_special, bias=False))
        self.image_head = (nn.Linear(config.dim, config.num_image_codes, bias=False)
                           if config.num_image_codes > 0 else None)
        self.code_factors: CodeFactors | None = None
        self.reset_parameters(config.initializer_range)

    def enable_code_factors(self, levels: list[int] | None,
                            colours: torch.Tensor | None = None) -> CodeFactors:
        """Add the code factors (module docstring), zero-initialised, so the model's outputs do not change until it
        trains; call before building the optimiser. Their basis: the FSQ coordinates of a tokenizer with these
        ``levels`` (None: none), then ``colours`` (num_codes, K), e.g. ``arm.tokenizer.code_colours``'s palette
        histograms, scaled by ``COLOUR_FACTOR_SCALE``."""
        n = self.config.num_image_codes
        parts = []
        if levels is not None:
            if math.prod(int(level) for level in levels) != n:
                raise ValueError(f"FSQ levels {list(levels)} give {math.prod(int(v) for v in levels)} codes but the "
                                 f"model has {n} image codes; pass the image tokenizer's levels")
            parts.append(FSQ([int(v) for v in levels]).indices_to_codes(torch.arange(n)))
        if colours is not None:
            if colours.ndim != 2 or colours.shape[0] != n:
                raise ValueError(f"code colours of shape {tuple(colours.shape)} do not fit a model with {n} image "
                                 f"codes: write them with this tokenizer's `arm tokenizer encode`")
            parts.append(COLOUR_FACTOR_SCALE * colours.float())
        if not parts:
            raise ValueError("code factors need FSQ levels, code colours or both")
        self.code_factors = CodeFactors(torch.cat(parts, 1), self.config.dim).to(self.embed.weight.device)
        return self.code_factors

    def reset_parameters(self, std: float = 0.02) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "weight") and module.weight is not None and module.weight.ndim == 1:
                nn.init.ones_(module.weight)  # RMSNorm gains

    # ------------------------------------------------------------------------------------------ ids

    @property
    def image_token_offset(self) -> int:
        return self.config.image_token_offset

    def image_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes (any shape, in [0, num_image_codes)) -> ids of the shared table."""
        return codes + self.config.image_token_offset

    def image_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids of image tokens -> image codes."""
        return ids - self.config.image_token_offset

    def is_image_id(self, ids: torch.Tensor) -> torch.Tensor:
        return ids >= self.config.image_token_offset

    # -------------------------------------------------------------------------------------- forward

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``max_len`` tokens (parameters' dtype by default)."""
        if max_len > self.config.max_seq_len:
            raise ValueError(f"a cache of {max_len} positions exceeds the model's context of "
                             f"{self.config.max_seq_len} tokens (ARConfig.max_seq_len)")
        return self.body.new_cache(batch, max_len, dtype)

    def forward(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, offset: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, D) of ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, D).

        ``mask`` (B, T) is True for real tokens; ``offset`` is the position of the first token. Without a cache,
        pad on the right. With ``cache`` (from ``new_cache``) the tokens are appended to it and attend to
        everything cached before them: prefill a batch of left-padded prompts in one call, then feed one token
        per row per call.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_ids(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, D)
        return self.body(x, mask, offset, cache)

    def embedding_weight(self) -> torch.Tensor:
        """(vocab_size, D): the rows ``input_ids`` are embedded with (the table, plus the code factors' term on
        the image rows when enabled)."""
        if self.code_factors is None:
            return self.embed.weight
        offset = self.config.image_token_offset
        rows = self.code_factors.coords.to(self.embed.weight.dtype) @ self.code_factors.embed  # (N, D)
        return torch.cat([self.embed.weight[:offset], self.embed.weight[offset:] + rows])

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., D) input embeddings."""
        if self.code_factors is None:
            return self.embed(ids)
        return F.embedding(ids, self.embedding_weight())

    @property
    def text_head_weight(self) -> torch.Tensor:
        """(num_text_and_special, D): a view of the embedding table when tied."""
        if self.text_head is None:
            return self.embed.weight[: self.config.num_text_and_special]
        return self.text_head.weight

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, text_vocab_size + num_special_tokens)."""
        return F.linear(hidden, self.text_head_weight)

    @property
    def image_head_weight(self) -> torch.Tensor:
        """(num_image_codes, D): the image head's matrix (plus the code factors' term when enabled)."""
        if self.image_head is None:
            raise ValueError("this decoder has no image head (num_image_codes=0)")
        if self.code_factors is None:
            return self.image_head.weight
        factors = self.code_factors
        return self.image_head.weight + factors.coords.to(factors.head.dtype) @ factors.head

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, num_image_codes): logits over image codes (not ids)."""
        return F.linear(hidden, self.image_head_weight)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return count_parameters(self, exclude_embeddings)


def fold_code_factors(state: dict[str, torch.Tensor], image_token_offset: int) -> dict[str, torch.Tensor]:
    """A full state dict of a decoder with code factors -> the same decoder's plain state dict (no
    ``code_factors.*`` keys; image rows of ``embed.weight`` and ``image_head.weight`` hold the factors' terms).
    Exact up to float rounding: the factors only ever enter the model as these sums. A state without code factors
    is returned as is."""
    if CODE_FACTOR_PREFIX + "coords" not in state:
        return state
    coords = state[CODE_FACTOR_PREFIX + "coords"].float()
    out = {k: v for k, v in state.items() if not k.startswith(CODE_FACTOR_PREFIX)}
    embed = out["embed.weight"].clone()
    embed[image_token_offset:] += (coords @ state[CODE_FACTOR_PREFIX + "embed"].float()).to(embed.dtype)
    head = out["image_head.weight"]
    out["embed.weight"] = embed
    out["image_head.weight"] = head + (coords @ state[CODE_FACTOR_PREFIX + "head"].float()).to(head.dtype)
    return out


def compile_for_training(model: ARDecoder, dynamic: bool | None = None) -> ARDecoder:
    """Compile every transformer block of ``model`` in place (``arm.nn.compile_blocks``).

    Only the no-cache path (training, scoring) uses the compiled blocks; cached decoding stays eager, since the
    cache's changing length would recompile every step. ``uncompile(model)`` goes back to eager.
    """
    compile_blocks(model.body, dynamic)
    return model


def uncompile(model: ARDecoder) -> ARDecoder:
    """Undo ``compile_for_training``."""
    uncompile_blocks(model.body)
    return model


def count_parameters(model: ARDecoder, exclude_embeddings: bool = False) -> int:
    """Unique parameters (shared storage counted once); works on the meta device."""
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        total -= model.embed.weight.numel()
    return total


def count_preset_parameters(config: ARConfig) -> int:
    """Parameter count of ``config`` without allocating memory (built on the meta device)."""
    with torch.device("meta"):
        return count_parameters(ARDecoder(config))


def lm_loss(lm: ARDecoder, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of a text sequence ``ids`` (B, T); ``mask`` (B, T) True on real tokens."""
    hidden = lm(input_ids=ids, mask=mask)  # (B, T, D)
    logits = lm.text_logits(hidden[:, :-1]).float()  # (B, T-1, V)
    targets = ids[:, 1:]
    weight = torch.ones_like(targets, dtype=logits.dtype) if mask is None else mask[:, 1:].to(logits.dtype)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T-1)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


def prefix_caption_loss(lm: ARDecoder, prefix_embeds: torch.Tensor, caption_ids: torch.Tensor,
                        caption_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of a caption read after a prefix of embeddings (the tokenizer's L_cap, paper §1).

    ``prefix_embeds`` (B, P, D) are already in the LM's embedding space (the caller projects z_q); ``caption_ids``
    (B, L) are right-padded text ids, ``caption_mask`` (B, L) True on real tokens. Every caption token is scored,
    the first one from the last prefix position. Returns the mean over real caption tokens. Gradients reach
    ``prefix_embeds``; freezing the LM is the caller's business (``requires_grad_(False)``).
    """
    B, P, _ = prefix_embeds.shape
    if P < 1:
        raise ValueError("prefix_caption_loss needs a prefix of at least one embedding to predict the first token")
    if caption_mask is None:
        caption_mask = torch.ones_like(caption_ids, dtype=torch.bool)
    caption_mask = caption_mask.bool()
    x = torch.cat([prefix_embeds, lm.embed(caption_ids).to(prefix_embeds.dtype)], dim=1)  # (B, P+L, D)
    mask = torch.cat([torch.ones(B, P, dtype=torch.bool, device=caption_ids.device), caption_mask], dim=1)
    hidden = lm(inputs_embeds=x, mask=mask)  # (B, P+L, D)
    logits = lm.text_logits(hidden[:, P - 1:-1]).float()  # (B, L, V): position P-1+j predicts caption token j
    nll = F.cross_entropy(logits.transpose(1, 2), caption_ids, reduction="none")  # (B, L)
    weight = caption_mask.to(nll.dtype)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)
