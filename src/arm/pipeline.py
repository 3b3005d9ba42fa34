"""Running a LightningCLI stage from a pipeline (``make demo``, ``make table7``) with its paths redirected.

A stage runs as ``arm <stage> fit --config experiments/<stage>/<name>.yaml --config OUT/configs/<run>.yaml
--ckpt_path last``: the second file (written here, kept for the record) points data, inputs and every output of
the run into the pipeline's folder and sets a fixed checkpoint folder, so a run that was cut off resumes from its
last checkpoint and a finished one is recognised by its export. Lists in a later config replace earlier ones, so
the callbacks are restated in full.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from arm.cli import STAGES
from arm.io import write_atomic

ROOT = Path(__file__).resolve().parents[2]


def model_settings(module_cls: type, config: str | Path) -> dict:
    """The ``model`` arguments a stage YAML gives ``module_cls``: its ``__init__`` defaults, overlaid with the
    YAML's ``model`` section (what LightningCLI would pass; the tables record them beside their rows)."""
    import inspect

    import yaml

    defaults = {k: p.default for k, p in inspect.signature(module_cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **((yaml.safe_load(Path(config).read_text()) or {}).get("model") or {})}


def callbacks(checkpoint_dir: Path, every_n_steps: int) -> list[dict]:
    return [
        {"class_path": "arm.data.datamodule.SkippedSamplesLogger"},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(checkpoint_dir), "every_n_train_steps": every_n_steps, "save_last": True}},
    ]


def run_fit(stage: str, base_config: str | Path, run_dir: Path, model: dict, data: dict,
            trainer: dict | None = None, checkpoint_every: int = 100) -> float:
    """Fit ``stage`` with ``base_config`` plus overrides; outputs under ``run_dir``. Returns wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    override = {
        "trainer": {
            "default_root_dir": str(run_dir),
            "enable_checkpointing": True,
            "enable_progress_bar": True,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run_dir), "name": "tb"}},
            "callbacks": callbacks(run_dir / "checkpoints", checkpoint_every),
            **(trainer or {}),
        },
        "model": model,
        "data": data,
    }
    config_path = run_dir / "override.yaml"  # JSON is YAML: jsonargparse reads it as a config file
    write_atomic(config_path, (json.dumps(override, indent=2) + "\n").encode())
    base = Path(base_config)
    base = base if base.is_absolute() else ROOT / base
    started = time.perf_counter()
    importlib.import_module(STAGES[stage][0]).main(
        ["fit", "--config", str(base), "--config", str(config_path), "--ckpt_path", "last"])
    return time.perf_counter() - started


def last_scalars(log_dir: Path, prefix: str = "val/") -> dict[str, float]:
    """The last logged value of every scalar under ``prefix`` in a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, tuple[float, float]] = {}
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(prefix):
                last = acc.Scalars(tag)[-1]
                if tag not in out or last.wall_time >= out[tag][0]:
                    out[tag] = (last.wall_time, last.value)
    return {tag: value for tag, (_, value) in sorted(out.items())}


def arm_command(*argv: str) -> dict:
    """Run an ``arm`` utility command in this process; a non-zero exit stops the demo with its message."""
    from arm.cli import main

    code = main(list(argv))
    if code:
        raise RuntimeError(f"`arm {' '.join(argv)}` exited with {code}; see the message above")
    return {"command": "arm " + " ".join(argv)}


def eval_all(ckpt: Path, bench: Path, out: Path, seed: int = 0, n: int = 1, limit: int | None = None,
             precision: str = "bf16") -> dict:
    """``arm eval all`` of an AR export on a bench folder, reduced to the demo summary's per-model block.

    ``precision`` bf16 samples and decodes images under bf16 autocast (``arm.ar.eval_model``): on the demo's SFT
    export 78 s against 102 s in fp32 for the whole bench, GenEval 0.060 vs 0.054, GEdit 2.38 vs 2.43, WISE 0.293
    vs 0.290 (within each other's intervals; experiments/LOG.md)."""
    extra = ["--limit", str(limit)] if limit else []
    arm_command("eval", "all", "--ckpt", str(ckpt), "--data", str(bench), "--out", str(out), "--n", str(n),
                "--seed", str(seed), "--no-progress", "--sampling", f"precision={precision}", *extra)
    return benchmark_summary(out)


def benchmark_summary(eval_dir: Path) -> dict:
    """The demo summary's per-model block from an ``arm eval all`` folder (values with their 95% intervals)."""

    def read(protocol: str) -> dict:
        path = Path(eval_dir) / protocol / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def metric(block: dict, key: str) -> dict:
        m = block.get(key) or {}
        return {"value": m.get("value"), "ci95": m.get("ci95")}

    geneval, wise, gedit, vqa, mme, caption = (read(p) for p in ("geneval", "wise", "gedit", "vqa", "mme", "caption"))
    generated = caption.get("generated") or {}
    return {
        "geneval": {"overall": metric(geneval, "overall")["value"], "ci95": metric(geneval, "overall")["ci95"],
                    "per_tag": {k: v.get("value") for k, v in geneval.get("per_tag", {}).items()}},
        "wise": {"overall": metric(wise, "overall")["value"], "ci95": metric(wise, "overall")["ci95"],
                 "per_category": {k: v.get("value") for k, v in wise.get("per_category", {}).items()}},
        "gedit": {"overall": metric(gedit, "overall")["value"], "ci95": metric(gedit, "overall")["ci95"],
                  "sc": metric(gedit, "sc")["value"], "pq": metric(gedit, "pq")["value"],
                  "edit_success": metric(gedit, "edit_success")["value"],
                  "per_type": {k: (v.get("overall") or {}).get("value") if isinstance(v, dict) else v
                               for k, v in gedit.get("per_type", {}).items()}},
        "vqa": {"accuracy": metric(vqa, "accuracy")["value"], "ci95": metric(vqa, "accuracy")["ci95"]},
        "mme": {"acc": metric(mme, "acc")["value"], "acc_plus": metric(mme, "acc_plus")["value"]},
        # the model's own captions against the scenes (arm.eval.understanding), where the bench holds them
        "caption": {"object_f1": metric(generated, "object_f1")["value"], "exact": metric(generated, "exact")["value"]},
        "seconds": read(".").get("seconds", {}),  # per protocol, from `arm eval all`'s own OUT/summary.json
        # seen / held-out compositions apart (arm.eval.heldout), from the same file
        "heldout": {k: {part: v[part]["value"] for part in ("seen", "heldout")}
                    for k, v in read(".").get("heldout", {}).items()},
    }
