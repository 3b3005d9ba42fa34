"""AR sequences against hand-written ids: every task, every dropout variant, the prompts, bucketing, errors.

A word-level fake tokenizer (10 text ids) makes every expected id computable by hand: specials start at 10
(<boi> 10, <eoi> 11, <answer> 12, <caption> 13, <hN> = 13 + N, <wN> = 45 + N), image code c is id 78 + c.
"""

from __future__ import annotations

import random

import pytest
import torch

from arm.ar.sequences import (
    SPECIAL_TOKENS,
    ConditionDropout,
    Example,
    SequenceBuilder,
    VocabLayout,
    bucket_batches,
    check_fits,
    collate_examples,
    padding_fraction,
)


class WordTokenizer:
    WORDS = {"<pad>": 0, "<eos>": 1, "a": 2, "red": 3, "circle": 4, "what": 5, "colour": 6, "make": 7, "it": 8,
             "blue": 9}
    pad_id, eos_id, vocab_size = 0, 1, 10

    def encode(self, text: str) -> list[int]:
        return [self.WORDS[w] for w in text.split()]

    def decode(self, ids) -> str:
        names = {v: k for k, v in self.WORDS.items()}
        return " ".join(names[int(i)] for i in ids)


BOI, EOI, ANS, CAP, H2, W2, IMG = 10, 11, 12, 13, 15, 47, 78
CODES = [3, 0, 15, 7]  # a 2 x 2 grid
CODE_IDS = [81, 78, 93, 85]
TARGET = [1, 1, 2, 2]
TARGET_IDS = [79, 79, 80, 80]


@pytest.fixture
def builder() -> SequenceBuilder:
    return SequenceBuilder(WordTokenizer(), VocabLayout(10, 16), grid=(2, 2))


def test_layout_ids():
    layout = VocabLayout(10, 16)
    assert len(SPECIAL_TOKENS) == 68 and layout.image_offset == IMG and layout.vocab_size == 78 + 16
    assert [layout.special_id(n) for n in ("<boi>", "<eoi>", "<answer>", "<caption>", "<h2>", "<w2>")] == \
        [BOI, EOI, ANS, CAP, H2, W2]
    assert layout.special_id("<h32>") == 45 and layout.special_id("<w32>") == 77
    assert layout.image_ids(CODES) == CODE_IDS


def test_t2i_and_its_dropout(builder):
    ex = builder.t2i("a red circle", CODES)
    assert ex.ids == [1, 2, 3, 4, BOI, H2, W2, *CODE_IDS, EOI] and ex.prompt_len == 7 and ex.task == "t2i"
    dropped = builder.t2i("a red circle", CODES, drop_text=True)
    assert dropped.ids == [1, BOI, H2, W2, *CODE_IDS, EOI] and dropped.prompt_len == 4
    # The sampler's prompts are exactly the training prefixes.
    assert builder.t2i_prompts("a red circle") == ([1, 2, 3, 4, BOI, H2, W2], [1, BOI, H2, W2])


def test_understanding_and_caption(builder):
    ex = builder.understanding(CODES, "what colour", "red")
    image = [BOI, H2, W2, *CODE_IDS, EOI]
    assert ex.ids == [1, *image, 5, 6, ANS, 3, 1] and ex.prompt_len == 12 and ex.task == "vqa"
    assert builder.vqa_prompt(CODES, "what colour") == [1, *image, 5, 6, ANS]
    assert builder.understanding(CODES, "what colour", "red", task="mme").task == "mme"
    cap = builder.caption(CODES, "a red circle")
    assert cap.ids == [1, *image, CAP, 2, 3, 4, 1] and cap.prompt_len == 10
    assert builder.caption_prompt(CODES) == [1, *image, CAP]
    # Describe, then answer: the caption sequence whole, then the question; only the answer is scored.
    thought = builder.understanding(CODES, "what colour", "red", thought="a red circle")
    assert thought.ids == [*cap.ids, 5, 6, ANS, 3, 1] and thought.prompt_len == len(cap.ids) + 3
    assert builder.vqa_prompt(CODES, "what colour", "a red circle") == [*cap.ids, 5, 6, ANS]


def test_dialogue_scores_every_answer_and_starts_as_one_question(builder):
    image = [BOI, H2, W2, *CODE_IDS, EOI]
    turns = [("what colour", "red"), ("a circle", "blue"), ("what", "a red circle")]
    ex = builder.dialogue(CODES, turns, task="mme")
    assert ex.ids == [1, *image, 5, 6, ANS, 3, 1, 2, 4, ANS, 9, 1, 5, ANS, 2, 3, 4, 1] and ex.task == "mme"
    # Scored: each answer and its <eos>, nothing of the image or the questions.
    scored = [i for i, flag in enumerate(ex.targets) if flag]
    assert scored == [12, 13, 17, 18, 21, 22, 23, 24] and len(ex.targets) == len(ex.ids)
    # The first turn is the single-question sequence (what inference asks); one turn is exactly that sequence.
    single = builder.understanding(CODES, "what colour", "red", task="mme")
    assert ex.ids[: len(single.ids)] == single.ids and ex.prompt_len == single.prompt_len
    assert builder.dialogue(CODES, turns[:1], task="mme") == single
    batch = collate_examples([ex, builder.t2i("a red circle", CODES)], pad_id=0)
    assert batch["loss_mask"][0].nonzero().flatten().tolist() == scored
    assert batch["loss_mask"][1].nonzero().flatten().tolist() == list(range(7, 12))  # suffix rule unchanged
    with pytest.raises(ValueError, match="at least one"):
        builder.dialogue(CODES, [])


@pytest.mark.parametrize("edit_layout", ["source_first", "instruction_first"])
def test_edit_and_each_dropout(edit_layout):
    builder = SequenceBuilder(WordTokenizer(), VocabLayout(10, 16), grid=(2, 2), edit_layout=edit_layout)
    src = [BOI, H2, W2, *CODE_IDS, EOI]
    head, tail = [BOI, H2, W2], [*TARGET_IDS, EOI]
    both = [*src, 7, 8, 9] if edit_layout == "source_first" else [7, 8, 9, *src]
    cases = {
        (False, False): [1, *both, *head],
        (True, False): [1, *src, *head],
        (False, True): [1, 7, 8, 9, *head],
        (True, True): [1, *head],
    }
    for (drop_text, drop_image), prompt in cases.items():
        ex = builder.edit(CODES, "make it blue", TARGET, drop_text, drop_image)
        assert ex.ids == prompt + tail and ex.prompt_len == len(prompt), (drop_text, drop_image)
    cond, image_only, uncond = builder.edit_prompts(CODES, "make it blue")
    assert (cond, image_only, uncond) == (cases[False, False], cases[True, False], cases[True, True])
    # Both conditions dropped = the empty t2i prompt: one unconditional branch for both tasks.
    assert uncond == builder.t2i_prompt("anything", drop_text=True)
    # Understanding, captions and text-to-image do not depend on the edit layout.
    plain = SequenceBuilder(WordTokenizer(), VocabLayout(10, 16), grid=(2, 2))
    assert builder.understanding(CODES, "what colour", "red").ids == plain.understanding(CODES, "what colour", "red").ids
    assert builder.caption(CODES, "a red circle").ids == plain.caption(CODES, "a red circle").ids
    assert builder.t2i("a red circle", CODES).ids == plain.t2i("a red circle", CODES).ids


@pytest.mark.parametrize("seed", [0, 1])
def test_instruction_first_puts_each_target_code_a_fixed_distance_after_its_source_code(seed):
    rng = random.Random(seed)
    distances = set()
    for layout in ("source_first", "instruction_first"):
        builder = SequenceBuilder(WordTokenizer(), VocabLayout(10, 16), grid=(2, 2), edit_layout=layout)
        seen = set()
        for _ in range(6):
            words = " ".join(rng.choice(["make", "it", "blue", "red", "a"]) for _ in range(rng.randint(1, 9)))
            ids = builder.edit(CODES, words, TARGET).ids
            first_source, first_target = ids.index(CODE_IDS[0]), ids.index(TARGET_IDS[0])
            # every cell: its target code the same distance after its source code as the first cell's
            assert ids[first_source: first_source + len(CODES)] == CODE_IDS
            assert ids[first_target: first_target + len(TARGET)] == TARGET_IDS
            seen.add(first_target - first_source)
        distances.add((layout, len(seen)))
        if layout == "instruction_first":
            assert seen == {len(CODES) + 4}  # the rest of the source block, <eoi> and the target's header
    assert ("source_first", 1) not in distances  # with ARM's layout the distance follows the instruction


def test_unknown_edit_layout_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown edit_layout 'target_first'.*instruction_first"):
        SequenceBuilder(WordTokenizer(), VocabLayout(10, 16), edit_layout="target_first")


def test_collate_scores_only_the_completion(builder):
    a, b = builder.understanding(CODES, "what colour", "red"), builder.t2i("a red circle", CODES)
    batch = collate_examples([a, b], pad_id=0)
    assert batch["ids"].shape == (2, 14) and batch["task"] == ["vqa", "t2i"]
    assert batch["ids"][1].tolist() == b.ids + [0, 0]
    expected = torch.zeros(2, 14, dtype=torch.bool)
    expected[0, 12:14] = True  # "red" <eos>
    expected[1, 7:12] = True  # four codes and <eoi>
    assert torch.equal(batch["loss_mask"], expected)


def test_condition_dropout_rates():
    drop = ConditionDropout(t2i_text=0.2, edit_text=0.1, edit_image=0.15, edit_both=0.05)
    rng = random.Random(1)
    n = 40000
    t2i = sum(drop.draw("t2i", rng)[0] for _ in range(n)) / n
    edits = [drop.draw("edit", rng) for _ in range(n)]
    rates = {k: edits.count(k) / n for k in [(True, False), (False, True), (True, True)]}
    # 4 binomial standard deviations at p <= 0.2, n = 40000: 0.008.
    assert abs(t2i - 0.2) < 0.008
    assert abs(rates[True, False] - 0.1) < 0.008 and abs(rates[False, True] - 0.15) < 0.008
    assert abs(rates[True, True] - 0.05) < 0.008
    assert drop.draw("vqa", rng) == (False, False)
    with pytest.raises(ValueError, match="must not exceed 1"):
        ConditionDropout(edit_text=0.5, edit_image=0.5, edit_both=0.1)


def test_bucketing_groups_similar_lengths_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.choice([70, 80, 95, 140]) + rng.randrange(10) for _ in range(203)]
    batches = bucket_batches(lengths, 16, random.Random(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))  # every example exactly once
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 203 % 16  # remainder last
    order = sorted(range(203), key=lambda i: (lengths[i], i))
    runs = {tuple(order[k: k + 16]) for k in range(0, 203, 16)}
    assert {tuple(b) for b in batches} == runs  # each batch is a run of the length order
    as_lengths = [[lengths[i] for i in b] for b in batches]
    consecutive = [lengths[k: k + 16] for k in range(0, 203, 16)]
    assert padding_fraction(as_lengths) < 0.05 < padding_fraction(consecutive)
    assert padding_fraction([[3, 3], [2, 4]]) == pytest.approx(2 / 14)


def test_one_line_errors(builder):
    layout = VocabLayout(10, 16)
    with pytest.raises(ValueError, match=r"unknown special token '<image>'") as info:
        layout.special_id("<image>")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="exceeds the model's context of 20 tokens; shorten"):
        check_fits(15, 8, 20)
    short = SequenceBuilder(WordTokenizer(), layout, grid=(2, 2), max_len=8)
    with pytest.raises(ValueError, match="longer than max_len 8"):
        short.t2i("a red circle", CODES)
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 16\)"):
        builder.t2i("a", [0, 1, 2, 16])
    with pytest.raises(ValueError, match="square grid"):
        builder.t2i("a", [0, 1, 2])
    with pytest.raises(ValueError, match="text vocabulary has 8 rows but the text tokenizer needs 10"):
        layout.check_model(8, 68, 16, "the checkpoint")
    with pytest.raises(ValueError, match="has 32 image codes but the image tokenizer has 16"):
        layout.check_model(10, 68, 32, "the checkpoint")


def test_remap_into_a_larger_text_block():
    data, model = VocabLayout(10, 16), VocabLayout(64, 16)
    ids = torch.tensor([[1, 9, BOI, W2, 78, 93]])
    assert data.remap(ids, model).tolist() == [[1, 9, 64, 64 + 37, 64 + 68, 64 + 68 + 15]]
    assert model.special_id("<boi>") == 64 and model.image_offset == 132
    assert Example([1, 2], 1, "t2i").prompt == [1]
