"""Streaming the tokenizer's code shards into AR training sequences: a task mixture, CFG dropout, length buckets.

Code shards (``arm tokenizer encode``) mirror ShapeWorld shards sample by sample: ``KEY.json`` (the sample's
json: caption, GenEval prompt, VQA and MME questions, edit instruction), ``KEY.codes.npy`` (N,) and, for edit
samples, ``KEY.edit_codes.npy``. ``CodeStream`` is a ``ShapeWorldStream`` (same shard / rank / worker split,
shuffling, epochs and corrupt-sample counting, see ``arm.data.datamodule``) whose per-sample step builds AR
sequences (``arm.ar.sequences``) instead of image samples:

- train: one task per sample and epoch, drawn with the mixture weights from the tasks the sample supports
  (renormalised), seeded by ``(seed, epoch, key)``; condition dropout (CFG) drawn the same way. With
  ``understanding_turns`` > 1 a vqa or mme sequence asks up to that many of the sample's questions of that task,
  in a drawn order, as one dialogue (``SequenceBuilder.dialogue``). With ``existence_pairs`` p > 0, a vqa draw
  whose question is an existence question becomes, with probability p, two sequences on that image: an existence
  question about a present thing and one about a hard negative differing in one word
  (``arm.data.shapeworld.text.existence_pair``), answered yes and no. Two sequences, not one dialogue, so that the
  second answer cannot be read off the first (in a pair they are always opposite). With ``think_prob`` q > 0, a
  one-question vqa / mme sequence carries, with probability q, the sample's caption before its question
  (``SequenceBuilder.understanding(thought=...)``): describe, then answer, as ``--sampling think=1`` asks at
  evaluation with the model's own caption.
- val / test: every task with a positive weight, for every sample, without dropout, each choice (which VQA
  question, which MME question, which t2i text) fixed by ``(seed, key)``: the same sequences every time.

Batches are length-bucketed: ``bucket_pool`` batches' worth of sequences are sorted by length and cut into
batches (``arm.ar.sequences.bucket_batches``), whose order is shuffled for train; each sequence is padded to its
batch's longest, so the stream's batch collation only stacks. Batch fields: ``ids`` (B, T), ``loss_mask``
(B, T), ``task`` and ``key`` (lists), plus the stream's ``__skipped__`` / ``__worker__``.

Ids are laid out over the text tokenizer's vocabulary (``VocabLayout(tokenizer.vocab_size)``); a model whose
text block is larger (an imported LLM) remaps them (``VocabLayout.remap``).

Deliberate simplifications: a sample whose sequence is longer than ``max_len``, or whose json lacks what its
task needs, is skipped and counted like a corrupt one; the t2i text is the GenEval-style prompt when the sample
has one (a caption with probability ``t2i_caption_prob``), else the caption.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds

from arm.ar.sequences import (
    EOI,
    TASKS,
    ConditionDropout,
    Example,
    SequenceBuilder,
    VocabLayout,
    bucket_batches,
    check_edit_layout,
    example_tensors,
)
from arm.data.datamodule import ShapeWorldDataModule, ShapeWorldStream, SkipCounter
from arm.data.samples import decode_json, expand_shards, pick_index

DEFAULT_MIXTURE = {"t2i": 0.5, "vqa": 0.15, "mme": 0.05, "caption": 0.1, "edit": 0.2}
ENCODE_COMMAND = "arm tokenizer encode --ckpt TOKENIZER --shards WORLD/SPLIT --out CODES/SPLIT"


def check_mixture(mixture: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(mixture) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in the mixture; expected some of {list(TASKS)}")
    if any(w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {mixture}")
    return {t: float(w) for t, w in mixture.items() if w > 0}


def check_turns(understanding_turns: int) -> int:
    if understanding_turns < 1:
        raise ValueError(f"understanding_turns must be >= 1 (1 = one question per sequence), got "
                         f"{understanding_turns}")
    return understanding_turns


def check_one_question_option(name: str, value: float, understanding_turns: int) -> float:
    """A probability that reshapes one-question vqa / mme sequences (``existence_pairs``, ``think_prob``): in [0, 1],
    and positive only with ``understanding_turns`` 1."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {value}")
    if value > 0 and understanding_turns > 1:
        raise ValueError(f"{name} reshapes one-question vqa / mme sequences; set understanding_turns 1 with it "
                         f"(got {understanding_turns})")
    return float(value)


def existence_pair_examples(builder: SequenceBuilder, sample: dict, rng: random.Random) -> list[Example] | None:
    """Two vqa sequences on a code sample's image: an existence question about a present thing and one about a hard
    negative (``arm.data.shapeworld.text.existence_pair``); None where the sample's json has no scene or no
    negative applies."""
    from arm.data.shapeworld.scene import Scene
    from arm.data.shapeworld.text import existence_pair

    scene = sample["meta"].get("scene")
    pair = existence_pair(Scene.from_json(scene), rng) if scene else None
    if pair is None:
        return None
    examples = [builder.understanding(sample["codes"], r["question"], r["answer"], "vqa") for r in pair]
    for example in examples:
        example.scenes = [scene]
    return examples


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64)


def decode_code_sample(raw: dict) -> dict:
    """A raw code-shard sample -> ``{key, meta, codes (N,), edit_codes (N,) or None}``."""
    if "json" not in raw or "codes.npy" not in raw:
        present = sorted(k for k in raw if not k.startswith("__"))
        raise KeyError(f"a code sample needs .json and .codes.npy (sample has {present})")
    return {"key": raw["__key__"], "meta": decode_json(raw["json"]), "codes": _npy(raw["codes.npy"]),
            "edit_codes": _npy(raw["edit_codes.npy"]) if "edit_codes.npy" in raw else None}


def supported_tasks(sample: dict) -> list[str]:
    """The tasks a code sample has the material for."""
    meta = sample["meta"]
    has = {"t2i": bool(meta.get("caption") or (meta.get("geneval") or {}).get("prompt")),
           "vqa": bool(meta.get("vqa")), "mme": bool(meta.get("mme")), "caption": bool(meta.get("caption")),
           "edit": sample["edit_codes"] is not None and bool((meta.get("edit") or {}).get("instruction"))}
    return [t for t in TASKS if has[t]]


def _task_example(builder: SequenceBuilder, sample: dict, task: str, seed: int, epoch: int,
                  rng: random.Random | None = None, dropout: ConditionDropout | None = None,
                  t2i_caption_prob: float = 0.0, understanding_turns: int = 1, think_prob: float = 0.0) -> Example:
    meta, key, codes = sample["meta"], sample["key"], sample["codes"]
    if task == "t2i":
        prompt = (meta.get("geneval") or {}).get("prompt")
        use_caption = not prompt or (rng is not None and rng.random() < t2i_caption_prob)
        drop_text, _ = dropout.draw(task, rng) if dropout and rng else (False, False)
        return builder.t2i(meta["caption"] if use_caption else prompt, codes, drop_text)
    if task in ("vqa", "mme"):
        if understanding_turns > 1 and rng is not None:
            items = rng.sample(meta[task], min(understanding_turns, len(meta[task])))
            return builder.dialogue(codes, [(i["question"], str(i["answer"])) for i in items], task)
        item = meta[task][pick_index(len(meta[task]), seed, key, epoch, task)]
        think = think_prob > 0 and rng is not None and rng.random() < think_prob and bool(meta.get("caption"))
        return builder.understanding(codes, item["question"], str(item["answer"]), task,
                                     meta["caption"] if think else None)
    if task == "caption":
        return builder.caption(codes, meta["caption"])
    if task == "edit":
        drop_text, drop_image = dropout.draw(task, rng) if dropout and rng else (False, False)
        example = builder.edit(codes, meta["edit"]["instruction"], sample["edit_codes"], drop_text, drop_image)
        example.scenes = [] if drop_image else [meta.get("scene")]
        example.scenes.append(meta["edit"].get("target_scene"))
        return example
    raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")


def task_example(builder: SequenceBuilder, sample: dict, task: str, seed: int, epoch: int,
                 rng: random.Random | None = None, dropout: ConditionDropout | None = None,
                 t2i_caption_prob: float = 0.0, understanding_turns: int = 1, think_prob: float = 0.0) -> Example:
    """The ``task`` sequence of one code sample; ``rng`` (train) draws the t2i text, the condition dropout,
    with ``understanding_turns`` > 1 which questions a vqa / mme dialogue asks and in what order, and with
    ``think_prob`` whether a one-question sequence carries the caption before its question. The example's
    ``scenes`` are the scene jsons of its image blocks (the sample's scene; an edit's source, unless dropped, and
    its target scene)."""
    example = _task_example(builder, sample, task, seed, epoch, rng, dropout, t2i_caption_prob, understanding_turns,
                            think_prob)
    if example.scenes is None:
        example.scenes = [sample["meta"].get("scene")]
    return example


def inventory_fields(example: Example, eoi_id: int, max_images: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positions (max_images,), counts (max_images, INVENTORY_HEADS))`` of an example's image blocks: the
    position of each block's last code (the id before each ``<eoi>``; -1 pads) and its scene's inventory
    (``arm.data.shapeworld.inventory``; 0 pads)."""
    from arm.data.shapeworld.inventory import INVENTORY_HEADS, scene_inventory

    ends = [p for p in range(len(example.ids) - 1) if example.ids[p + 1] == eoi_id]
    scenes = example.scenes or []
    if len(ends) != len(scenes) or len(ends) > max_images or any(s is None for s in scenes):
        raise ValueError(f"{example.task} sequence with {len(ends)} image block(s) but {len(scenes)} scene(s) in "
                         f"its json: the inventory loss needs each image's scene (set model.inventory_weight 0)")
    positions = torch.full((max_images,), -1, dtype=torch.long)
    counts = torch.zeros(max_images, INVENTORY_HEADS, dtype=torch.long)
    for i, (end, scene) in enumerate(zip(ends, scenes)):
        positions[i] = end
        counts[i] = torch.tensor(scene_inventory(scene), dtype=torch.long)
    return positions, counts


class CodeStream(ShapeWorldStream):
    """Bucketed batches of AR sequences from code shards; see the module docstring.

    Args (beyond ``ShapeWorldStream``'s shards, batch_size, train, shuffle_buffer, seed, max_samples, rank,
    world_size):
        tokenizer_path: the text tokenizer's ``tokenizer.json`` (loaded in each worker).
        mixture: task -> weight (train); val/test use every task with a positive weight.
        dropout: condition-dropout probabilities (train only).
        bucket_pool: batches' worth of sequences sorted together (1 = no bucketing).
        max_len: longest sequence; longer ones are skipped and counted.
        t2i_caption_prob: train t2i sequences use the caption instead of the GenEval-style prompt this often.
        understanding_turns: train vqa / mme sequences ask up to this many questions each (1 = one question).
        existence_pairs: how often a train vqa draw of an existence question becomes a contrast pair (module doc).
        think_prob: how often a train vqa / mme sequence describes the image before its question (module doc).
        edit_layout: where an edit sequence's instruction goes (``arm.ar.sequences.EDIT_LAYOUTS``).
        inventory: add each sequence's ``inventory_pos`` (2,) and ``inventory`` (2, heads) (``inventory_fields``),
            the targets of ``ARModule(inventory_weight)``.
    """

    def __init__(self, shards: list[str], tokenizer_path: str, mixture: dict[str, float] | None = None,
                 dropout: ConditionDropout | None = None, batch_size: int = 32, train: bool = False,
                 shuffle_buffer: int = 1000, seed: int = 0, max_samples: int | None = None, rank: int | None = None,
                 world_size: int | None = None, bucket_pool: int = 16, max_len: int = 256,
                 t2i_caption_prob: float = 0.3, understanding_turns: int = 1,
                 edit_layout: str = "source_first", inventory: bool = False, existence_pairs: float = 0.0,
                 think_prob: float = 0.0) -> None:
        # The parent's per-task image builders are not used: ``_built`` below replaces them.
        super().__init__(shards, "scene", batch_size, train, shuffle_buffer, seed, max_samples, rank, world_size)
        if bucket_pool < 1:
            raise ValueError(f"bucket_pool must be >= 1, got {bucket_pool}")
        self.tokenizer_path = tokenizer_path
        self.mixture = check_mixture(dict(DEFAULT_MIXTURE if mixture is None else mixture))
        self.dropout = dropout or ConditionDropout()
        self.bucket_pool = bucket_pool
        self.max_len = max_len
        self.t2i_caption_prob = t2i_caption_prob
        self.understanding_turns = check_turns(understanding_turns)
        self.existence_pairs = check_one_question_option("existence_pairs", existence_pairs,
                                                          self.understanding_turns)
        self.think_prob = check_one_question_option("think_prob", think_prob, self.understanding_turns)
        self.edit_layout = check_edit_layout(edit_layout)
        self.inventory = inventory
        self._builder: SequenceBuilder | None = None

    @property
    def builder(self) -> SequenceBuilder:
        if self._builder is None:  # built lazily: each DataLoader worker loads its own tokenizer
            from arm.data.text_tokenizer import TextTokenizer

            tokenizer = TextTokenizer.from_file(self.tokenizer_path)
            self._builder = SequenceBuilder(tokenizer, VocabLayout(tokenizer.vocab_size), max_len=self.max_len,
                                            edit_layout=self.edit_layout)
        return self._builder

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_builder": None}

    def examples(self, raw: dict, epoch: int) -> list[Example]:
        """The sequences of one raw code sample: one drawn task (train) or every mixture task (val/test)."""
        sample = decode_code_sample(raw)
        tasks = [t for t in supported_tasks(sample) if t in self.mixture]
        if not tasks:
            raise ValueError(f"sample supports none of the mixture's tasks {sorted(self.mixture)}")
        if not self.train:
            return [task_example(self.builder, sample, t, self.seed, 0) for t in tasks]
        rng = random.Random(f"ar/{self.seed}/{epoch}/{sample['key']}")
        task = rng.choices(tasks, weights=[self.mixture[t] for t in tasks])[0]
        if task == "vqa" and self.existence_pairs > 0:
            items = sample["meta"]["vqa"]
            item = items[pick_index(len(items), self.seed, sample["key"], epoch, "vqa")]  # the one task_example asks
            if item.get("type") == "exists" and rng.random() < self.existence_pairs:
                pair = existence_pair_examples(self.builder, sample, rng)
                if pair is not None:
                    return pair
        return [task_example(self.builder, sample, task, self.seed, epoch, rng, self.dropout, self.t2i_caption_prob,
                             self.understanding_turns, self.think_prob)]

    def _built(self, raws: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
        epoch = self.epoch if self.train else 0
        order_rng = random.Random(f"buckets/{self.seed}/{epoch}") if self.train else None
        pool_size = self.bucket_pool * self.batch_size
        pool: list[tuple[Example, str]] = []
        for raw in raws:
            key = raw.get("__key__", "<unknown>")
            try:
                pool.extend((e, key) for e in self.examples(raw, epoch))
            except Exception as error:  # any decode or build failure: skip and count, never stop the epoch
                counter.skip(key, error)
            while len(pool) >= pool_size:
                yield from self._bucketed(pool[:pool_size], order_rng)
                pool = pool[pool_size:]
        yield from self._bucketed(pool, order_rng)

    def _bucketed(self, pool: list[tuple[Example, str]], rng: random.Random | None) -> Iterator[dict]:
        """Pool items in bucket order, each padded to its batch's width. Only the last batch of the whole stream
        can be short, so the stream's own cut every ``batch_size`` items falls on these batches."""
        pad = self.builder.tokenizer.pad_id
        eoi = self.builder.layout.special_id(EOI)
        for batch in bucket_batches([len(e) for e, _ in pool], self.batch_size, rng):
            width = max(len(pool[i][0]) for i in batch)
            for i in batch:
                example, key = pool[i]
                ids, loss = example_tensors(example, width, pad)
                item = {"ids": ids, "loss_mask": loss, "length": torch.tensor(len(example)), "task": example.task,
                        "key": key}
                if self.inventory:
                    item["inventory_pos"], item["inventory"] = inventory_fields(example, eoi)
                yield item


class CodeDataModule(ShapeWorldDataModule):
    """Code shards as train/val/test loaders of bucketed AR sequences (a task mixture for train)."""

    def __init__(
        self,
        tokenizer_path: str,
        data_dir: str | None = None,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        mixture: dict[str, float] | None = None,
        dropout: ConditionDropout | None = None,
        t2i_caption_prob: float = 0.3,
        understanding_turns: int = 1,
        existence_pairs: float = 0.0,
        think_prob: float = 0.0,
        edit_layout: str = "source_first",
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        bucket_pool: int = 16,
        max_len: int = 256,
        seed: int = 0,
        val_samples: int | None = None,
        inventory: bool = False,
    ) -> None:
        """
        Args:
            tokenizer_path: the text tokenizer's ``tokenizer.json`` (linked from ``model.tokenizer_path`` by
                ``arm ar``).
            data_dir: code root with ``train/``, ``val/`` and ``test/`` code shards (``arm tokenizer encode``
                per split). Ignored for a split whose ``*_shards`` is given.
            train_shards: train code shards: a directory, glob, brace pattern or list. Overrides ``data_dir``.
            val_shards: validation code shards, as ``train_shards``.
            test_shards: test code shards, as ``train_shards``.
            mixture: task -> weight for train (tasks: t2i, vqa, mme, caption, edit); default
                ``DEFAULT_MIXTURE``. Val/test build every task with a positive weight.
            dropout: condition-dropout probabilities for classifier-free guidance (train only).
            t2i_caption_prob: share of train t2i sequences that use the caption instead of the GenEval prompt.
            understanding_turns: a train vqa / mme sequence asks up to this many of its image's questions (of
                that task) as one multi-turn dialogue, scoring every answer (1 = one question per sequence).
                Val / test sequences always ask one, so their metrics do not depend on it.
            existence_pairs: probability that a train vqa draw of an existence question becomes two sequences on
                its image, a present thing and a hard negative differing in one word (colour or class), answered
                yes and no (``arm.data.shapeworld.text.existence_pair``; needs the scene in the sample's json and
                ``understanding_turns`` 1). 0 = off. Val / test are unchanged.
            think_prob: probability that a train one-question vqa / mme sequence carries the sample's caption before
                its question (``<caption> CAPTION <eos> QUESTION <answer> ANSWER``, scored on the answer), so the
                model can answer after describing the image (``arm eval --sampling think=1``). Needs
                ``understanding_turns`` 1. 0 = off; val / test ask directly.
            edit_layout: where an edit sequence's instruction goes, ``source_first`` (ARM's) or
                ``instruction_first`` (``arm.ar.sequences``); linked from ``model.edit_layout`` by ``arm ar``, so
                training and the export's sampler agree.
            batch_size: sequences per batch and process.
            num_workers: DataLoader workers per process.
            shuffle_buffer: train sample shuffle buffer.
            bucket_pool: batches' worth of sequences sorted by length together (1 disables bucketing).
            max_len: longest sequence kept (longer ones are skipped and counted).
            seed: seed of shard order, shuffling, task draws and dropout.
            val_samples: use only the first N val/test code samples (each gives one sequence per task).
            inventory: give every sequence the object inventory of its images (``CodeStream``), the targets of
                ``model.inventory_weight``; linked from it by ``arm ar`` (on when the weight is positive).
        """
        super().__init__(data_dir, train_shards, val_shards, test_shards, "scene", batch_size, num_workers,
                         shuffle_buffer, seed, val_samples)
        self.tokenizer_path = tokenizer_path
        self.mixture = check_mixture(dict(DEFAULT_MIXTURE if mixture is None else mixture))
        self.dropout = dropout or ConditionDropout()
        self.t2i_caption_prob = t2i_caption_prob
        self.understanding_turns = check_turns(understanding_turns)
        self.existence_pairs = check_one_question_option("existence_pairs", existence_pairs,
                                                          self.understanding_turns)
        self.think_prob = check_one_question_option("think_prob", think_prob, self.understanding_turns)
        self.edit_layout = check_edit_layout(edit_layout)
        self.bucket_pool = bucket_pool
        self.max_len = max_len
        self.inventory = inventory

    def shards(self, split: str) -> list[str]:
        try:
            return super().shards(split)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"no {split} code shards ({error}); write them with `{ENCODE_COMMAND}`") from None

    def stream(self, split: str) -> CodeStream:
        train = split == "train"
        rank, world_size = self._rank()
        return CodeStream(self.shards(split), self.tokenizer_path, self.mixture, self.dropout, self.batch_size,
                          train, self.shuffle_buffer, self.seed, None if train else self.val_samples, rank,
                          world_size, self.bucket_pool, self.max_len, self.t2i_caption_prob,
                          self.understanding_turns, self.edit_layout, self.inventory, self.existence_pairs,
                          self.think_prob)

    def eval_samples(self, split: str = "val", num: int = 64) -> list[dict]:
        """The first ``num`` code samples of a split, decoded (``decode_code_sample``), for generation metrics."""
        out: list[dict] = []
        for raw in wds.tarfile_samples([{"url": s} for s in expand_shards(self.shards(split))]):
            if len(out) >= num:
                break
            out.append(decode_code_sample(raw))
        return out

