"""Condition contrast (``arm.ar.contrast``): the swap table, the negatives drawn from a batch, the summed
log-probabilities against a full-logits reference, the loss by hand, and ARModule keeping negatives out of its
next-token loss."""

from __future__ import annotations

import math

import pytest
import torch

from arm.ar.contrast import contrast_loss, row_logprob, swap_table, swapped_negatives
from arm.ar.model import ARConfig, ARDecoder
from arm.ar.module import ARModule, token_nll


class WordTokenizer:
    """Each space-separated word one id; unknown words split into one id per character."""

    def __init__(self, words: dict[str, int]):
        self.words = words

    def encode(self, text: str) -> list[int]:
        word = text.strip()
        return [self.words[word]] if word in self.words else [100 + ord(c) for c in word]


def test_swap_table_maps_each_word_to_the_rest_of_its_group():
    tok = WordTokenizer({"red": 5, "blue": 6, "green": 7, "circle": 8, "square": 9})
    assert swap_table(tok, [["red", "blue", "green"], ["circle", "square"]]) == {
        5: [6, 7], 6: [5, 7], 7: [5, 6], 8: [9], 9: [8]}


@pytest.mark.parametrize("groups, message", [
    ([["red", "teal"]], "'teal' is 4 tokens"),
    ([["red", "blue"], ["blue", "green"]], "two groups"),
    ([["red"]], "at least two"),
])
def test_swap_table_refuses_bad_groups_in_one_line(groups, message):
    tok = WordTokenizer({"red": 5, "blue": 6, "green": 7})
    with pytest.raises(ValueError, match=message):
        swap_table(tok, groups)


def _batch():
    """Four right-padded rows; ids 5/6 swappable; the scored part starts where loss_mask is first True."""
    rows = [
        ([0, 3, 5, 2, 50, 51, 52, 1], 4, "t2i"),   # colour word in the prompt: eligible
        ([0, 50, 51, 5, 4, 3, 0, 1], 5, "vqa"),    # swappable word but understanding: not eligible
        ([0, 3, 4, 2, 5, 50, 51, 1], 4, "t2i"),    # swappable id only after the prompt: not eligible
        ([0, 50, 51, 6, 3, 5, 2, 52], 7, "edit"),  # two swappable words in the instruction: eligible
    ]
    ids = torch.tensor([r for r, _, _ in rows])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b, (_, start, _) in enumerate(rows):
        mask[b, start:] = True
    return ids, mask, [t for _, _, t in rows]


def test_negatives_swap_one_prompt_word_of_generation_rows():
    ids, mask, tasks = _batch()
    table = {5: [6], 6: [5]}
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        negatives, pairs = swapped_negatives(ids, mask, tasks, table, rows=8, generator=generator)
        assert sorted(pairs.tolist()) == [0, 3]
        for neg, b in zip(negatives, pairs.tolist()):
            changed = (neg != ids[b]).nonzero().squeeze(1).tolist()
            assert len(changed) == 1 and changed[0] < int(mask[b].float().argmax())
            assert table[int(ids[b, changed[0]])] == [int(neg[changed[0]])]
    one, _ = swapped_negatives(ids, mask, tasks, table, rows=1, generator=torch.Generator().manual_seed(0))
    again, _ = swapped_negatives(ids, mask, tasks, table, rows=1, generator=torch.Generator().manual_seed(0))
    assert one.shape[0] == 1 and torch.equal(one, again)
    none, pairs = swapped_negatives(ids, mask, ["vqa"] * 4, table, rows=8, generator=torch.Generator())
    assert none.shape[0] == 0 and pairs.numel() == 0


def test_row_logprob_matches_full_logits_and_the_loss_is_logistic():
    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    model = ARDecoder(ARConfig.preset("tiny")).eval()
    offset, V = model.config.image_token_offset, model.config.vocab_size
    ids = torch.randint(0, V, (3, 10))
    mask = torch.rand(3, 10) < 0.6
    with torch.no_grad():
        got = row_logprob(token_nll(model, ids, mask), 3)
        hidden = model(input_ids=ids[:, :-1])
        want = torch.zeros(3)
        for b in range(3):
            for t in range(1, 10):
                if mask[b, t]:
                    target = int(ids[b, t])
                    if target >= offset:
                        logp = model.image_logits(hidden[b, t - 1]).float().log_softmax(-1)[target - offset]
                    else:
                        logp = model.text_logits(hidden[b, t - 1]).float().log_softmax(-1)[target]
                    want[b] += logp
    assert torch.allclose(got, want, atol=1e-4)
    pos, neg = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -2.5])
    loss, gap = contrast_loss(pos, neg, beta=0.5)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.25))) / 2)
    assert gap.item() == pytest.approx(0.75)


def test_module_keeps_negatives_out_of_the_next_token_loss(tiny_world):
    tokenizer = str(tiny_world / "tokenizer.json")
    plain = ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8)
    with pytest.raises(ValueError, match="contrast_words"):
        ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, contrast_weight=1.0)
    module = ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8, contrast_weight=2.0,
                      contrast_words=[["square", "triangle"]])  # single tokens here
    plain.configure_model()
    module.configure_model()
    module.model.load_state_dict(plain.model.state_dict())
    builder = module.builder
    examples = [builder.t2i("a photo of a red square", [3] * 64),
                builder.understanding([1] * 64, "what colour is the square?", "red")]
    width = max(len(e) for e in examples)
    ids = torch.full((2, width), builder.tokenizer.pad_id)
    mask = torch.zeros(2, width, dtype=torch.bool)
    for b, e in enumerate(examples):
        ids[b, :len(e)] = torch.tensor(e.ids)
        mask[b, e.prompt_len:len(e)] = True
    batch = {"ids": ids, "loss_mask": mask, "task": [e.task for e in examples]}
    module.train()
    plain.train()
    loss, means, _ = module._losses(batch)
    plain_loss, plain_means, _ = plain._losses(batch)
    for k in ("text", "image"):
        assert torch.allclose(means[k], plain_means[k])
    assert "contrast" in means  # one negative: the t2i row's "square" swapped
    assert torch.allclose(loss, plain_loss + 2.0 * means["contrast"])
    module.eval()  # validation measures the gap on every swappable row but adds nothing to the loss
    plain.eval()
    loss, means, _ = module._losses(batch)
    assert torch.allclose(loss, plain._losses(batch)[0])
    assert means["contrast_pairs"].item() == 1.0
    square, triangle = (builder.tokenizer.encode(" " + w)[0] for w in ("square", "triangle"))
    swapped = ids[:1].clone()
    swapped[0, :examples[0].prompt_len][swapped[0, :examples[0].prompt_len] == square] = triangle  # by hand
    with torch.no_grad():
        both = row_logprob(token_nll(plain.model, torch.cat([ids[:1], swapped]), mask[:1].repeat(2, 1)), 2)
    assert means["contrast_gap"].item() == pytest.approx((both[0] - both[1]).item(), abs=1e-4)
    module.train()
    module.hparams.contrast_start = 1  # global_step is 0 outside a trainer: before the start, no contrast
    assert "contrast" not in module._losses(batch)[1]
    watch = ARModule(tokenizer, None, preset="tiny", num_image_codes=32, image_grid=8,
                     contrast_words=[["square", "triangle"]])  # weight 0: trains as plain, validation still measures
    watch.configure_model()
    watch.model.load_state_dict(plain.model.state_dict())
    watch.train()
    assert "contrast" not in watch._losses(batch)[1]
    watch.eval()
    assert torch.allclose(watch._losses(batch)[1]["contrast_gap"], means["contrast_gap"])
