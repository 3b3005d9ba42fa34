"""Helpers for the 2-process FSDP2 tests: shards with a known split, a per-step loss recorder, CLI runs.

How a 2-rank FSDP2 run is compared with one process (both FSDP tests use this):
- Each rank reads its own shard of 16 samples (``write_rank_shards``), two batches of 8 per epoch. The reference
  process reads one shard that interleaves them, batch for batch (rank-0 batch, rank-1 batch, ...), and
  accumulates gradients over 2 micro-batches. FSDP averages the two ranks' gradients; accumulation averages the
  two micro-batches' gradients: the same update, so the same next loss. Which rank gets which shard does not
  matter: the average of two numbers does not depend on their order, even in floating point.
- An epoch is exactly 2 optimiser steps in both runs and every epoch reads the same batches in the same order
  (no sample shuffle, one shard per reader), so a run resumed at step 2 sees what an uninterrupted run sees.
- ``StepLossRecorder`` reseeds torch's generator at the start of every batch from the optimiser step alone, so
  both micro-batches of a reference step and both ranks of an FSDP step draw the same noise (the pixel
  decoder's t, x0 and condition dropout), whatever ran before (sanity validation, a restart, ``reset_seed``).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import tarfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from arm.io import write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300
THEN = "--then"
"""Separates the argument lists of consecutive runs on the ``run_two_ranks`` command line."""
FSDP2_STRATEGY = ["--trainer.strategy", "lightning.pytorch.strategies.ModelParallelStrategy",
                  "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1"]


class StepLossRecorder(L.Callback):
    """Reseeds torch at each batch from the optimiser step; writes ``{step: [mean loss over ranks and
    micro-batches, epoch]}`` as JSON to ``path`` at the end of training (rank 0)."""

    def __init__(self, path: str, seed: int = 1000) -> None:
        self.path, self.seed = path, seed
        self.losses: dict[int, list[float]] = defaultdict(list)
        self.epochs: dict[int, int] = {}
        self.step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step  # still the step being accumulated, for every micro-batch of it
        self.epochs[self.step] = trainer.current_epoch
        torch.manual_seed(self.seed + self.step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning hands back the loss divided by the accumulation count; undo that (exact: a power of 2 here).
        loss = outputs["loss"].detach().float() * trainer.accumulate_grad_batches
        loss = trainer.strategy.reduce(loss, reduce_op="mean")  # mean over ranks
        self.losses[self.step].append(float(loss))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json_atomic(self.path, {str(k): [sum(v) / len(v), self.epochs[k]] for k, v in self.losses.items()})


def _members_by_sample(shard: Path) -> list[list[tarfile.TarInfo]]:
    """The members of a webdataset shard grouped per sample (a sample's files are consecutive)."""
    groups: list[list[tarfile.TarInfo]] = []
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            key = member.name.split(".", 1)[0]
            if not groups or groups[-1][0].name.split(".", 1)[0] != key:
                groups.append([])
            groups[-1].append(member)
    return groups


def _write_shard(out: Path, samples: list[tuple[Path, list[tarfile.TarInfo]]]) -> None:
    with tarfile.open(out, "w") as dst:
        for source, members in samples:
            with tarfile.open(source) as src:
                for member in members:
                    dst.addfile(member, src.extractfile(member))


def write_rank_shards(train_dir: Path, out: Path, per_rank: int = 16, batch_size: int = 8) -> dict[str, object]:
    """Two rank shards (the first ``per_rank`` samples of the first two train shards) and the reference shard
    that interleaves them batch by batch. Returns {"ranks": [path, path], "reference": path}."""
    out.mkdir(parents=True, exist_ok=True)
    sources = sorted(train_dir.glob("*.tar"))[:2]
    taken = [[(src, group) for group in _members_by_sample(src)[:per_rank]] for src in sources]
    if len(taken) != 2 or any(len(t) < per_rank for t in taken):
        raise ValueError(f"need two train shards of >= {per_rank} samples in {train_dir}")
    ranks = [out / f"rank{i}.tar" for i in range(2)]
    for path, samples in zip(ranks, taken):
        _write_shard(path, samples)
    interleaved = [s for start in range(0, per_rank, batch_size) for t in taken for s in t[start:start + batch_size]]
    _write_shard(out / "reference.tar", interleaved)
    return {"ranks": [str(p) for p in ranks], "reference": str(out / "reference.tar")}


def run_in_process(module: str, args: list[str]) -> None:
    """``module.main(args)`` in this process with one thread, as each rank of ``run_two_ranks`` has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert importlib.import_module(module).main(args) in (0, None)
    finally:
        torch.set_num_threads(threads)


def run_two_ranks(module: str, runs: list[list[str]], log: Path) -> None:
    """``torchrun --standalone --nproc-per-node 2`` of this file: each rank calls ``module.main(args)`` for each
    ``args`` in ``runs``, in order, in the same 2 processes (the second run builds model, optimiser and trainer
    anew, so a resume still reads everything from the checkpoint; only the imports are shared, which saves ~15 s
    of start-up on 2 busy cores). One thread per process; output to ``log``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, module]
    for i, args in enumerate(runs):
        cmd += ([THEN] if i else []) + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"torchrun {module} failed ({proc.returncode}):\n" + log.read_text()[-3000:])


def read_losses(path: Path) -> dict[int, float]:
    """{step: loss} from a ``StepLossRecorder`` file."""
    return {int(k): v[0] for k, v in json.loads(path.read_text()).items()}


def read_epochs(path: Path) -> dict[int, int]:
    """{step: epoch} from a ``StepLossRecorder`` file."""
    return {int(k): v[1] for k, v in json.loads(path.read_text()).items()}


def recorder_args(path: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.integration.fsdp_runs.StepLossRecorder",
            f"--trainer.callbacks.path={path}"]


def checkpoint_args(dirpath: Path) -> list[str]:
    return ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=2",
            f"--trainer.callbacks.dirpath={dirpath}"]


def train_sharded_and_resume(cli: str, fit: Callable[..., list[str]], rank_shards: list[str], tmp_path: Path,
                             *extra: str) -> dict[int, float]:
    """FSDP2 on 2 ranks (torchrun) for 2 steps with a distributed checkpoint, then a fresh fit resumed from it to
    step 4; checks the checkpoint's layout and the steps each part ran; returns {step: mean loss}.

    ``fit(train_shards, *args)`` builds the stage's ``fit`` command line.
    """
    ckpt, last = tmp_path / "ckpt", tmp_path / "ckpt" / "last.ckpt"
    shards = "[" + ",".join(rank_shards) + "]"
    common = [*FSDP2_STRATEGY, "--trainer.devices", "2", *checkpoint_args(ckpt), *extra]
    run_two_ranks(cli, [
        fit(shards, "--trainer.max_steps", "2", *common, *recorder_args(tmp_path / "first.json")),
        fit(shards, "--trainer.max_steps", "4", *common, *recorder_args(tmp_path / "resumed.json"),
            "--ckpt_path", str(last)),
    ], tmp_path / "fsdp.log")
    assert last.is_dir() and (last / ".metadata").is_file()  # a distributed checkpoint: one folder of shards
    assert len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    first, resumed = read_losses(tmp_path / "first.json"), read_losses(tmp_path / "resumed.json")
    assert sorted(first) == [0, 1] and sorted(resumed) == [2, 3]  # the resumed run starts at the checkpoint's step
    return {**first, **resumed}


def assert_losses_match(sharded: dict[int, float], reference: dict[int, float], rtol: float) -> None:
    """Per-step losses of the sharded run equal the reference's within ``rtol``, and training moved the loss."""
    assert sorted(reference) == sorted(sharded) == [0, 1, 2, 3]
    assert all(math.isfinite(v) for v in sharded.values())
    for step in range(4):
        assert sharded[step] == pytest.approx(reference[step], rel=rtol), (step, sharded, reference)
    assert reference[3] != pytest.approx(reference[0], rel=1e-3)  # a no-op training would match trivially


if __name__ == "__main__":  # one rank of run_two_ranks: MODULE ARGS [--then ARGS ...]
    target, rest = sys.argv[1], sys.argv[2:]
    sys.argv = sys.argv[:1]  # LightningCLI reads ``args``; leftover command-line arguments only make it warn
    while True:
        cut = rest.index(THEN) if THEN in rest else len(rest)
        assert importlib.import_module(target).main(rest[:cut]) in (0, None)
        if cut == len(rest):
            break
        rest = rest[cut + 1:]
    # Lightning leaves the process group up; tearing it down before exit joins its threads. Without this a rank
    # died once at exit with "terminate called without an active exception" (SIGABRT) after every run had passed.
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    # It still happened once after the teardown (2026-12-04, tokenizer test, CI): a C++ thread object destroyed at
    # interpreter exit. Every result this rank owes is written by now, so leave without running exit-time
    # destructors; anything that failed above has raised already and exits non-zero as before.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
