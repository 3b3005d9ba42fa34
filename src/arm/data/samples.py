"""ShapeWorld shard discovery, per-task sample builders and the batch collate function.

A ShapeWorld shard is a WebDataset tar whose samples have ``.png`` (scene), ``.edit.png`` (the scene after the
sample's edit), ``.mask.png`` (255 where the edit may change pixels) and ``.json`` (scene, caption, benchmark
records, edit). This module turns one raw sample (member suffix -> bytes, as webdataset's tar reader yields it)
into the dict a model of a given task consumes. It imports neither lightning nor the datamodule, so the text
tokenizer and evaluation code can use it cheaply.

Deliberate simplifications:
- A builder decodes only the members its task needs, so a broken ``.edit.png`` does not cost a caption sample.
- The VQA builder picks one question per sample and epoch (seeded by ``(seed, epoch, key)``) instead of
  expanding a sample into all its questions, so an epoch has one item per image for every task.
- The MME builder keeps the sample's question pair together, because MME's ``acc+`` scores the pair.
- Images are float32 ``(3, H, W)`` in [0, 1]; any normalisation belongs to the model.
"""

from __future__ import annotations

import glob
import json
import os
import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import braceexpand
import numpy as np
import torch

from arm.data.shapeworld.render import decode_png

SHARD_COMMAND = "arm data shapeworld --out DIR"
"""The command that writes ShapeWorld shards; named in 'no shards found' errors."""

TASKS = ("caption", "t2i", "vqa", "mme", "edit", "scene")
"""Task names ``build_sample`` accepts."""


# ------------------------------------------------------------------------------------------ shard discovery


def expand_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand a shard specification into a list of tar paths.

    ``spec`` is a directory (every ``*.tar`` in it, sorted), a glob (``data/train/*.tar``), brace notation
    (``shard-{000000..000009}.tar``, expanded with ``braceexpand`` as webdataset does; every path must exist), a
    comma-free plain path, or a list of any of these (expanded in order, duplicates kept once).

    Raises ``FileNotFoundError`` with a one-line message naming the spec when nothing matches.
    """
    if isinstance(spec, (list, tuple)):
        out: list[str] = []
        for part in spec:
            for path in expand_shards(part):
                if path not in out:
                    out.append(path)
        if not out:
            raise FileNotFoundError(f"no shards found for an empty shard list; create shards with `{SHARD_COMMAND}`")
        return out
    pattern = os.fspath(spec)
    if os.path.isdir(pattern):
        found = sorted(glob.glob(os.path.join(glob.escape(pattern), "*.tar")))
        if not found:
            entries = sorted(os.listdir(pattern))
            listing = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") if entries else "nothing"
            raise FileNotFoundError(
                f"no *.tar shards in directory {pattern!r} (it contains: {listing}); "
                f"create shards with `{SHARD_COMMAND}`"
            )
        return found
    found: list[str] = []
    missing: list[str] = []
    for expanded in braceexpand.braceexpand(pattern):
        if glob.has_magic(expanded):
            found.extend(sorted(glob.glob(expanded)))
        elif os.path.isfile(expanded):
            found.append(expanded)
        else:
            missing.append(expanded)
    if not found:
        raise FileNotFoundError(f"no shards match {pattern!r}; create shards with `{SHARD_COMMAND}`")
    if missing:
        # A brace range that names a shard which is not there is a truncated copy: fail rather than train on less.
        raise FileNotFoundError(f"{len(missing)} shard(s) named by {pattern!r} do not exist, first: {missing[0]!r}")
    return found


# ----------------------------------------------------------------------------------------------- decoding


def decode_image(data: bytes) -> torch.Tensor:
    """PNG bytes -> float32 ``(3, H, W)`` in [0, 1]."""
    arr = decode_png(data)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)


def decode_mask(data: bytes) -> torch.Tensor:
    """Greyscale mask PNG bytes -> bool ``(H, W)``, True where the edit may change pixels."""
    # decode_png converts grey to RGB; any channel holds the mask value.
    return torch.from_numpy(decode_png(data)[:, :, 0] >= 128)


def decode_json(data: bytes) -> dict:
    meta = json.loads(data.decode("utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"sample json is a {type(meta).__name__}, expected an object")
    return meta


def _member(raw: dict, suffix: str) -> bytes:
    if suffix not in raw:
        present = sorted(k for k in raw if not k.startswith("__"))
        raise KeyError(f"member .{suffix} missing (sample has {present})")
    return raw[suffix]


# ------------------------------------------------------------------------------------------------ builders


def pick_index(n: int, seed: int, key: str, epoch: int, stream: str) -> int:
    """A deterministic choice in ``range(n)`` for one sample: a pure function of its arguments.

    String seeds go through SHA-512 in ``random.seed``, so the choice is the same in every process and run.
    """
    return random.Random(f"{stream}/{seed}/{epoch}/{key}").randrange(n)


def _caption(raw: dict, meta: dict, seed: int, epoch: int) -> dict:
    return {"key": raw["__key__"], "image": decode_image(_member(raw, "png")), "text": meta["caption"]}


def _t2i(raw: dict, meta: dict, seed: int, epoch: int) -> dict:
    geneval = meta.get("geneval")
    text = geneval["prompt"] if geneval and geneval.get("prompt") else meta["caption"]
    return {"key": raw["__key__"], "image": decode_image(_member(raw, "png")), "text": text}


def _vqa(raw: dict, meta: dict, seed: int, epoch: int) -> dict:
    items = meta["vqa"]
    if not items:
        raise ValueError("sample has no vqa items")
    item = items[pick_index(len(items), seed, raw["__key__"], epoch, "vqa")]
    return {
        "key": raw["__key__"],
        "image": decode_image(_member(raw, "png")),
        "question": item["question"],
        "answer": str(item["answer"]),
        "qtype": item.get("type", ""),
    }


def _mme(raw: dict, meta: dict, seed: int, epoch: int) -> dict:
    items = meta["mme"]
    if not items:
        raise ValueError("sample has no mme items")
    return {
        "key": raw["__key__"],
        "image": decode_image(_member(raw, "png")),
        "questions": [it["question"] for it in items],
        "answers": [str(it["answer"]) for it in items],
    }


def _edit(raw: dict, meta: dict, seed: int, epoch: int) -> dict:
    image = decode_image(_member(raw, "png"))
    target = decode_image(_member(raw, "edit.png"))
    mask = decode_mask(_member(raw, "mask.png"))
    if target.shape != image.shape or mask.shape != image.shape[1:]:
        raise ValueError(f"edit sizes differ: image {tuple(image.shape)}, target {tuple(target.shape)}, "
                         f"mask {tuple(mask.shape)}")
    edit = meta["edit"]
    return {
        "key": raw["__key__"],
        "image": image,
        "target": target,
        "mask": mask,
        "instruction": edit["instruction"],
        "edit_type": edit["type"],
    }


def _scene(raw: dict, meta: dict, seed: int, epoch: int) -> dict:
    return {"key": raw["__key__"], "image": decode_image(_member(raw, "png")), "meta": meta}


BUILDERS: dict[str, Callable[[dict, dict, int, int], dict]] = {
    "caption": _caption,
    "t2i": _t2i,
    "vqa": _vqa,
    "mme": _mme,
    "edit": _edit,
    "scene": _scene,
}


def check_task(task: str) -> str:
    if task not in BUILDERS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(BUILDERS)}")
    return task


def build_sample(raw: dict, task: str, seed: int = 0, epoch: int = 0) -> dict:
    """Turn a raw webdataset sample (``__key__`` plus member suffix -> bytes) into the task's sample dict.

    Fields per task (``image``/``target`` are float32 ``(3, H, W)`` in [0, 1], ``mask`` is bool ``(H, W)``):
    - ``caption``: key, image, text (the caption).
    - ``t2i``: key, image, text (the GenEval prompt when the sample has one, else the caption).
    - ``vqa``: key, image, question, answer, qtype (one vqa item, chosen by ``(seed, epoch, key)``).
    - ``mme``: key, image, questions, answers (the sample's MME pair, in order).
    - ``edit``: key, image, target, mask, instruction, edit_type.
    - ``scene``: key, image, meta (the whole parsed json, for evaluation).

    Raises whatever decoding raises (``KeyError``, ``ValueError``, ``OSError``...); the stream counts it.
    """
    meta = decode_json(_member(raw, "json"))
    return BUILDERS[check_task(task)](raw, meta, seed, epoch)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensor fields into a batch dimension; keep every other field (str, list, dict) as a list."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        batch[name] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


# -------------------------------------------------------------------------------------------------- texts


def sample_texts(meta: dict) -> dict[str, list[str]]:
    """Every text a sample's json holds, by field: caption, geneval, wise, vqa, mme, edit."""
    out: dict[str, list[str]] = {"caption": [], "geneval": [], "wise": [], "vqa": [], "mme": [], "edit": []}
    if meta.get("caption"):
        out["caption"].append(meta["caption"])
    if meta.get("geneval") and meta["geneval"].get("prompt"):
        out["geneval"].append(meta["geneval"]["prompt"])
    if meta.get("wise") and meta["wise"].get("Prompt"):
        out["wise"].append(meta["wise"]["Prompt"])
    for item in meta.get("vqa") or []:
        out["vqa"].extend(str(item[f]) for f in ("question", "answer") if item.get(f) is not None)
    for item in meta.get("mme") or []:
        out["mme"].extend(str(item[f]) for f in ("question", "answer") if item.get(f) is not None)
    if meta.get("edit") and meta["edit"].get("instruction"):
        out["edit"].append(meta["edit"]["instruction"])
    return out


def iter_json(shards: Iterable[str]) -> Iterable[tuple[str, dict]]:
    """``(key, parsed json)`` for every sample of the shards, in order; reads only the json members.

    A json that does not parse is skipped with a warning; a tar that cannot be read raises.
    """
    import webdataset as wds  # local: keeps `import arm.data.samples` light for callers that only build samples

    src = [{"url": s} for s in shards]
    for raw in wds.tarfile_samples(src, select_files=lambda name: name.endswith(".json")):
        if "json" not in raw:
            continue
        try:
            meta = decode_json(raw["json"])
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            warnings.warn(f"skipping sample {raw['__key__']!r} with unreadable json: {error}", stacklevel=2)
            continue
        yield raw["__key__"], meta
