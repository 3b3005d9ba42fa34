"""Self-judge reward: the policy's own understanding answers yes/no questions about the image it just drew.

ARM's claim is one model for understanding and generation; a self-judge reward lets the first drive the second
(as "understanding as reward" in unified-model RL work): after a rollout, the policy reads its own generated codes
as an image (``vqa`` format of ``arm.ar.sequences``) and is asked MME-style questions whose answer should be yes,
phrased as ShapeWorld's MME questions are (``arm.data.shapeworld.text``):

- t2i, per include requirement of the GenEval record: one object, "Is there a red circle in this image?";
  several, "Are there exactly two circles in this image?"; with a position, "Is the circle left of the square?";
- edit, from the target scene: the background ("Is the background khaki?") and each object ("Is there a ...").

Each question ends with " Please answer yes or no.". ``P(yes) = p(Yes) / (p(Yes) + p(No))`` where ``p(x)`` is the
probability of the answer ``x <eos>`` (``arm.ar.sampling.continuation_logprobs``, one batched forward without
gradient). The reward is the mean ``P(yes)`` over the sample's questions; ``agree`` is the share above 0.5.

Simplifications: only questions answered "yes" (a "no" question needs a wrong fact, which invites the policy to
learn the phrasing rather than the image); the judge is the current policy, not a frozen copy, so it can be
gamed by drifting understanding: pair it with a detector reward and watch the VQA score (ARM §3 keeps
understanding stable).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from arm.data.shapeworld.geneval import plural, with_article
from arm.data.shapeworld.scene import Scene
from arm.data.shapeworld.text import MME_SUFFIX
from arm.data.shapeworld.world import NUMBER_WORDS
from arm.rl.rewards.base import Reward


def yes_questions(record: Mapping) -> list[str]:
    """Questions about a record's intended image whose true answer is yes (module docstring)."""
    questions = []
    if record.get("task") == "t2i":
        includes = (record.get("geneval") or {}).get("include", [])
        for req in includes:
            cls, count = req["class"], int(req["count"])
            if count == 1:
                questions.append(f"Is there {with_article(' '.join(filter(None, (req.get('color'), cls))))} in "
                                 f"this image?")
            else:
                questions.append(f"Are there exactly {NUMBER_WORDS.get(count, count)} {plural(cls)} in this image?")
            if "position" in req:
                relation, target = req["position"][0], includes[int(req["position"][1])]["class"]
                questions.append(f"Is the {cls} {relation} the {target}?")
    elif record.get("task") == "edit" and record.get("target_scene"):
        scene = Scene.from_json(record["target_scene"])
        questions.append(f"Is the background {scene.background}?")
        questions += [f"Is there {with_article(f'{o.color} {o.cls}')} in this image?" for o in scene.objects]
    return [q + MME_SUFFIX for q in questions]


class SelfJudgeReward(Reward):
    """Mean probability that the policy answers "yes" to true questions about its own generation.

    Args:
        weight: multiplier in the run's total.
        tasks: the tasks it scores.
    """

    name = "self_judge"
    wants_uint8 = False  # it reads the generated codes (record["codes"]), not the pixels

    def __init__(self, weight: float = 1.0, tasks: tuple[str, ...] = ("t2i", "edit")) -> None:
        super().__init__(weight)
        self.tasks = tuple(tasks)
        self.policy = self.builder = None

    def setup(self, policy, builder) -> None:
        self.policy, self.builder = policy, builder

    def score(self, images, records: list[Mapping]) -> dict[str, list[float]]:
        from arm.ar.sampling import continuation_logprobs

        if self.policy is None:
            raise RuntimeError("SelfJudgeReward.setup(policy, builder) was not called; GRPOModule calls it")
        builder = self.builder
        yes, no = [*builder.tokenizer.encode("Yes"), builder.eos], [*builder.tokenizer.encode("No"), builder.eos]
        prefixes, owner = [], []
        for i, record in enumerate(records):
            if record.get("codes") is None:
                raise ValueError("the self-judge reward needs each record's generated `codes`; the rollout adds them")
            for question in yes_questions(record):
                prefixes.append(builder.vqa_prompt(list(record["codes"]), question))
                owner.append(i)
        if not prefixes:
            return {"reward": [float("nan")] * len(records), "agree": [float("nan")] * len(records)}
        logp = continuation_logprobs(self.policy, prefixes + prefixes, [yes] * len(prefixes) + [no] * len(prefixes))
        p_yes = torch.sigmoid(logp[: len(prefixes)] - logp[len(prefixes):]).cpu()  # p(Y) / (p(Y) + p(N))
        owner_t = torch.tensor(owner)
        reward, agree = [], []
        for i in range(len(records)):
            mine = p_yes[owner_t == i]
            reward.append(float(mine.mean()) if len(mine) else float("nan"))
            agree.append(float((mine > 0.5).float().mean()) if len(mine) else float("nan"))
        return {"reward": reward, "agree": agree}
