"""Results files: per-sample JSONL and a stamped summary, both written atomically.

Every protocol writes, in its output folder, ``results.jsonl`` (one line per scored sample, in the benchmark's
own per-sample layout plus three fields of ours: ``sample_id``, stable across runs and checkpoints, ``stratum``,
the group the headline averages over, and ``score``, the per-sample number behind the headline) and
``summary.json``. Keeping per-sample scores keyed by ``sample_id`` lets a later analysis pair two runs sample by
sample (a paired bootstrap of the difference, as the synergy analysis needs).

``summary.json`` carries the run's stamp (``stamp``): protocol, config, checkpoint hash (sha256 of the weights
file, or "dummy"), seed, git hash and date; then the metrics, each as ``{"value", "ci95": [low, high]}``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from arm.io import WEIGHTS_FILE, write_atomic, write_json_atomic

SAMPLES_FILE, SUMMARY_FILE = "results.jsonl", "summary.json"


def git_hash() -> str:
    """The suite's commit (with ``-dirty`` when tracked files differ from it), or "unknown" outside git.

    ``ARM_GIT_HASH``, when set, is returned as is: for a copy of the tree without ``.git`` (a borrowed GPU machine
    gets the working tree only), whose runner knows the commit it copied."""
    if os.environ.get("ARM_GIT_HASH"):
        return os.environ["ARM_GIT_HASH"]
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=root)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=10, cwd=root)
        return head.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkpoint_hash(ckpt: str | os.PathLike) -> str:
    """sha256 of a checkpoint's weights: the file itself, or ``model.safetensors`` in an export folder;
    "dummy" for the dummy model."""
    if str(ckpt) == "dummy":
        return "dummy"
    path = Path(ckpt)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {str(path)!r}; pass a weights file, an export folder "
                                "holding model.safetensors, or `--ckpt dummy`")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp(protocol: str, config: Mapping, ckpt_hash: str, seed: int) -> dict:
    """The fields every summary starts with."""
    return {
        "protocol": protocol,
        "config": dict(config),
        "checkpoint_sha256": ckpt_hash,
        "seed": seed,
        "git": git_hash(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping]) -> int:
    """Rows as JSON lines, atomically; returns the count."""
    lines = [json.dumps(row, sort_keys=True) for row in rows]
    write_atomic(path, "".join(line + "\n" for line in lines).encode())
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """JSON lines (blank lines skipped); a malformed line is a one-line error naming the file and line."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not valid JSON ({err.msg}); fix or remove that line") from err
    return rows


def write_results(out: str | os.PathLike, rows: list[Mapping], summary: Mapping) -> dict:
    """``OUT/results.jsonl`` (per sample) then ``OUT/summary.json``; returns the summary."""
    out = Path(out)
    write_jsonl(out / SAMPLES_FILE, rows)
    write_json_atomic(out / SUMMARY_FILE, summary)
    return dict(summary)
