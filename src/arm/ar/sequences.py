"""Sequences of the unified AR model: vocabulary layout, special tokens, task formats, CFG dropout, bucketing.

ARM §2 trains one next-token model on interleaved sequences: understanding = image tokens -> text, generation =
text (+ image-shape tokens) -> image tokens, editing = source image tokens + instruction -> new image tokens.
This module fixes how those sequences look, id by id, for training and for inference (``arm.ar.sampling``).

Vocabulary (one embedding table, ``VocabLayout``)::

    [0, text_vocab_size)                    the text tokenizer's ids (an imported LLM's padded rows included)
    [text_vocab_size, + len(SPECIAL_TOKENS)) the specials below, in this order
    [image_offset, image_offset + codes)    image code c  <->  id image_offset + c

Formats (``|`` marks where the prompt ends; the loss is on every token after it, so the scored part is always a
suffix)::

    t2i       <eos> TEXT <boi> <hH> <wW> | CODES <eoi>
    vqa, mme  <eos> <boi> <hH> <wW> CODES <eoi> QUESTION <answer> | ANSWER <eos>
    thought   <eos> <boi> <hH> <wW> CODES <eoi> <caption> THOUGHT <eos> QUESTION <answer> | ANSWER <eos>
    dialogue  <eos> <boi> <hH> <wW> CODES <eoi> Q1 <answer> | A1 <eos> Q2 <answer> A2 <eos> ...
    caption   <eos> <boi> <hH> <wW> CODES <eoi> <caption> | CAPTION <eos>
    edit      <eos> <boi> <hH> <wW> SRC <eoi> INSTRUCTION <boi> <hH> <wW> | TARGET <eoi>     (edit_layout "source_first")
    edit      <eos> INSTRUCTION <boi> <hH> <wW> SRC <eoi> <boi> <hH> <wW> | TARGET <eoi>     (edit_layout "instruction_first")

The edit layout is ARM's, source first (``source_first``), or ours, instruction first (``instruction_first``): then
every target code sits a fixed distance after the source code of its grid cell (the source block, ``<eoi>`` and
the target's header: H*W + 4 tokens), whatever the instruction's length, so under rotary positions one relative
attention offset copies an unchanged cell. Measured (experiments/LOG.md, twenty-first session, the shipped AR
recipe for 4,800 steps): on codes whose unchanged cells equal the source's (``arm tokenizer encode --anchor-edits``)
the source-first model never learnt to copy (1.81 nats on a copyable code, val edit loss 2.17 against t2i's 2.19),
the instruction-first one did (0.48 nats; edit loss 1.20 / 1.27 at training seeds 0 / 1). Edits then keep what
they should (GEdit SC 0.455 / 0.674 against 0.490 / 0.417 source first on the shipped codes; edit success 0.014 /
0.034 against 0.006 / 0.003), but text-to-image lost 0.08 nats a code at both seeds (GenEval -0.058 / -0.002), so
the YAMLs keep ARM's layout.

``<eos>`` is the text tokenizer's end-of-text id, which doubles as the begin token (as in the caption LM), so an
empty prompt is ``<eos>`` alone. ``<hH> <wW>`` are the image-grid shape tokens (H rows and W columns of codes,
as Emu3 and Lumina-mGPT mark image size); codes are in row-major order.

Condition dropout for classifier-free guidance (Ho & Salimans 2022): t2i drops TEXT (the empty prompt); an edit
drops INSTRUCTION, the source image block (``<boi> ... SRC <eoi>``), or both (InstructPix2Pix, Brooks et al.
2023). The builder that makes a dropped training sequence is the one that makes the sampler's ``uncond`` and
``image_only`` prompts (``t2i_prompts``, ``edit_prompts``), so training and inference agree id for id.

Padding: ``bucket_batches`` sorts a pool of examples by length and cuts it into batches (length bucketing), so
a batch pads only to its own longest sequence. Edit and caption sequences are longer than the others: on the
demo world's first train shard (1,000 sequences of the default mixture, demo text tokenizer, 64 codes per image)
random batches of 16 are 34% padding, bucketed pools of 4 / 16 batches 8.9% / 2.7% (batch 32: 35%, 8.4%, 2.4%),
measured with ``padding_fraction`` over consecutive vs ``bucket_batches`` batches of the lengths of
``arm.data.codes.task_example`` sequences. ``train/padding`` logs the fraction during training.

Deliberate simplifications:
- No packing: concatenating sequences would need a block-diagonal attention mask (SDPA's slow masked path on
  CPU) or leak the previous sample's prompt into the next image.
- Grid-shape tokens cover sides 1..``MAX_GRID_SIDE``; code grids are taken to be square when only the number of
  codes is known (the tokenizer's grids are).
- Only the answers of an understanding sample are scored, not the questions (in a dialogue, the scored tokens are
  each turn's ANSWER <eos>, so its loss mask is not a suffix; its first turn is exactly the single-question
  sequence, which is what inference asks); the shape tokens and ``<boi>`` of a
  generated image are part of its prompt (the sampler writes a fixed grid), ``<eoi>`` is scored.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

MAX_GRID_SIDE = 32
"""Largest image-grid side with a shape token (a 512 px image with 16 px patches)."""

BOI, EOI, ANSWER, CAPTION = "<boi>", "<eoi>", "<answer>", "<caption>"
SPECIAL_TOKENS: tuple[str, ...] = (
    BOI, EOI, ANSWER, CAPTION,
    *(f"<h{n}>" for n in range(1, MAX_GRID_SIDE + 1)),
    *(f"<w{n}>" for n in range(1, MAX_GRID_SIDE + 1)),
)
"""The AR vocabulary's special tokens, in id order after the text vocabulary."""

EDIT_LAYOUTS = ("source_first", "instruction_first")
"""Where an edit's instruction goes: after the source image (ARM's) or before it (ours; see the module docstring)."""

TASKS = ("t2i", "vqa", "mme", "caption", "edit")
"""Sequence kinds: text-to-image, VQA question, MME yes/no question, captioning, editing."""

IMAGE_TASKS = ("t2i", "edit")
"""Tasks whose scored tokens are image codes (the rest score text)."""


def check_fits(prompt_len: int, num_new: int, context: int, what: str = "prompt") -> None:
    """One-line ``ValueError`` when a prompt plus the tokens to generate exceed the model's context."""
    if prompt_len + num_new > context:
        raise ValueError(f"{what} of {prompt_len} tokens plus {num_new} tokens to generate exceeds the model's "
                         f"context of {context} tokens; shorten the text or use a model with a larger max_seq_len")


@dataclass(frozen=True)
class VocabLayout:
    """Where text, special and image ids live in the AR vocabulary.

    Attributes:
        text_vocab_size: rows of the text block (the text tokenizer's size, or an imported LLM's padded size).
        num_image_codes: image codes (the tokenizer's codebook size); ``None`` = not known, codes are not checked.
    """

    text_vocab_size: int
    num_image_codes: int | None = None

    @property
    def num_special_tokens(self) -> int:
        return len(SPECIAL_TOKENS)

    @property
    def image_offset(self) -> int:
        """Id of image code 0."""
        return self.text_vocab_size + len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        if self.num_image_codes is None:
            raise ValueError("the vocabulary size needs num_image_codes (the image tokenizer's codebook size)")
        return self.image_offset + self.num_image_codes

    def special_id(self, name: str) -> int:
        """Id of a special token; an unknown name is a one-line ``ValueError``."""
        try:
            return self.text_vocab_size + _SPECIAL_INDEX[name]
        except KeyError:
            raise ValueError(f"unknown special token {name!r}; the AR vocabulary has {', '.join(SPECIAL_TOKENS[:4])}"
                             f" and the grid tokens <h1>..<h{MAX_GRID_SIDE}>, <w1>..<w{MAX_GRID_SIDE}> "
                             f"(arm.ar.sequences.SPECIAL_TOKENS)") from None

    def image_ids(self, codes: Sequence[int]) -> list[int]:
        """Image codes -> ids; a code outside the codebook is a one-line ``ValueError``."""
        codes = [int(c) for c in codes]
        if codes and (min(codes) < 0 or (self.num_image_codes is not None and max(codes) >= self.num_image_codes)):
            raise ValueError(f"image codes must lie in [0, {self.num_image_codes}); got [{min(codes)}, "
                             f"{max(codes)}]: the codes come from a different image tokenizer than the model's")
        return [self.image_offset + c for c in codes]

    def grid_header(self, grid: tuple[int, int]) -> list[int]:
        """``<boi> <hH> <wW>``: what opens an image of ``grid`` = (H, W) codes."""
        h, w = grid
        if not (1 <= h <= MAX_GRID_SIDE and 1 <= w <= MAX_GRID_SIDE):
            raise ValueError(f"image grid {h}x{w} has no shape tokens; sides must lie in 1..{MAX_GRID_SIDE}")
        return [self.special_id(BOI), self.special_id(f"<h{h}>"), self.special_id(f"<w{w}>")]

    def check_model(self, text_vocab_size: int, num_special_tokens: int, num_image_codes: int, what: str) -> None:
        """One-line ``ValueError`` unless a model's vocabulary sizes can hold this layout."""
        problems = []
        if text_vocab_size < self.text_vocab_size:
            problems.append(f"its text vocabulary has {text_vocab_size} rows but the text tokenizer needs "
                            f"{self.text_vocab_size}")
        if num_special_tokens != len(SPECIAL_TOKENS):
            problems.append(f"it has {num_special_tokens} special tokens, this code defines {len(SPECIAL_TOKENS)}")
        if self.num_image_codes is not None and num_image_codes != self.num_image_codes:
            problems.append(f"it has {num_image_codes} image codes but the image tokenizer has "
                            f"{self.num_image_codes}")
        if problems:
            raise ValueError(f"{what} does not match the vocabulary: {'; '.join(problems)}. Use the text tokenizer "
                             f"and image tokenizer it was trained with, or train a new model")

    def remap(self, ids: torch.Tensor, target: VocabLayout) -> torch.Tensor:
        """Ids of this layout -> the same tokens in ``target`` (whose text block may be larger, e.g. an imported
        LLM's padded embedding): special and image ids shift by the difference of the text blocks."""
        shift = target.text_vocab_size - self.text_vocab_size
        return ids if shift == 0 else torch.where(ids >= self.text_vocab_size, ids + shift, ids)


_SPECIAL_INDEX = {name: i for i, name in enumerate(SPECIAL_TOKENS)}


def check_edit_layout(edit_layout: str) -> str:
    if edit_layout not in EDIT_LAYOUTS:
        raise ValueError(f"unknown edit_layout {edit_layout!r}; expected one of {list(EDIT_LAYOUTS)}")
    return edit_layout


def square_grid(num_codes: int) -> tuple[int, int]:
    """The (H, W) grid of ``num_codes`` row-major codes of a square image."""
    side = math.isqrt(num_codes)
    if side * side != num_codes or num_codes == 0:
        raise ValueError(f"{num_codes} image codes do not form a square grid; the AR stage expects square images")
    return side, side


@dataclass
class Example:
    """One sequence: ``ids[:prompt_len]`` is the prompt; every later id is a loss target, unless ``targets``
    (one flag per id, all False in the prompt) says which are (a dialogue's answers). ``scenes`` (where the data
    has them) is the scene json of each image block, in the order the blocks appear, for auxiliary targets."""

    ids: list[int]
    prompt_len: int
    task: str
    targets: list[bool] | None = None
    scenes: list[dict] | None = None

    @property
    def prompt(self) -> list[int]:
        return self.ids[: self.prompt_len]

    def __len__(self) -> int:
        return len(self.ids)


class SequenceBuilder:
    """Builds the task sequences of the module docstring from text and codes.

    Every builder takes the completion (codes or answer) as optional: without it the result is the prompt alone,
    which is what inference feeds the sampler. ``grid`` is the code grid of prompts that carry no codes to infer
    it from (the image to generate); ``max_len`` (when set) bounds a whole sequence; ``edit_layout`` is one of
    ``EDIT_LAYOUTS``.
    """

    def __init__(self, tokenizer, layout: VocabLayout, grid: tuple[int, int] | None = None,
                 max_len: int | None = None, edit_layout: str = "source_first") -> None:
        self.tokenizer = tokenizer
        self.layout = layout
        self.grid = tuple(grid) if grid is not None else None
        self.max_len = max_len
        self.edit_layout = check_edit_layout(edit_layout)
        self.eos = tokenizer.eos_id

    # ------------------------------------------------------------------------------------------ pieces

    def _text(self, text: str | None) -> list[int]:
        return self.tokenizer.encode(text) if text else []

    def _grid(self, codes: Sequence[int] | None) -> tuple[int, int]:
        if codes is not None:
            grid = square_grid(len(codes))
            if self.grid is not None and grid != self.grid:
                raise ValueError(f"image of {grid[0]}x{grid[1]} codes, but this model draws {self.grid[0]}x"
                                 f"{self.grid[1]}: the codes come from a different image tokenizer")
            return grid
        if self.grid is None:
            raise ValueError("the image grid is unknown: build the SequenceBuilder with grid=(H, W)")
        return self.grid

    def image_block(self, codes: Sequence[int]) -> list[int]:
        """``<boi> <hH> <wW> CODES <eoi>``."""
        return [*self.layout.grid_header(self._grid(codes)), *self.layout.image_ids(codes),
                self.layout.special_id(EOI)]

    def _example(self, prompt: list[int], completion: list[int] | None, task: str,
                 targets: list[bool] | None = None) -> Example:
        ids = prompt + (completion or [])
        if self.max_len is not None and len(ids) > self.max_len:
            raise ValueError(f"{task} sequence of {len(ids)} tokens is longer than max_len {self.max_len}; raise "
                             f"max_len (and the model's max_seq_len) or shorten the text")
        return Example(ids, len(prompt), task, targets)

    # ---------------------------------------------------------------------------------------- builders

    def t2i(self, text: str, codes: Sequence[int] | None = None, drop_text: bool = False) -> Example:
        """``<eos> TEXT <boi> <hH> <wW> | CODES <eoi>``; ``drop_text`` gives the empty prompt."""
        prompt = [self.eos, *self._text(None if drop_text else text), *self.layout.grid_header(self._grid(codes))]
        done = None if codes is None else [*self.layout.image_ids(codes), self.layout.special_id(EOI)]
        return self._example(prompt, done, "t2i")

    def understanding(self, codes: Sequence[int], question: str, answer: str | None = None,
                      task: str = "vqa", thought: str | None = None) -> Example:
        """``<eos> IMAGE QUESTION <answer> | ANSWER <eos>`` (``task`` is "vqa" or "mme", for per-task logs). With a
        ``thought`` (a caption of the image), the caption sequence comes first and the question follows it:
        ``<eos> IMAGE <caption> THOUGHT <eos> QUESTION <answer> | ANSWER <eos>``, describe-then-answer, scored on
        the answer only (``arm.data.codes``' ``think_prob``; the sampler's ``answer_questions(think=True)``)."""
        said = [] if thought is None else [self.layout.special_id(CAPTION), *self._text(thought), self.eos]
        prompt = [self.eos, *self.image_block(codes), *said, *self._text(question), self.layout.special_id(ANSWER)]
        return self._example(prompt, None if answer is None else [*self._text(answer), self.eos], task)

    def dialogue(self, codes: Sequence[int], turns: Sequence[tuple[str, str]], task: str = "vqa") -> Example:
        """``<eos> IMAGE Q1 <answer> | A1 <eos> Q2 <answer> A2 <eos> ...``: several questions about one image in one
        sequence, as multi-turn visual instruction data is (LLaVA, Liu et al. 2023, §4), scoring only each turn's
        ``ANSWER <eos>``. One turn is exactly ``understanding``."""
        if not turns:
            raise ValueError("a dialogue needs at least one (question, answer) turn")
        answer_id = self.layout.special_id(ANSWER)
        first_q, first_a = turns[0]
        prompt = [self.eos, *self.image_block(codes), *self._text(first_q), answer_id]
        completion = [*self._text(first_a), self.eos]
        targets = [False] * len(prompt) + [True] * len(completion)
        for question, answer in turns[1:]:
            asked, said = [*self._text(question), answer_id], [*self._text(answer), self.eos]
            completion += asked + said
            targets += [False] * len(asked) + [True] * len(said)
        return self._example(prompt, completion, task, targets if len(turns) > 1 else None)

    def caption(self, codes: Sequence[int], caption: str | None = None) -> Example:
        """``<eos> IMAGE <caption> | CAPTION <eos>``."""
        prompt = [self.eos, *self.image_block(codes), self.layout.special_id(CAPTION)]
        return self._example(prompt, None if caption is None else [*self._text(caption), self.eos], "caption")

    def edit(self, source: Sequence[int], instruction: str, target: Sequence[int] | None = None,
             drop_text: bool = False, drop_image: bool = False) -> Example:
        """``<eos> SOURCE INSTRUCTION <boi> <hH> <wW> | TARGET <eoi>`` (or INSTRUCTION SOURCE, by ``edit_layout``);
        either condition can be dropped."""
        grid = self._grid(source) if target is None else self._grid(target)
        image = [] if drop_image else self.image_block(source)
        text = self._text(None if drop_text else instruction)
        conditions = image + text if self.edit_layout == "source_first" else text + image
        prompt = [self.eos, *conditions, *self.layout.grid_header(grid)]
        done = None if target is None else [*self.layout.image_ids(target), self.layout.special_id(EOI)]
        return self._example(prompt, done, "edit")

    # ---------------------------------------------------------------------------------------- inference

    def t2i_prompt(self, text: str, drop_text: bool = False) -> list[int]:
        return self.t2i(text, drop_text=drop_text).prompt

    def t2i_prompts(self, text: str) -> tuple[list[int], list[int]]:
        """(conditional, unconditional) prompts for CFG."""
        return self.t2i_prompt(text), self.t2i_prompt(text, drop_text=True)

    def edit_prompt(self, source: Sequence[int], instruction: str, drop_text: bool = False,
                    drop_image: bool = False) -> list[int]:
        return self.edit(source, instruction, drop_text=drop_text, drop_image=drop_image).prompt

    def edit_prompts(self, source: Sequence[int], instruction: str) -> tuple[list[int], list[int], list[int]]:
        """(conditional, image-only, unconditional) prompts for two-branch edit guidance."""
        return (self.edit_prompt(source, instruction), self.edit_prompt(source, instruction, drop_text=True),
                self.edit_prompt(source, instruction, drop_text=True, drop_image=True))

    def vqa_prompt(self, codes: Sequence[int], question: str, thought: str | None = None) -> list[int]:
        return self.understanding(codes, question, thought=thought).prompt

    def caption_prompt(self, codes: Sequence[int]) -> list[int]:
        return self.caption(codes).prompt


# ------------------------------------------------------------------------------------------- dropout


@dataclass
class ConditionDropout:
    """Probabilities of dropping conditions from training sequences (classifier-free guidance).

    Attributes:
        t2i_text: a t2i prompt becomes the empty prompt.
        edit_text: an edit loses its instruction only.
        edit_image: an edit loses its source image only.
        edit_both: an edit loses both (its prompt is then the t2i empty prompt).
    """

    t2i_text: float = 0.1
    edit_text: float = 0.05
    edit_image: float = 0.05
    edit_both: float = 0.05

    def __post_init__(self) -> None:
        for name in ("t2i_text", "edit_text", "edit_image", "edit_both"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ConditionDropout.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.edit_text + self.edit_image + self.edit_both > 1.0:
            raise ValueError("ConditionDropout: edit_text + edit_image + edit_both must not exceed 1")

    def draw(self, task: str, rng: random.Random) -> tuple[bool, bool]:
        """(drop_text, drop_image) for one training sequence of ``task``."""
        if task == "t2i":
            return rng.random() < self.t2i_text, False
        if task == "edit":
            u = rng.random()
            if u < self.edit_both:
                return True, True
            if u < self.edit_both + self.edit_text:
                return True, False
            return False, u < self.edit_both + self.edit_text + self.edit_image
        return False, False


# ------------------------------------------------------------------------------------ batching/padding


def bucket_batches(lengths: Sequence[int], batch_size: int, rng: random.Random | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of similar length (length bucketing).

    Sorted by length, cut into ``batch_size`` runs; with ``rng`` the full batches come in random order. A
    smaller remainder batch always comes last, so concatenated batches stay aligned to ``batch_size``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    rest = batches.pop() if batches and len(batches[-1]) < batch_size else None
    if rng is not None:
        rng.shuffle(batches)
    return batches + ([rest] if rest else [])


def padding_fraction(batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when each batch (a list of sequence lengths) pads to its longest sequence."""
    real = sum(sum(b) for b in batches)
    total = sum(len(b) * max(b) for b in batches if b)
    return 1.0 - real / total if total else 0.0


def example_tensors(example: Example, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (width,) and loss mask (width,): True on the targets (positions >= prompt_len)."""
    n = len(example.ids)
    if n > width:
        raise ValueError(f"sequence of {n} tokens does not fit a batch of width {width}")
    ids = torch.full((width,), pad_id, dtype=torch.long)
    ids[:n] = torch.tensor(example.ids, dtype=torch.long)
    loss = torch.zeros(width, dtype=torch.bool)
    if example.targets is None:
        loss[example.prompt_len: n] = True
    else:
        loss[:n] = torch.tensor(example.targets, dtype=torch.bool)
    return ids, loss


def collate_examples(examples: Sequence[Example], pad_id: int) -> dict:
    """A batch: ``ids`` (B, T) right-padded to the longest, ``loss_mask`` (B, T), ``task`` (list of B)."""
    width = max(len(e) for e in examples)
    ids, loss = zip(*(example_tensors(e, width, pad_id) for e in examples))
    return {"ids": torch.stack(ids), "loss_mask": torch.stack(loss), "task": [e.task for e in examples]}
