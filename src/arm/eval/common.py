"""Small helpers the protocols share: reading record files and images, batching, and the run context."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from arm.data.shapeworld.render import decode_png, encode_png
from arm.eval.interface import EvalModel
from arm.eval.results import checkpoint_hash, read_jsonl, stamp

BATCH_SIZE = 64
"""Records per model call. The model batches inside a call as it likes (``AREvalModel``: ``batch_size`` rows per
sampler call); with 16 per call the demo's AR export drew GenEval images 1.6x slower on 2 cores (128 prompts, one
image each: 9.4-9.6 s against 5.6-6.3 s at 64), since a 16-row decode step is dominated by per-op overhead."""


@dataclass
class Run:
    """What every protocol run needs: the model, the judge, the sampling seed, a record limit and the stamp's
    config (the command's arguments)."""

    model: EvalModel
    judge: object = None
    seed: int = 0
    limit: int | None = None
    config: dict = field(default_factory=dict)
    progress: bool = True

    def stamp(self, protocol: str) -> dict:
        return stamp(protocol, self.config, checkpoint_hash(self.model.checkpoint), self.seed)


def read_records(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Records of a benchmark file: a JSON list (WISE's files) or JSON lines (GenEval, GEdit, POPE, ours)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark file at {str(path)!r}; write ShapeWorld's with "
                                "`arm data shapeworld --out DIR` (files in DIR/bench) or pass a real one")
    text = path.read_text(encoding="utf-8").lstrip()
    if text.startswith("["):
        records = json.loads(text)
    else:
        records = read_jsonl(path)
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} must hold JSON objects (one per line, or a JSON list of them)")
    return records[:limit] if limit is not None else records


def load_image(base: Path, reference: str) -> np.ndarray:
    """An image named by a record, relative to the benchmark file's folder (absolute paths allowed)."""
    path = Path(reference) if Path(reference).is_absolute() else base / reference
    if not path.is_file():
        raise FileNotFoundError(f"no image at {str(path)!r} (named by a record of the benchmark file in {base})")
    return decode_png(path.read_bytes())


def batched(items: Sequence, size: int = BATCH_SIZE) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_quick(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` under a temporary name, then rename it: a cut-off run never leaves a truncated file under
    the final name. Unlike ``arm.io.write_atomic`` there is no fsync: at ~10-20 ms per file it would double the
    cost of a GenEval run, and a lost image is regenerated on resume. Results files use ``write_atomic``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    return write_quick(path, encode_png(np.asarray(image, np.uint8)))


class Skipped:
    """Records a judge could not score, counted and listed: ``unsupported`` (outside what the judge knows) and
    ``judge_failed`` (a VLM reply without readable scores). Neither enters an average."""

    def __init__(self):
        self.unsupported: list[dict] = []
        self.failed: list[dict] = []

    def judge(self, call: Callable[[], dict], ident: dict) -> dict | None:
        """``call()``'s scores, or None after noting why the record was skipped."""
        from arm.data.shapeworld.judge import UnsupportedRecord
        from arm.eval.judges import JudgeReplyError

        try:
            return call()
        except UnsupportedRecord as err:
            self.unsupported.append({**ident, "reason": str(err)})
        except JudgeReplyError as err:
            self.failed.append({**ident, "reason": str(err)})
        return None

    def summary(self) -> dict:
        return {"unsupported": len(self.unsupported), "unsupported_records": self.unsupported,
                "judge_failed": len(self.failed), "judge_failed_records": self.failed}
