"""The tokenizer stage end to end on a tiny world: fit (four losses), export, eval JSON, encode, decode, resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_fit_export_eval_encode_decode(parts, tmp_path):
    out = tmp_path / "run"
    assert main(_fit_args(parts, out)) == 0
    export = out / "tokenizer"
    assert (export / "model.safetensors").is_file() and (export / "config.json").is_file()

    report = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(export), "--data", str(parts / "world"), "--out", str(report),
                 "--num-val", "16", "--num-probe-train", "32", "--recon-images", "4", "--steps", "2",
                 "--batch-size", "8"]) == 0
    metrics = json.loads(report.read_text())
    for key in ("psnr", "ssim", "code_usage", "code_perplexity", "zero_shot_acc", "probe_acc", "caption_ppl",
                "semantic_recon_acc", "fd_teacher"):
        assert key in metrics, key
    assert 0 < metrics["code_usage"] <= 1 and metrics["code_perplexity"] >= 1
    assert "rfid" not in metrics  # no Inception weights configured: never call the teacher FD an FID

    codes_dir = tmp_path / "codes"
    assert main(["encode", "--ckpt", str(export), "--shards", str(parts / "world" / "val"),
                 "--out", str(codes_dir), "--batch-size", "8"]) == 0
    import webdataset as wds

    samples = list(wds.tarfile_samples([{"url": str(p)} for p in sorted(codes_dir.glob("*.tar"))]))
    assert len(samples) == 16
    import io

    codes = np.load(io.BytesIO(samples[0]["codes.npy"]))
    assert codes.shape == (64,) and codes.min() >= 0 and codes.max() < 4 * 4 * 3
    assert "edit_codes.npy" in samples[0] and "json" in samples[0]

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


def test_bad_inputs_are_one_line_errors(parts, tmp_path, capsys):
    from arm.tokenizer.module import TokenizerModule

    with pytest.raises(FileNotFoundError, match="arm teacher fit"):
        TokenizerModule(str(tmp_path / "no-teacher"))
    with pytest.raises(ValueError, match="needs a caption LM"):
        TokenizerModule(str(parts / "teacher"), lm_dir=None)
    with pytest.raises(ValueError, match="decoder.image_size"):
        from arm.tokenizer.pixel_decoder import PixelDiTConfig

        TokenizerModule(str(parts / "teacher"), w_cap=0, decoder=PixelDiTConfig(image_size=32))
    module = TokenizerModule(str(parts / "teacher"), w_cap=0, levels=[4, 4, 3])
    with pytest.raises(ValueError, match="teacher expects images of shape"):
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
