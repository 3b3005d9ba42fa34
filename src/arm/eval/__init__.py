"""Benchmark protocols on the benchmarks' real file formats, with pluggable judges and stamped results.

- ``interface``: the model-agnostic ``EvalModel`` (generate / edit / answer / loglikelihood), ``DummyModel``,
  ``ARCheckpointModel``.
- ``geneval``, ``wise``, ``gedit``, ``understanding`` (VQA, MME, POPE, caption perplexity): one protocol each.
- ``judges``: the built-in ShapeWorld judge and a VLM judge (``openai_client``); ``quality``: the visual-quality
  proxy (also the RL stage's quality reward).
- ``stats``: bootstrap intervals; ``results``: per-sample JSONL + stamped summary; ``convert``: ShapeWorld bench
  files to the real formats; ``cli``: ``arm eval``.
"""
