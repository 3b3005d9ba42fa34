"""``arm generate``, ``arm edit``, ``arm ask``: the AR export at work, and the inference helpers validation reuses.

- ``arm generate --ckpt AR --prompt "..." --out DIR``: text-to-image with classifier-free guidance (``--cfg``,
  ARM: 1.5), decoded by the image tokenizer the export points to.
- ``arm edit --ckpt AR --image IMG --instruction "..." --out DIR``: two-branch guidance as ARM (text scale
  ``--cfg`` 1.5, image scale ``--image-cfg`` 1.25): conditional, image-only and unconditional prompts.
- ``arm ask --ckpt AR --image IMG --question "..."``: greedy answer (``--temperature`` > 0 samples), printed.

``--ckpt`` is the folder ``arm ar fit`` exports (``<default_root_dir>/ar``). Output names carry every sampling
setting, as LlamaGen's do: ``<prompt>-cfg1.5-temp1-topk50-topp1-seed0-dsteps10-000.png`` plus a JSON of settings.
Square input images are resized (bicubic) to the image tokenizer's side when they differ; other shapes are a
one-line error. ``load_for_eval`` puts an export behind the eval harness (``arm.ar.eval_model``).

Heavy imports happen inside functions, so ``arm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

COMMANDS = ("generate", "edit", "ask")


# ---------------------------------------------------------------------------------------- inference


def _sampling(name: str):
    import arm.ar.sampling as sampling

    return getattr(sampling, name)


def _check_context(model, prompts: Sequence[Sequence[int]], num_new: int) -> None:
    from arm.ar.sequences import check_fits

    for prompt in prompts:
        check_fits(len(prompt), num_new, model.config.max_seq_len)


def generate_codes(model, builder, texts: Sequence[str], config, generator=None):
    """Image codes (B, H*W) for text prompts; CFG against the empty prompt when ``config.cfg_scale != 1``."""
    pairs = [builder.t2i_prompts(t) for t in texts]
    prompts, uncond = [p for p, _ in pairs], [u for _, u in pairs]
    num = builder.grid[0] * builder.grid[1]
    _check_context(model, prompts, num)
    return _sampling("sample_image_codes")(model, prompts, num, config,
                                          uncond=uncond if config.cfg_scale != 1.0 else None, generator=generator)


def edit_codes(model, builder, sources: Sequence[Sequence[int]], instructions: Sequence[str], config,
               generator=None):
    """Edited image codes (B, H*W): two-branch guidance with the image-only and unconditional prompts."""
    triples = [builder.edit_prompts(s, i) for s, i in zip(sources, instructions)]
    prompts = [t[0] for t in triples]
    num = builder.grid[0] * builder.grid[1]
    _check_context(model, prompts, num)
    return _sampling("sample_image_codes")(model, prompts, num, config, uncond=[t[2] for t in triples],
                                          image_only=[t[1] for t in triples], generator=generator)


def fit_text(tokenizer, text: str, room: int) -> str:
    """``text`` cut to a prefix that encodes to at most ``room`` tokens (``text`` itself when it fits). A cut can
    re-encode longer than the ids it was decoded from (other BPE merges across the cut), so it is cut shorter until
    it fits."""
    ids, keep = tokenizer.encode(text), room
    while len(ids) > room:
        text = tokenizer.decode(ids[:keep])
        ids, keep = tokenizer.encode(text), keep - 1
    return text


def answer_questions(model, builder, codes: Sequence[Sequence[int]], questions: Sequence[str],
                     max_new_tokens: int = 16, config=None, generator=None, think: bool = False,
                     thoughts: Sequence[str] | None = None) -> list[str]:
    """Decoded answers to ``questions`` about the images ``codes`` (greedy unless ``config`` says otherwise).
    ``think``: describe, then answer: each image's greedy caption (``describe_images``, or ``thoughts`` where
    given) goes before its question (``SequenceBuilder.understanding(thought=...)``), cut to the context left for
    the question and the answer."""
    if think and thoughts is None:
        thoughts = describe_images(model, builder, codes)
    cut: list[str | None] = [None] * len(codes)
    if think:
        cut = []
        for c, q, caption in zip(codes, questions, thoughts):
            direct = len(builder.vqa_prompt(c, q)) + 2  # + <caption> ... <eos>
            room = max(model.config.max_seq_len - max_new_tokens - direct, 0)
            cut.append(fit_text(builder.tokenizer, caption, room))
    prompts = [builder.vqa_prompt(c, q, t) for c, q, t in zip(codes, questions, cut)]
    _check_context(model, prompts, max_new_tokens)
    kwargs = {} if config is None else {"config": config}
    new = _sampling("generate_text")(model, prompts, max_new_tokens, builder.eos, generator=generator, **kwargs)
    return _decode_replies(builder, new)


MAX_CAPTION_TOKENS = 128
"""New tokens of a greedy caption: the world's captions are 28 tokens on average (the demo's BPE), 4 objects at most."""


def describe_images(model, builder, codes: Sequence[Sequence[int]],
                    max_new_tokens: int = MAX_CAPTION_TOKENS) -> list[str]:
    """Greedy captions of the images ``codes`` from the ``<caption>`` prompt (the captioning sequence the model
    trains on), each at most ``max_new_tokens`` tokens, or fewer where the context is shorter."""
    prompts = [builder.caption_prompt(c) for c in codes]
    room = model.config.max_seq_len - max((len(p) for p in prompts), default=0)
    if room < 1:
        _check_context(model, prompts, 1)  # raises, naming the prompt length and the context
    new = _sampling("generate_text")(model, prompts, min(max_new_tokens, room), builder.eos)
    return _decode_replies(builder, new)


def _decode_replies(builder, new: Sequence[Sequence[int]]) -> list[str]:
    """The text of each row of generated ids, up to its first non-text id, stripped."""
    return [builder.tokenizer.decode(_text_prefix(ids, builder.tokenizer.vocab_size)).strip() for ids in new]


def _text_prefix(ids: Sequence[int], text_vocab: int) -> list[int]:
    """``ids`` up to the first one that is not text: a special token (<boi> ...) ends an answer, never its text."""
    ids = list(ids)
    cut = next((i for i, t in enumerate(ids) if t >= text_vocab), len(ids))
    return ids[:cut]


def normalize_answer(text: str) -> str:
    """Lower case, no surrounding spaces or final full stop (VQAv2-style answer normalisation, simplified)."""
    return text.strip().lower().rstrip(".").strip()


def answer_accuracy(model, builder, samples: Sequence[dict], batch_size: int = 64) -> dict[str, float]:
    """VQA accuracy over every VQA question of ``samples`` (decoded code samples) and MME acc / acc+."""
    import torch

    rows = []  # (kind, sample index, codes, question, answer)
    for i, s in enumerate(samples):
        rows += [("vqa", i, s["codes"], q["question"], str(q["answer"])) for q in s["meta"].get("vqa") or []]
        rows += [("mme", i, s["codes"], q["question"], str(q["answer"])) for q in s["meta"].get("mme") or []]
    correct = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start: start + batch_size]
            answers = answer_questions(model, builder, [r[2] for r in chunk], [r[3] for r in chunk])
            correct += [normalize_answer(a) == normalize_answer(r[4]) for a, r in zip(answers, chunk)]
    out = {}
    vqa = [c for c, r in zip(correct, rows) if r[0] == "vqa"]
    if vqa:
        out["vqa_acc"] = sum(vqa) / len(vqa)
    per_image: dict[int, list[bool]] = {}
    for c, r in zip(correct, rows):
        if r[0] == "mme":
            per_image.setdefault(r[1], []).append(c)
    if per_image:
        out["mme_acc"] = sum(map(sum, per_image.values())) / sum(map(len, per_image.values()))
        out["mme_acc_plus"] = sum(all(v) for v in per_image.values()) / len(per_image)
    return out


def sample_grids(model, builder, tokenizer_bundle, samples: Sequence[dict], cfg: float, image_cfg: float,
                 top_k: int, decode_steps: int, generator=None, edit_text_cfg: float | None = None,
                 edit_temperature: float = 1.0, decoder_cfg: float = 1.0, edit_decoder_cfg: float = 1.0) -> dict:
    """TensorBoard grids (3, H, W) in [0, 1]: ``t2i`` (generated over decoded ground truth, CFG ``cfg``,
    temperature 1) and ``edit`` (source, edited, target rows; text scale ``edit_text_cfg``, default ``cfg``;
    temperature ``edit_temperature``), every image decoded by the image tokenizer: the t2i grid at decoder-side
    scale ``decoder_cfg``, the edit grid at ``edit_decoder_cfg``."""
    import numpy as np
    import torch
    from torchvision.utils import make_grid

    SamplingConfig = _sampling("SamplingConfig")
    device = next(model.parameters()).device

    def decode(codes, scale: float) -> torch.Tensor:
        if isinstance(codes, (list, tuple)) and codes and not torch.is_tensor(codes[0]):
            codes = np.stack([np.asarray(c) for c in codes])  # a list of arrays: one array, not a slow element copy
        codes = torch.as_tensor(codes, dtype=torch.long, device=device)
        return tokenizer_bundle.decode(codes, decode_steps, scale, generator).float().clamp(0, 1).cpu()

    grids = {}
    with torch.no_grad():
        texts = [(s["meta"].get("geneval") or {}).get("prompt") or s["meta"]["caption"] for s in samples]
        drawn = generate_codes(model, builder, texts, SamplingConfig(top_k=top_k, cfg_scale=cfg), generator)
        truth = [s["codes"] for s in samples]
        images = torch.cat([decode(drawn, decoder_cfg), decode(truth, decoder_cfg)])
        grids["t2i"] = make_grid(images, nrow=len(samples), padding=1)
        edits = [s for s in samples if s["edit_codes"] is not None]
        if edits:
            sources = [s["codes"] for s in edits]
            edited = edit_codes(model, builder, sources, [s["meta"]["edit"]["instruction"] for s in edits],
                                SamplingConfig(temperature=edit_temperature, top_k=top_k, image_scale=image_cfg,
                                               text_scale=cfg if edit_text_cfg is None else edit_text_cfg), generator)
            rows = (sources, edited, [s["edit_codes"] for s in edits])
            images = torch.cat([decode(c, edit_decoder_cfg) for c in rows])
            grids["edit"] = make_grid(images, nrow=len(edits), padding=1)
    return grids


# ----------------------------------------------------------------------------------------------- CLI


def add_parsers(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    """Register ``generate``, ``edit`` and ``ask`` on the ``arm`` command's subparsers."""
    gen = sub.add_parser("generate", help="text-to-image with the AR export (CFG)", formatter_class=formatter,
                         description="Draw images for a prompt; writes PNGs whose names carry the settings.")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--num-images", type=int, default=4)
    edit = sub.add_parser("edit", help="edit an image by instruction with the AR export", formatter_class=formatter,
                          description="Edit IMG as instructed (two-branch guidance); writes PNGs.")
    edit.add_argument("--image", required=True, help="input image (PNG)")
    edit.add_argument("--instruction", required=True)
    edit.add_argument("--image-cfg", type=float, default=1.25, help="image-guidance scale (ARM: 1.25)")
    edit.add_argument("--num-images", type=int, default=1)
    ask = sub.add_parser("ask", help="answer a question about an image with the AR export", formatter_class=formatter,
                         description="Print the model's answer to a question about IMG.")
    ask.add_argument("--image", required=True, help="input image (PNG)")
    ask.add_argument("--question", required=True)
    ask.add_argument("--max-new-tokens", type=int, default=32)
    ask.add_argument("--think", action="store_true",
                     help="describe the image first (greedy caption, printed to stderr), then answer after it; for "
                          "a model trained with data.think_prob > 0")
    for parser, temperature in ((gen, 1.0), (edit, 1.0), (ask, 0.0)):
        parser.add_argument("--ckpt", required=True, help="AR export folder (arm ar fit writes <root>/ar)")
        parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
        parser.add_argument("--top-k", type=int, default=0 if parser is ask else 50, help="0 = off")
        parser.add_argument("--top-p", type=float, default=1.0)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="cpu")
        if parser is not ask:
            parser.add_argument("--out", required=True, help="output directory")
            parser.add_argument("--cfg", type=float, default=1.5, help="AR-side guidance scale (ARM: 1.5)")
            parser.add_argument("--decoder-steps", type=int, default=10, help="pixel-decoder Euler steps")
            parser.add_argument("--decoder-cfg", type=float, default=1.0, help="decoder-side guidance scale")


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "image"


def settings_stem(ns: argparse.Namespace, text: str) -> str:
    """LlamaGen-style file stem: the text and every setting that changes the picture."""
    image_cfg = f"-icfg{ns.image_cfg:g}" if getattr(ns, "image_cfg", None) is not None else ""
    return (f"{_slug(text)}-cfg{ns.cfg:g}{image_cfg}-temp{ns.temperature:g}-topk{ns.top_k}-topp{ns.top_p:g}"
            f"-seed{ns.seed}-dsteps{ns.decoder_steps}-dcfg{ns.decoder_cfg:g}")


def pixels_to_tensor(images: Sequence, side: int, names: Sequence[str] | None = None):
    """uint8 (H, W, 3) arrays (or PIL images) -> float (B, 3, side, side) in [0, 1]; a square image of another
    size is resized (bicubic), any other shape is a one-line error naming the image (``names[i]``, else its index)."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for i, image in enumerate(images):
        name = names[i] if names is not None else f"image {i}"
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{name} is a {array.dtype} array of shape {array.shape}; the AR model reads uint8 "
                             f"RGB images of shape (H, W, 3)")
        if array.shape[0] != array.shape[1]:
            raise ValueError(f"{name} is {array.shape[1]}x{array.shape[0]} pixels, but the image tokenizer "
                             f"reads square {side}x{side} images: crop or pad it to a square first")
        if array.shape[0] != side:
            array = np.asarray(Image.fromarray(array).resize((side, side), Image.BICUBIC))
        out.append(torch.from_numpy(array.copy()).permute(2, 0, 1))
    return torch.stack(out).float().div_(255.0)


def read_image(path: str, side: int):
    """A PNG/JPEG file -> float (1, 3, side, side) in [0, 1] (``pixels_to_tensor``)."""
    from PIL import Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"no image at {path}")
    return pixels_to_tensor([Image.open(path)], side, [path])


def to_uint8(images):
    """Decoded images (B, 3, H, W) in [0, 1] -> uint8 numpy (B, H, W, 3), rounded to nearest."""
    import torch

    return (images.float().clamp(0, 1).permute(0, 2, 3, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def load_for_eval(path: str, **settings):
    """The AR export at ``path`` behind the eval harness's model interface (``arm.ar.eval_model``)."""
    from arm.ar.eval_model import load_for_eval as load

    return load(path, **settings)


def _write_images(images, out: Path, stem: str, record: dict) -> list[str]:
    from arm.data.shapeworld.render import encode_png
    from arm.io import write_atomic, write_json_atomic

    paths = []
    for i, img in enumerate(to_uint8(images)):
        path = out / f"{stem}-{i:03d}.png"
        write_atomic(path, encode_png(img))
        paths.append(str(path))
    write_json_atomic(out / f"{stem}.json", {**record, "images": paths})
    return paths


def run(ns: argparse.Namespace) -> int:
    """Run one of ``COMMANDS`` from parsed arguments; prints a JSON summary (or the answer for ``ask``)."""
    import torch

    from arm.ar.module import load_ar_bundle

    bundle = load_ar_bundle(ns.ckpt, ns.device)
    if bundle.image_tokenizer is None:
        raise ValueError(f"the AR export {ns.ckpt!r} names no image tokenizer export; it cannot read or draw images")
    SamplingConfig = _sampling("SamplingConfig")
    generator = torch.Generator(device=ns.device).manual_seed(ns.seed)
    model, builder, tok = bundle.model, bundle.builder, bundle.image_tokenizer
    settings = {k: v for k, v in vars(ns).items() if k not in ("command", "func")}
    with torch.no_grad():
        if ns.command == "ask":
            codes = tok.encode(read_image(ns.image, tok.image_size).to(ns.device))[0].tolist()
            config = SamplingConfig(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p)
            thoughts = describe_images(model, builder, [codes]) if ns.think else None
            if thoughts:
                print(f"thought: {thoughts[0]}", file=sys.stderr)
            answer = answer_questions(model, builder, [codes], [ns.question], ns.max_new_tokens, config, generator,
                                      ns.think, thoughts)[0]
            print(answer)
            return 0
        out = Path(ns.out)
        if ns.command == "generate":
            if ns.num_images < 1:
                raise ValueError(f"--num-images must be >= 1, got {ns.num_images}")
            config = SamplingConfig(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p, cfg_scale=ns.cfg)
            codes = generate_codes(model, builder, [ns.prompt] * ns.num_images, config, generator)
            text = ns.prompt
        else:
            source = tok.encode(read_image(ns.image, tok.image_size).to(ns.device))[0].tolist()
            config = SamplingConfig(temperature=ns.temperature, top_k=ns.top_k, top_p=ns.top_p, text_scale=ns.cfg,
                                    image_scale=ns.image_cfg)
            codes = edit_codes(model, builder, [source] * ns.num_images, [ns.instruction] * ns.num_images, config,
                               generator)
            text = ns.instruction
        images = tok.decode(codes, ns.decoder_steps, ns.decoder_cfg, generator)
    paths = _write_images(images, out, settings_stem(ns, text), settings)
    print(json.dumps({"command": ns.command, "images": paths}))
    return 0
