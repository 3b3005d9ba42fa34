"""Batched sampling from ``ARDecoder`` with a KV cache: image codes with classifier-free guidance, text, scoring.

ARM §2 samples images with CFG 1.5 on the AR side, and edits with two guidance branches (text 1.5, image 1.25).

- Text-to-image CFG follows LlamaGen's sampler (Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for
  Scalable Image Generation", ``autoregressive/models/generate.py``): the conditional and the unconditional
  (condition dropped) rows run in one batch and each step mixes their logits, ``l = l_u + s (l_c - l_u)``, before
  temperature and top-k/top-p.
- Editing uses InstructPix2Pix's two-branch guidance (Brooks et al. 2023, "InstructPix2Pix: Learning to Follow
  Image Editing Instructions", eq. 3), applied to logits: ``l = l_u + s_img (l_i - l_u) + s_txt (l_c - l_i)`` with
  ``l_c`` = source image + instruction, ``l_i`` = source image + empty instruction, ``l_u`` = neither.
- Top-p is nucleus sampling (Holtzman et al. 2020): keep the most probable tokens until their mass reaches p.

Every branch is a group of rows in one batch, so a step is ONE forward pass over (branches x B) rows. Prompts of
different lengths are left-padded (pads masked out, rotary positions counted per row by the cache) so all rows
write their next token in the same slot. The cache is allocated once per call (``arm.nn.KVCache``).

Deliberate simplifications:
- An image is a fixed number of tokens (the grid); only the image head is sampled inside it, so only image codes can
  appear, and the caller appends <eoi> or whatever follows. No guidance schedule (LlamaGen's ``cfg_interval``):
  the scales are constant over the grid.
- A guidance whose scales are all 1.0 is the conditional logits exactly, so the extra branches are not run.
- ``generate_text`` keeps feeding <eos> to rows that finished until every row has (one batch, no compaction).
- The prompt runs through the model's cached forward; the steps after it through ``arm.nn.decode.PackedDecoder``
  (q|k|v and gate|up fused, matrices in ``decode_dtype``: default the autocast dtype under ``torch.autocast``,
  else the parameters'; ``fast=False`` keeps the model's own forward). The KV cache and attention over it are
  float32 on the CPU, except with ``compile_attention`` and a bf16 ``decode_dtype`` (the fastest setting, which
  RL rollouts use: each step one compiled graph, ``compile_step``); guidance, temperature and the softmax are
  float32 and eager (compiling them into the step's graph measured no faster).
- A draw inverts the cumulative distribution with one uniform per row (``draw``), not ``torch.multinomial``'s
  one exponential per vocabulary entry: the same distribution, other draws for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arm.ar.model import ARDecoder
from arm.nn.decode import PackedDecoder


@dataclass
class SamplingConfig:
    """How tokens are drawn from logits.

    Attributes:
        temperature: divides the (guided) logits; 0 = greedy (argmax).
        top_k: keep only the k most probable tokens; 0 = off.
        top_p: nucleus sampling, keep the most probable tokens until their mass reaches p; 1.0 = off.
        cfg_scale: text-to-image classifier-free guidance scale (1.0 = off); ARM: 1.5.
        text_scale: editing guidance, instruction branch (ARM: 1.5).
        image_scale: editing guidance, source-image branch (ARM: 1.25).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0
    text_scale: float = 1.0
    image_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


# ------------------------------------------------------------------------------------------- logits -> tokens

def guide_logits(cond: torch.Tensor, config: SamplingConfig, uncond: torch.Tensor | None = None,
                 image_only: torch.Tensor | None = None) -> torch.Tensor:
    """Guided logits: ``cond`` alone, CFG with ``uncond``, or two-branch editing guidance with ``image_only`` too."""
    if image_only is not None:
        if uncond is None:
            raise ValueError("two-branch (editing) guidance needs uncond rows as well as image_only rows")
        return uncond + config.image_scale * (image_only - uncond) + config.text_scale * (cond - image_only)
    if uncond is not None:
        return uncond + config.cfg_scale * (cond - uncond)
    return cond


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` (..., V) with tokens outside the top-k and outside the top-p nucleus set to -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (..., V): mass of the more probable tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # the first always stays
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample_logits(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): argmax at temperature 0, else a draw after temperature/top-k/top-p."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
    return draw(logits.softmax(-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` (B, V) by inverting the cumulative distribution with one uniform per row.

    ``torch.multinomial`` draws one exponential per entry (B x V random numbers: ~1 ms per step for 16 x 3,072 on
    one core, as much as a layer); this draws B. Same distribution, different draws for a given seed. Tokens of
    zero probability are never picked (their cumulative mass equals their predecessor's)."""
    cdf = probs.cumsum(-1)  # (B, V)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


# ------------------------------------------------------------------------------------------------- helpers

def _check_rows(model: ARDecoder, rows: list[list[int]], name: str, num_new: int) -> None:
    limit = model.config.max_seq_len
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"{name}[{i}] is empty: a prompt needs at least one token")
        if len(row) + num_new > limit:
            raise ValueError(f"{name}[{i}] has {len(row)} tokens but the context is {limit} (model.config."
                             f"max_seq_len) and {num_new} are to be generated: shorten it to at most "
                             f"{max(limit - num_new, 0)} tokens")
        if min(row) < 0 or max(row) >= model.config.vocab_size:
            raise ValueError(f"{name}[{i}] holds an id outside [0, {model.config.vocab_size}): "
                             "was it encoded with another tokenizer?")


def _left_pad(rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, W) ids and real-token mask, each row right-aligned (pads hold id 0 and are masked out)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = True
    return ids.to(device), mask.to(device)


def _cache_dtype(model: ARDecoder) -> torch.dtype | None:
    """float32 on the CPU (attention over the cache is fastest there in fp32, see ``arm.nn.kv_cache``); elsewhere
    the autocast dtype under ``torch.autocast``, else the parameters'."""
    device = model.embed.weight.device.type
    if device == "cpu":
        return torch.float32
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _decode_dtype(model: ARDecoder, decode_dtype: torch.dtype | None) -> torch.dtype:
    """The packed decoder's matrix dtype: as given, else the autocast dtype under ``torch.autocast``, else the
    parameters'."""
    if decode_dtype is not None:
        return decode_dtype
    device = model.embed.weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else model.embed.weight.dtype


class _Stepper:
    """One-token steps of ``model`` over ``cache``: the packed decoder (``arm.nn.decode``) when ``fast``, else the
    model's own cached forward (the previous path, kept for comparisons and as a fallback)."""

    def __init__(self, model: ARDecoder, cache, fast: bool, dtype: torch.dtype, compile_attention: bool,
                 compile_step: bool, head: str) -> None:
        self.model, self.cache = model, cache
        self.packed = PackedDecoder(model.body, dtype, compile_attention, compile_step) if fast else None
        if fast:
            with torch.no_grad():  # the effective matrices, computed once per call (code factors included)
                weight = model.image_head_weight if head == "image" else model.text_head_weight
                self.head = self.packed.pack(weight)
                self.table = model.embedding_weight()
        else:
            self.head = None
        self.head_fn = model.image_logits if head == "image" else model.text_logits

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(R, D) -> (R, V) float32."""
        if self.packed is None:
            return self.head_fn(hidden).float()
        return torch.nn.functional.linear(hidden.to(self.head.dtype), self.head).float()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """(R,) ids -> (R, D) hidden states of the new tokens."""
        if self.packed is None:
            return self.model(input_ids=ids[:, None], cache=self.cache)[:, -1]
        with torch.autocast(ids.device.type, enabled=False):  # the packed weights set the dtype
            return self.packed.step(torch.nn.functional.embedding(ids, self.table), self.cache)


def _new_cache(model: ARDecoder, rows: int, length: int, fast: bool, decode_dtype: torch.dtype | None,
               compile_attention: bool, compile_step: bool):
    """The sampling call's cache and the packed decoder's settings (dtype, compiled attention, compiled step).
    Compilation applies to a 16-bit ``decode_dtype`` only. The cache is float32 on the CPU, except when compiled,
    which reads a cache of that dtype without the copies eager matmuls make (half the bytes every step reads,
    see ``arm.nn.decode``)."""
    dtype = _decode_dtype(model, decode_dtype)
    fast = fast and _packable(model)
    compiled = fast and compile_attention and dtype in (torch.bfloat16, torch.float16)
    cache = model.new_cache(rows, length, dtype if compiled else _cache_dtype(model))
    return cache, dtype, compiled, compiled and compile_step, fast


def _packable(model: ARDecoder) -> bool:
    """The packed decoder reproduces ``ARDecoder``'s own forward and heads, not a subclass's overrides (test stubs),
    and reads plain local weights: a model sharded by FSDP2 (DTensor parameters, e.g. RL rollouts under
    ``ModelParallelStrategy``) keeps its own forward, which gathers the shards."""
    from torch.distributed.tensor import DTensor

    cls = type(model)
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return False
    return all(getattr(cls, name) is getattr(ARDecoder, name) for name in ("forward", "image_logits", "text_logits"))


def _branches(prompts: list[list[int]], config: SamplingConfig, uncond: list[list[int]] | None,
              image_only: list[list[int]] | None) -> dict[str, list[list[int]]]:
    """The row groups to run, in batch order: prompts; prompts, uncond (CFG); prompts, image_only, uncond (edit)."""
    if image_only is not None and uncond is None:
        raise ValueError("editing guidance needs uncond (source image and instruction both dropped) "
                         "as well as image_only")
    for name, rows in (("uncond", uncond), ("image_only", image_only)):
        if rows is not None and len(rows) != len(prompts):
            raise ValueError(f"{name} has {len(rows)} rows but prompts has {len(prompts)}: give one per prompt")
    if image_only is not None and (config.text_scale, config.image_scale) != (1.0, 1.0):
        return {"prompts": prompts, "image_only": image_only, "uncond": uncond}
    if image_only is None and uncond is not None and config.cfg_scale != 1.0:
        return {"prompts": prompts, "uncond": uncond}
    return {"prompts": prompts}


# -------------------------------------------------------------------------------------------- public API

@torch.no_grad()
def sample_image_codes(model: ARDecoder, prompts: list[list[int]], num_tokens: int,
                       config: SamplingConfig = SamplingConfig(), *, uncond: list[list[int]] | None = None,
                       image_only: list[list[int]] | None = None, generator: torch.Generator | None = None,
                       kv_cache: bool = True, fast: bool = True, decode_dtype: torch.dtype | None = None,
                       compile_attention: bool = False, compile_step: bool = True) -> torch.Tensor:
    """(B, num_tokens) image CODES (not ids) sampled after each prompt.

    Each prompt is a list of ids ending where the first image token goes (e.g. after <boi> and grid tokens).
    ``uncond``: the same rows with the condition dropped (text-to-image CFG, ``l = l_u + s (l_c - l_u)`` with
    ``config.cfg_scale``). ``image_only`` given too: editing guidance
    ``l = l_u + s_img (l_i - l_u) + s_txt (l_c - l_i)`` (``config.image_scale``, ``config.text_scale``; cfg_scale
    is then unused), where prompts = source image + instruction, image_only = source image + empty instruction,
    uncond = neither. All branches run as ONE batched forward per step. Only the image head is sampled, so only
    image codes can appear; each sampled code c is fed back as id ``model.image_token_offset + c``. Deterministic
    for a given generator seed. ``kv_cache=False`` recomputes the whole sequence every step (the baseline the
    benchmark compares against; same results). ``fast`` runs the steps after the prompt through
    ``arm.nn.decode.PackedDecoder`` with matrices in ``decode_dtype`` (default: the autocast dtype under
    ``torch.autocast``, else the parameters'); ``fast=False`` is the previous path (the model's cached forward).
    ``compile_attention`` (with a bf16 ``decode_dtype``): a bf16 cache and ``torch.compile``d decoding: with
    ``compile_step`` (the default) each step of every layer is one compiled graph (``arm.nn.decode.decode_step``,
    the fastest setting on the CPU, ``arm.ar.bench`` measures it), else only the attention over the cache is
    compiled (the previous setting). Each is compiled once per process (~10-40 s on 2 busy cores).
    """
    if model.image_head is None:
        raise ValueError("this decoder has no image head (num_image_codes=0): it cannot sample images")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    groups = _branches(prompts, config, uncond, image_only)
    for name, rows in groups.items():
        _check_rows(model, rows, name, num_tokens)
    B, device = len(prompts), model.embed.weight.device
    ids, mask = _left_pad([row for rows in groups.values() for row in rows], device)  # (R, W), R = branches x B
    R, W = ids.shape
    codes = torch.empty(B, num_tokens, dtype=torch.long, device=device)
    if kv_cache:
        cache, dtype, compiled, graph, fast = _new_cache(model, R, W + num_tokens - 1, fast, decode_dtype,
                                                         compile_attention, compile_step)
        hidden = model(input_ids=ids, mask=mask, cache=cache)[:, -1]  # (R, D)
        stepper = _Stepper(model, cache, fast, dtype, compiled, graph, "image")
    else:
        ids = torch.cat([ids, torch.zeros(R, num_tokens - 1, dtype=torch.long, device=device)], 1)
        mask = torch.cat([mask, torch.ones(R, num_tokens - 1, dtype=torch.bool, device=device)], 1)
        hidden = model(input_ids=ids[:, :W], mask=mask[:, :W], cache=model.new_cache(R, W))[:, -1]
    for t in range(num_tokens):
        scores = stepper.logits(hidden) if kv_cache else model.image_logits(hidden).float()  # (R, C)
        logits = dict(zip(groups, scores.view(len(groups), B, -1)))  # name: (B, C)
        guided = guide_logits(logits["prompts"], config, logits.get("uncond"), logits.get("image_only"))
        codes[:, t] = sample_logits(guided, config, generator)
        if t + 1 == num_tokens:
            break
        next_ids = model.image_ids(codes[:, t]).repeat(len(groups))  # (R,)
        if kv_cache:
            hidden = stepper(next_ids)
        else:  # the same prefill over the whole sequence so far, in a fresh cache: full recomputation
            ids[:, W + t] = next_ids
            length = W + t + 1
            hidden = model(input_ids=ids[:, :length], mask=mask[:, :length],
                           cache=model.new_cache(R, length))[:, -1]
    return codes


@torch.no_grad()
def generate_text(model: ARDecoder, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
                  config: SamplingConfig = SamplingConfig(temperature=0.0), *,
                  generator: torch.Generator | None = None, fast: bool = True,
                  decode_dtype: torch.dtype | None = None, compile_attention: bool = False,
                  compile_step: bool = True) -> list[list[int]]:
    """New text ids per row (text head over text+special ids), each stopped at (and excluding) ``eos_id``.
    ``fast``/``decode_dtype``/``compile_attention``/``compile_step``: as in ``sample_image_codes``."""
    if not 0 <= eos_id < model.config.num_text_and_special:
        raise ValueError(f"eos_id {eos_id} is not a text or special id (< {model.config.num_text_and_special})")
    if max_new_tokens < 1:
        return [[] for _ in prompts]
    _check_rows(model, prompts, "prompts", max_new_tokens)
    ids, mask = _left_pad(prompts, model.embed.weight.device)
    cache, dtype, compiled, graph, fast = _new_cache(model, len(prompts), ids.shape[1] + max_new_tokens - 1,
                                                     fast, decode_dtype, compile_attention, compile_step)
    hidden = model(input_ids=ids, mask=mask, cache=cache)[:, -1]  # (B, D)
    stepper = _Stepper(model, cache, fast, dtype, compiled, graph, "text")
    done = torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
    steps = []
    for t in range(max_new_tokens):
        token = sample_logits(stepper.logits(hidden), config, generator)  # (B,)
        token = token.masked_fill(done, eos_id)
        steps.append(token)
        done |= token == eos_id
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        hidden = stepper(token)
    out = torch.stack(steps, 1).tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in out]


@torch.no_grad()
def continuation_logprobs(model: ARDecoder, prefixes: list[list[int]], continuations: list[list[int]]
                          ) -> torch.Tensor:
    """(B,) summed log-probability of each continuation (text ids) after its prefix, one batched forward."""
    if len(prefixes) != len(continuations):
        raise ValueError(f"{len(prefixes)} prefixes but {len(continuations)} continuations: give one per prefix")
    _check_rows(model, prefixes, "prefixes", 0)
    text = model.config.num_text_and_special
    for i, cont in enumerate(continuations):
        if cont and (min(cont) < 0 or max(cont) >= text):
            raise ValueError(f"continuations[{i}] holds an id outside the text head's [0, {text})")
    rows = [p + c for p, c in zip(prefixes, continuations)]
    _check_rows(model, rows, "prefix + continuation", 0)
    B, device = len(rows), model.embed.weight.device
    width, num = max(len(r) for r in rows), max(1, max(len(c) for c in continuations))
    ids = torch.zeros(B, width, dtype=torch.long)
    positions = torch.zeros(B, num, dtype=torch.long)  # position whose output predicts continuation token j
    targets = torch.zeros(B, num, dtype=torch.long)
    scored = torch.zeros(B, num, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prefixes, continuations)):
        ids[i, :len(rows[i])] = torch.tensor(rows[i])
        positions[i, :len(c)] = torch.arange(len(p) - 1, len(p) - 1 + len(c))
        targets[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        scored[i, :len(c)] = True
    mask = torch.arange(width)[None] < torch.tensor([len(r) for r in rows])[:, None]  # right padding
    ids, mask, positions, targets, scored = (x.to(device) for x in (ids, mask, positions, targets, scored))
    hidden = model(input_ids=ids, mask=mask)  # (B, W, D)
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, N, D)
    logp = model.text_logits(picked).float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # (B, N)
    return (logp * scored).sum(1)
