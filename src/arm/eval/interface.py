"""The model-agnostic interface every protocol talks to, a dummy model for cheap tests, and our checkpoints.

Like lm-evaluation-harness's ``LM`` class, a model is four calls, batched, on plain data (images are uint8
``(H, W, 3)`` arrays, text is ``str``):

- ``generate(prompts, n, seed) -> [[image] * n per prompt]``   text-to-image (GenEval, WISE)
- ``edit(images, instructions, seed) -> [image]``               instruction editing (GEdit)
- ``answer(images, questions) -> [str]``                        understanding (VQA, MME, POPE)
- ``loglikelihood(images, questions, answers) -> [float]``      summed log-probability (nats) of each answer
  given its image and question (caption perplexity)

and a fifth with a default, ``describe(images) -> [str]``, a free description of each image (generated captions,
scored against the scene); by default it is ``answer`` to ``CAPTION_QUESTION``, which a model with a captioning
prompt of its own overrides (ours: the ``<caption>`` sequence, long enough for a whole scene).

``prepare(task, examples)`` (task: generate, edit, answer or describe) is called by each protocol before it asks
anything, with the records' ground truth where the files hold it; real models ignore it, and the ``DummyModel``
builds its answers from it.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from arm.data.shapeworld.render import render
from arm.data.shapeworld.scene import Scene
from arm.data.shapeworld.world import BACKGROUNDS, DEFAULT_BACKGROUND

Image = np.ndarray


class EvalModel(ABC):
    """What the protocols need from a model. ``checkpoint`` names the weights (a path, or "dummy")."""

    checkpoint: str = "dummy"

    @property
    def settings(self) -> dict:
        """How the model samples (guidance scales, temperature ...); written into every summary's config."""
        return {}

    def prepare(self, task: str, examples: Sequence[Mapping]) -> None:
        """Ground truth a protocol holds (``task`` in generate / edit / answer); ignored by real models."""
        return None

    @abstractmethod
    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Image]]: ...

    @abstractmethod
    def edit(self, images: Sequence[Image], instructions: Sequence[str], seed: int) -> list[Image]: ...

    @abstractmethod
    def answer(self, images: Sequence[Image], questions: Sequence[str]) -> list[str]: ...

    @abstractmethod
    def loglikelihood(self, images: Sequence[Image], questions: Sequence[str], answers: Sequence[str]) -> list[float]: ...

    def describe(self, images: Sequence[Image]) -> list[str]:
        """A caption of each image; by default the reply to ``arm.eval.understanding.CAPTION_QUESTION``."""
        from arm.eval.understanding import CAPTION_QUESTION

        return self.answer(images, [CAPTION_QUESTION] * len(images))


def _image_key(image: Image) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, np.uint8).tobytes()).hexdigest()


class DummyModel(EvalModel):
    """A model that knows the answers, for tests with known scores.

    From what ``prepare`` showed it: ``generate`` renders a prompt's ground-truth ``scene``, ``edit`` renders the
    ``target`` scene of (instruction, source image), ``answer`` returns the ground-truth ``answer``. Inputs it
    has no truth for, and every prompt, instruction or question listed in ``wrong``, get a wrong output
    instead: a blank ``blank_background`` image, the source image unchanged, or a wrong answer (the opposite of
    yes/no, otherwise ``"none"``). ``loglikelihood`` gives ``word_logprob`` per whitespace-separated word, so
    caption perplexity per word is ``exp(-word_logprob)``. ``describe`` returns an image's ground-truth
    ``caption``, or ``""`` (nothing seen) where it has none or that caption is listed in ``wrong``.
    """

    def __init__(self, wrong: Collection[str] = (), resolution: int = 64, blank_background: str = DEFAULT_BACKGROUND,
                 word_logprob: float = -1.0):
        if blank_background not in BACKGROUNDS:
            raise ValueError(f"unknown background {blank_background!r}; expected one of {list(BACKGROUNDS)}")
        self.wrong = set(wrong)
        self.resolution, self.blank_background, self.word_logprob = resolution, blank_background, word_logprob
        self.scenes: dict[str, dict] = {}
        self.targets: dict[tuple[str, str], dict] = {}
        self.answers: dict[tuple[str, str], str] = {}
        self.captions: dict[str, str] = {}

    def prepare(self, task: str, examples: Sequence[Mapping]) -> None:
        for ex in examples:
            if task == "generate" and ex.get("scene"):
                self.scenes[ex["prompt"]] = ex["scene"]
            elif task == "edit" and ex.get("target"):
                self.targets[(ex["instruction"], _image_key(ex["image"]))] = ex["target"]
            elif task == "answer" and ex.get("answer") is not None:
                self.answers[(ex["question"], _image_key(ex["image"]))] = str(ex["answer"])
            elif task == "describe" and ex.get("caption") is not None:
                self.captions[_image_key(ex["image"])] = str(ex["caption"])

    def _blank(self) -> Image:
        return render(Scene(objects=[], background=self.blank_background, resolution=self.resolution))

    def generate(self, prompts: Sequence[str], n: int, seed: int) -> list[list[Image]]:
        out = []
        for prompt in prompts:
            scene = None if prompt in self.wrong else self.scenes.get(prompt)
            image = render(Scene.from_json(scene)) if scene else self._blank()
            out.append([image.copy() for _ in range(n)])
        return out

    def edit(self, images: Sequence[Image], instructions: Sequence[str], seed: int) -> list[Image]:
        out = []
        for image, instruction in zip(images, instructions):
            target = None if instruction in self.wrong else self.targets.get((instruction, _image_key(image)))
            out.append(render(Scene.from_json(target)) if target else np.array(image, np.uint8, copy=True))
        return out

    def answer(self, images: Sequence[Image], questions: Sequence[str]) -> list[str]:
        out = []
        for image, question in zip(images, questions):
            truth = self.answers.get((question, _image_key(image)))
            if truth is not None and question not in self.wrong:
                out.append(truth)
            elif truth is not None and truth.lower() in ("yes", "no"):
                out.append("No" if truth.lower() == "yes" else "Yes")
            else:
                out.append("none")
        return out

    def loglikelihood(self, images: Sequence[Image], questions: Sequence[str], answers: Sequence[str]) -> list[float]:
        return [self.word_logprob * len(a.split()) for a in answers]

    def describe(self, images: Sequence[Image]) -> list[str]:
        captions = [self.captions.get(_image_key(image), "") for image in images]
        return ["" if c in self.wrong else c for c in captions]


class ARCheckpointModel(EvalModel):
    """Our unified AR checkpoints behind the interface: a thin shell over the AR stage's commands.

    ``arm.ar.commands`` (the AR stage's generate / edit / ask commands) must provide ``load_for_eval(path,
    **settings)``, returning an object with the four interface methods and a ``settings`` dict; this class only
    forwards to it, so sampling settings (CFG, temperature, top-k) stay defined in one place, the AR stage.
    """

    def __init__(self, checkpoint: str, **settings):
        self.checkpoint = str(checkpoint)
        try:
            commands = importlib.import_module("arm.ar.commands")
        except ModuleNotFoundError as err:
            raise ValueError(f"cannot evaluate {checkpoint!r}: the AR stage's arm.ar.commands is not available "
                             f"({err}); use `--ckpt dummy` until it lands") from err
        loader = getattr(commands, "load_for_eval", None)
        if loader is None:
            raise ValueError("arm.ar.commands has no load_for_eval(path); the eval harness needs it to load an "
                             "AR checkpoint")
        self.inner = loader(self.checkpoint, **settings)

    @property
    def settings(self) -> dict:
        return dict(getattr(self.inner, "settings", {}))

    def generate(self, prompts, n, seed):
        return self.inner.generate(list(prompts), n, seed)

    def edit(self, images, instructions, seed):
        return self.inner.edit(list(images), list(instructions), seed)

    def answer(self, images, questions):
        return self.inner.answer(list(images), list(questions))

    def loglikelihood(self, images, questions, answers):
        return self.inner.loglikelihood(list(images), list(questions), list(answers))

    def describe(self, images):
        inner = getattr(self.inner, "describe", None)
        return inner(list(images)) if inner is not None else super().describe(images)


def load_model(ckpt: str, wrong: Collection[str] = (), settings: Mapping | None = None) -> EvalModel:
    """``dummy`` -> ``DummyModel`` (``wrong`` as its list of prompts to fail); anything else -> our AR
    checkpoint at that path, with ``settings`` overriding its sampling settings."""
    if ckpt == "dummy":
        if settings:
            raise ValueError("sampling settings apply to AR checkpoints, not to `--ckpt dummy`")
        return DummyModel(wrong=wrong)
    return ARCheckpointModel(ckpt, **(settings or {}))
