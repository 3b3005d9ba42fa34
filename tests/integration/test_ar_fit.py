"""``arm ar fit`` end to end on tiny code shards: logs, kill/resume, export round trip, commands, one-line errors.

The image tokenizer is a randomly initialised tiny export (teacher + FSQ 4*4*2 = 32 codes over an 8 x 8 grid),
and the code shards are what ``arm tokenizer encode`` writes from the session's tiny world with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arm.ar.cli import main
from arm.ar.module import load_ar_bundle
from arm.ar.sequences import SPECIAL_TOKENS
from arm.nn import TransformerConfig
from arm.teacher.model import DualEncoder, TeacherConfig, save_teacher
from arm.tokenizer.model import SemanticTokenizer, TokenizerConfig, save_tokenizer
from arm.tokenizer.pixel_decoder import PixelDiTConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments/ar/tiny.yaml")


def _has_sampler() -> bool:
    try:
        import arm.ar.sampling  # noqa: F401
    except ImportError:
        return False
    return True


needs_sampler = pytest.mark.skipif(not _has_sampler(), reason="arm.ar.sampling (SAMPLER's KV-cache sampler) is "
                                                               "not in this checkout yet")


@pytest.fixture(scope="module")
def parts(tiny_world, tmp_path_factory):
    from arm.data.text_tokenizer import TextTokenizer
    from arm.tokenizer.cli import _utility_parser
    from arm.tokenizer.tools import run_encode

    root = tmp_path_factory.mktemp("ar")
    text_tok = tiny_world / "tokenizer.json"
    torch.manual_seed(0)
    tcfg = TeacherConfig(image_dim=32, image_layers=1, image_heads=2, text_dim=32, text_layers=1, text_heads=2,
                         embed_dim=32, vocab_size=TextTokenizer.from_file(text_tok).vocab_size)
    save_teacher(DualEncoder(tcfg), tcfg, str(root / "teacher"), str(text_tok))
    config = TokenizerConfig(levels=[4, 4, 2], projection=TransformerConfig(dim=32, num_layers=1, num_heads=2),
                             decoder=PixelDiTConfig(dim=32, num_layers=1, num_heads=2, time_freq_dim=32),
                             feature_dim=32, text_embed_dim=32)
    save_tokenizer(SemanticTokenizer(config), str(root / "tokenizer"), str(root / "teacher"), None)
    for split in ("train", "val"):
        # Through the real parser, so every option `arm tokenizer encode` defines gets its default.
        run_encode(_utility_parser().parse_args(["encode", "--ckpt", str(root / "tokenizer"), "--shards",
                                                 str(tiny_world / "world" / split), "--out",
                                                 str(root / "codes" / split), "--batch-size", "32"]))
    return root


def _args(tiny_world, parts, out, *extra: str) -> list[str]:
    return ["fit", "--config", TINY, "--data.data_dir", str(parts / "codes"),
            "--model.tokenizer_path", str(tiny_world / "tokenizer.json"),
            "--model.tokenizer_export", str(parts / "tokenizer"), "--trainer.default_root_dir", str(out),
            "--model.code_colours", str(parts / "codes" / "train" / "code_colours.safetensors"), *extra]


def _fit(args: list[str]):
    """Run ``arm ar`` and return its LightningCLI (to read the trainer's logged metrics)."""
    from lightning.pytorch.cli import LightningCLI

    seen = {}
    original = LightningCLI.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        seen["cli"] = self

    LightningCLI.__init__ = spy
    try:
        main(args)
    finally:
        LightningCLI.__init__ = original
    return seen["cli"]


def test_fit_logs_resumes_and_exports(tiny_world, parts, tmp_path):
    out = tmp_path / "run"
    checkpointing = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
                     f"--trainer.callbacks.dirpath={out / 'checkpoints'}", "--trainer.callbacks.save_last=true",
                     "--trainer.callbacks.every_n_train_steps=2"]
    logger = ["--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger", f"--trainer.logger.save_dir={out}"]
    # "Killed" after 2 of 4 steps: a run with max_steps 2 leaves last.ckpt at step 2, saved after a validation
    # that drew the grids (the logger is on) ...
    first = _fit(_args(tiny_world, parts, out, *checkpointing, *logger, "--trainer.max_steps", "2",
                       "--model.export", "false"))
    assert (out / "checkpoints" / "last.ckpt").is_file() and first.trainer.global_step == 2
    # A checkpoint saved once a validation has drawn the grids holds the model alone, not the grids' frozen image
    # tokenizer (it used to, and then could not be resumed: "Unexpected key(s) ... _bundle.tokenizer...").
    assert first.model._bundle is not None
    first.trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    assert saved and all(k.startswith("model.") for k in saved), sorted(saved)[:5]
    # ... and `--ckpt_path last` continues from it to step 4.
    cli = _fit(_args(tiny_world, parts, out, *checkpointing, *logger, "--ckpt_path", "last"))
    assert cli.trainer.global_step == 4
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss", "train/loss_text", "train/loss_image", "train/tokens_per_s", "train/padding",
                "val/loss", "val/ppl_text", "val/ppl_image", "val/loss_t2i", "val/loss_edit", "val/loss_vqa"):
        assert key in metrics, key
    # Four steps from initialisation: the image head is already below uniform over its codes (measured 18 of 32),
    # the text head still near uniform over its rows (measured 333 of 300); never below 1, and NaN fails every
    # comparison.
    cfg = cli.model.config
    assert 1.0 < float(metrics["val/ppl_image"]) < cfg.num_image_codes
    assert 1.0 < float(metrics["val/ppl_text"]) < 1.5 * cfg.text_vocab_size
    if _has_sampler():
        for key in ("val/vqa_acc", "val/mme_acc", "val/mme_acc_plus"):
            assert 0.0 <= float(metrics[key]) <= 1.0, key
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent))
        events.Reload()
        assert {"val/t2i_grid", "val/edit_grid"} <= set(events.Tags()["images"])

    export = out / "ar"
    meta = json.loads((export / "config.json").read_text())
    assert meta["special_tokens"] == list(SPECIAL_TOKENS) and meta["grid"] == [8, 8]
    assert meta["edit_layout"] == cli.datamodule.edit_layout == cli.model.hparams.edit_layout
    assert meta["tokenizer_export"] == str((parts / "tokenizer").resolve())
    assert (export / "tokenizer.json").read_bytes() == (tiny_world / "tokenizer.json").read_bytes()
    loaded = load_ar_bundle(str(export))
    trained = cli.model.model.eval()
    assert loaded.model.config == trained.config and loaded.model.config.num_image_codes == 32
    ids = torch.randint(0, trained.config.vocab_size, (2, 11))
    with torch.no_grad():
        hidden = trained(input_ids=ids)
        assert torch.equal(loaded.model.image_logits(loaded.model(input_ids=ids)), trained.image_logits(hidden))
    assert loaded.image_tokenizer is not None and loaded.builder.grid == (8, 8)


def test_encode_anchor_edits_copies_source_codes_on_unchanged_patches(tiny_world, parts, tmp_path):
    """`arm tokenizer encode --anchor-edits`: an edit's target code is the source's where the patch's pixels are
    equal in both images, and the plain encode's target code elsewhere."""
    import webdataset as wds

    from arm.data.codes import decode_code_sample
    from arm.data.samples import decode_image, expand_shards
    from arm.tokenizer.cli import _utility_parser
    from arm.tokenizer.tools import run_encode

    run_encode(_utility_parser().parse_args(["encode", "--ckpt", str(parts / "tokenizer"), "--shards",
                                             str(tiny_world / "world" / "val"), "--out", str(tmp_path / "val"),
                                             "--anchor-edits"]))

    def read(spec):
        return {raw["__key__"]: raw for raw in wds.tarfile_samples([{"url": s} for s in expand_shards(spec)])}

    plain, anchored, world = (read(str(parts / "codes" / "val")), read(str(tmp_path / "val")),
                              read(str(tiny_world / "world" / "val")))
    assert plain.keys() == anchored.keys() and plain
    copied = kept = 0
    for key, raw in anchored.items():
        got, ref = decode_code_sample(raw), decode_code_sample(plain[key])
        assert (got["codes"] == ref["codes"]).all()
        if ref.get("edit_codes") is None:
            continue
        source, target = decode_image(world[key]["png"]), decode_image(world[key]["edit.png"])
        side = int(len(got["codes"]) ** 0.5)
        patch = source.shape[-1] // side
        for i in range(side * side):
            r, c = divmod(i, side)
            window = (slice(None), slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch))
            same = bool((source[window] == target[window]).all())
            assert got["edit_codes"][i] == (ref["codes"][i] if same else ref["edit_codes"][i])
            copied, kept = copied + same, kept + (not same)
    assert copied and kept  # both branches were exercised


def test_bf16_mixed_fast_dev_run(tiny_world, parts, tmp_path):
    cli = _fit(_args(tiny_world, parts, tmp_path / "bf16", "--trainer.precision", "bf16-mixed",
                     "--trainer.fast_dev_run", "1", "--model.export", "false",
                     "--model.edit_layout", "instruction_first"))
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    # arm ar links the model's edit layout to the DataModule: training sequences and the sampler agree
    assert cli.datamodule.edit_layout == cli.model.builder.edit_layout == "instruction_first"
    assert cli.datamodule.stream("train").builder.edit_layout == "instruction_first"


def test_vocabulary_mismatch_is_a_one_line_error(tiny_world, parts, tmp_path):
    out = tmp_path / "run"
    _fit(_args(tiny_world, parts, out, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"))
    export = out / "ar"
    meta = json.loads((export / "config.json").read_text())
    meta["ar_config"]["num_image_codes"] = 64
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="has 64 image codes but the image tokenizer has 32") as info:
        load_ar_bundle(str(export))
    assert "\n" not in str(info.value)
    # A Lightning checkpoint of another vocabulary refuses to load into this model.
    from arm.ar.module import ARModule

    module = ARModule(str(tiny_world / "tokenizer.json"), str(parts / "tokenizer"), preset="tiny")
    with pytest.raises(ValueError, match="the checkpoint's vocabulary has 5 ids"):
        module.on_load_checkpoint({"state_dict": {"model.embed.weight": torch.zeros(5, 32)}})
    with pytest.raises(ValueError, match="num_image_codes 16 differs from the tokenizer export's codebook 32"):
        ARModule(str(tiny_world / "tokenizer.json"), str(parts / "tokenizer"), preset="tiny", num_image_codes=16)
    with pytest.raises(ValueError, match="may not set"):
        ARModule(str(tiny_world / "tokenizer.json"), str(parts / "tokenizer"), preset="tiny",
                 overrides={"num_image_codes": 3})



def test_compile_blocks_matches_eager_and_refuses_untested_combinations(tiny_world, parts):
    """``compile_blocks`` compiles the no-cache path in ``configure_model``; the scored NLLs match eager ones."""
    from arm.ar.module import ARModule, token_nll

    module = ARModule(str(tiny_world / "tokenizer.json"), str(parts / "tokenizer"), preset="tiny",
                      compile_blocks=True)
    module.configure_model()
    model = module.model
    assert model.body.compiled_blocks is not None and len(model.body.compiled_blocks) == len(model.body.blocks)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ()).item()))
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    compiled = token_nll(model, ids, mask)
    model.body.compiled_blocks = None  # the same weights, eager
    eager = token_nll(model, ids, mask)
    for key in ("image", "text"):
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-4, rtol=1e-4)
    assert not any("compiled_blocks" in key for key in model.state_dict())  # exports are unchanged
    with pytest.raises(ValueError, match="compile_blocks with activation_checkpointing"):
        ARModule(str(tiny_world / "tokenizer.json"), str(parts / "tokenizer"), preset="tiny", compile_blocks=True,
                 activation_checkpointing=True)


def test_code_factors_train_resume_and_export_folded(tiny_world, parts, tmp_path):
    """``model.code_factors`` with ``model.code_colours`` (as the YAMLs): the factors train, survive a kill/resume,
    and the export is a plain decoder that computes what the trained factored one does."""
    from arm.ar.module import ARModule
    from arm.tokenizer.code_colours import load_code_colours

    out = tmp_path / "factors"
    checkpointing = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
                     f"--trainer.callbacks.dirpath={out / 'checkpoints'}", "--trainer.callbacks.save_last=true",
                     "--trainer.callbacks.every_n_train_steps=2"]
    colours = parts / "codes" / "train" / "code_colours.safetensors"  # written by `arm tokenizer encode`
    common = [*checkpointing, "--model.code_factors", "true", "--trainer.limit_val_batches", "0"]
    first = _fit(_args(tiny_world, parts, out, *common, "--trainer.max_steps", "2", "--model.export", "false"))
    factors = first.model.model.code_factors
    # The tiny tokenizer's levels [4, 4, 2] give 3 coordinates, then each code's 13 palette shares (times 2).
    assert factors is not None and factors.coords.shape == (32, 3 + 13)
    torch.testing.assert_close(factors.coords[:, 3:], 2 * load_code_colours(colours, 32))
    assert factors.embed.abs().sum() > 0 and factors.head.abs().sum() > 0  # zero-initialised, then trained
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(saved["model.code_factors.head"], factors.head.detach())
    cli = _fit(_args(tiny_world, parts, out, *common, "--ckpt_path", "last"))
    assert cli.trainer.global_step == 4
    trained = cli.model.model.eval()
    assert not torch.equal(trained.code_factors.head, factors.head)  # resumed and kept training the factors
    loaded = load_ar_bundle(str(out / "ar"), image_tokenizer=False).model
    assert loaded.code_factors is None and loaded.config == trained.config
    ids = torch.randint(0, trained.config.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_logits(loaded(input_ids=ids)), trained.image_logits(trained(input_ids=ids)),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="code_factors needs model.tokenizer_export"):
        ARModule(str(tiny_world / "tokenizer.json"), None, preset="tiny", num_image_codes=32, image_grid=8,
                 code_factors=True)
    with pytest.raises(ValueError, match="describes 32 codes but the model has 64"):
        ARModule(str(tiny_world / "tokenizer.json"), None, preset="tiny", num_image_codes=64, image_grid=8,
                 code_colours=str(colours))
    with pytest.raises(FileNotFoundError, match="no code colour table"):
        ARModule(str(tiny_world / "tokenizer.json"), str(parts / "tokenizer"), preset="tiny",
                 code_colours=str(tmp_path / "missing.safetensors"))


def test_inventory_head_trains_resumes_and_stays_out_of_the_export(tiny_world, parts, tmp_path):
    """``model.inventory_weight`` switches the data's inventory targets on (linked by ``arm ar``), logs the loss and
    the val accuracy, survives a kill/resume, and leaves the export a plain decoder."""
    out = tmp_path / "inventory"
    checkpointing = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
                     f"--trainer.callbacks.dirpath={out / 'checkpoints'}", "--trainer.callbacks.save_last=true",
                     "--trainer.callbacks.every_n_train_steps=2"]
    common = [*checkpointing, "--model.inventory_weight", "1.0", "--model.val_generate", "0"]
    first = _fit(_args(tiny_world, parts, out, *common, "--trainer.max_steps", "2", "--model.export", "false"))
    assert first.datamodule.inventory and first.datamodule.stream("train").inventory
    head = first.model.inventory_head.weight.detach().clone()
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(saved["inventory_head.weight"], head)
    cli = _fit(_args(tiny_world, parts, out, *common, "--ckpt_path", "last"))
    assert cli.trainer.global_step == 4
    metrics = cli.trainer.callback_metrics
    # 76 five-way counts from initialisation: the mean cross-entropy is near ln 5 and falls as the zeros are learnt
    assert 0.0 < float(metrics["train/loss_inventory"]) < 2.0
    assert 0.0 <= float(metrics["val/inventory_acc"]) <= 1.0 and float(metrics["val/loss_inventory"]) > 0.0
    assert not torch.equal(cli.model.inventory_head.weight, head)  # resumed and kept training the head
    from safetensors.torch import load_file

    assert not any(k.startswith("inventory") for k in load_file(str(out / "ar" / "model.safetensors")))


@needs_sampler
def test_commands_on_the_tiny_export(tiny_world, parts, tmp_path, capsys):
    from arm.cli import main as arm

    out = tmp_path / "run"
    _fit(_args(tiny_world, parts, out, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"))
    ckpt = str(out / "ar")
    image = _scene_png(tiny_world, tmp_path)
    assert arm(["generate", "--ckpt", ckpt, "--prompt", "a red circle", "--out", str(tmp_path / "gen"),
                "--num-images", "2", "--cfg", "2", "--top-k", "8", "--seed", "3", "--decoder-steps", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "gen").glob("*.png"))
    assert names == [f"a_red_circle-cfg2-temp1-topk8-topp1-seed3-dsteps2-dcfg1-{i:03d}.png" for i in range(2)]
    assert arm(["edit", "--ckpt", ckpt, "--image", str(image), "--instruction", "make it blue", "--out",
                str(tmp_path / "edit"), "--decoder-steps", "2"]) == 0
    assert len(list((tmp_path / "edit").glob("make_it_blue-cfg1.5-icfg1.25-*.png"))) == 1
    capsys.readouterr()
    assert arm(["ask", "--ckpt", ckpt, "--image", str(image), "--question", "What color is the circle?"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    # --think: the greedy caption on stderr, then the answer asked after it, as the eval harness's think=1 asks.
    assert arm(["ask", "--ckpt", ckpt, "--image", str(image), "--question", "What color is the circle?",
                "--think", "--max-new-tokens", "16"]) == 0
    printed = capsys.readouterr()
    from arm.ar.commands import load_for_eval
    from arm.data.shapeworld.render import decode_png

    model = load_for_eval(ckpt, think=1)
    pixels = decode_png(image.read_bytes())
    assert printed.err == f"thought: {model.describe([pixels])[0]}\n"
    assert printed.out.strip().lower().rstrip(".").strip() == model.answer([pixels], ["What color is the circle?"])[0]
    # One-line errors through the `arm` entry point: too long a prompt, a missing image.
    assert arm(["generate", "--ckpt", ckpt, "--prompt", "red " * 300, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "exceeds the model's context" in err and err.count("\n") == 1
    assert arm(["ask", "--ckpt", ckpt, "--image", str(tmp_path / "none.png"), "--question", "?"]) == 2
    assert "no image at" in capsys.readouterr().err


def _scene_png(tiny_world: Path, tmp_path: Path) -> Path:
    import webdataset as wds

    shard = sorted((tiny_world / "world" / "val").glob("*.tar"))[0]
    raw = next(iter(wds.tarfile_samples([{"url": str(shard)}])))
    path = tmp_path / "scene.png"
    path.write_bytes(raw["png"])
    return path
