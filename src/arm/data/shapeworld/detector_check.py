"""How exactly the detector recovers fresh test scenes, clean and under decoder-like damage.

Renders ``scene_for(seed, "test", i)`` for ``i < num_scenes``, applies each damage (``damage.py``), runs
``detect_scene`` and counts a scene as recovered when ``scenes_match`` holds with ``box_tol=2``: same background,
classes, colours, sizes and object count, every box within 2 px on every coordinate. The suite's targets
(``../shared/paper.md`` §4, ShapeWorld's scorer): >= 0.99 clean and >= 0.95 under each damage.

Run: ``PYTHONPATH=src python -m arm.data.shapeworld.detector_check --num-scenes 2000`` (or ``arm data
detector-check``). ``images_per_s`` times ``detect_scene`` alone, on one core, excluding render and damage.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from arm.data.shapeworld.damage import DAMAGES, no_damage
from arm.data.shapeworld.detector import detect_scene
from arm.data.shapeworld.judge import perturb_for_record, scenes_match, score_geneval_image
from arm.data.shapeworld.render import decode_png, render
from arm.data.shapeworld.scene import Scene, scene_for

TARGETS = {"none": 0.99, "noise": 0.95, "jpeg": 0.95, "blur": 0.95, "jitter": 0.95}
MAX_LISTED_FAILURES = 20


def detector_accuracy(
    num_scenes: int = 2000,
    seed: int = 12345,
    damages: Sequence[str] = ("none", "noise", "jpeg", "blur", "jitter"),
    resolution: int = 64,
    progress: bool = True,
) -> dict:
    """Per damage: fraction of scenes recovered exactly, detection images/s, whether the target is met, and the
    first failing scene indices. Damage randomness is seeded per (seed, scene, damage name), so a damage's
    result does not depend on which other damages run."""
    unknown = [d for d in damages if d != "none" and d not in DAMAGES]
    if unknown:
        raise ValueError(f"unknown damages {unknown}; expected 'none' or one of {list(DAMAGES)}")
    scenes = [scene_for(seed, "test", i, resolution=resolution) for i in range(num_scenes)]
    images = [render(s) for s in scenes]
    report: dict = {"num_scenes": num_scenes, "seed": seed, "resolution": resolution, "box_tol": 2,
                    "accuracy": {}, "images_per_s": {}, "target": {}, "meets_target": {}, "failures": {}}
    bar = tqdm(total=num_scenes * len(damages), desc="detector check", disable=not progress, unit="img")
    for name in damages:
        damage = no_damage if name == "none" else DAMAGES[name]
        name_key = zlib.crc32(name.encode())
        recovered, failures, detect_seconds = 0, [], 0.0
        for i, (scene, image) in enumerate(zip(scenes, images)):
            damaged = damage(image, np.random.default_rng([seed, i, name_key]))
            started = time.perf_counter()
            found = detect_scene(damaged)
            detect_seconds += time.perf_counter() - started
            if scenes_match(scene, found, box_tol=2):
                recovered += 1
            elif len(failures) < MAX_LISTED_FAILURES:
                failures.append(i)
            bar.update(1)
            bar.set_postfix_str(f"{name} {recovered / (i + 1):.3f}")
        accuracy = recovered / max(num_scenes, 1)
        report["accuracy"][name] = accuracy
        report["images_per_s"][name] = num_scenes / detect_seconds if detect_seconds > 0 else float("inf")
        report["target"][name] = TARGETS.get(name)
        report["meets_target"][name] = TARGETS.get(name) is None or accuracy >= TARGETS[name]
        report["failures"][name] = failures
    bar.close()
    return report


def judge_accuracy(bench_dir: str | Path, seed: int = 0, progress: bool = True) -> dict:
    """The GenEval scorer on the benchmark's own records: the fraction of ground-truth images it accepts
    (target: all of them) and of one-attribute-changed renders (``perturb_for_record``) it rejects (>= 0.99).

    WISE records are scored the same way through their resolved ``requirements``.
    """
    bench = Path(bench_dir)
    report: dict = {"bench": str(bench), "seed": seed}
    for name, field in (("geneval", None), ("wise", "requirements")):
        path = bench / f"{name}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no {path}; write it with `arm data shapeworld --out {bench.parent}`")
        records = [json.loads(line) for line in path.read_text().splitlines()]
        accepted, rejected, failures = 0, 0, []
        for i, record in enumerate(tqdm(records, desc=f"judge {name}", disable=not progress, unit="record")):
            requirements = record[field] if field else record
            truth = Scene.from_json(record["scene"])
            if score_geneval_image(decode_png((bench / record["image"]).read_bytes()), requirements)["correct"]:
                accepted += 1
            elif len(failures) < MAX_LISTED_FAILURES:
                failures.append(i)
            wrong = perturb_for_record(truth, requirements, np.random.default_rng([seed, i]))
            rejected += not score_geneval_image(render(wrong), requirements)["correct"]
        n = max(len(records), 1)
        report[name] = {"records": len(records), "ground_truth_accepted": accepted / n,
                        "perturbed_rejected": rejected / n, "failures": failures,
                        "meets_target": accepted == len(records) and rejected / n >= 0.99}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-scenes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--damages", nargs="+", default=["none", "noise", "jpeg", "blur", "jitter"])
    args = parser.parse_args(argv)
    report = detector_accuracy(args.num_scenes, args.seed, args.damages, args.resolution)
    print(json.dumps(report, indent=2))
    return 0 if all(report["meets_target"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
