"""The tokenizer stage end to end on a tiny world: fit (four losses), export, eval JSON, encode, decode, resume."""

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arm.ar.lm_module import save_lm
from arm.ar.model import ARConfig, ARDecoder
from arm.data.shapeworld.writer import write_world
from arm.data.text_tokenizer import build_text_tokenizer
from arm.teacher.model import DualEncoder, TeacherConfig, save_teacher
from arm.tokenizer.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments/tokenizer/tiny.yaml")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny world, its text tokenizer, and randomly initialised (untrained) teacher and caption LM exports."""
    root = tmp_path_factory.mktemp("tok")
    world = root / "world"
    write_world(str(world), num_train=48, num_val=16, num_test=0, seed=0, shard_size=16, workers=1, bench=False,
                progress=False)
    tok_path = root / "tokenizer.json"
    info = build_text_tokenizer(str(world), str(tok_path), vocab_size=300)
    torch.manual_seed(0)
    tcfg = TeacherConfig(image_dim=32, image_layers=1, image_heads=2, text_dim=32, text_layers=1, text_heads=2,
                         embed_dim=32, vocab_size=info["vocab_size"])
    save_teacher(DualEncoder(tcfg), tcfg, str(root / "teacher"), str(tok_path))
    lm = ARDecoder(ARConfig(text_vocab_size=info["vocab_size"], dim=32, num_layers=1, num_heads=2, num_kv_heads=2,
                            mlp_hidden=64, max_seq_len=160))
    save_lm(lm, str(root / "lm"), str(tok_path))
    return root


def _fit_args(parts, out, *extra):
    return ["fit", "--config", TINY, "--data.data_dir", str(parts / "world"),
            "--model.teacher_dir", str(parts / "teacher"), "--model.lm_dir", str(parts / "lm"),
            "--trainer.default_root_dir", str(out), *extra]


@pytest.fixture(scope="module")
def export(parts, tmp_path_factory) -> Path:
    """The tiny tokenizer trained with all four losses (tiny.yaml) and exported by fit."""
    out = tmp_path_factory.mktemp("run")
    assert main(_fit_args(parts, out)) == 0
    return out / "tokenizer"


def _eval_args(parts, export, report, *extra):
    return ["eval", "--ckpt", str(export), "--data", str(parts / "world"), "--out", str(report), "--num-val", "16",
            "--num-probe-train", "32", "--recon-images", "4", "--steps", "2", "--batch-size", "8", *extra]


def test_fit_export_eval_encode_decode(parts, export, tmp_path):
    assert (export / "model.safetensors").is_file() and (export / "config.json").is_file()

    report = tmp_path / "eval.json"
    assert main(_eval_args(parts, export, report)) == 0
    metrics = json.loads(report.read_text())
    for key in ("psnr", "ssim", "code_usage", "code_perplexity", "zero_shot_acc", "probe_acc", "caption_ppl",
                "semantic_recon_acc", "fd_teacher"):
        assert key in metrics, key
    assert 0 < metrics["code_usage"] <= 1 and metrics["code_perplexity"] >= 1
    # the breakdown of semantic_recon_acc: a recall and a count for each "class_size" among the reconstructed objects
    assert 0 <= metrics["recon_background_acc"] <= 1
    assert set(metrics["recon_object_recall"]) == set(metrics["recon_objects"])
    assert all(0 <= v <= 1 for v in metrics["recon_object_recall"].values())
    levels = json.loads((export / "config.json").read_text())["tokenizer_config"]["levels"]
    occupancy = metrics["level_occupancy"]  # per FSQ channel, the share of val tokens at each level
    assert [len(channel) for channel in occupancy] == levels
    assert all(abs(sum(channel) - 1) < 1e-3 for channel in occupancy)
    # a code is used only if each of its digits is: used codes <= the product of each channel's used levels
    used_codes = round(metrics["code_usage"] * math.prod(levels))
    assert used_codes <= math.prod(sum(v > 0 for v in channel) for channel in occupancy)
    assert "rfid" not in metrics  # no Inception weights configured: never call the teacher FD an FID
    assert metrics["readout"] == "head"  # tiny.yaml trains L_sig, so its sigmoid head is what zero-shot reads
    # The export records the YAML's val_decode_steps / val_cfg_scale, and eval decodes with them unless told
    assert json.loads((export / "config.json").read_text())["decode"] == {"steps": 2, "cfg": 2.0}
    assert (metrics["decode_steps"], metrics["decoder_cfg"]) == (2, 2.0)

    forced = tmp_path / "eval_teacher.json"
    assert main(_eval_args(parts, export, forced, "--readout", "teacher", "--cfg", "1")) == 0
    forced_report = json.loads(forced.read_text())
    assert forced_report["readout"] == "teacher" and forced_report["decoder_cfg"] == 1.0

    codes_dir = tmp_path / "codes"
    assert main(["encode", "--ckpt", str(export), "--shards", str(parts / "world" / "val"),
                 "--out", str(codes_dir), "--batch-size", "8"]) == 0
    import webdataset as wds

    samples = list(wds.tarfile_samples([{"url": str(p)} for p in sorted(codes_dir.glob("*.tar"))]))
    assert len(samples) == 16

    codes = np.load(io.BytesIO(samples[0]["codes.npy"]))
    assert codes.shape == (64,) and codes.min() >= 0 and codes.max() < 4 * 4 * 3
    assert "edit_codes.npy" in samples[0] and "json" in samples[0]

    # The per-code colour table counts every patch encoded (images and edited images, 64 codes each) and holds,
    # for each code, the mean palette share of its patches, recomputed here from the written codes.
    from safetensors.torch import load_file

    from arm.data.samples import decode_image
    from arm.tokenizer.code_colours import load_code_colours, palette_from_spec, patch_palette_shares

    sources = {s["__key__"]: s for s in wds.tarfile_samples(
        [{"url": str(p)} for p in sorted((parts / "world" / "val").glob("*.tar"))])}
    all_codes, all_images = [], []
    for s in samples:
        for codes_key, image_key in (("codes.npy", "png"), ("edit_codes.npy", "edit.png")):
            if codes_key in s:
                all_codes.append(np.load(io.BytesIO(s[codes_key])))
                all_images.append(decode_image(sources[s["__key__"]][image_key]))
    table = load_file(str(codes_dir / "code_colours.safetensors"))
    assert float(table["count"].sum()) == 64 * len(all_codes)
    histogram = load_code_colours(codes_dir, 48)
    shares = patch_palette_shares(torch.stack(all_images), palette_from_spec("shapeworld"), (8, 8)).reshape(-1, 13)
    flat = torch.as_tensor(np.concatenate(all_codes)).long()
    used = flat.unique()
    for code in used.tolist():
        torch.testing.assert_close(histogram[code], shares[flat == code].mean(0))
    torch.testing.assert_close(histogram[used].sum(1), torch.ones(len(used)))
    assert float(histogram[[c for c in range(48) if c not in set(used.tolist())]].abs().sum()) == 0

    # --precision bf16 writes what the bundle's encode gives under bf16 autocast (FSQ itself stays fp32).
    from arm.tokenizer.model import TokenizerBundle

    bf16_dir = tmp_path / "codes_bf16"
    assert main(["encode", "--ckpt", str(export), "--shards", str(parts / "world" / "val"),
                 "--out", str(bf16_dir), "--batch-size", "8", "--precision", "bf16"]) == 0
    bf16_samples = list(wds.tarfile_samples([{"url": str(p)} for p in sorted(bf16_dir.glob("*.tar"))]))
    bundle = TokenizerBundle.load(str(export))
    assert bundle.decode_defaults == {"steps": 2, "cfg": 2.0}
    from arm.tokenizer.model import DEFAULT_DECODE, save_tokenizer

    assert TokenizerBundle(bundle.teacher, bundle.tokenizer).decode_defaults == DEFAULT_DECODE  # an older export
    with pytest.raises(ValueError, match="decoding needs steps >= 1"):
        save_tokenizer(bundle.tokenizer, str(tmp_path / "bad"), str(parts / "teacher"), None, decode={"steps": 0})
    assert bundle.decode_settings() == (2, 2.0) and bundle.decode_settings(5, 1.0) == (5, 1.0)
    with pytest.raises(ValueError, match="CFG scale >= 0"):
        bundle.decode_settings(cfg_scale=-1.0)
    images = torch.stack([decode_image(s["png"]) for s in list(sources.values())[:8]])  # the first 8, shard order
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = bundle.encode(images).numpy()
    got = np.stack([np.load(io.BytesIO(s["codes.npy"])) for s in bf16_samples[:8]])
    np.testing.assert_array_equal(got, expected)

    np.save(tmp_path / "c.npy", np.stack([codes, codes]))
    assert main(["decode", "--ckpt", str(export), "--codes", str(tmp_path / "c.npy"), "--out",
                 str(tmp_path / "png"), "--steps", "2"]) == 0
    assert len(list((tmp_path / "png").glob("*.png"))) == 2


def test_zero_weight_removes_branch(parts, monkeypatch):
    from arm.tokenizer.module import TokenizerModule

    module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_pix=0.0)
    called = []
    monkeypatch.setattr(module.model.decoder, "loss", lambda *a, **k: called.append(1))
    parts_, _, _ = module.losses(torch.rand(2, 3, 64, 64), ["a red circle", "a blue square"])
    assert set(parts_) == {"sig", "feat"} and not called
    assert module.lm is None  # no LM loaded when L_cap is off
    assert module.model.config.readout == "head"
    # Without L_sig nothing trains the sigmoid head: zero-shot and the probes read z_q the teacher's way.
    no_sig = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_sig=0.0)
    assert no_sig.model.config.readout == "teacher"


def test_decoder_lr_scale_sets_the_pixel_decoders_rate_only(parts):
    from arm.tokenizer.module import TokenizerModule

    module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, lr=2e-3,
                             warmup_steps=0, decoder_lr_scale=2.5)
    opt = module.configure_optimizers()["optimizer"]
    decoder = {id(p) for p in module.model.decoder.parameters()}
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert set(rate) == {id(p) for p in module.model.parameters() if p.requires_grad}  # teacher stays out
    for p in module.model.parameters():
        assert rate[id(p)] == pytest.approx(2e-3 * (2.5 if id(p) in decoder else 1.0))


def test_decoder_phase_lr_scale_raises_the_decoder_phases_rate_only(parts):
    """Over 20 steps with a 5-step decoder phase: the joint phase's rates are those of the unscaled run, the phase's
    ``decoder_phase_lr_scale`` times them."""
    from types import SimpleNamespace

    from arm.tokenizer.module import TokenizerModule

    scale = float(np.random.default_rng().uniform(1.5, 4.0))

    def rates(**kw) -> list[list[float]]:
        module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, warmup_steps=2,
                                 decoder_steps=5, **kw)
        module._trainer = SimpleNamespace(max_steps=20)
        sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(20):
            out.append([g["lr"] for g in sched.optimizer.param_groups])
            sched.optimizer.step()
            sched.step()
        return out

    plain, scaled = rates(), rates(decoder_phase_lr_scale=scale)
    assert scaled[:15] == plain[:15]
    assert scaled[15:] == [pytest.approx([scale * r for r in row]) for row in plain[15:]]
    with pytest.raises(ValueError, match="decoder_phase_lr_scale must be > 0"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, decoder_phase_lr_scale=0.0)


def test_caption_batch_feeds_the_lm_a_subset_in_training_only(parts, monkeypatch):
    import arm.ar.model as ar_model
    from arm.tokenizer.module import TokenizerModule

    module = TokenizerModule(str(parts / "teacher"), lm_dir=str(parts / "lm"), levels=[4, 4, 3], w_pix=0.0,
                             caption_batch=3)
    seen, real = [], ar_model.prefix_caption_loss
    monkeypatch.setattr(ar_model, "prefix_caption_loss", lambda lm, prefix, ids, mask: (
        seen.append((prefix.shape[0], ids.shape[0])), real(lm, prefix, ids, mask))[1])
    captions = ["a red circle", "a blue square", "a green star", "a gray cross", "a pink diamond"]
    images = torch.rand(5, 3, 64, 64)
    module.train()
    train_parts, _, _ = module.losses(images, captions)
    module.eval()
    with torch.no_grad():
        val_parts, _, _ = module.losses(images, captions)
        first3, _, _ = module.losses(images[:3], captions[:3])
    assert seen == [(3, 3), (5, 5), (3, 3)]
    # The training loss is the full-batch loss of the first three samples (same weights, no dropout in L_cap).
    torch.testing.assert_close(train_parts["cap"].detach(), first3["cap"])
    assert torch.isfinite(val_parts["cap"])


def test_pix_repeats_draws_several_noises_per_image_in_training_only(parts):
    """``pix_repeats`` k: in training L_pix is the decoder's loss on the batch repeated k times (each copy its own
    noise, time and condition dropout, drawn in one call); validation draws once per image."""
    from arm.tokenizer.module import TokenizerModule

    k = int(np.random.default_rng().integers(2, 5))
    module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_sig=0.0,
                             w_feat=0.0, w_pix=1.0, pix_repeats=k, cond_drop_prob=0.5)
    images, captions = torch.rand(3, 3, 64, 64), ["a red circle", "a blue square", "a green star"]
    decoder = module.model.decoder
    with torch.no_grad():
        z_q, _, _ = module.model.quantize_scaled(module.teacher.patch_features(images), 1.0)
    for training, copies in ((True, k), (False, 1)):
        module.train(training)
        seed = int(torch.randint(0, 2**31, ()))
        torch.manual_seed(seed)
        with torch.no_grad():
            got = module.losses(images, captions)[0]["pix"]
        torch.manual_seed(seed)
        with torch.no_grad():
            expected = decoder.loss(images.repeat(copies, 1, 1, 1), z_q.repeat(copies, 1, 1), 0.5)
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="pix_repeats must be >= 1"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, pix_repeats=0)


def test_decoder_phase_computes_the_pixel_loss_alone_without_gradients_into_the_codes(parts, monkeypatch):
    """The decoder phase's loss is L_pix on the batch repeated ``pix_repeats`` times with z_q as ``quantize`` gives
    it (same noise draws); the caption LM and the text tower are not run, and no gradient reaches the projection."""
    import arm.ar.model as ar_model
    from arm.tokenizer.module import TokenizerModule

    module = TokenizerModule(str(parts / "teacher"), lm_dir=str(parts / "lm"), levels=[4, 4, 3], pix_repeats=2,
                             cond_drop_prob=0.5, decoder_steps=3)
    monkeypatch.setattr(ar_model, "prefix_caption_loss", lambda *a: pytest.fail("the caption LM ran"))
    monkeypatch.setattr(module.teacher, "embed_texts", lambda *a: pytest.fail("the text tower ran"))
    images = torch.rand(3, 3, 64, 64)
    module.train()
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    got = module.decoder_phase_losses(images)
    with torch.no_grad():
        z_q, _ = module.model.quantize(module.teacher.patch_features(images), images)
    torch.manual_seed(seed)
    expected = module.model.decoder.loss(images.repeat(2, 1, 1, 1), z_q.repeat(2, 1, 1), 0.5)
    assert set(got) == {"pix"}
    torch.testing.assert_close(got["pix"].detach(), expected.detach())
    got["pix"].backward()
    assert all(p.grad is None for p in module.model.projection.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.decoder.parameters())
    with pytest.raises(ValueError, match="decoder_steps must be >= 0"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, decoder_steps=-1)


def test_colour_loss_reads_each_tokens_mean_colour_and_reaches_the_codes(parts):
    """``w_colour``: L_colour is the MSE of the linear head on z_q against each 8 x 8 patch's mean colour in [-1, 1]
    (avg-pooled by hand), or with ``colour_target="image"`` of the head on the mean-pooled z_q against the image's
    mean colour, or with ``"plain"`` of each token against its patch's colour over the flat patches only; its
    gradient reaches the projection's encoder, the head trains with the rest, and 0 builds no head and computes
    nothing."""
    from arm.tokenizer.module import TokenizerModule

    module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_sig=0.0, w_feat=0.0,
                             w_pix=0.0, w_colour=3.0)
    images = torch.rand(2, 3, 64, 64)
    module.train()
    got, z_q, _ = module.losses(images, ["a red circle"] * 2)
    assert set(got) == {"colour"}
    expected = F.mse_loss(module.colour_head(z_q), F.avg_pool2d(images * 2 - 1, 8).flatten(2).transpose(1, 2))
    torch.testing.assert_close(got["colour"], expected)
    got["colour"].backward()
    assert module.model.projection.enc_in.weight.grad.abs().sum() > 0
    optimised = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert {id(p) for p in module.colour_head.parameters()} <= optimised
    whole = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_sig=0.0, w_feat=0.0,
                            w_pix=0.0, w_colour=1.0, colour_target="image")
    got, z_q, _ = whole.losses(images, ["a red circle"] * 2)
    expected = F.mse_loss(whole.colour_head(z_q.mean(dim=1)), (images * 2 - 1).mean(dim=(2, 3)))  # (B, 3) each
    torch.testing.assert_close(got["colour"], expected)
    # "plain": flat patches only. Every 8 x 8 patch one random colour, then noise over one patch in three.
    flat_images = F.interpolate(0.6 * torch.rand(2, 3, 8, 8), scale_factor=8, mode="nearest")  # room for noise
    noisy = torch.rand(2, 64) < 1 / 3
    noise = F.interpolate(noisy.reshape(2, 1, 8, 8).float(), scale_factor=8, mode="nearest") * torch.rand(2, 3, 64, 64)
    flat_images = (flat_images + 0.3 * noise).clamp(0, 1)
    only = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_sig=0.0, w_feat=0.0,
                           w_pix=0.0, w_colour=1.0, colour_target="plain")
    got, z_q, _ = only.losses(flat_images, ["a red circle"] * 2)
    means = F.avg_pool2d(flat_images * 2 - 1, 8).flatten(2).transpose(1, 2)  # (B, 64, 3)
    keep = ~noisy
    expected = F.mse_loss(only.colour_head(z_q)[keep], means[keep])
    torch.testing.assert_close(got["colour"], expected)
    assert 0 < int(keep.sum()) < 128
    assert float(only.losses(images, ["a red circle"] * 2)[0]["colour"]) == 0.0  # noise: no flat patch, 0 not NaN
    plain = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0)
    assert plain.colour_head is None and "colour" not in plain.losses(images, ["a red circle"] * 2)[0]
    with pytest.raises(ValueError, match="w_colour must be >= 0"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, w_colour=-1.0)
    from arm.tokenizer.pixel_decoder import PixelDiTConfig

    with pytest.raises(ValueError, match=r"256 patches against 64 tokens; set model.decoder.patch_size"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, w_colour=1.0,
                        decoder=PixelDiTConfig(image_size=64, patch_size=4, dim=48, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match="colour_target must be 'patch'"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, w_colour=1.0, colour_target="pixel")


def test_decoder_phase_times_replace_the_decoders_times_in_that_phase_only(parts):
    """``decoder_phase_times`` [m, s]: the decoder phase's L_pix draws its times from logit-normal(m, s) (the same
    loss as the decoder's with that override, same noise), while the joint phase keeps the decoder's own law; a
    malformed pair is refused."""
    from arm.tokenizer.module import TokenizerModule

    times = [round(float(torch.empty(()).uniform_(-1, 1)), 3), round(float(torch.empty(()).uniform_(0.5, 1.5)), 3)]
    module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_sig=0.0, w_feat=0.0,
                             pix_repeats=1, decoder_steps=3, decoder_phase_times=times)
    images = torch.rand(3, 3, 64, 64)
    module.train()
    seen, original = [], module.model.decoder.sample_t

    def recording(batch, device, generator=None, logit_normal=None):
        seen.append(logit_normal)
        return original(batch, device, generator, logit_normal)

    module.model.decoder.sample_t = recording
    seed = int(torch.randint(0, 2**31, ()))
    torch.manual_seed(seed)
    got = module.decoder_phase_losses(images)["pix"]
    with torch.no_grad():
        z_q, _ = module.model.quantize(module.teacher.patch_features(images), images)
    torch.manual_seed(seed)
    expected = module.model.decoder.loss(images, z_q, module.hparams.cond_drop_prob, logit_normal=tuple(times))
    torch.testing.assert_close(got.detach(), expected.detach(), msg=f"times {times}, seed {seed}")
    module.losses(images, ["a red circle"] * 3)  # the joint phase
    assert seen[0] == tuple(times) and seen[-1] is None, seen
    for bad in ([0.0], [0.0, 0.0], [0.0, 1.0, 2.0]):
        with pytest.raises(ValueError, match=r"decoder_phase_times is the decoder phase's logit-normal \[mean, std\]"):
            TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, decoder_phase_times=bad)


def test_compile_blocks_matches_eager_and_leaves_sampling_and_exports_alone(parts):
    """``compile_blocks``: the projection's and the pixel decoder's blocks run compiled in training, with the same
    losses and gradients as eager; the decoder samples with its eager blocks; the state dict is unchanged; and the
    option is refused under FSDP2."""
    from arm.tokenizer.module import TokenizerModule

    module = TokenizerModule(str(parts / "teacher"), lm_dir=str(parts / "lm"), levels=[4, 4, 3], compile_blocks=True,
                             cond_drop_prob=0.0)
    keys = set(module.state_dict())
    module.configure_model()
    stacks = module.compiled_stacks()
    assert [len(s.compiled_blocks) for s in stacks] == [len(s.blocks) for s in stacks]
    assert set(module.state_dict()) == keys
    gen = torch.Generator().manual_seed(int(torch.randint(0, 10_000, ()).item()))
    images = torch.rand(3, 3, 64, 64, generator=gen)
    captions = ["a red circle", "a blue square", "a green star"]

    def losses_and_grads(compiled: bool) -> tuple[dict, dict]:
        saved = [s.compiled_blocks for s in stacks]
        if not compiled:
            for s in stacks:
                s.compiled_blocks = None
        module.train()
        module.zero_grad()
        torch.manual_seed(7)  # the decoder's noise and times
        out, _, _ = module.losses(images, captions)
        module._total(out).backward()
        for s, blocks in zip(stacks, saved):
            s.compiled_blocks = blocks
        return ({k: v.detach() for k, v in out.items()},
                {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})

    (compiled, compiled_grads), (eager, eager_grads) = losses_and_grads(True), losses_and_grads(False)
    for key in eager:
        torch.testing.assert_close(compiled[key], eager[key], atol=1e-4, rtol=1e-4)
    assert compiled_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], atol=1e-4, rtol=1e-3)
    # Sampling (eval mode) never calls the compiled decoder blocks.
    decoder = module.model.decoder
    calls = []
    decoder.compiled_blocks = [lambda h, c, block=b: (calls.append(1), block(h, c))[1] for b in decoder.blocks]
    module.eval()
    decoder.sample(torch.randn(2, 64, module.model.config.feature_dim), steps=2)
    assert not calls
    module.train()
    decoder.loss(images, torch.randn(3, 64, module.model.config.feature_dim))
    assert len(calls) == len(decoder.blocks)
    module._device_mesh = object()  # as under ModelParallelStrategy
    with pytest.raises(ValueError, match="compile_blocks is single-process only"):
        module.configure_model()


def test_sig_queue_adds_earlier_captions_as_negatives_in_training_only(parts):
    from arm.tokenizer.module import TokenizerModule

    torch.manual_seed(0)
    module = TokenizerModule(str(parts / "teacher"), lm_dir=None, levels=[4, 4, 3], w_cap=0.0, w_pix=0.0,
                             w_feat=0.0, sig_queue=3)
    batches = [(torch.rand(2, 3, 64, 64), captions) for captions in
               (["a red circle", "a blue square"], ["a green star", "a gray cross"], ["a pink diamond", "a red star"])]

    def by_hand(images, captions, negatives):
        """SigLIP's loss written out: +1 for each image's own caption, -1 for the other captions and every negative."""
        with torch.no_grad():
            feats = module.teacher.patch_features(images)
            z_q, _, _ = module.model.quantize_scaled(feats, 1.0)
            img = module.model.pooled_embedding(z_q)
            texts = torch.cat([module.teacher.embed_texts(captions), *negatives])
            logits = module.model.logit_scale.exp() * img @ texts.T + module.model.logit_bias
            labels = -torch.ones_like(logits)
            labels[:, : len(captions)] += 2 * torch.eye(len(captions))
            return -torch.nn.functional.logsigmoid(labels * logits).sum() / len(captions)

    module.train()
    queued: list[torch.Tensor] = []
    for images, captions in batches:
        expected = by_hand(images, captions, [torch.cat(queued)[:3]] if queued else [])
        got, _, _ = module.losses(images, captions)
        torch.testing.assert_close(got["sig"].detach(), expected)
        with torch.no_grad():
            queued.insert(0, module.teacher.embed_texts(captions))  # newest first, at most sig_queue kept
    torch.testing.assert_close(module._text_queue, torch.cat(queued)[:3])
    # Validation scores a batch against its own captions only, and leaves the queue alone.
    module.eval()
    before = module._text_queue.clone()
    with torch.no_grad():
        val, _, _ = module.losses(*batches[0])
    torch.testing.assert_close(val["sig"], by_hand(*batches[0], []))
    assert torch.equal(module._text_queue, before)


def test_bad_inputs_are_one_line_errors(parts, tmp_path, capsys):
    from arm.tokenizer.module import TokenizerModule

    with pytest.raises(FileNotFoundError, match="arm teacher fit"):
        TokenizerModule(str(tmp_path / "no-teacher"))
    with pytest.raises(ValueError, match="needs a caption LM"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None)
    with pytest.raises(ValueError, match=r"semantic_grad_scale must lie in \[0, 1\]"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, semantic_grad_scale=1.5)
    with pytest.raises(ValueError, match="caption_batch must be >= 0"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, caption_batch=-1)
    with pytest.raises(ValueError, match="sig_queue"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, sig_queue=-1)
    with pytest.raises(ValueError, match="decoder_lr_scale must be > 0"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None, w_cap=0.0, decoder_lr_scale=0.0)
    with pytest.raises(ValueError, match="decoder.image_size"):
        from arm.tokenizer.pixel_decoder import PixelDiTConfig

        TokenizerModule(str(parts / "teacher"), w_cap=0, decoder=PixelDiTConfig(image_size=32))
    module = TokenizerModule(str(parts / "teacher"), w_cap=0, levels=[4, 4, 3])
    with pytest.raises(ValueError, match="set model.decoder.image_size to the data's image size"):
        module.losses(torch.rand(2, 3, 32, 32), ["a", "b"])
    assert main(["decode", "--ckpt", str(tmp_path / "nothing"), "--codes", str(tmp_path / "none.npy"),
                 "--out", str(tmp_path)]) == 2
    assert "no codes file" in capsys.readouterr().err


def test_resume_from_last_checkpoint(parts, tmp_path):
    out = tmp_path / "resume"
    ckpt_args = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
                 "--trainer.callbacks.save_last=true", "--trainer.callbacks.every_n_train_steps=2",
                 "--trainer.callbacks.dirpath", str(out / "ckpt")]
    assert main(_fit_args(parts, out, "--trainer.max_steps", "2", *ckpt_args)) == 0
    last = out / "ckpt" / "last.ckpt"
    assert last.is_file()
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert not any(k.startswith("teacher.") for k in state["state_dict"])  # frozen parts are not checkpointed
    assert main(_fit_args(parts, out, "--trainer.max_steps", "4", *ckpt_args, "--ckpt_path", str(last))) == 0
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    shutil.rmtree(out)


def test_decoder_steps_train_the_pixel_decoder_alone_at_the_end(parts, tmp_path, capsys):
    """``decoder_steps`` 2 of 4: between the checkpoints of steps 2 and 4 only the pixel decoder's weights move (the
    codes are final); in a joint run the rest moves over the same steps too, so the check is not vacuous."""
    def fit(name: str, *extra: str) -> dict[str, dict[str, torch.Tensor]]:
        out = tmp_path / name
        ckpt = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
                "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.every_n_train_steps=2",
                "--trainer.callbacks.dirpath", str(out / "ckpt"), "--model.export", "false"]
        assert main(_fit_args(parts, out, "--trainer.max_steps", "4", *ckpt, *extra)) == 0
        files = {step: next((out / "ckpt").glob(f"*step={step}.ckpt")) for step in (2, 4)}
        return {step: torch.load(f, map_location="cpu", weights_only=True)["state_dict"] for step, f in files.items()}

    def moved(states: dict) -> set[str]:
        return {k for k, v in states[2].items() if not torch.equal(v, states[4][k])}

    phased, joint = moved(fit("phased", "--model.decoder_steps", "2")), moved(fit("joint"))
    assert phased and all(k.startswith("model.decoder.") for k in phased)
    assert any(k.startswith("model.projection.") for k in joint)
    assert main(_fit_args(parts, tmp_path / "long", "--model.decoder_steps", "4")) == 2  # all 4 steps: no joint phase
    assert "needs a longer run" in capsys.readouterr().err


def test_a_run_resumed_from_a_checkpoint_file_keeps_its_configured_model_options(parts, tmp_path, capsys):
    """A run of 2 joint steps resumed from its checkpoint file to 4 steps with ``decoder_steps`` 2 trains steps 2-3
    as the decoder phase, as ``--ckpt_path last`` would (Lightning alone takes the checkpoint's ``decoder_steps``
    0 for a file, and the projection would move), and names the changed option on stderr."""
    out = tmp_path / "run"
    ckpt = ["--trainer.enable_checkpointing", "true", "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.every_n_train_steps=2",
            "--trainer.callbacks.dirpath", str(out / "ckpt"), "--model.export", "false"]
    assert main(_fit_args(parts, out, "--trainer.max_steps", "2", *ckpt)) == 0
    first = next((out / "ckpt").glob("*step=2.ckpt"))
    capsys.readouterr()
    assert main(_fit_args(parts, out, "--trainer.max_steps", "4", "--model.decoder_steps", "2", *ckpt,
                          "--ckpt_path", str(first))) == 0
    assert "model.decoder_steps=2 (checkpoint: 0)" in capsys.readouterr().err
    states = [torch.load(f, map_location="cpu", weights_only=True)
              for f in (first, next((out / "ckpt").glob("*step=4.ckpt")))]
    assert states[1]["hyper_parameters"]["decoder_steps"] == 2
    moved = {k for k, v in states[0]["state_dict"].items() if not torch.equal(v, states[1]["state_dict"][k])}
    assert moved and all(k.startswith("model.decoder.") for k in moved)


def _small_clip_file(path: Path) -> Path:
    """A randomly initialised OpenAI CLIP ViT (32 px input, 16 px patches: 4 patch features of width 64; text width
    64, so the default 64-wide heads fit), saved as a plain state dict."""
    from clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)
    torch.save(model.float().state_dict(), path)
    return path


def test_clip_teacher_file_trains_with_the_decoder_at_the_data_resolution(parts, tmp_path):
    from arm.tokenizer.model import TokenizerBundle

    clip_path = _small_clip_file(tmp_path / "clip.pt")
    out = tmp_path / "clip_run"
    # 64 px data and pixel decoder (tiny.yaml) around a 32 px CLIP teacher, no caption LM.
    assert main(["fit", "--config", TINY, "--data.data_dir", str(parts / "world"), "--model.teacher_dir",
                 str(clip_path), "--model.lm_dir", "null", "--model.w_cap", "0", "--trainer.max_steps", "3",
                 "--trainer.limit_val_batches", "1", "--trainer.default_root_dir", str(out)]) == 0
    bundle = TokenizerBundle.load(str(out / "tokenizer"))
    assert bundle.teacher.config.image_size == 32 and bundle.image_size == 64
    images = torch.rand(2, 3, 64, 64)
    codes = bundle.encode(images)
    assert codes.shape == (2, 4) and int(codes.max()) < 4 * 4 * 3
    assert bundle.decode(codes, steps=2).shape == (2, 3, 64, 64)


def test_eval_with_inception_weights_reports_rfid_and_writes_reconstruction_pngs(parts, export, tmp_path):
    from arm.data.datamodule import ShapeWorldStream
    from arm.data.samples import expand_shards
    from arm.eval.figures_io import read_png
    from tests.unit.test_tokenizer_metrics import write_random_inception

    weights = write_random_inception(tmp_path / "inception.pt")
    report = tmp_path / "out" / "eval.json"
    assert main(_eval_args(parts, export, report, "--inception-weights", weights)) == 0
    metrics = json.loads(report.read_text())
    assert np.isfinite(metrics["rfid"]) and metrics["rfid"] >= -1e-6 and "fd_teacher" in metrics
    # the reconstructions of the first val images, beside the JSON, for `arm figures`
    recon = tmp_path / "out" / "recon"
    assert metrics["recon_dir"] == str(recon)
    assert sorted(p.name for p in recon.iterdir()) == [f"{kind}-{i:04d}.png" for kind in ("orig", "recon")
                                                      for i in range(4)]
    first = next(iter(ShapeWorldStream(expand_shards(str(parts / "world" / "val")), task="scene", batch_size=4)))
    for i, image in enumerate(first["image"]):  # originals are the val images in stream order, as uint8 HWC
        expected = (image.permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(read_png(recon / f"orig-{i:04d}.png"), expected)
        assert read_png(recon / f"recon-{i:04d}.png").shape == (64, 64, 3)


def test_bad_inputs_through_the_commands_are_one_line_errors(parts, export, tmp_path, capsys):
    from arm.data.shapeworld.render import encode_png
    from arm.io import write_json_atomic

    def fails(args, *expected):
        capsys.readouterr()
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()  # progress bars may come first
        assert [line for line in lines if "error" in line.lower()] == lines[-1:], lines
        assert all(text in lines[-1] for text in expected), lines[-1]

    missing = str(tmp_path / "missing")
    fails(_fit_args(parts, tmp_path / "a", "--model.teacher_dir", missing), "arm: error: no teacher at",
          "model.teacher_dir")
    fails(_fit_args(parts, tmp_path / "b", "--model.lm_dir", missing), "arm: error:", "arm lm fit")
    fails(_fit_args(parts, tmp_path / "c", "--model.inception_weights", missing), "no Inception weights")
    fails(_eval_args(parts, export, tmp_path / "e.json", "--inception-weights", missing), "no Inception weights")
    # an export pointed at a teacher with other feature sizes (a CLIP file: 64-wide patch features, not 32)
    other = tmp_path / "other_teacher"
    shutil.copytree(export, other)
    config = json.loads((other / "config.json").read_text())
    write_json_atomic(other / "config.json", {**config, "teacher_dir": str(_small_clip_file(tmp_path / "c.pt"))})
    fails(["encode", "--ckpt", str(other), "--shards", str(parts / "world" / "val"), "--out", str(tmp_path / "x")],
          "trained on a teacher with 32-wide patch features", "use the teacher it was trained with")
    # a shard of 32 px images given to a 64 px tokenizer
    import webdataset as wds

    sample = next(iter(wds.tarfile_samples([{"url": str(sorted((parts / "world" / "val").glob("*.tar"))[0])}])))
    small = tmp_path / "small" / "shard-000000.tar"
    small.parent.mkdir()
    with wds.TarWriter(str(small), encoder=False) as sink:
        sink.write({"__key__": sample["__key__"], "json": sample["json"],
                    "png": encode_png(np.zeros((32, 32, 3), np.uint8))})
    fails(["encode", "--ckpt", str(export), "--shards", str(small.parent), "--out", str(tmp_path / "y")],
          "encodes and decodes 64x64 RGB images", "resize the images to 64x64")
    fails(["encode", "--ckpt", str(export), "--shards", str(parts / "world" / "val"), "--out", str(tmp_path / "z"),
           "--palette", "rainbow"], "unknown palette 'rainbow'", "'grid:L'")
    assert not (tmp_path / "z").exists()  # refused before anything was written
    codes = tmp_path / "codes.npy"
    np.save(codes, np.full((1, 64), 48))  # 4 * 4 * 3 = 48 codes: 48 is one past the last
    fails(["decode", "--ckpt", str(export), "--codes", str(codes), "--out", str(tmp_path / "z")],
          "codes must lie in [0, 48)")


def test_bf16_mixed_trains_the_tiny_twin(parts, tmp_path):
    from tests.integration.fsdp_runs import read_losses, recorder_args

    out = tmp_path / "bf16"
    assert main(_fit_args(parts, out, "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "3",
                          "--trainer.limit_val_batches", "1", *recorder_args(tmp_path / "losses.json"))) == 0
    losses = read_losses(tmp_path / "losses.json")
    assert sorted(losses) == [0, 1, 2] and all(np.isfinite(v) for v in losses.values())
    assert (out / "tokenizer" / "model.safetensors").is_file()


def test_pixel_input_trains_and_the_encode_command_reads_the_pixels(parts, tmp_path):
    """``model.pixel_input``: fit trains the pixel map away from its zero start, and ``arm tokenizer encode`` writes
    the codes of features + pixel patches, recomputed here layer by layer from the export's weights."""
    import webdataset as wds

    from arm.data.samples import decode_image
    from arm.tokenizer.model import TokenizerBundle

    out = tmp_path / "run"
    assert main(_fit_args(parts, out, "--model.pixel_input", "true")) == 0
    bundle = TokenizerBundle.load(str(out / "tokenizer"))
    proj = bundle.tokenizer.projection
    assert bundle.tokenizer.config.pixel_input and float(proj.pix_in.weight.abs().sum()) > 0
    codes_dir = tmp_path / "codes"
    assert main(["encode", "--ckpt", str(out / "tokenizer"), "--shards", str(parts / "world" / "val"),
                 "--out", str(codes_dir), "--batch-size", "8"]) == 0
    written = list(wds.tarfile_samples([{"url": str(p)} for p in sorted(codes_dir.glob("*.tar"))]))
    sources = list(wds.tarfile_samples([{"url": str(p)} for p in sorted((parts / "world" / "val").glob("*.tar"))]))
    images = torch.stack([decode_image(s["png"]) for s in sources[:4]])  # (4, 3, 64, 64)
    with torch.no_grad():
        feats = bundle.teacher.patch_features(images)
        patches = images.reshape(4, 3, 8, 8, 8, 8).permute(0, 2, 4, 1, 3, 5).reshape(4, 64, 192) * 2 - 1
        z = proj.enc_out(proj.encoder(proj.enc_in(feats) + patches @ proj.pix_in.weight.T))
        expected = proj.fsq.codes_to_indices(proj.fsq(z)).numpy()
    got = np.stack([np.load(io.BytesIO(s["codes.npy"])) for s in written[:4]])
    np.testing.assert_array_equal(got, expected)
    report = tmp_path / "eval.json"
    assert main(_eval_args(parts, out / "tokenizer", report)) == 0
    assert 0 < json.loads(report.read_text())["code_usage"] <= 1
