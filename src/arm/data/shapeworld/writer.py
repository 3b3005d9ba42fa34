"""Write ShapeWorld as WebDataset shards, plus the benchmark files built from its test split.

Layout written by ``write_world(out, ...)`` (``arm data shapeworld``)::

    OUT/{train,val,test}/shard-000000.tar ...   one sample = KEY.png, KEY.edit.png, KEY.mask.png, KEY.json
    OUT/bench/{geneval,wise,gedit,vqa,mme}.jsonl + OUT/bench/images/*.png
    OUT/world.json                              the command's arguments, counts, held-out combinations

Every sample is a pure function of (seed, split, index) (see ``scene.split_rng``), shards are written by a pool
of processes in any order, and tar headers carry no time or owner, so the same arguments give byte-identical
files whatever the number of workers. Files are written to a temporary name and renamed, so an interrupted run
never leaves a truncated shard behind.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from arm.data.shapeworld import edits as edits_mod
from arm.data.shapeworld import text as text_mod
from arm.data.shapeworld.render import encode_png, render
from arm.data.shapeworld.scene import Scene, heldout_combinations, scene_for, split_rng
from arm.data.shapeworld.world import HELDOUT_COLOR_SHAPE, HELDOUT_RELATIONS
from arm.io import write_atomic, write_json_atomic

SHARD_PATTERN = "shard-{:06d}.tar"

GEDIT_TASK_TYPES = {
    "recolor": "color_alter",
    "add": "subject-add",
    "remove": "subject-remove",
    "replace": "subject-replace",
    "background": "background_change",
    "move": "position_change",
    "resize": "size_change",
}
"""Our edit types under GEdit-Bench's task-type names; ``move`` and ``resize`` have no GEdit counterpart, so they
keep descriptive names of ours."""


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:08d}"


def build_sample(seed: int, split: str, index: int, resolution: int = 64) -> dict[str, object]:
    """One sample's tar members (bytes) under a WebDataset ``__key__``."""
    scene = scene_for(seed, split, index, resolution)
    allow_heldout = split == "test"
    rng = split_rng(seed, split, index, "text")
    edit = edits_mod.sample_edit(scene, split_rng(seed, split, index, "edit"), allow_heldout)
    key = sample_key(split, index)
    meta = {
        "key": key,
        "split": split,
        "index": index,
        "scene": scene.to_json(),
        "heldout": heldout_combinations(scene),
        "caption": text_mod.caption(scene, rng),
        "geneval": text_mod.geneval_record_for_scene(scene, rng, phrasing="varied"),
        "wise": text_mod.wise_record_for_scene(scene, rng),
        "vqa": text_mod.vqa_questions(scene, rng),
        "mme": text_mod.mme_pair(scene, rng),
        "edit": {"type": edit.type, "instruction": edit.instruction, "target_scene": edit.target.to_json()},
    }
    return {
        "__key__": key,
        "png": encode_png(render(scene)),
        "edit.png": encode_png(render(edit.target)),
        "mask.png": encode_png(edit.mask.astype(np.uint8) * 255),
        "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
    }


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_shard(path: str, seed: int, split: str, start: int, stop: int, resolution: int) -> int:
    """Write samples ``start..stop-1`` of a split to one tar; returns the number written."""
    final = Path(path)
    tmp = _atomic_path(final)
    with open(tmp, "wb") as f:
        # mtime=0 and fixed owner names: tar headers must not depend on when or by whom a shard was written.
        writer = wds.TarWriter(f, user="shapeworld", group="shapeworld", mtime=0.0, encoder=False)
        for index in range(start, stop):
            writer.write(build_sample(seed, split, index, resolution))
        writer.close()
    os.replace(tmp, final)
    return stop - start


def _write_shard_job(args: tuple) -> int:
    return write_shard(*args)


def write_world(
    out: str,
    num_train: int = 20000,
    num_val: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    resolution: int = 64,
    shard_size: int = 1000,
    workers: int | None = None,
    bench: bool = True,
    progress: bool = True,
) -> dict:
    """Write all splits and the benchmark files; returns the summary also saved as ``OUT/world.json``."""
    if resolution < 32:
        raise ValueError(f"resolution {resolution} is too small for ShapeWorld's shapes; use 32 or more")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out_dir = Path(out)
    jobs = []
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, n in counts.items():
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for shard, start in enumerate(range(0, n, shard_size)):
            path = out_dir / split / SHARD_PATTERN.format(shard)
            jobs.append((str(path), seed, split, start, min(start + shard_size, n), resolution))
    workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    started = time.perf_counter()
    bar = tqdm(total=sum(counts.values()), unit="sample", desc="shapeworld", disable=not progress)
    if workers == 1:
        for job in jobs:
            bar.update(_write_shard_job(job))
    else:
        # Fork keeps start-up cheap; each job is independent and seeded by its indices alone.
        with mp.get_context("fork").Pool(workers) as pool:
            for n in pool.imap_unordered(_write_shard_job, jobs):
                bar.update(n)
    bar.close()
    elapsed = time.perf_counter() - started
    bench_counts = write_bench(out_dir / "bench", seed, num_test, resolution) if bench else {}
    summary = {
        "seed": seed,
        "resolution": resolution,
        "counts": counts,
        "shard_size": shard_size,
        "bench": bench_counts,
        "heldout_color_shape": sorted(f"{c} {s}" for c, s in HELDOUT_COLOR_SHAPE),
        "heldout_relations": sorted(f"{a} {r} {b}" for a, r, b in HELDOUT_RELATIONS),
    }
    write_json_atomic(out_dir / "world.json", summary)
    summary["samples_per_s"] = sum(counts.values()) / max(elapsed, 1e-9)
    return summary


# ---------------------------------------------------------------------------------------------- bench


def _write_jsonl(path: Path, records: Iterable[dict]) -> int:
    lines = [json.dumps(r, sort_keys=True) for r in records]
    write_atomic(path, "".join(line + "\n" for line in lines).encode())
    return len(lines)


class _ImageStore:
    """Writes each benchmark image once under ``bench/images`` and returns its path relative to ``bench``."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)

    def put(self, name: str, pixels: np.ndarray) -> str:
        rel = f"images/{name}.png"
        path = self.root / rel
        if not path.exists():
            tmp = _atomic_path(path)
            tmp.write_bytes(encode_png(pixels))
            os.replace(tmp, path)
        return rel


BENCH_SIZES = {"wise": 300, "gedit_per_type": 50, "vqa_samples": 250, "mme_samples": 150}
"""Records per benchmark file (a few hundred each); GenEval always has its 553-prompt mix."""


def write_bench(root: Path, seed: int, num_test: int, resolution: int = 64) -> dict[str, int]:
    """Benchmark files in the benchmarks' own record formats, built from the test split's distribution.

    GenEval and WISE prompts are sampled with their ground-truth scenes (half of the colour/position records on
    held-out combinations); VQA, MME and GEdit records use the test split's own scenes (indices < num_test).
    Every record carries ``heldout`` so results can be reported separately for held-out compositions.
    """
    root = Path(root)
    store = _ImageStore(root)
    counts: dict[str, int] = {}

    def test_rng(stream: str, i: int):
        return split_rng(seed, "test", i, stream)

    geneval = []
    for i, (record, scene) in enumerate(text_mod.geneval_benchmark(lambda i: test_rng("bench-geneval", i))):
        record = dict(record, image=store.put(f"geneval-{i:05d}", render(scene)), scene=scene.to_json(),
                      heldout=bool(heldout_combinations(scene)))
        geneval.append(record)
    counts["geneval"] = _write_jsonl(root / "geneval.jsonl", geneval)

    wise = []
    for i in range(BENCH_SIZES["wise"]):
        rng = test_rng("bench-wise", i)
        record, scene = text_mod.sample_wise_record(rng, allow_heldout=True, require_heldout=rng.random() < 0.25)
        record = dict(record, prompt_id=i, image=store.put(f"wise-{i:05d}", render(scene)),
                      scene=scene.to_json(), heldout=bool(heldout_combinations(scene)))
        wise.append(record)
    counts["wise"] = _write_jsonl(root / "wise.jsonl", wise)

    def test_scene(i: int) -> tuple[Scene, str]:
        scene = scene_for(seed, "test", i, resolution)
        return scene, store.put(sample_key("test", i), render(scene))

    gedit = []
    n_gedit = min(num_test, BENCH_SIZES["gedit_per_type"] * len(edits_mod.EDIT_TYPES))
    for i in range(n_gedit):
        scene, image = test_scene(i)
        edit_type = edits_mod.EDIT_TYPES[i % len(edits_mod.EDIT_TYPES)]
        edit = edits_mod.sample_edit(scene, test_rng("bench-gedit", i), True, edit_type=edit_type)
        key = f"{i:05d}"
        gedit.append({
            "key": key,
            "task_type": GEDIT_TASK_TYPES.get(edit.type, edit.type),
            "edit_type": edit.type,
            "instruction": edit.instruction,
            "instruction_language": "en",
            "input_image": image,
            "target_image": store.put(f"gedit-{key}-target", render(edit.target)),
            "mask": store.put(f"gedit-{key}-mask", edit.mask.astype(np.uint8) * 255),
            "source_scene": scene.to_json(),
            "target_scene": edit.target.to_json(),
            "heldout": bool(heldout_combinations(scene) or heldout_combinations(edit.target)),
        })
    counts["gedit"] = _write_jsonl(root / "gedit.jsonl", gedit)

    vqa, mme = [], []
    for i in range(min(num_test, BENCH_SIZES["vqa_samples"])):
        scene, image = test_scene(i)
        for q in text_mod.vqa_questions(scene, test_rng("bench-vqa", i)):
            vqa.append(dict(q, question_id=len(vqa), image=image, heldout=bool(heldout_combinations(scene))))
    for i in range(min(num_test, BENCH_SIZES["mme_samples"])):
        scene, image = test_scene(i)
        for q in text_mod.mme_pair(scene, test_rng("bench-mme", i)):
            mme.append(dict(q, image=image, heldout=bool(heldout_combinations(scene))))
    counts["vqa"] = _write_jsonl(root / "vqa.jsonl", vqa)
    counts["mme"] = _write_jsonl(root / "mme.jsonl", mme)
    return counts


def iter_split(seed: int, split: str, num: int, resolution: int = 64) -> Iterator[dict]:
    """Lazily build samples of a split without writing them (for tests and quick looks)."""
    for index in range(num):
        yield build_sample(seed, split, index, resolution)
