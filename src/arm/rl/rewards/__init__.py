"""Rewards for GRPO (ARM §3), each a class chosen and weighted in YAML (``class_path`` + ``init_args``).

- ``GenevalReward``: GenEval adherence for text-to-image, exact verdict plus a dense share of checks met.
- ``EditConsistencyReward``: target scene reached, intended facts changed and kept, pixels outside the mask kept.
- ``QualityReward``: the ShapeWorld visual-quality proxy (``arm.eval.quality``).
- ``SelfJudgeReward``: the policy's own P(yes) to true questions about its generation.
- ``ClipScoreReward``: CLIP image-text cosine from local weights, for real data.

``RewardSet`` sums them with their weights; see ``arm.rl.rewards.base`` for the call convention.
"""

from arm.rl.rewards.base import Reward, RewardSet, as_float_images, as_uint8_images
from arm.rl.rewards.clip_score import ClipScoreReward
from arm.rl.rewards.self_judge import SelfJudgeReward, yes_questions
from arm.rl.rewards.shapeworld import EditConsistencyReward, GenevalReward, QualityReward, geneval_checks

__all__ = ["Reward", "RewardSet", "as_float_images", "as_uint8_images", "GenevalReward", "EditConsistencyReward",
           "QualityReward", "SelfJudgeReward", "ClipScoreReward", "geneval_checks", "yes_questions"]
