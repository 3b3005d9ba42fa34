"""A picture of the world as written: scenes with their captions, and edits with their instructions and masks.

Reads the shards that ``arm data shapeworld`` wrote (never regenerates them), so the figure shows the data a
model will actually see.
"""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import numpy as np

from arm.data.shapeworld.render import decode_png


def read_samples(shard: str | Path, limit: int) -> list[dict]:
    """The first ``limit`` complete samples of one shard, decoded: image, edit, mask (arrays) and meta (dict)."""
    groups: dict[str, dict] = {}
    order: list[str] = []
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if key not in groups:
                if len(order) >= limit:
                    break
                groups[key] = {}
                order.append(key)
            groups[key][ext] = tar.extractfile(member).read()
    samples = []
    for key in order:
        g = groups[key]
        if not {"png", "edit.png", "mask.png", "json"} <= g.keys():
            continue
        samples.append({
            "image": decode_png(g["png"]),
            "edit": decode_png(g["edit.png"]),
            "mask": decode_png(g["mask.png"])[..., 0] > 127,
            "meta": json.loads(g["json"]),
        })
    return samples


def sample_grid(data_dir: str | Path, out: str | Path, split: str = "train", num: int = 8) -> Path:
    """Write a PNG (and a PDF beside it) of ``num`` samples: scene + caption, edited scene + instruction, mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shards = sorted((Path(data_dir) / split).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no shards in {Path(data_dir) / split}; write them with `arm data shapeworld --out {data_dir}`")
    samples = read_samples(shards[0], num)
    fig, axes = plt.subplots(len(samples), 3, figsize=(9.5, 2.3 * len(samples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1]})
    for row, s in zip(axes, samples):
        meta = s["meta"]
        overlay = s["image"].astype(np.float32)
        overlay[s["mask"]] = 0.5 * overlay[s["mask"]] + 0.5 * np.array([255, 0, 255])
        panels = [
            (s["image"], meta["caption"]),
            (s["edit"], f'[{meta["edit"]["type"]}] {meta["edit"]["instruction"]}'),
            (overlay.astype(np.uint8), "change mask" + (f' | held out: {", ".join(meta["heldout"])}' if meta["heldout"] else "")),
        ]
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title("\n".join(textwrap.wrap(title, 38)), fontsize=7)
            ax.axis("off")
    fig.suptitle(f"ShapeWorld {split}: scene + caption | edit + instruction | mask", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # leave room for the title
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out.write_bytes(buf.getvalue())
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out
