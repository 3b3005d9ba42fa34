"""The tokenizer's utility commands: ``eval`` (metrics JSON), ``encode`` (code shards), ``decode`` (PNGs).

``eval --out FILE.json`` also writes the first reconstructions beside it, ``<dir of FILE>/recon/{orig,recon}-XXXX.png``
(``arm.eval.figures_grids.write_recon_images``), and reports ``rfid`` only with ``--inception-weights``.

Code shards mirror the input shards sample by sample: ``KEY.codes.npy`` (int16/int32 (N,) code indices of the
image), ``KEY.edit_codes.npy`` (of the edited image, when the sample has one) and ``KEY.json`` (unchanged), so
the AR stage trains on understanding, generation and editing sequences without touching pixels. Beside them,
``code_colours.safetensors``: each code's palette histogram over the images encoded (``arm.tokenizer.code_colours``),
which ``ARModule(code_colours=...)`` reads from the train split's folder.

Anchored edit targets (``--anchor-edits``, our addition, not ARM's): the teacher's patch features are contextual
(a ViT), so an edit that changes one object moves the codes of patches it leaves pixel for pixel unchanged. On
the demo world's val edits those patches (70% of an image) keep their source code only 30% of the time (teacher
features there move by 20% of their norm), and an editing sequence's target shares 29% of its codes with its
source. With the flag, a target patch whose pixels equal the source's takes the source's code
(``anchor_edit_codes``), so 79% of the target's codes are copies the AR model can learn to copy; the edited
region keeps the target image's own codes. Such a mixed grid decodes to the target scene a little less often than
the target's own encoding (0.47 vs 0.54 of 256 val edits). An AR model learns to copy those codes only with the
instruction before the source image (``ARModule(edit_layout="instruction_first")``, ``arm.ar.sequences``);
measured in experiments/LOG.md, twenty-first session; off by default.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from tqdm import tqdm

from arm.io import write_json_atomic
from arm.tokenizer.code_colours import CODE_COLOURS_FILE, CodeColourStats, palette_from_spec


def _load(ckpt: str):
    from arm.tokenizer.model import TokenizerBundle

    return TokenizerBundle.load(ckpt)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def run_eval(ns: argparse.Namespace) -> int:
    """Every tokenizer metric on val; linear probes fit on ``num_probe_train`` train images."""
    from arm.data.datamodule import ShapeWorldStream
    from arm.data.samples import expand_shards
    from arm.eval.figures_grids import write_recon_images
    from arm.tokenizer.evaluate import TokenizerEvaluator, geneval_reconstruction, linear_probes, probe_labels
    from arm.tokenizer.metrics import InceptionFeatures, fsq_level_occupancy

    bundle = _load(ns.ckpt)
    steps, cfg = bundle.decode_settings(ns.steps, ns.cfg)  # --steps / --cfg, else the export's
    tok = bundle.tokenizer
    if ns.readout != "export":  # re-score an export written before it recorded its readout, or compare the two
        if ns.readout == "teacher" and not callable(getattr(bundle.teacher, "pool", None)):
            raise SystemExit(f"arm tokenizer eval: error: --readout teacher needs a teacher that pools its own patch "
                             f"features ({type(bundle.teacher).__name__} does not): use --readout head")
        tok.config.readout = ns.readout
    lm = lm_tokenizer = None
    with open(os.path.join(ns.ckpt, "config.json")) as f:
        lm_dir = json.load(f).get("lm_dir")
    if lm_dir and tok.cap_adapter is not None:
        from arm.ar.lm_module import load_lm
        from arm.data.text_tokenizer import TextTokenizer

        lm, _ = load_lm(lm_dir)
        lm_tokenizer = TextTokenizer.from_file(os.path.join(lm_dir, "tokenizer.json"))
    inception = InceptionFeatures(ns.inception_weights) if ns.inception_weights else None
    evaluator = TokenizerEvaluator(tok, bundle.teacher, ns.recon_images, steps, cfg, inception)
    data = Path(ns.data)

    def pooled(split: str, limit: int, evaluate: bool):
        stream = ShapeWorldStream(expand_shards(str(data / split)), task="scene", batch_size=ns.batch_size,
                                  max_samples=limit, rank=0, world_size=1)
        feats, metas = [], []
        for batch in tqdm(stream, desc=f"tokenizer eval {split}", unit="batch"):
            images = batch["image"]
            with torch.no_grad():
                z_q, indices = tok.quantize(bundle.teacher.patch_features(images), images)
                parts = {}
                if evaluate and lm is not None:
                    from arm.ar.lm_module import encode_captions
                    from arm.ar.model import prefix_caption_loss

                    ids, mask = encode_captions(lm_tokenizer, [m["caption"] for m in batch["meta"]], 64)
                    ids, mask = ids[:, 1:], mask[:, 1:]  # as in training: z_q replaces the leading [eos]
                    parts["cap"] = prefix_caption_loss(lm, tok.cap_adapter(z_q), ids, mask)
            if evaluate:
                evaluator.update(images, batch["meta"], z_q, indices, parts)
            feats.append(tok.probe_features(z_q))
            metas += batch["meta"]
        return torch.cat(feats), metas

    started = time.perf_counter()
    val_x, val_meta = pooled("val", ns.num_val, evaluate=True)
    train_x, train_meta = pooled("train", ns.num_probe_train, evaluate=False)
    metrics = evaluator.compute()
    zero_shot = {k: metrics.pop(f"zero_shot_{k}_acc") for k in ("color", "shape") if f"zero_shot_{k}_acc" in metrics}
    prefix = "recon_object_recall/"
    recall = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    report = {
        **{k: v for k, v in metrics.items() if not k.startswith(("loss", prefix))},
        "recon_object_recall": recall,
        "recon_objects": {k: total for k, (_, total) in sorted(evaluator.object_hits.items())},
        "level_occupancy": [[round(v, 4) for v in channel]
                            for channel in fsq_level_occupancy(evaluator.hist, tok.config.levels)],
        "zero_shot_acc": zero_shot,
        "probe_acc": linear_probes(train_x, probe_labels(train_meta), val_x, probe_labels(val_meta)),
        "num_val": len(val_meta),
        "num_probe_train": len(train_meta),
        "decode_steps": steps,
        "decoder_cfg": cfg,
        "readout": tok.config.readout,
        "ckpt": os.path.abspath(ns.ckpt),
        "seconds": round(time.perf_counter() - started, 1),
    }
    bench = data / "bench"
    if ns.recon_images > 0 and (bench / "geneval.jsonl").is_file():  # ShapeWorld: the generation ceiling
        report["geneval_recon"] = geneval_reconstruction(bundle, bench, steps, cfg, ns.batch_size)
        report["seconds"] = round(time.perf_counter() - started, 1)
    originals, recons = evaluator.recon_pairs()
    if originals:  # for `arm figures`: <dir of OUT>/recon/{orig,recon}-XXXX.png
        report["recon_dir"] = str(write_recon_images(Path(ns.out).parent, originals, recons))
    write_json_atomic(ns.out, report)
    print(json.dumps(report, indent=2))
    return 0


def run_encode(ns: argparse.Namespace) -> int:
    """Code shards beside the input layout: one output tar per input tar, same keys."""
    from arm.data.samples import expand_shards

    palette = palette_from_spec(ns.palette)  # a bad --palette fails before the tokenizer loads
    bundle = _load(ns.ckpt)
    dtype = np.int16 if bundle.tokenizer.codebook_size <= 2**15 else np.int32
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = expand_shards(ns.shards)
    device_type = next(bundle.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16, enabled=ns.precision == "bf16")
    colours = CodeColourStats(bundle.tokenizer.codebook_size, palette)
    for shard in tqdm(shards, desc="encode", unit="shard"):
        target = out / Path(shard).name
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, mtime=0.0, encoder=False)
            pending: list[dict] = []
            for sample in wds.tarfile_samples([{"url": shard}]):
                pending.append(sample)
                if len(pending) == ns.batch_size:
                    with autocast:
                        _write_codes(bundle, pending, writer, dtype, colours, ns.anchor_edits)
                    pending = []
            if pending:
                with autocast:
                    _write_codes(bundle, pending, writer, dtype, colours, ns.anchor_edits)
            writer.close()
        os.replace(tmp, target)
    colours.save(out / CODE_COLOURS_FILE)
    print(json.dumps({"shards": len(shards), "out": str(out), "codebook_size": bundle.tokenizer.codebook_size,
                      "code_colours": str(out / CODE_COLOURS_FILE)}))
    return 0


def anchor_edit_codes(source_codes: torch.Tensor, target_codes: torch.Tensor, sources: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """Edit targets' codes with every patch whose pixels equal the source's given the source's code.

    ``source_codes`` / ``target_codes`` (B, N) row-major codes of a square grid; ``sources`` / ``targets`` (B, C,
    H, W) the images they encode, whose sides the grid divides. A patch counts as unchanged when every one of its
    pixels is exactly equal in both images (ShapeWorld renders an edit's untouched pixels bit for bit)."""
    if source_codes.shape != target_codes.shape or sources.shape != targets.shape:
        raise ValueError(f"source and target differ in shape: codes {tuple(source_codes.shape)} vs "
                         f"{tuple(target_codes.shape)}, images {tuple(sources.shape)} vs {tuple(targets.shape)}")
    batch, num = source_codes.shape
    side = math.isqrt(num)
    height, width = sources.shape[-2:]
    if side * side != num or height % side or width % side:
        raise ValueError(f"{num} codes per image do not tile {height}x{width} images as a square grid")
    differs = (sources != targets).any(dim=1)  # (B, H, W)
    patch_differs = differs.reshape(batch, side, height // side, side, width // side).any(dim=4).any(dim=2)
    return torch.where(patch_differs.reshape(batch, num).to(target_codes.device), target_codes, source_codes)


def _write_codes(bundle, samples: list[dict], writer: wds.TarWriter, dtype, colours: CodeColourStats,
                 anchor_edits: bool = False) -> None:
    """Encode a batch of raw samples (their scene and, when present, edited image), write code samples and count
    each code's patch colours; with ``anchor_edits`` an edit's unchanged patches take the source's codes."""
    from arm.data.samples import decode_image

    images = torch.stack([decode_image(s["png"]) for s in samples])
    codes = bundle.encode(images)
    side = math.isqrt(codes.shape[1])
    colours.update(codes, images, (side, side))
    edit_rows = [i for i, s in enumerate(samples) if "edit.png" in s]
    edit_codes = {}
    if edit_rows:
        edits = torch.stack([decode_image(samples[i]["edit.png"]) for i in edit_rows])
        edit_indices = bundle.encode(edits)
        if anchor_edits:
            edit_indices = anchor_edit_codes(codes[edit_rows], edit_indices, images[edit_rows], edits)
        colours.update(edit_indices, edits, (side, side))
        edit_codes = dict(zip(edit_rows, edit_indices.cpu().numpy().astype(dtype)))
    codes = codes.cpu().numpy().astype(dtype)
    for i, s in enumerate(samples):
        out = {"__key__": s["__key__"], "json": s["json"], "codes.npy": _npy(codes[i])}
        if i in edit_codes:
            out["edit_codes.npy"] = _npy(edit_codes[i])
        writer.write(out)


def run_decode(ns: argparse.Namespace) -> int:
    """Codes (N,) or (B, N) from a .npy file -> ``OUT/decoded-XXXX.png``."""
    from arm.data.shapeworld.render import encode_png

    path = Path(ns.codes)
    if not path.is_file():
        raise FileNotFoundError(f"no codes file at {path}")
    codes = np.load(path, allow_pickle=False)
    codes = codes[None] if codes.ndim == 1 else codes
    bundle = _load(ns.ckpt)
    gen = torch.Generator().manual_seed(ns.seed)
    images = bundle.decode(torch.as_tensor(codes, dtype=torch.long), ns.steps, ns.cfg, gen)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = (images.permute(0, 2, 3, 1) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
    for i, img in enumerate(pixels):
        (out / f"decoded-{i:04d}.png").write_bytes(encode_png(img))
    print(json.dumps({"images": len(pixels), "out": str(out)}))
    return 0


def run_table7(ns: argparse.Namespace) -> int:
    from arm.tokenizer.table7 import run_table7 as table7

    table7(ns.out, ns.demo, ns.seed, ns.steps)
    return 0
