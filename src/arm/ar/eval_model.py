"""An AR export behind the eval harness's model interface (``arm.eval.interface``), and its CFG grid (ARM fig. 4).

``load_for_eval(path)`` returns an ``AREvalModel``: the four interface calls on uint8 ``(H, W, 3)`` images, run
through the same inference helpers as ``arm generate|edit|ask`` and ARModule's validation (``arm.ar.commands``):

- ``generate(prompts, n, seed)``: text-to-image with CFG against the empty prompt, ``n`` images per prompt, rows
  batched ``batch_size`` at a time through the KV-cache sampler, codes decoded by the export's image tokenizer.
- ``edit(images, instructions, seed)``: each source image is encoded to codes by the image tokenizer, then edited
  with two-branch guidance (text scale ``text_cfg``, image scale ``image_cfg``).
- ``answer(images, questions)``: greedy decoding on the VQA format the model trains on (``<eos> IMAGE QUESTION
  <answer> |``), at most ``max_new_tokens``, normalised as validation's ``vqa_acc`` normalises (lower case, no
  final full stop), so an answer the model learned reads exactly as the training answer. With ``think=1``
  (``--sampling think=1``; for a model trained with ``data.think_prob``) each image is first described greedily
  and the question asked after that caption (``answer_questions(think=True)``): describe, then answer.
- ``loglikelihood(images, questions, answers)``: summed log-probability of ``ANSWER <eos>`` (the scored part of a
  training sequence) after the VQA prompt; for the caption protocol's question the caption prompt (``<eos> IMAGE
  <caption> |``) is used, since that is how the model learned to caption.

Sampling defaults are the ones the export's validation used (``arm.ar.module.validation_sampling``, stored in the
export's config.json; ARModule's defaults for exports written without them), so ``arm eval`` numbers and the
training curves sample alike; ``arm eval ... --sampling KEY=VALUE`` overrides one. Every setting in use is in
``model.settings``, which ``arm eval`` writes into each summary's config.

Determinism: one ``torch.Generator`` seeded with ``seed`` per call drives the sampler and the pixel decoder, so the
same call with the same seed, settings and batch size gives the same images; a different ``batch_size`` groups the
random draws differently.

Precision: ``precision="fp32"`` (default) runs everything in the parameters' dtype (fp32 for an export);
``"bf16"`` runs image sampling and the pixel decoder (``generate``, ``edit``) under bf16 autocast, so the sampler's
packed matrices are bf16 (``arm.ar.sampling``) and the decoder's matmuls too: ~1.3x faster image generation on
2 cores (the demo uses it; experiments/LOG.md). Answers and log-likelihoods stay fp32 in both: they are cheap, and
a log-likelihood is a score that should not move with the precision.

Deliberate simplifications:
- Input images must be square; one of another side is resized (bicubic) to the tokenizer's, as ``arm ask`` does.
  Outputs come at the tokenizer's side.
- One device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arm.ar.commands import (
    answer_questions,
    describe_images,
    edit_codes,
    generate_codes,
    normalize_answer,
    pixels_to_tensor,
    to_uint8,
)
from arm.ar.module import ARBundle, load_ar_bundle, validation_sampling
from arm.ar.sampling import SamplingConfig, continuation_logprobs
from arm.eval.interface import EvalModel, Image

SAMPLING_KEYS = ("cfg", "text_cfg", "image_cfg", "temperature", "edit_temperature", "top_k", "top_p", "decoder_steps",
                 "decoder_cfg", "edit_decoder_cfg")
EDIT_FALLBACKS = {"edit_temperature": "temperature", "edit_decoder_cfg": "decoder_cfg"}
"""Edit settings that an export written before them lacks: such an export edits as it draws from text."""
MAX_ANSWER_TOKENS = 16
"""New tokens of a greedy answer: validation's ``answer_accuracy`` uses ``answer_questions``' default, 16."""


def _caption_question() -> str:
    from arm.eval.understanding import CAPTION_QUESTION

    return CAPTION_QUESTION


class AREvalModel(EvalModel):
    """An ``ARBundle`` behind ``EvalModel``; build it with ``load_for_eval``."""

    def __init__(self, bundle: ARBundle, checkpoint: str, settings: dict[str, Any]):
        if bundle.image_tokenizer is None:
            raise ValueError(f"the AR export {checkpoint!r} names no image tokenizer export; it cannot read or draw "
                             "images, so it cannot be evaluated")
        self.bundle, self.checkpoint, self._settings = bundle, str(checkpoint), dict(settings)
        self.device = next(bundle.model.parameters()).device

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    # ------------------------------------------------------------------------------------------ pieces

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _config(self, temperature: float, **guidance: float) -> SamplingConfig:
        s = self.settings
        return SamplingConfig(temperature=temperature, top_k=s["top_k"], top_p=s["top_p"], **guidance)

    def encode_images(self, images: Sequence[Image]) -> list[list[int]]:
        """Image codes (one list per image) of uint8 (H, W, 3) images, by the export's image tokenizer."""
        tok, out = self.bundle.image_tokenizer, []
        for start in range(0, len(images), self.settings["batch_size"]):
            pixels = pixels_to_tensor(images[start: start + self.settings["batch_size"]], tok.image_size)
            out += tok.encode(pixels.to(self.device)).tolist()
        return out

    def _decode(self, codes: torch.Tensor, generator: torch.Generator, decoder_cfg: float) -> list[Image]:
        images = self.bundle.image_tokenizer.decode(codes, self.settings["decoder_steps"], decoder_cfg, generator)
        return list(to_uint8(images.float()))

    def _precision(self):
        """The autocast context of image sampling and decoding (``precision``: fp32 = none, bf16 = bf16 autocast)."""
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.settings["precision"] == "bf16")

    def _rows(self, total: int):
        size = self.settings["batch_size"]
        return (range(start, min(start + size, total)) for start in range(0, total, size))

    # ---------------------------------------------------------------------------------------- interface

    @torch.no_grad()
    def generate_with(self, prompts: Sequence[str], n: int, seed: int, cfg: float | None = None,
                      decoder_cfg: float | None = None) -> list[list[Image]]:
        """``generate`` at AR-side scale ``cfg`` and decoder-side scale ``decoder_cfg`` (None: the settings')."""
        if n < 1:
            raise ValueError(f"n (images per prompt) must be >= 1, got {n}")
        cfg = self.settings["cfg"] if cfg is None else float(cfg)
        decoder_cfg = self.settings["decoder_cfg"] if decoder_cfg is None else float(decoder_cfg)
        texts = [p for p in prompts for _ in range(n)]  # prompt-major: rows i*n .. i*n+n-1 belong to prompt i
        generator, images = self._generator(seed), []
        for rows in self._rows(len(texts)):
            with self._precision():
                codes = generate_codes(self.bundle.model, self.bundle.builder, [texts[i] for i in rows],
                                       self._config(self.settings["temperature"], cfg_scale=cfg), generator)
                images += self._decode(codes, generator, decoder_cfg)
        return [images[i * n: (i + 1) * n] for i in range(len(prompts))]

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Image]]:
        return self.generate_with(prompts, n, seed)

    @torch.no_grad()
    def edit(self, images: Sequence[Image], instructions: Sequence[str], seed: int) -> list[Image]:
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions: give one per image")
        sources, generator, out = self.encode_images(images), self._generator(seed), []
        config = self._config(self.settings["edit_temperature"], text_scale=self.settings["text_cfg"],
                              image_scale=self.settings["image_cfg"])
        for rows in self._rows(len(sources)):
            with self._precision():
                codes = edit_codes(self.bundle.model, self.bundle.builder, [sources[i] for i in rows],
                                   [instructions[i] for i in rows], config, generator)
                out += self._decode(codes, generator, self.settings["edit_decoder_cfg"])
        return out

    @torch.no_grad()
    def answer(self, images: Sequence[Image], questions: Sequence[str]) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions: give one per image")
        codes, size, out = self.encode_images(images), self.settings["answer_batch_size"], []
        for start in range(0, len(codes), size):
            replies = answer_questions(self.bundle.model, self.bundle.builder, codes[start: start + size],
                                       questions[start: start + size], self.settings["max_new_tokens"],
                                       think=bool(self.settings["think"]))
            out += [normalize_answer(r) for r in replies]
        return out

    @torch.no_grad()
    def describe(self, images: Sequence[Image]) -> list[str]:
        """Greedy ``<caption>`` sequences (``describe_images``): what the model says it sees."""
        codes, size, out = self.encode_images(images), self.settings["answer_batch_size"], []
        for start in range(0, len(codes), size):
            out += describe_images(self.bundle.model, self.bundle.builder, codes[start: start + size])
        return out

    @torch.no_grad()
    def loglikelihood(self, images: Sequence[Image], questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        if not len(images) == len(questions) == len(answers):
            raise ValueError(f"{len(images)} images, {len(questions)} questions and {len(answers)} answers: give "
                             "one question and one answer per image")
        builder, caption = self.bundle.builder, _caption_question()
        codes = self.encode_images(images)
        prefixes = [builder.caption_prompt(c) if q in (caption, "") else builder.vqa_prompt(c, q)
                    for c, q in zip(codes, questions)]
        continuations = [[*builder.tokenizer.encode(a), builder.eos] for a in answers]
        size, out = self.settings["answer_batch_size"], []
        for start in range(0, len(prefixes), size):
            out += continuation_logprobs(self.bundle.model, prefixes[start: start + size],
                                         continuations[start: start + size]).tolist()
        return out


PRECISIONS = ("fp32", "bf16")


def load_for_eval(path: str, *, device: str = "cpu", batch_size: int = 64, answer_batch_size: int = 64,
                  max_new_tokens: int = MAX_ANSWER_TOKENS, precision: str = "fp32", think: int = 0,
                  **sampling: float | int | None) -> AREvalModel:
    """The AR export at ``path`` as an ``AREvalModel``.

    ``sampling`` overrides the export's validation sampling settings; keys: ``cfg`` (text-to-image CFG),
    ``text_cfg`` and ``image_cfg`` (edit guidance), ``temperature`` (text-to-image), ``edit_temperature`` (edits;
    where neither the export nor ``sampling`` sets it, the same as ``temperature``, as before it existed),
    ``top_k``, ``top_p``, ``decoder_steps``, ``decoder_cfg`` (text-to-image), ``edit_decoder_cfg`` (edits; where
    neither the export nor ``sampling`` sets it, the same as ``decoder_cfg``); a value of None keeps the export's.
    ``batch_size``: image rows per sampler call (each runs 2-3 guidance branches; 64 measured fastest for the demo's
    AR export on 2 cores, GenEval with one image per prompt: 42.4 s against 47.4 / 53.3 / 50.1 s at 32 / 16 / 128,
    same scores);
    ``answer_batch_size``: rows per answer / log-likelihood batch; ``precision``: ``fp32`` or ``bf16`` (image
    sampling and decoding under bf16 autocast; see the module docstring); ``think``: 1 = describe, then answer
    (``answer``; see the module docstring), 0 = answer directly.
    """
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling setting(s) {unknown}; expected some of {list(SAMPLING_KEYS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    for name, value in (("batch_size", batch_size), ("answer_batch_size", answer_batch_size),
                        ("max_new_tokens", max_new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if think not in (0, 1):
        raise ValueError(f"think is 0 (answer directly) or 1 (describe, then answer), got {think!r}")
    bundle = load_ar_bundle(path, device)
    stored = bundle.meta.get("sampling")
    given = {**(stored or {}), **{k: v for k, v in sampling.items() if v is not None}}
    settings = {**validation_sampling(), **given}
    for edit_key, t2i_key in EDIT_FALLBACKS.items():
        if edit_key not in given:
            settings[edit_key] = settings[t2i_key]
    settings = {k: int(v) if k in ("top_k", "decoder_steps") else float(v) for k, v in settings.items()}
    for key in ("temperature", "edit_temperature"):  # checks
        SamplingConfig(temperature=settings[key], top_k=settings["top_k"], top_p=settings["top_p"])
    settings.update(source="export" if stored else "ARModule defaults (the export holds none)",
                    answer="greedy", max_new_tokens=max_new_tokens, batch_size=batch_size,
                    answer_batch_size=answer_batch_size, device=str(device), input_resize="bicubic",
                    precision=precision, think=int(think))
    return AREvalModel(bundle, path, settings)


# ---------------------------------------------------------------------------------------------- CFG grid


def read_prompts(prompts: str | None = None, bench: str | None = None, limit: int = 4) -> list[str]:
    """Prompts for the CFG grid: a text file (one per line), a JSON / JSONL file of records with ``prompt`` or
    ``Prompt``, or a bench folder's ``geneval.jsonl`` (the first prompt of each tag, in file order); at most
    ``limit``."""
    from arm.eval.common import read_records

    if (prompts is None) == (bench is None):
        raise ValueError("give exactly one of --prompts FILE and --bench DIR")
    if bench is not None:
        records, seen = read_records(Path(bench) / "geneval.jsonl"), {}
        for r in records:
            seen.setdefault(r.get("tag"), r["prompt"])
        found = list(seen.values())
    elif Path(prompts).suffix in (".json", ".jsonl"):
        found = [r.get("prompt", r.get("Prompt")) for r in read_records(prompts)]
        if None in found:
            raise ValueError(f"every record of {prompts} needs a `prompt` (or WISE's `Prompt`) field")
    else:
        if not Path(prompts).is_file():
            raise FileNotFoundError(f"no prompt file at {prompts!r} (one prompt per line)")
        found = [line.strip() for line in Path(prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not found:
        raise ValueError(f"no prompts in {prompts or bench}")
    return found[:limit]


def cfg_grid(model: AREvalModel, prompts: Sequence[str], ar_scales: Sequence[float], dec_scales: Sequence[float],
             out: str | Path, seed: int = 0) -> Path:
    """``OUT/cfg_grid``: every prompt at every AR-side x decoder-side CFG (``write_cfg_grid``), each drawn with the
    same ``seed`` so that the grid shows the guidance, not the noise; ``settings.json`` beside it records how.

    Images already there are kept (a cut-off run resumes), so a folder drawn with other settings is refused.
    """
    from arm.eval.figures_grids import CFG_DIR, write_cfg_grid
    from arm.eval.results import checkpoint_hash
    from arm.io import write_json_atomic

    skip = ("cfg", "decoder_cfg", "edit_decoder_cfg")  # the grid's axes, and a setting it does not use
    record = {**{k: v for k, v in model.settings.items() if k not in skip}, "seed": int(seed),
              "checkpoint": model.checkpoint, "checkpoint_sha256": checkpoint_hash(model.checkpoint)}
    path = Path(out) / CFG_DIR / "settings.json"
    stored = json.loads(path.read_text()) if path.is_file() else None
    if stored is not None and {**stored, "checkpoint": None} != {**record, "checkpoint": None}:  # the sha names it
        raise ValueError(f"{path.parent} holds images drawn with other settings or another checkpoint; choose a new "
                         "--out or delete that folder")
    write_json_atomic(path, record)

    def draw(prompt: str, ar_cfg: float, dec_cfg: float) -> np.ndarray:
        return model.generate_with([prompt], 1, seed, cfg=ar_cfg, decoder_cfg=dec_cfg)[0][0]

    return write_cfg_grid(draw, prompts, ar_scales, dec_scales, out)
