"""The language-aligned teacher (paper §1): a dual encoder trained here, or OpenAI CLIP from local weights."""

from arm.teacher.losses import sigmoid_contrastive_loss, sigmoid_contrastive_loss_with_negatives
from arm.teacher.model import DualEncoder, TeacherConfig, load_teacher, save_teacher, tokenize_texts

__all__ = ["DualEncoder", "TeacherConfig", "load_teacher", "save_teacher", "sigmoid_contrastive_loss",
           "sigmoid_contrastive_loss_with_negatives", "tokenize_texts"]
