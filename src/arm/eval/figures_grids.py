"""Image grids from image files other commands wrote: reconstructions, GenEval samples, GEdit edits, the CFG grid.

The layouts read (and, for reconstructions and the CFG grid, the writers that produce them)::

    <run>/recon/orig-0000.png, recon-0000.png ...   an original and its tokenizer reconstruction
                                                    (``write_recon_images``)
    <geneval>/00000/metadata.jsonl + samples/0000.png ...   GenEval's output layout; marks from
                                                    <geneval>/results.jsonl (``correct`` by ``sample_id``)
    <gedit>/fullset/<task_type>/<lang>/<key>.png beside <key>_SRCIMG.png; instructions and O from
                                                    <gedit>/results.jsonl
    <dir>/cfg_grid/prompts.json                     {"prompts": [...], "ar_cfg": [...], "dec_cfg": [...]}
    <dir>/cfg_grid/ar{a}_dec{d}/{i:03d}.png         prompt i at AR-side CFG a and decoder-side CFG d
                                                    (``write_cfg_grid``; scales written with ``format(x, "g")``)

Each figure is one PNG (plus PDF) whose pixel size follows ``figures_io.grid_figsize``.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from arm.eval.common import write_png
from arm.eval.figures_io import grid_figsize, image_panel, pyplot, read_png, save_figure, suptitle
from arm.eval.results import SAMPLES_FILE, read_jsonl
from arm.io import write_json_atomic

MAX_RECON = 8
MAX_PROMPTS_PER_TAG = 6
MAX_SAMPLES_PER_PROMPT = 4
MAX_EDITS_PER_TYPE = 6
CORRECT, WRONG = "#1a9850", "#d73027"
CFG_DIR = "cfg_grid"
_CFG_NAME = re.compile(r"^ar(?P<ar>-?[0-9.]+(?:e-?[0-9]+)?)_dec(?P<dec>-?[0-9.]+(?:e-?[0-9]+)?)$")


def _wrap(text: str, width: int = 26, lines: int = 2) -> str:
    return "\n".join(textwrap.wrap(str(text), width)[:lines])


# -------------------------------------------------------------------------------------------- reconstructions


def write_recon_images(folder: str | Path, originals: Sequence[np.ndarray], reconstructions: Sequence[np.ndarray],
                       limit: int = MAX_RECON) -> Path:
    """``FOLDER/recon/{orig,recon}-XXXX.png`` for the first ``limit`` pairs of (H, W, 3) uint8 images; the tokenizer
    eval calls it beside its ``eval.json`` so ``arm figures`` can draw the reconstruction grid."""
    out = Path(folder) / "recon"
    for i, (orig, recon) in enumerate(list(zip(originals, reconstructions))[:limit]):
        write_png(out / f"orig-{i:04d}.png", orig)
        write_png(out / f"recon-{i:04d}.png", recon)
    return out


def recon_grid(recon_dir: str | Path, png: str | Path, title: str = "") -> list[Path]:
    """Originals above, reconstructions below, up to ``MAX_RECON`` columns."""
    recon_dir = Path(recon_dir)
    pairs = [(p, recon_dir / p.name.replace("orig-", "recon-", 1)) for p in sorted(recon_dir.glob("orig-*.png"))]
    pairs = [(o, r) for o, r in pairs if r.is_file()][:MAX_RECON]
    if not pairs:
        raise FileNotFoundError(f"no orig-XXXX.png / recon-XXXX.png pairs in {recon_dir}")
    plt = pyplot()
    fig, axes = plt.subplots(2, len(pairs), figsize=grid_figsize(2, len(pairs), row_labels=True), squeeze=False)
    for col, (orig, recon) in enumerate(pairs):
        image_panel(axes[0, col], read_png(orig))
        image_panel(axes[1, col], read_png(recon))
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("reconstruction")
    suptitle(fig, title or f"Tokenizer reconstructions ({recon_dir})")
    fig.subplots_adjust(left=0.9 / fig.get_figwidth(), right=0.99, bottom=0.02, top=0.88, wspace=0.05, hspace=0.05)
    return save_figure(fig, png)


# ---------------------------------------------------------------------------------------------------- GenEval


def read_geneval_folder(folder: str | Path) -> dict[str, list[dict]]:
    """tag -> prompts, each ``{"index", "prompt", "samples": [(path, correct | None)]}``, from GenEval's layout."""
    folder = Path(folder)
    marks = {}
    if (folder / SAMPLES_FILE).is_file():
        marks = {r["sample_id"]: bool(r["correct"]) for r in read_jsonl(folder / SAMPLES_FILE) if "correct" in r}
    by_tag: dict[str, list[dict]] = {}
    for meta in sorted(folder.glob("[0-9]" * 5 + "/metadata.jsonl")):
        text = meta.read_text(encoding="utf-8").strip()
        if not text:
            continue
        record = json.loads(text.splitlines()[0])
        index = meta.parent.name
        samples = [(p, marks.get(f"{index}/{p.stem}")) for p in sorted((meta.parent / "samples").glob("*.png"))]
        if samples:
            by_tag.setdefault(record.get("tag", "untagged"), []).append(
                {"index": index, "prompt": record.get("prompt", ""), "samples": samples})
    return by_tag


def geneval_grid(prompts: list[dict], png: str | Path, title: str) -> list[Path]:
    """Rows = prompts (up to ``MAX_PROMPTS_PER_TAG``), columns = their samples; green frame = judged correct,
    red = wrong, none = not judged."""
    prompts = prompts[:MAX_PROMPTS_PER_TAG]
    cols = max(min(len(p["samples"]), MAX_SAMPLES_PER_PROMPT) for p in prompts)
    plt = pyplot()
    fig, axes = plt.subplots(len(prompts), cols, figsize=grid_figsize(len(prompts), cols, caption=True),
                             squeeze=False)
    for row, prompt in zip(axes, prompts):
        for col, ax in enumerate(row):
            if col >= len(prompt["samples"]):
                ax.axis("off")
                continue
            path, correct = prompt["samples"][col]
            mark = "" if correct is None else (" ✓" if correct else " ✗")
            image_panel(ax, read_png(path), border=None if correct is None else (CORRECT if correct else WRONG),
                        title=(_wrap(prompt["prompt"], 24) if col == 0 else "") + mark)
    suptitle(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return save_figure(fig, png)


# ------------------------------------------------------------------------------------------------------ GEdit


def read_gedit_folder(folder: str | Path) -> dict[str, list[dict]]:
    """``task_type -> [{"key", "source", "edited", "instruction", "overall"}]`` from GEdit's layout; English when
    the folder has it, else the first language found."""
    folder = Path(folder)
    info = {}
    if (folder / SAMPLES_FILE).is_file():
        info = {(r.get("task_type"), str(r.get("key"))): r for r in read_jsonl(folder / SAMPLES_FILE)}
    languages = sorted({p.name for p in folder.glob("fullset/*/*") if p.is_dir()}, key=lambda x: (x != "en", x))
    by_type: dict[str, list[dict]] = {}
    for src in sorted(folder.glob(f"fullset/*/{languages[0]}/*_SRCIMG.png") if languages else []):
        key, task = src.name[: -len("_SRCIMG.png")], src.parent.parent.name
        edited = src.with_name(f"{key}.png")
        if edited.is_file():
            row = info.get((task, key), {})
            by_type.setdefault(task, []).append({"key": key, "source": src, "edited": edited,
                                                 "instruction": row.get("instruction", key),
                                                 "overall": row.get("overall_score")})
    return by_type


def gedit_grid(samples: list[dict], png: str | Path, title: str) -> list[Path]:
    """Columns = samples (up to ``MAX_EDITS_PER_TYPE``), source above the edit, the instruction and O on top."""
    samples = samples[:MAX_EDITS_PER_TYPE]
    plt = pyplot()
    fig, axes = plt.subplots(2, len(samples), figsize=grid_figsize(2, len(samples), caption=True, row_labels=True),
                             squeeze=False)
    for col, s in enumerate(samples):
        score = "" if s["overall"] is None else f"\nO = {s['overall']:.1f}"
        image_panel(axes[0, col], read_png(s["source"]), title=_wrap(s["instruction"], 24) + score)
        image_panel(axes[1, col], read_png(s["edited"]))
    axes[0, 0].set_ylabel("source")
    axes[1, 0].set_ylabel("edited")
    suptitle(fig, title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()), h_pad=1.5)
    return save_figure(fig, png)


# --------------------------------------------------------------------------------------------------- CFG grid


def cfg_setting_dir(ar_cfg: float, dec_cfg: float) -> str:
    """The folder name of one (AR-side, decoder-side) CFG setting."""
    return f"ar{format(float(ar_cfg), 'g')}_dec{format(float(dec_cfg), 'g')}"


def write_cfg_grid(generate: Callable[[str, float, float], np.ndarray], prompts: Sequence[str],
                   ar_scales: Sequence[float], dec_scales: Sequence[float], out: str | Path) -> Path:
    """Images for every prompt x AR-side CFG x decoder-side CFG (the paper's figure 4) in ``OUT/cfg_grid``.

    ``generate(prompt, ar_cfg, dec_cfg)`` returns one (H, W, 3) uint8 image; wire it to a checkpoint with its
    sampler's seed fixed, so that the grid shows the guidance and not the noise. Images already on disk are kept.
    """
    if not prompts or not ar_scales or not dec_scales:
        raise ValueError("the CFG grid needs at least one prompt, one AR-side and one decoder-side scale")
    root = Path(out) / CFG_DIR
    write_json_atomic(root / "prompts.json", {"prompts": list(prompts), "ar_cfg": [float(a) for a in ar_scales],
                                              "dec_cfg": [float(d) for d in dec_scales]})
    for a in ar_scales:
        for d in dec_scales:
            for i, prompt in enumerate(prompts):
                path = root / cfg_setting_dir(a, d) / f"{i:03d}.png"
                if not path.is_file():
                    image = np.asarray(generate(prompt, float(a), float(d)))
                    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                        raise ValueError(f"generate() must return an (H, W, 3) uint8 image, got {image.dtype} "
                                         f"{image.shape}")
                    write_png(path, image)
    return root


def read_cfg_grid(root: str | Path) -> tuple[list[str], dict[tuple[float, float], Path]]:
    """(prompts, {(ar_cfg, dec_cfg): setting folder}) of a ``cfg_grid`` folder; unknown folder names are ignored."""
    root = Path(root)
    prompts = []
    if (root / "prompts.json").is_file():
        prompts = json.loads((root / "prompts.json").read_text()).get("prompts", [])
    settings = {}
    for sub in root.iterdir() if root.is_dir() else []:
        match = _CFG_NAME.match(sub.name)
        if match and sub.is_dir():
            settings[(float(match["ar"]), float(match["dec"]))] = sub
    return prompts, settings


def cfg_grid(root: str | Path, index: int, png: str | Path) -> list[Path]:
    """Prompt ``index``: rows = AR-side CFG (ascending), columns = decoder-side CFG (ascending)."""
    prompts, settings = read_cfg_grid(root)
    name = f"{index:03d}.png"
    settings = {k: v for k, v in settings.items() if (v / name).is_file()}
    if not settings:
        raise FileNotFoundError(f"no ar*_dec*/{name} in {root}")
    ars, decs = sorted({a for a, _ in settings}), sorted({d for _, d in settings})
    plt = pyplot()
    fig, axes = plt.subplots(len(ars), len(decs), figsize=grid_figsize(len(ars), len(decs), row_labels=True),
                             squeeze=False)
    for r, a in enumerate(ars):
        for c, d in enumerate(decs):
            if (a, d) in settings:
                image_panel(axes[r, c], read_png(settings[(a, d)] / name))
            else:
                axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(f"decoder CFG {d:g}")
        axes[r, 0].set_ylabel(f"AR CFG {a:g}")
    prompt = prompts[index] if index < len(prompts) else f"prompt {index}"
    suptitle(fig, f"CFG grid: {prompt}")
    fig.subplots_adjust(left=0.9 / fig.get_figwidth(), right=0.99, bottom=0.02,
                        top=1 - 0.45 / fig.get_figheight(), wspace=0.05, hspace=0.05)
    return save_figure(fig, png)


def cfg_prompt_indices(root: str | Path) -> list[int]:
    """The prompt indices with at least one image in a ``cfg_grid`` folder."""
    _, settings = read_cfg_grid(root)
    return sorted({int(p.stem) for sub in settings.values() for p in sub.glob("[0-9][0-9][0-9].png")})
