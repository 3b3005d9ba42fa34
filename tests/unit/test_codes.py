"""The code-shard DataModule: mixture proportions, bucketed batches, deterministic val, skips, rank split, errors."""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from arm.ar.sequences import padding_fraction
from arm.data.codes import CodeDataModule, CodeStream, decode_code_sample
from arm.data.datamodule import CorruptSampleWarning
from arm.data.samples import expand_shards


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_random_code_shards(world: Path, out: Path, codebook: int = 32, num_codes: int = 64, seed: int = 0,
                             drop_codes_of: str | None = None) -> Path:
    """Code shards laid out as ``arm tokenizer encode`` writes them, with random codes (no tokenizer needed)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for shard in sorted((world / split).glob("*.tar")):
            with wds.TarWriter(str(out / split / shard.name), encoder=False) as writer:
                for raw in wds.tarfile_samples([{"url": str(shard)}]):
                    sample = {"__key__": raw["__key__"], "json": raw["json"],
                              "codes.npy": _npy(rng.integers(0, codebook, num_codes).astype(np.int16)),
                              "edit_codes.npy": _npy(rng.integers(0, codebook, num_codes).astype(np.int16))}
                    if raw["__key__"] == drop_codes_of:
                        del sample["codes.npy"]
                    writer.write(sample)
    return out


@pytest.fixture(scope="module")
def codes(tiny_world, tmp_path_factory):
    return write_random_code_shards(tiny_world / "world", tmp_path_factory.mktemp("codes"),
                                    drop_codes_of="train-00000005")


def _stream(tiny_world, codes, split="train", **kwargs) -> CodeStream:
    options = {"batch_size": 8, "train": split == "train", "rank": 0, "world_size": 1, "bucket_pool": 4,
               **kwargs}
    return CodeStream(expand_shards(str(codes / split)), str(tiny_world / "tokenizer.json"), **options)


def test_mixture_proportions(tiny_world, codes):
    weights = {"t2i": 0.4, "vqa": 0.3, "edit": 0.2, "caption": 0.1}
    stream = _stream(tiny_world, codes, mixture=weights)
    raws = [r for r in wds.tarfile_samples([{"url": s} for s in stream.shards]) if "codes.npy" in r]
    drawn = Counter(ex.task for epoch in range(60) for raw in raws for ex in stream.examples(raw, epoch))
    n = sum(drawn.values())
    assert n == 60 * len(raws) and "mme" not in drawn
    for task, weight in weights.items():  # 4 binomial standard deviations
        assert abs(drawn[task] / n - weight) < 4 * (weight * (1 - weight) / n) ** 0.5, (task, drawn)


def test_train_batches_are_bucketed_padded_and_count_skips(tiny_world, codes):
    stream = _stream(tiny_world, codes)
    with pytest.warns(CorruptSampleWarning, match="train-00000005"):
        batches = list(stream)
    assert sum(len(b["task"]) for b in batches) == 63  # 64 samples, one without codes
    assert batches[-1]["__skipped__"] == 1
    for b in batches:
        B, T = b["ids"].shape
        assert b["loss_mask"].shape == (B, T) and int(b["length"].max()) == T
        positions = torch.arange(T)[None]
        beyond = positions >= b["length"][:, None]
        assert not b["loss_mask"][beyond].any() and (b["ids"][beyond] == 0).all()  # pad id 0, never scored
        assert b["loss_mask"].any(1).all()  # every sequence has targets
    bucketed = [b["length"].tolist() for b in batches]
    lengths = [x for b in bucketed for x in b]
    random.Random(0).shuffle(lengths)
    unbucketed = [lengths[i: i + 8] for i in range(0, len(lengths), 8)]
    assert padding_fraction(bucketed) < padding_fraction(unbucketed)
    # Epochs differ, a fixed epoch repeats.
    stream.set_epoch(1)
    with pytest.warns(CorruptSampleWarning):
        again = list(stream)
    assert [b["key"] for b in again] != [b["key"] for b in batches]
    stream.set_epoch(0)
    with pytest.warns(CorruptSampleWarning):
        assert [b["key"] for b in stream] == [b["key"] for b in batches]


def test_understanding_turns_ask_several_questions_in_train_only(tiny_world, codes):
    mixture = {"vqa": 0.5, "mme": 0.5}
    stream = _stream(tiny_world, codes, mixture=mixture, understanding_turns=3)
    builder = stream.builder
    raws = [r for r in wds.tarfile_samples([{"url": s} for s in stream.shards]) if "codes.npy" in r]
    answer_id = builder.layout.special_id("<answer>")
    seen_orders = set()
    for raw in raws[:12]:
        meta = json.loads(raw["json"])
        for epoch in range(3):
            (ex,) = stream.examples(raw, epoch)
            items = meta[ex.task]
            turns = min(3, len(items))
            assert ex.ids.count(answer_id) == turns
            # Exactly the answers and their <eos> are scored, and each asked question is one of the sample's own.
            n_scored = sum(len(builder.tokenizer.encode(str(i["answer"]))) + 1 for i in items)
            if turns == len(items):
                assert sum(ex.targets or [True] * (len(ex.ids) - ex.prompt_len)) == n_scored
            text = builder.tokenizer.decode([i for i in ex.ids if i < builder.layout.text_vocab_size])
            asked = [i["question"] for i in items if i["question"] in text]
            assert len(asked) >= turns
            seen_orders.add(tuple(text.index(q) for q in asked))
    assert len(seen_orders) > 1  # drawn orders differ between samples and epochs
    # Val asks one question per sequence whatever the setting.
    val = _stream(tiny_world, codes, "val", mixture=mixture, understanding_turns=3)
    for b in val:
        assert ((b["ids"] == answer_id).sum(1) == 1).all()
    with pytest.raises(ValueError, match="understanding_turns"):
        _stream(tiny_world, codes, understanding_turns=0)
    with pytest.raises(ValueError, match="understanding_turns"):  # the data module says so before any stream
        CodeDataModule(str(tiny_world / "tokenizer.json"), data_dir=str(codes), understanding_turns=0)


def test_existence_pairs_turn_existence_draws_into_contrast_pairs(tiny_world, codes):
    plain = _stream(tiny_world, codes, mixture={"vqa": 1.0})
    paired = _stream(tiny_world, codes, mixture={"vqa": 1.0}, existence_pairs=1.0)
    builder = paired.builder
    answer_id = builder.layout.special_id("<answer>")
    raws = [r for r in wds.tarfile_samples([{"url": s} for s in paired.shards]) if "codes.npy" in r]
    n_pairs = 0
    for raw in raws:
        meta = json.loads(raw["json"])
        for epoch in range(2):
            (one,) = plain.examples(raw, epoch)
            asked = builder.tokenizer.decode([i for i in one.ids if i < builder.layout.text_vocab_size])
            item = next(i for i in meta["vqa"] if i["question"] in asked)
            got = paired.examples(raw, epoch)
            if item["type"] != "exists":  # other questions: the very sequence the plain stream builds
                assert len(got) == 1 and got[0].ids == one.ids
                continue
            n_pairs += 1
            assert len(got) == 2 and all(e.task == "vqa" and e.ids.count(answer_id) == 1 for e in got)
            image_end = one.ids.index(builder.layout.special_id("<eoi>")) + 1
            texts = []
            for e in got:  # the same image block as the plain sequence; only the question and answer differ
                assert e.ids[:image_end] == one.ids[:image_end]
                texts.append(builder.tokenizer.decode([i for i in e.ids if i < builder.layout.text_vocab_size]))
            assert sorted(t.rsplit("?", 1)[1].strip().removesuffix("<|endoftext|>").strip() for t in texts) == \
                ["no", "yes"], texts
    assert n_pairs > 0
    # Val is unchanged; bad settings say what to change.
    val = [b["ids"] for b in _stream(tiny_world, codes, "val", mixture={"vqa": 1.0}, existence_pairs=1.0)]
    assert all(torch.equal(a, b) for a, b in zip(val, [b["ids"] for b in _stream(tiny_world, codes, "val",
                                                                                   mixture={"vqa": 1.0})]))
    with pytest.raises(ValueError, match="existence_pairs is a probability"):
        _stream(tiny_world, codes, existence_pairs=1.5)
    with pytest.raises(ValueError, match="understanding_turns 1"):
        CodeDataModule(str(tiny_world / "tokenizer.json"), data_dir=str(codes), existence_pairs=0.5,
                       understanding_turns=2)


def test_think_prob_puts_the_caption_before_the_question(tiny_world, codes):
    mixture = {"vqa": 0.5, "mme": 0.5}
    plain, thinking = _stream(tiny_world, codes, mixture=mixture), _stream(tiny_world, codes, mixture=mixture,
                                                                           think_prob=1.0)
    half = _stream(tiny_world, codes, mixture=mixture, think_prob=0.5)
    builder = thinking.builder
    raws = [r for r in wds.tarfile_samples([{"url": s} for s in thinking.shards]) if "codes.npy" in r]
    with_thought = 0
    for raw in raws:
        meta, sample = json.loads(raw["json"]), decode_code_sample(raw)
        for epoch in range(2):
            (one,) = plain.examples(raw, epoch)
            (got,) = thinking.examples(raw, epoch)
            # The caption sequence of the sample's own caption, then the very question and answer asked plainly.
            said = builder.caption(sample["codes"], meta["caption"]).ids
            image_end = one.ids.index(builder.layout.special_id("<eoi>")) + 1
            assert got.ids == [*said, *one.ids[image_end:]] and got.task == one.task
            assert len(got.ids) - got.prompt_len == len(one.ids) - one.prompt_len  # only the answer is scored
            (mixed,) = half.examples(raw, epoch)
            with_thought += mixed.ids != one.ids
            assert mixed.ids in (one.ids, got.ids)
    assert 0.3 < with_thought / (2 * len(raws)) < 0.7
    val = [b["ids"] for b in _stream(tiny_world, codes, "val", mixture=mixture, think_prob=1.0)]
    assert all(torch.equal(a, b) for a, b in zip(val, [b["ids"] for b in _stream(tiny_world, codes, "val",
                                                                                   mixture=mixture)]))
    with pytest.raises(ValueError, match="think_prob is a probability"):
        _stream(tiny_world, codes, think_prob=-0.1)
    with pytest.raises(ValueError, match="understanding_turns 1"):
        CodeDataModule(str(tiny_world / "tokenizer.json"), data_dir=str(codes), think_prob=0.5, understanding_turns=3)


def test_val_is_deterministic_and_has_every_task(tiny_world, codes):
    first, second = list(_stream(tiny_world, codes, "val")), list(_stream(tiny_world, codes, "val"))
    assert all(torch.equal(a["ids"], b["ids"]) for a, b in zip(first, second)) and len(first) == len(second)
    tasks = Counter(t for b in first for t in b["task"])
    assert tasks == {t: 32 for t in ("t2i", "vqa", "mme", "caption", "edit")}
    # No condition dropout in val: each t2i sequence carries text before <boi>.
    tokenizer_size = _stream(tiny_world, codes, "val").builder.layout.text_vocab_size
    for b in first:
        for row, task in zip(b["ids"], b["task"]):
            if task == "t2i":
                assert row[1] < tokenizer_size


def test_ranks_split_the_samples(tiny_world, codes):
    keys = [{k for b in _stream(tiny_world, codes, "val", rank=r, world_size=2) for k in b["key"]} for r in (0, 1)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 32


def test_datamodule_eval_samples_and_missing_shards(tiny_world, codes, tmp_path):
    dm = CodeDataModule(str(tiny_world / "tokenizer.json"), data_dir=str(codes), batch_size=4)
    samples = dm.eval_samples("val", 3)
    assert [s["key"] for s in samples] == ["val-00000000", "val-00000001", "val-00000002"]
    assert samples[0]["codes"].shape == (64,) and samples[0]["edit_codes"].shape == (64,)
    assert samples[0]["meta"]["vqa"]
    with pytest.raises(FileNotFoundError, match="arm tokenizer encode"):
        CodeDataModule(str(tiny_world / "tokenizer.json"), data_dir=str(tmp_path)).shards("train")
    with pytest.raises(KeyError, match="needs .json and .codes.npy"):
        decode_code_sample({"__key__": "x", "json": b"{}"})
    with pytest.raises(ValueError, match="unknown task"):
        CodeDataModule(str(tiny_world / "tokenizer.json"), data_dir=str(codes), mixture={"t2v": 1.0})
