"""Rewards on hand-made images with known answers: rendered scenes, hand-computed partial credit, reference
implementations for the CLIP and self-judge scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arm.data.shapeworld.render import render
from arm.data.shapeworld.scene import Scene, ShapeObject
from arm.eval.quality import quality_score
from arm.rl.rewards import (
    ClipScoreReward,
    EditConsistencyReward,
    GenevalReward,
    QualityReward,
    RewardSet,
    SelfJudgeReward,
    as_uint8_images,
    yes_questions,
)


def _image(*objects: tuple[str, str, tuple[int, int, int, int]], background: str = "gray") -> np.ndarray:
    return render(Scene([ShapeObject(cls, color, "large" if b[2] - b[0] >= 20 else "small", b)
                         for cls, color, b in objects], background))


def _t2i(include, exclude=None, tag="colors") -> dict:
    record = {"tag": tag, "include": include, "prompt": "p"}
    if exclude:
        record["exclude"] = exclude
    return {"task": "t2i", "text": "p", "geneval": record}


RED_CIRCLE = _t2i([{"class": "circle", "count": 1, "color": "red"}])


# ------------------------------------------------------------------------------------------------ GenEval


def test_geneval_correct_image_scores_one_and_wrong_colour_loses_half_the_dense_part():
    right = _image(("circle", "red", (10, 10, 32, 32)))
    wrong = _image(("circle", "blue", (10, 10, 32, 32)))
    out = GenevalReward(dense_share=0.5)([right, wrong], [RED_CIRCLE, RED_CIRCLE])
    # Wrong colour: the count check holds (1/1), the colour check fails (0/1): dense 1/2, reward 0.5 * 1/2.
    assert out["correct"].tolist() == [1.0, 0.0]
    assert out["dense"].tolist() == [1.0, 0.5]
    assert out["reward"].tolist() == [1.0, 0.25]


def test_geneval_blank_image_scores_zero():
    assert GenevalReward()([_image()], [RED_CIRCLE])["reward"].tolist() == [0.0]


def test_geneval_position_wrong_side_keeps_the_two_count_checks():
    record = _t2i([{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
                  tag="position")
    right = _image(("circle", "green", (4, 20, 22, 42)), ("square", "blue", (40, 20, 58, 38)))
    mirrored = _image(("circle", "green", (40, 20, 58, 42)), ("square", "blue", (4, 20, 22, 38)))
    out = GenevalReward(dense_share=0.5)([right, mirrored], [record, record])
    assert out["correct"].tolist() == [1.0, 0.0]
    torch.testing.assert_close(out["dense"], torch.tensor([1.0, 2 / 3]))
    torch.testing.assert_close(out["reward"], torch.tensor([1.0, 1 / 3]))


def test_geneval_counting_two_of_three_and_exclude_met():
    record = _t2i([{"class": "triangle", "count": 3}], [{"class": "triangle", "count": 4}], tag="counting")
    two = _image(("triangle", "red", (4, 4, 18, 18)), ("triangle", "blue", (30, 30, 44, 44)))
    out = GenevalReward(dense_share=1.0)([two], [record])
    # Checks: count 2/3, exclude (fewer than four) 1: dense 5/6; with dense_share 1 the reward is the dense part.
    torch.testing.assert_close(out["reward"], torch.tensor([5 / 6]))
    assert out["correct"].tolist() == [0.0]


def test_geneval_record_without_requirements_is_a_clear_error():
    with pytest.raises(ValueError, match="no `geneval` requirements"):
        GenevalReward()([_image()], [{"task": "t2i", "text": "p"}])


# --------------------------------------------------------------------------------------------------- edit


def _edit_record(source: Scene, target: Scene, mask: np.ndarray) -> dict:
    return {"task": "edit", "text": "make the circle green", "source_scene": source.to_json(),
            "target_scene": target.to_json(), "mask": mask, "source_image": render(source)}


@pytest.fixture
def recolor():
    circle, square = (8, 8, 30, 30), (40, 36, 58, 54)
    source = Scene([ShapeObject("circle", "red", "large", circle), ShapeObject("square", "blue", "small", square)])
    target = Scene([ShapeObject("circle", "green", "large", circle), ShapeObject("square", "blue", "small", square)])
    mask = np.zeros((64, 64), bool)
    mask[8:30, 8:30] = True
    return source, target, mask


def test_edit_reward_target_scores_one_and_no_op_scores_by_hand(recolor):
    source, target, mask = recolor
    record = _edit_record(source, target, mask)
    out = EditConsistencyReward()([render(target), render(source)], [record, record])
    # The unchanged source: no target match, the one intended change not made (success 0), every fact that should
    # stay did (kept 1), no pixel outside the mask changed: 0.4 * 0 + 0.4 * (0 + 1) / 2 + 0.2 * 1 = 0.4.
    for key, expected in (("match", [1, 0]), ("success", [1, 0]), ("kept", [1, 1]), ("preserved", [1, 1])):
        assert out[key].tolist() == expected, key
    torch.testing.assert_close(out["reward"], torch.tensor([1.0, 0.4]))


def test_edit_reward_over_editing_costs_kept_facts_and_pixels(recolor):
    source, target, mask = recolor
    over = target.copy()
    over.objects[1].color = "yellow"  # the square should have stayed blue
    image = render(over)
    out = EditConsistencyReward()([image], [_edit_record(source, target, mask)])
    # Facts: the change was made (success 1); of the kept facts (background, blue square) only the background is
    # found and the yellow square is unexplained: kept = 1 / (2 + 1). Pixels: counted here independently.
    outside = ~mask
    changed = (np.abs(image.astype(int) - render(source).astype(int)).max(-1) > 8)[outside].mean()
    assert out["success"].item() == 1.0 and out["match"].item() == 0.0
    assert out["kept"].item() == pytest.approx(1 / 3)
    assert out["preserved"].item() == pytest.approx(1 - changed) and changed > 0
    assert out["reward"].item() == pytest.approx(0.4 * (1 + 1 / 3) / 2 + 0.2 * (1 - changed))


def test_edit_rewards_pay_nothing_for_an_image_that_lost_the_scene(recolor):
    """Both edit rewards are scaled by presence = min(1, detected objects / target objects): an empty image of the
    source's background (which the edit recipe learnt to draw) earns 0 from each; an image that lost one of the two
    objects earns half of what its parts say; text-to-image quality is not scaled."""
    source, target, mask = recolor
    record = _edit_record(source, target, mask)
    empty = render(Scene([], source.background))
    half = render(Scene([target.objects[0]], target.background))  # the recolour made, the square lost
    edit = EditConsistencyReward()([empty, half], [record, record])
    assert edit["presence"].tolist() == [0.0, 0.5] and edit["reward"][0].item() == 0.0
    parts = 0.4 * edit["match"][1] + 0.4 * (edit["success"][1] + edit["kept"][1]) / 2 + 0.2 * edit["preserved"][1]
    assert edit["reward"][1].item() == pytest.approx(0.5 * parts.item())
    quality = QualityReward()([empty, half, half], [record, record, RED_CIRCLE])
    assert quality["reward"][0].item() == 0.0
    assert quality["reward"][1].item() == pytest.approx(0.5 * quality_score(half), abs=1e-6)
    assert quality["reward"][2].item() == pytest.approx(quality_score(half), abs=1e-6)


# ------------------------------------------------------------------------------------------------ quality


def test_quality_reward_is_the_eval_quality_score():
    clean = _image(("star", "pink", (10, 10, 32, 32)), ("cross", "white", (40, 40, 54, 54)))
    noisy = clean.copy()
    rng = np.random.default_rng(0)
    noisy[40:60, 2:22] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)  # a stray noise patch
    out = QualityReward()([clean, noisy], [{"task": "t2i"}, {"task": "edit"}])
    assert out["reward"][0].item() == 1.0
    assert out["reward"][1].item() == pytest.approx(quality_score(noisy), abs=1e-6)
    assert out["reward"][1].item() < 0.5


# ------------------------------------------------------------------------------------------ combination


def test_reward_set_weights_and_skips_rows_of_other_tasks(recolor):
    source, target, mask = recolor
    images = torch.from_numpy(np.stack([_image(("circle", "blue", (10, 10, 32, 32))), render(source)]))
    images = images.permute(0, 3, 1, 2).float() / 255  # the decoder's (B, 3, H, W) form
    records = [RED_CIRCLE, _edit_record(source, target, mask)]
    out = RewardSet([GenevalReward(weight=2.0), EditConsistencyReward(weight=0.5), QualityReward(weight=1.0)])(
        images, records)
    assert math.isnan(out["geneval/reward"][1].item()) and math.isnan(out["edit/reward"][0].item())
    # Row 0: 2 * 0.25 (wrong colour) + 1 * quality 1; row 1: 0.5 * 0.4 (no-op edit) + 1 * quality 1.
    torch.testing.assert_close(out["total"], torch.tensor([1.5, 1.2]))


def test_reward_set_refuses_a_task_no_reward_scores():
    with pytest.raises(ValueError, match="no configured reward scores task"):
        RewardSet([GenevalReward()])([_image()], [{"task": "edit"}])


def test_uint8_conversion_round_trips_rendered_pixels():
    image = _image(("diamond", "orange", (5, 5, 27, 27)))
    as_tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    assert np.array_equal(as_uint8_images(as_tensor)[0], image)


# ------------------------------------------------------------------------------------------------ self-judge


class CharTokenizer:
    """Characters -> ids 2..63 (lossy, but deterministic), <eos> 1."""

    pad_id, eos_id, vocab_size = 0, 1, 64

    def encode(self, text: str) -> list[int]:
        return [2 + ord(c) % 62 for c in text]


def _tiny_policy():
    from arm.ar.model import ARConfig, ARDecoder
    from arm.ar.sequences import SPECIAL_TOKENS, SequenceBuilder, VocabLayout

    torch.manual_seed(0)
    config = ARConfig.preset("tiny", text_vocab_size=64, num_image_codes=32, num_special_tokens=len(SPECIAL_TOKENS),
                             max_seq_len=256)
    return ARDecoder(config).eval(), SequenceBuilder(CharTokenizer(), VocabLayout(64, 32), (2, 2))


def test_yes_questions_follow_the_record():
    record = _t2i([{"class": "square", "count": 2}, {"class": "circle", "count": 1, "color": "red",
                                                      "position": ["above", 0]}])
    assert yes_questions(record) == [q + " Please answer yes or no." for q in (
        "Are there exactly two squares in this image?", "Is there a red circle in this image?",
        "Is the circle above the square?")]
    edit = {"task": "edit", "target_scene": Scene([ShapeObject("star", "orange", "small", (1, 1, 15, 15))],
                                                  "khaki").to_json()}
    assert yes_questions(edit) == [q + " Please answer yes or no." for q in (
        "Is the background khaki?", "Is there an orange star in this image?")]


def test_self_judge_is_p_yes_from_a_full_forward():
    model, builder = _tiny_policy()
    reward = SelfJudgeReward()
    reward.setup(model, builder)
    records = [{**RED_CIRCLE, "codes": [1, 2, 3, 4]}, {**RED_CIRCLE, "codes": [31, 0, 7, 7]}]
    out = reward(torch.zeros(2, 3, 8, 8), records)

    def logprob(prefix: list[int], answer: str) -> float:  # one unpadded sequence, scored token by token
        cont = [*builder.tokenizer.encode(answer), builder.eos]
        ids = torch.tensor([prefix + cont])
        with torch.no_grad():
            logits = model.text_logits(model(input_ids=ids)).log_softmax(-1)[0]
        return sum(float(logits[len(prefix) - 1 + j, t]) for j, t in enumerate(cont))

    for row, record in enumerate(records):
        prefix = builder.vqa_prompt(record["codes"], yes_questions(record)[0])
        yes, no = logprob(prefix, "Yes"), logprob(prefix, "No")
        expected = math.exp(yes) / (math.exp(yes) + math.exp(no))
        assert out["reward"][row].item() == pytest.approx(expected, abs=1e-5)
        assert out["agree"][row].item() == float(expected > 0.5)


def test_self_judge_needs_the_generated_codes():
    model, builder = _tiny_policy()
    reward = SelfJudgeReward()
    reward.setup(model, builder)
    with pytest.raises(ValueError, match="generated `codes`"):
        reward(torch.zeros(1, 3, 8, 8), [RED_CIRCLE])


# ------------------------------------------------------------------------------------------------- CLIP


def test_clip_reward_is_the_clamped_cosine_of_the_original_model(tmp_path):
    import clip
    from clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2,
                 transformer_layers=1).float().eval()
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    reward = ClipScoreReward(str(tmp_path / "clip.pt"), text_heads=2)
    images = torch.rand(3, 3, 32, 32)
    records = [{"task": "t2i", "text": "a red circle"}, {"task": "t2i", "text": "two blue squares"},
               {"task": "edit", "text": "make it green", "target_text": "a green circle"}]
    out = reward(images, records)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.encode_image((images - mean) / std)
        txt = model.encode_text(clip.tokenize(["a red circle", "two blue squares", "a green circle"]))
    cosine = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(out["cosine"], cosine, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["reward"], cosine.clamp_min(0), atol=1e-5, rtol=1e-5)
