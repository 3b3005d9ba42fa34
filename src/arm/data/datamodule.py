"""Streaming ShapeWorld shards into Lightning: the batch stream, the DataModule and the skipped-sample logger.

``ShapeWorldStream`` reads WebDataset shards with webdataset's tar reader (``wds.tarfile_samples``), splits them
over ranks and DataLoader workers, shuffles (train only), builds task samples (``arm.data.samples``) and yields
collated batches. ``ShapeWorldDataModule`` wires one stream per split; ``SkippedSamplesLogger`` logs how many
samples were skipped as corrupt.

Splitting. Every (rank, worker) pair is one *consumer*, ``consumer = rank * num_workers + worker`` out of
``world_size * num_workers``. With at least that many shards, consumer ``c`` reads shards ``c::consumers`` of the
shard list (shuffled per epoch for train, by a generator seeded with ``(seed, epoch)`` alone, so every consumer
draws the same permutation). With fewer shards every consumer reads all shards in the same order and keeps raw
samples ``c::consumers`` of the stream, so even a one-shard dataset is split exactly; the cost is that every
consumer reads (but does not decode) every sample. Either way consumers are disjoint and together see everything.
Rank and world size come from the trainer (or ``torch.distributed`` when initialised), resolved in the main
process because workers are not part of the process group.

Determinism. The shard permutation is seeded by ``(seed, epoch)``, the sample shuffle buffer by
``(seed, epoch, consumer)``, the VQA question choice by ``(seed, epoch, key)``: for a fixed seed, world size and
``num_workers`` the order of keys in an epoch is fixed; epochs differ. The epoch reaches the workers through
``ShapeWorldLoader``, which sets it on the stream in the main process before each pass (the epoch Lightning trains
the pass under, see ``trainer_epoch``, or a pass counter outside a trainer). Val and test are never shuffled and always use epoch 0.

Corrupt samples. A sample whose json or png does not decode (or lacks a member), and a tar member or shard that
cannot be read, is skipped with a ``CorruptSampleWarning`` naming the key (or shard) and the error, and counted
by the consumer that met it. Every batch carries ``__skipped__`` (that consumer's count so far this pass) and
``__worker__`` (the consumer id). Batching happens inside the stream, one batch behind the reader, so the last
batch carries the final count even when the last samples were corrupt. ``SkippedSamplesLogger`` keeps the
maximum per consumer, sums over consumers and, with ``sync_dist``, over ranks, and logs ``data/skipped``.

Deliberate simplifications:
- A tar-level error counts as one skipped sample, although it may lose the rest of a shard. A shard cut at a
  512-byte block boundary reads as a shorter, valid tar and goes unnoticed.
- Ranks can get different numbers of batches when samples do not split evenly; under DDP, train by ``max_steps``
  with batches that divide each rank's share, or use enough shards that every rank gets the same count.
- Workers are not persistent: the epoch is handed to workers when they start at each pass.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from arm.data.samples import build_sample, check_task, collate_samples, expand_shards

SKIPPED_KEY = "__skipped__"
WORKER_KEY = "__worker__"
"""Batch fields with the producing consumer's skipped-sample count so far, and that consumer's id."""


class CorruptSampleWarning(UserWarning):
    """A sample or tar member could not be read and was skipped."""


class SkipCounter:
    """Counts and reports skipped samples of one consumer during one pass."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.count = 0

    def skip(self, key: str, error: BaseException) -> None:
        self.count += 1
        warnings.warn(f"skipping corrupt sample {key!r} ({self.where}): {type(error).__name__}: {error}",
                      CorruptSampleWarning, stacklevel=2)

    def tar_error(self, error: BaseException) -> bool:
        """webdataset exception handler: count, warn and keep reading."""
        self.skip("<tar member>", error)
        return True


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, or ``(0, 1)`` when none is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _ignore(error: BaseException) -> bool:
    return True


def _sources(shards: list[str], handler: Callable[[BaseException], bool]) -> Iterator[dict]:
    """webdataset shard sources; a local file whose size is not a whole number of 512-byte tar blocks is
    reported as truncated first, because Python's stream-mode tar reader stops at a cut header silently."""
    for path in shards:
        if os.path.isfile(path) and os.path.getsize(path) % 512:
            handler(ValueError(f"{path}: {os.path.getsize(path)} bytes is not a whole number of tar blocks; "
                               f"the shard is truncated"))
        yield {"url": path}


def shuffled(items: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``bufsize`` items (emit a random buffered item per new one)."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        j = rng.randrange(bufsize)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class ShapeWorldStream(IterableDataset):
    """Batches of one task from ShapeWorld shards; see the module docstring for splitting and counting.

    Args:
        shards: tar paths (already expanded, see ``expand_shards``).
        task: sample builder, one of ``arm.data.samples.TASKS``.
        batch_size: samples per batch; the last batch of a consumer may be smaller.
        train: shuffle shards and samples, and vary with the epoch.
        shuffle_buffer: sample shuffle buffer size (train only; 0 or 1 disables sample shuffling).
        seed: seed of every random choice.
        max_samples: read only the first ``max_samples`` samples of the (unshuffled) shard stream.
        rank, world_size: this process's place among data-parallel processes; ``None`` resolves them from
            ``torch.distributed`` at the first pass.
    """

    def __init__(self, shards: list[str], task: str = "caption", batch_size: int = 32, train: bool = False,
                 shuffle_buffer: int = 1000, seed: int = 0, max_samples: int | None = None,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_samples is not None and max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {max_samples}")
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.shards = list(shards)
        self.task = check_task(task)
        self.batch_size = batch_size
        self.train = train
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.max_samples = max_samples
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resolve_distributed(self) -> None:
        if self.world_size is None:
            self.rank, self.world_size = distributed_rank()

    def plan(self, consumer: int, consumers: int) -> tuple[list[str], bool]:
        """The shards this consumer reads (in order) and whether it must also split them by sample index."""
        shards = list(self.shards)
        if self.train:
            random.Random(f"shards/{self.seed}/{self.epoch}").shuffle(shards)
        # A sample cap is defined on the global stream order, which only sample splitting preserves.
        if len(shards) >= consumers and self.max_samples is None:
            return shards[consumer::consumers], False
        return shards, True

    def _raw(self, shards: list[str], counter: SkipCounter, consumer: int, consumers: int,
             by_sample: bool) -> Iterator[dict]:
        # When splitting by sample every consumer reads every shard: let consumer 0 alone count tar errors.
        handler = counter.tar_error if not by_sample or consumer == 0 else _ignore
        index = 0
        for raw in wds.tarfile_samples(_sources(shards, handler), handler=handler):
            if self.max_samples is not None and index >= self.max_samples:
                return
            if not by_sample or index % consumers == consumer:
                yield raw
            index += 1

    def _built(self, raws: Iterator[dict], counter: SkipCounter) -> Iterator[dict]:
        epoch = self.epoch if self.train else 0
        for raw in raws:
            try:
                yield build_sample(raw, self.task, self.seed, epoch)
            except Exception as error:  # any decode failure: skip and count, never stop the epoch
                counter.skip(raw.get("__key__", "<unknown>"), error)

    def __iter__(self) -> Iterator[dict]:
        self.resolve_distributed()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        consumer, consumers = self.rank * num_workers + worker, self.world_size * num_workers
        counter = SkipCounter(f"rank {self.rank} worker {worker}")
        shards, by_sample = self.plan(consumer, consumers)
        raws = self._raw(shards, counter, consumer, consumers, by_sample)
        if self.train and self.shuffle_buffer > 1:
            raws = shuffled(raws, self.shuffle_buffer, random.Random(f"samples/{self.seed}/{self.epoch}/{consumer}"))

        def emit(samples: list[dict]) -> dict:
            batch = collate_samples(samples)
            batch[SKIPPED_KEY] = counter.count
            batch[WORKER_KEY] = consumer
            return batch

        # Hold each full batch until the next sample decodes, so the final batch reports the final count.
        pending: list[dict] | None = None
        current: list[dict] = []
        for sample in self._built(raws, counter):
            if pending is not None:
                yield emit(pending)
                pending = None
            current.append(sample)
            if len(current) == self.batch_size:
                pending, current = current, []
        for rest in (pending, current):
            if rest:
                yield emit(rest)


def trainer_epoch(trainer: L.Trainer) -> int:
    """The epoch a train pass that starts now is trained under: ``trainer.current_epoch`` once fit is running.

    Why not ``current_epoch`` itself: Lightning (2.6) creates the train iterator in ``FitLoop.setup_data``, before
    ``FitLoop.reset``/``on_run_start`` settle the epoch counters restored from a checkpoint. Resumed from a
    checkpoint written after an epoch's last batch (``every_n_train_steps``, ``max_steps``) or at its end
    (``max_epochs``), ``current_epoch`` still reads the finished epoch when the stream starts, and the next epoch
    would be trained on its draws. The restored counters already say which epoch comes next: the epochs whose
    batches all ran (``processed``), plus the epoch in progress when its last batch has run but it has not been
    counted yet. Outside a restore this equals ``current_epoch``.
    """
    progress = trainer.fit_loop.epoch_progress.current
    last_batch_ran = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return progress.processed + int(last_batch_ran and progress.processed < progress.started)


class ShapeWorldLoader(DataLoader):
    """A DataLoader of a ``ShapeWorldStream`` that hands the stream its epoch (and rank) before each pass.

    ``epoch_fn`` returns the epoch to use, or ``None`` to count passes over this loader. This runs in the main
    process, before workers start, which is how the epoch reaches them.
    """

    def __init__(self, dataset: ShapeWorldStream, epoch_fn: Callable[[], int | None] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("batch_size", None)  # the stream batches itself
        super().__init__(dataset, **kwargs)
        self.epoch_fn = epoch_fn
        self.passes = 0

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        self.dataset.set_epoch(self.passes if epoch is None else epoch)
        self.passes += 1
        self.dataset.resolve_distributed()
        return super().__iter__()


class ShapeWorldDataModule(L.LightningDataModule):
    """ShapeWorld shards as train/val/test dataloaders for one task."""

    def __init__(
        self,
        data_dir: str | None = None,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        task: str = "caption",
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        val_samples: int | None = None,
    ) -> None:
        """
        Args:
            data_dir: ShapeWorld root with ``train/``, ``val/`` and ``test/`` shard folders (written by
                ``arm data shapeworld --out DIR``). Ignored for a split whose ``*_shards`` is given.
            train_shards: train shards: a directory, a glob, brace notation (``shard-{000000..000009}.tar``)
                or a list of these. Overrides ``data_dir/train``.
            val_shards: validation shards, as ``train_shards``. Overrides ``data_dir/val``.
            test_shards: test shards, as ``train_shards``. Overrides ``data_dir/test``.
            task: what a sample holds: ``caption`` (image + caption), ``t2i`` (image + GenEval prompt or
                caption), ``vqa`` (image + one question/answer), ``mme`` (image + its yes/no question pair),
                ``edit`` (image, target, mask, instruction) or ``scene`` (image + the whole json).
            batch_size: samples per batch and process.
            num_workers: DataLoader worker processes per process (0 reads in the main process).
            shuffle_buffer: train sample shuffle buffer size (0 disables sample shuffling; shards are still
                shuffled).
            seed: seed of shard order, sample shuffle and per-sample choices; same seed, same order.
            val_samples: use only the first N validation (and test) samples; ``None`` uses all.
        """
        super().__init__()
        self.save_hyperparameters()
        check_task(task)
        if data_dir is None and not (train_shards or val_shards or test_shards):
            raise ValueError("ShapeWorldDataModule needs data_dir or at least one of train/val/test_shards")
        self.data_dir = data_dir
        self.split_shards = {"train": train_shards, "val": val_shards, "test": test_shards}
        self.task = task
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.val_samples = val_samples

    def shards(self, split: str) -> list[str]:
        """The expanded shard list of a split; ``FileNotFoundError`` (one line) when there is none."""
        spec = self.split_shards[split]
        if spec is None:
            if self.data_dir is None:
                raise FileNotFoundError(f"no {split} shards configured: pass data_dir or {split}_shards")
            spec = os.path.join(self.data_dir, split)
            if not os.path.isdir(spec):
                raise FileNotFoundError(f"no {split} split directory {spec!r}; create shards with "
                                        f"`arm data shapeworld --out {self.data_dir}`")
        return expand_shards(spec)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return distributed_rank()

    def _train_epoch(self) -> int | None:
        return trainer_epoch(self.trainer) if self.trainer is not None else None

    def stream(self, split: str) -> ShapeWorldStream:
        train = split == "train"
        rank, world_size = self._rank()
        return ShapeWorldStream(
            self.shards(split), task=self.task, batch_size=self.batch_size, train=train,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed,
            max_samples=None if train else self.val_samples, rank=rank, world_size=world_size,
        )

    def _loader(self, split: str) -> ShapeWorldLoader:
        return ShapeWorldLoader(
            self.stream(split),
            epoch_fn=self._train_epoch if split == "train" else None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> ShapeWorldLoader:
        return self._loader("train")

    def val_dataloader(self) -> ShapeWorldLoader:
        return self._loader("val")

    def test_dataloader(self) -> ShapeWorldLoader:
        return self._loader("test")


class SkippedSamplesLogger(L.Callback):
    """Logs ``data/skipped`` (train) and ``data/val_skipped``: corrupt samples skipped in the current epoch.

    Each batch carries its consumer's running count; the maximum per consumer, summed over consumers, is this
    rank's total, and ``sync_dist`` with ``reduce_fx="sum"`` adds the ranks. Logged every train step (so the value
    is current whenever the logger writes) and once per validation epoch.
    """

    def __init__(self, name: str = "data/skipped", val_name: str = "data/val_skipped") -> None:
        self.name, self.val_name = name, val_name
        self.train_counts: dict[int, int] = {}
        self.val_counts: dict[int, int] = {}

    @staticmethod
    def _update(counts: dict[int, int], batch: Any) -> None:
        if isinstance(batch, dict) and SKIPPED_KEY in batch:
            worker = int(batch.get(WORKER_KEY, 0))
            counts[worker] = max(counts.get(worker, 0), int(batch[SKIPPED_KEY]))

    @property
    def total(self) -> int:
        """This rank's skipped train samples in the current epoch."""
        return sum(self.train_counts.values())

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_counts.clear()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._update(self.train_counts, batch)
        pl_module.log(self.name, float(self.total), on_step=True, on_epoch=False, sync_dist=True,
                      reduce_fx="sum", batch_size=1)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_counts.clear()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(self.val_counts, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log(self.val_name, float(sum(self.val_counts.values())), on_step=False, on_epoch=True,
                      sync_dist=True, reduce_fx="sum", batch_size=1)
