"""``arm figures``: every grid and curve from files written here, pixel sizes, marks, and the skip report."""

import json

import numpy as np
import pytest

from arm.cli import main
from arm.eval.common import write_png
from arm.eval.figures import make_figures
from arm.eval.figures_curves import moving_average, read_scalars, run_label
from arm.eval.figures_grids import (
    CORRECT,
    WRONG,
    cfg_grid,
    read_cfg_grid,
    read_geneval_folder,
    write_cfg_grid,
    write_recon_images,
)
from arm.eval.figures_io import grid_figsize, pixel_size, read_png
from tests.unit.test_figures_tables import table7_json, table8_json


def solid(value, size=32):
    return np.full((size, size, 3), value, np.uint8)


def png_size(path):
    """(width, height) of a PNG file, non-empty."""
    assert path.stat().st_size > 0 and path.with_suffix(".pdf").stat().st_size > 0
    return read_png(path).shape[1::-1]


def has_colour(image, hex_colour, tol=12):
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(image.astype(int) - rgb).max(-1) <= tol).any())


def write_geneval(folder):
    """Tag A: two prompts of two samples (the first sample right, the others wrong); tag B: one prompt, unjudged."""
    rows = []
    for i, (tag, prompt) in enumerate([("A", "a red circle"), ("A", "two stars"), ("B", "a square")]):
        (folder / f"{i:05d}" / "samples").mkdir(parents=True)
        (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps({"tag": tag, "prompt": prompt}) + "\n")
        for k in range(2):
            write_png(folder / f"{i:05d}" / "samples" / f"{k:04d}.png", solid(40 * (i + 1)))
            if tag == "A":
                rows.append({"sample_id": f"{i:05d}/{k:04d}", "correct": i == 0 and k == 0, "tag": tag})
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_gedit(folder):
    for task, keys in (("color_alter", ["k1", "k2", "k3"]), ("subject-add", ["k4"])):
        for key in keys:
            write_png(folder / "fullset" / task / "en" / f"{key}_SRCIMG.png", solid(10))
            write_png(folder / "fullset" / task / "en" / f"{key}.png", solid(200))
    (folder / "results.jsonl").write_text(json.dumps({"task_type": "color_alter", "key": "k1", "instruction":
                                                      "make the circle blue", "overall_score": 7.5}) + "\n")


def dummy_generate(prompt, ar_cfg, dec_cfg):
    """A flat image whose red / green channels encode the two guidance scales (so the test can read them back)."""
    return np.stack([np.full((16, 16), int(ar_cfg * 40)), np.full((16, 16), int(dec_cfg * 40)),
                     np.full((16, 16), len(prompt))], -1).astype(np.uint8)


def write_events(log_dir):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    for step in range(12):
        writer.add_scalar("train/reward", step / 10, step)
        writer.add_scalar("reward/quality", 1.0 - step / 20, step)  # the GRPO module's naming
        writer.add_scalar("val/reward/quality", 0.5, step)
        writer.add_scalar("train/loss", 5.0, step)
    writer.close()


def test_recon_geneval_gedit_grids(tmp_path):
    root = tmp_path / "results"
    write_recon_images(root / "tok", [solid(0)] * 3, [solid(255)] * 3)
    write_geneval(root / "eval" / "geneval")
    write_gedit(root / "eval" / "gedit")
    report = make_figures(root, tmp_path / "figs", quiet=True)
    figs = tmp_path / "figs"
    assert png_size(figs / "recon_tok.png") == pixel_size(grid_figsize(2, 3, row_labels=True))
    # Tag A: 2 prompts x 2 samples; tag B: 1 prompt x 2 samples.
    assert png_size(figs / "geneval_eval-geneval_A.png") == pixel_size(grid_figsize(2, 2, caption=True))
    assert png_size(figs / "geneval_eval-geneval_B.png") == pixel_size(grid_figsize(1, 2, caption=True))
    tag_a, tag_b = read_png(figs / "geneval_eval-geneval_A.png"), read_png(figs / "geneval_eval-geneval_B.png")
    assert has_colour(tag_a, CORRECT) and has_colour(tag_a, WRONG)  # one right sample, three wrong
    assert not has_colour(tag_b, CORRECT) and not has_colour(tag_b, WRONG)  # B has no verdicts
    assert png_size(figs / "gedit_eval-gedit_color_alter.png") == pixel_size(
        grid_figsize(2, 3, caption=True, row_labels=True))
    assert png_size(figs / "gedit_eval-gedit_subject-add.png") == pixel_size(
        grid_figsize(2, 1, caption=True, row_labels=True))
    assert [s for s in report.skipped if s.startswith(("recon", "GenEval", "GEdit"))] == []
    marks = read_geneval_folder(root / "eval" / "geneval")
    assert [[c for _, c in p["samples"]] for p in marks["A"]] == [[True, False], [False, False]]


def test_cfg_grid_producer_and_figure(tmp_path):
    root = write_cfg_grid(dummy_generate, ["one", "three"], [1.0, 1.5, 3.0], [1.0, 2.5], tmp_path)
    image = read_png(root / "ar1.5_dec2.5" / "001.png")
    assert tuple(image[0, 0]) == (60, 100, 5)  # 1.5 * 40, 2.5 * 40, len("three")
    prompts, settings = read_cfg_grid(root)
    assert prompts == ["one", "three"] and sorted(settings) == [(a, d) for a in (1.0, 1.5, 3.0) for d in (1.0, 2.5)]
    (png,) = [p for p in cfg_grid(root, 1, tmp_path / "cfg.png") if p.suffix == ".png"]
    assert png_size(png) == pixel_size(grid_figsize(3, 2, row_labels=True))  # rows AR CFG, columns decoder CFG
    with pytest.raises(ValueError, match="uint8"):
        write_cfg_grid(lambda p, a, d: np.zeros((4, 4, 3)), ["x"], [2.0], [2.0], tmp_path / "bad")


def test_reward_curves_from_event_files(tmp_path):
    log_dir = tmp_path / "results" / "rl" / "t2i" / "logs" / "version_0"
    write_events(log_dir)
    scalars = read_scalars(log_dir)
    assert sorted(scalars) == ["reward/quality", "train/reward"]  # train/loss and validation rewards are left out
    steps, values = scalars["train/reward"]
    assert steps.tolist() == list(range(12)) and values == pytest.approx([s / 10 for s in range(12)])
    assert run_label(log_dir, tmp_path / "results") == "rl/t2i"
    assert moving_average(np.array([2.0, 4.0, 6.0, 8.0]), 2).tolist() == [2.0, 3.0, 5.0, 7.0]
    report = make_figures(tmp_path / "results", tmp_path / "figs", quiet=True)
    assert str(tmp_path / "figs" / "rl_reward_curves.png") in report.wrote
    assert png_size(tmp_path / "figs" / "rl_reward_curves.png") == (2 * 420, 340)  # two panels of 4.2 x 3.0 in


def test_skip_report_on_empty_and_malformed_results(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    report = make_figures(tmp_path / "results", tmp_path / "figs", quiet=True)
    assert report.wrote == []
    assert [s.split(":")[0] for s in report.skipped] == [
        "table7", "table8", "reconstruction grid", "GenEval grids", "GEdit grids", "CFG grid", "RL reward curves",
        "synergy chart"]
    (tmp_path / "results" / "table8.json").write_text('{"rows": {"sft": {"geneval": 0.5}}}')
    (tmp_path / "results" / "table7.json").write_text(json.dumps(table7_json()))
    assert main(["figures", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "skipped table8: ValueError:" in out and "rows.sft.geneval" in out
    assert (tmp_path / "figs" / "table7.md").read_text().startswith("# Table 7")
    assert out.splitlines()[-1].startswith("  skipped synergy chart")
    assert "arm figures: wrote 2 files, skipped 7 inputs" in out


def test_tables_and_synergy_chart_through_make_figures(tmp_path):
    from arm.eval.synergy import synergy, write_synergy
    from tests.unit.test_synergy import vqa_rows, write_rows

    root = tmp_path / "results"
    (root).mkdir()
    (root / "table8.json").write_text(json.dumps(table8_json()))
    write_rows(tmp_path / "sft", "vqa", vqa_rows([0, 1, 0, 1]))
    write_rows(tmp_path / "rl", "vqa", vqa_rows([1, 1, 0, 1]))
    write_synergy(synergy(tmp_path / "sft", {"t2i": tmp_path / "rl"}), root / "synergy")
    report = make_figures(root, tmp_path / "figs", quiet=True)
    names = {p.split("/")[-1] for p in report.wrote}
    assert {"table8.md", "table8.tex", "synergy_synergy.png", "synergy_synergy.pdf"} <= names
    assert (tmp_path / "figs" / "table8.tex").read_text().startswith(r"\begin{table}")
