"""``arm lm fit`` on a tiny world: runs through LightningCLI, logs train/loss and val/ppl, exports a loadable LM."""

from __future__ import annotations

import pytest
import torch

from arm.ar.lm_cli import main
from arm.ar.lm_module import encode_captions, load_lm
from arm.ar.model import ARConfig, ARDecoder, lm_loss, prefix_caption_loss
from arm.data.text_tokenizer import TextTokenizer


def _args(root, *extra: str) -> list[str]:
    return ["fit", "--config", "experiments/lm/tiny.yaml", "--data.data_dir", str(root / "world"),
            "--model.tokenizer_path", str(root / "tokenizer.json"), "--trainer.default_root_dir",
            str(root / "run_lm"), *extra]


def test_fast_dev_run(tiny_world):
    main(_args(tiny_world, "--trainer.fast_dev_run", "1", "--model.export", "false"))


def test_fit_logs_and_exports(tiny_world):
    from lightning.pytorch.cli import LightningCLI

    seen = {}
    original = LightningCLI.__init__

    def spy(self, *a, **k):  # keep the trainer to read its logged metrics
        original(self, *a, **k)
        seen["cli"] = self

    LightningCLI.__init__ = spy
    try:
        main(_args(tiny_world))
    finally:
        LightningCLI.__init__ = original
    metrics = seen["cli"].trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/ppl"):
        assert key in metrics, key
    assert float(metrics["val/ppl"]) > 1.0 and float(metrics["val/ppl"]) < 400
    lm, config = load_lm(str(tiny_world / "run_lm" / "lm"))
    assert (tiny_world / "run_lm" / "lm" / "tokenizer.json").is_file()
    trained = seen["cli"].model.model.eval()
    assert config == trained.config and config.text_vocab_size == TextTokenizer.from_file(
        str(tiny_world / "tokenizer.json")).vocab_size
    ids = torch.randint(0, config.text_vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(lm.text_logits(lm(input_ids=ids)), trained.text_logits(trained(input_ids=ids)))


def test_prefix_loss_of_begin_token_is_caption_lm_loss(tiny_world):
    """What L_cap computes with a one-token prefix ``[eos]`` is exactly the caption LM's training loss."""
    tok = TextTokenizer.from_file(str(tiny_world / "tokenizer.json"))
    torch.manual_seed(0)
    lm = ARDecoder(ARConfig.preset("tiny", text_vocab_size=tok.vocab_size, num_image_codes=0,
                                   num_special_tokens=0)).eval()
    ids, mask = encode_captions(tok, ["a red circle above a blue square.", "two green triangles."], 64)
    with torch.no_grad():
        plain = lm_loss(lm, ids, mask)
        prefixed = prefix_caption_loss(lm, lm.embed(ids[:, :1]), ids[:, 1:], mask[:, 1:])
    torch.testing.assert_close(prefixed, plain)


def test_missing_lm_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="arm lm fit --config experiments/lm/shapeworld.yaml"):
        load_lm(str(tmp_path / "nothing"))


def test_print_config_parses_shipped_yamls(capsys):
    for name in ("tiny", "shapeworld"):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", f"experiments/lm/{name}.yaml", "--print_config"])
        assert info.value.code in (0, None)
        assert "model:" in capsys.readouterr().out
