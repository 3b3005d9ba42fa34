"""Tokenizer metrics over a stream of batches, shared by ``TokenizerModule``'s validation and ``arm tokenizer eval``.

``TokenizerEvaluator.update`` takes a batch's images, scenes (``meta``, may be None for real data), z_q, code
indices and loss parts; ``compute`` returns every metric (see ``TokenizerModule``'s docstring for definitions).
``linear_probes`` fits the logistic-regression probes on pooled z_q (colour, shape, object count).
With an ``InceptionFeatures`` the reconstructed images also give ``rfid`` (FID between originals and their
reconstructions); without one only ``fd_teacher``, which is not an FID.
"""

from __future__ import annotations

import numpy as np
import torch

from arm.data.shapeworld.scene import scene_label
from arm.data.shapeworld.world import CLASSES, COLORS
from arm.tokenizer.metrics import (
    InceptionFeatures,
    code_histogram,
    code_perplexity,
    code_usage,
    frechet_distance,
    linear_probe_accuracy,
    psnr,
)

COLOR_PROMPT, SHAPE_PROMPT = "a {} shape", "a {}"
"""Zero-shot prompts, the same ones the teacher's own zero-shot metric uses."""


class TokenizerEvaluator:
    """Accumulates code statistics, zero-shot counts, loss sums and reconstruction metrics."""

    def __init__(self, tokenizer, teacher, recon_images: int = 128, decode_steps: int = 10,
                 cfg_scale: float = 1.0, inception: InceptionFeatures | None = None) -> None:
        self.tokenizer, self.teacher, self.inception = tokenizer, teacher, inception
        self.recon_images, self.decode_steps, self.cfg_scale = recon_images, decode_steps, cfg_scale
        self.hist = torch.zeros(tokenizer.codebook_size, dtype=torch.long)
        self.sums: dict[str, float] = {}
        self.count = 0
        self.zero_shot = {"color": [0, 0], "class": [0, 0]}
        with torch.no_grad():
            self.prompts = {
                "color": (list(COLORS), teacher.embed_texts([COLOR_PROMPT.format(c) for c in COLORS])),
                "class": (list(CLASSES), teacher.embed_texts([SHAPE_PROMPT.format(c) for c in CLASSES])),
            }
        self.recon: dict[str, list] = {"psnr": [], "ssim": [], "semantic": [], "real": [], "fake": [],
                                       "inception_real": [], "inception_fake": [], "background": []}
        self.object_hits: dict[str, list[int]] = {}  # "class_size" -> [recovered, total] over reconstructed objects
        self.grid: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, images: torch.Tensor, metas: list[dict] | None, z_q: torch.Tensor, indices: torch.Tensor,
               parts: dict[str, torch.Tensor] | None = None) -> None:
        bs = images.shape[0]
        self.count += bs
        for name, value in (parts or {}).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value) * bs
        self.hist += code_histogram(indices.cpu(), self.tokenizer.codebook_size)
        if metas is not None:
            emb = self.zero_shot_embedding(z_q)  # (B, E)
            for field, (names, text) in self.prompts.items():
                pred = (emb @ text.T).argmax(dim=1).tolist()
                for i, meta in enumerate(metas):
                    label = scene_label(meta, field)
                    if label is not None:
                        self.zero_shot[field][0] += int(names[pred[i]] == label)
                        self.zero_shot[field][1] += 1
        self._reconstruct(images, z_q, metas)

    def zero_shot_embedding(self, z_q: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised z_q (B, E) to score against the teacher's text embeddings: through the tokenizer's
        sigmoid head, or through the teacher's own pooling and projection under ``readout == "teacher"``."""
        if self.tokenizer.config.readout == "teacher":
            return self.teacher.pool(z_q)
        return self.tokenizer.pooled_embedding(z_q)

    def _reconstruct(self, images: torch.Tensor, z_q: torch.Tensor, metas: list[dict] | None) -> None:
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        room = self.recon_images - len(self.recon["psnr"])
        if room <= 0:
            return
        images, z_q = images[:room].float(), z_q[:room]
        # A fixed noise seed per position in the stream: the same checkpoint always gets the same numbers.
        gen = torch.Generator(device=images.device).manual_seed(len(self.recon["psnr"]))
        recon = self.tokenizer.decoder.sample(z_q, steps=self.decode_steps, cfg_scale=self.cfg_scale, generator=gen)
        # The metrics run in fp32 even under a bf16-mixed trainer: SSIM's Gaussian-window convolutions in bf16
        # gave values below 0 (measured, experiments/LOG.md 2026-12-04).
        with torch.autocast(device_type=images.device.type, enabled=False):
            self.recon["psnr"] += psnr(recon.float(), images).tolist()
            self.recon["ssim"] += ssim(recon.float(), images, data_range=1.0, reduction="none").tolist()  # per image
        self.recon["real"].append(self.teacher.patch_features(images).mean(1).cpu())
        self.recon["fake"].append(self.teacher.patch_features(recon).mean(1).cpu())
        if self.inception is not None:
            self.recon["inception_real"].append(self.inception(images))
            self.recon["inception_fake"].append(self.inception(recon))
        if metas is not None:
            from arm.data.shapeworld.detector import detect_scene
            from arm.data.shapeworld.judge import objects_recovered, scenes_match
            from arm.data.shapeworld.scene import Scene

            pixels = (recon.permute(0, 2, 3, 1) * 255 + 0.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
            for img, meta in zip(pixels, metas):
                truth, found = Scene.from_json(meta["scene"]), detect_scene(img)
                self.recon["semantic"].append(scenes_match(truth, found))
                self.recon["background"].append(truth.background == found.background)
                for obj, hit in zip(truth.objects, objects_recovered(truth, found)):
                    counts = self.object_hits.setdefault(f"{obj.cls}_{obj.size}", [0, 0])
                    counts[0] += int(hit)
                    counts[1] += 1
        if self.grid is None:
            self.grid = torch.cat([images[:8].cpu(), recon[:8].cpu()])

    def recon_pairs(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The grid's originals and reconstructions as (H, W, 3) uint8 arrays (empty without reconstructions)."""
        if self.grid is None:
            return [], []
        pixels = (self.grid.permute(0, 2, 3, 1).float() * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        half = len(pixels) // 2
        return list(pixels[:half]), list(pixels[half:])

    def compute(self) -> dict[str, float]:
        n = max(self.count, 1)
        out = {("loss" if k == "total" else f"loss_{k}"): v / n for k, v in self.sums.items()}
        out["code_usage"] = code_usage(self.hist)
        out["code_perplexity"] = code_perplexity(self.hist)
        for field, key in (("color", "zero_shot_color_acc"), ("class", "zero_shot_shape_acc")):
            correct, total = self.zero_shot[field]
            if total:
                out[key] = correct / total
        if "cap" in self.sums:
            out["caption_ppl"] = float(np.exp(self.sums["cap"] / n))
        rec = self.recon
        if rec["psnr"]:
            out["psnr"] = float(np.mean(rec["psnr"]))
            out["ssim"] = float(np.mean(rec["ssim"]))
            if len(rec["psnr"]) > 2:
                out["fd_teacher"] = frechet_distance(torch.cat(rec["real"]).numpy(), torch.cat(rec["fake"]).numpy())
                if rec["inception_real"]:
                    out["rfid"] = frechet_distance(torch.cat(rec["inception_real"]).numpy(),
                                                   torch.cat(rec["inception_fake"]).numpy())
        if rec["semantic"]:
            # Where semantic_recon_acc loses its scenes: the background, and each (class, size) of object.
            out["semantic_recon_acc"] = float(np.mean(rec["semantic"]))
            out["recon_background_acc"] = float(np.mean(rec["background"]))
            for key, (hit, total) in sorted(self.object_hits.items()):
                out[f"recon_object_recall/{key}"] = hit / total
        return out


def probe_labels(metas: list[dict]) -> dict[str, list[int]]:
    """Probe targets per image: colour / class index where all objects share it (else -1), object count - 1."""
    out: dict[str, list[int]] = {"color": [], "class": [], "count": []}
    for meta in metas:
        color, cls = scene_label(meta, "color"), scene_label(meta, "class")
        out["color"].append(list(COLORS).index(color) if color else -1)
        out["class"].append(list(CLASSES).index(cls) if cls else -1)
        out["count"].append(len(meta["scene"]["objects"]) - 1)
    return out


def linear_probes(train_x: torch.Tensor, train_labels: dict[str, list[int]], val_x: torch.Tensor,
                  val_labels: dict[str, list[int]]) -> dict[str, float]:
    """Probe accuracy per target on pooled features, using only images that have a label for it."""
    out = {}
    for name in ("color", "class", "count"):
        ty, vy = torch.tensor(train_labels[name]), torch.tensor(val_labels[name])
        tm, vm = ty >= 0, vy >= 0
        if tm.sum() > 1 and vm.sum() > 0:
            out["shape" if name == "class" else name] = linear_probe_accuracy(train_x[tm], ty[tm], val_x[vm], vy[vm])
    return out


def geneval_reconstruction(bundle, bench_dir, steps: int = 10, cfg_scale: float = 1.0, batch_size: int = 64,
                           limit: int | None = None) -> dict:
    """GenEval-protocol score of the tokenizer's round trip (encode -> code indices -> decode) of the bench's
    GenEval images, judged by the ShapeWorld detector as generated images are.

    Why: it is the ceiling of text-to-image through these codes. An AR model that wrote exactly the codes of a
    correct image would score this, so a gap between it and 1.0 (what the real images score, the demo's ``judge``
    stage) belongs to the tokenizer, and the gap below it to the AR model. Returns ``summarize_geneval``'s
    ``{per_tag, counts, overall}`` over ``bench_dir/geneval.jsonl`` (the first ``limit`` records).
    Decoding uses a fixed noise seed per batch, so a checkpoint always gets the same number.
    """
    import json
    from pathlib import Path

    from arm.data.shapeworld.judge import score_geneval_image, summarize_geneval
    from arm.data.shapeworld.render import decode_png

    bench = Path(bench_dir)
    records = [json.loads(line) for line in (bench / "geneval.jsonl").read_text().splitlines() if line.strip()]
    records = records[:limit] if limit is not None else records
    results = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = np.stack([decode_png((bench / r["image"]).read_bytes()) for r in chunk])  # (B, H, W, 3) uint8
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            recon = bundle.decode(bundle.encode(x), steps, cfg_scale, torch.Generator().manual_seed(start))
        recon = (recon.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for record, image in zip(chunk, recon):
            results.append({"tag": record["tag"], "correct": score_geneval_image(image, record)["correct"]})
    return summarize_geneval(results)
