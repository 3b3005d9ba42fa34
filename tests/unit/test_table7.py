"""Table 7 assembly from hand-made eval rows: the paper's columns beside ours, and ordering notes."""

from arm.tokenizer.table7 import PAPER_ROWS, VARIANTS, markdown, variant_name


def _result(psnrs):
    rows = {}
    for (sig, feat), p in zip(VARIANTS, psnrs):
        rows[variant_name(sig, feat)] = {
            "zero_shot_acc": {"color": 0.5 + 0.4 * sig, "shape": 0.3 + 0.4 * sig + 0.1 * feat},
            "psnr": p, "code_usage": 0.6, "caption_ppl": 2.0, "fd_teacher": 0.1,
            "probe_acc": {"color": 1.0, "shape": 0.9, "count": 0.8}, "semantic_recon_acc": 0.5,
        }
    return {"rows": rows, "paper": {variant_name(*k): v for k, v in PAPER_ROWS.items()}, "seed": 0,
            "git": "abcdef0123456", "date": "2026-11-28", "config": "x.yaml"}


def test_markdown_rows_and_notes():
    # Paper's PSNR order: (sig+feat) 19.6 > (feat) 17.1 > (none) 15.2 > (sig) 9.3.
    text = markdown(_result([15.0, 9.0, 17.0, 19.0]))
    assert "| ✓ | ✓ | 85.0 / 80.2 | 19.0 / 19.6 | 60.0 / 75.6 |" in text
    assert "- PSNR: same order as the paper." in text
    text = markdown(_result([20.0, 9.0, 17.0, 19.0]))
    assert "- PSNR: our order sig0_feat0 > sig1_feat1 > sig0_feat1 > sig1_feat0 differs" in text
    # Zero-shot: ours (sig+feat) 85 > (sig) 80 > (feat) 45 > (none) 40 is the paper's order too.
    assert "- zero-shot: same order as the paper." in text
    # Each row's readout is stated; rows that lack the key (older eval files) read through the head.
    result = _result([15.0, 9.0, 17.0, 19.0])
    for name in ("sig0_feat0", "sig0_feat1"):
        result["rows"][name]["readout"] = "teacher"
    text = markdown(result)
    assert "- zero-shot and probes of sig0_feat0, sig0_feat1: through the teacher's own pooling" in text
    assert "- zero-shot and probes of sig1_feat0, sig1_feat1: through the sigmoid head that L_sig trains." in text


def test_run_table7_trains_each_variant_once_and_writes_both_files(tmp_path, monkeypatch):
    """The orchestration with the demo, the fits and the evals stubbed: every variant's loss weights reach its fit,
    finished variants are not retrained, and both files carry the provenance."""
    import json

    import arm.demo
    import arm.pipeline
    import arm.tokenizer.tools
    from arm.tokenizer.table7 import run_table7

    fits = []
    monkeypatch.setattr(arm.demo, "run_demo", lambda *a, **k: None)

    def fake_fit(stage, config, run_dir, model, data, trainer):
        assert model["decoder_steps"] == 0  # a shortened run trains the joint phase only: the codes the table compares
        fits.append((run_dir.name, model["w_sig"], model["w_feat"], trainer))
        run_dir.mkdir(parents=True)  # as the real fit does
        return 1.5

    def fake_eval(ns):
        # The namespace `arm tokenizer eval` would build, every option included (run_eval reads them all); no
        # --steps / --cfg, so each variant decodes with what its export records (its YAML's val settings).
        assert (ns.num_val, ns.recon_images, ns.steps, ns.cfg, ns.inception_weights) == (1000, 256, None, None, None)
        sig = float("sig1" in ns.ckpt)
        with open(ns.out, "w") as f:
            json.dump({"psnr": 20.0 - sig, "zero_shot_acc": {"color": 0.5 + 0.4 * sig, "shape": 0.5},
                       "code_usage": 0.5, "caption_ppl": 2.0}, f)
        return 0

    monkeypatch.setattr(arm.pipeline, "run_fit", fake_fit)
    monkeypatch.setattr(arm.tokenizer.tools, "run_eval", fake_eval)
    for _ in range(2):  # the second call finds every eval.json and trains nothing
        result = run_table7(out=str(tmp_path), demo=str(tmp_path / "demo"), steps=3)
    budget = {"max_steps": 3, "val_check_interval": 1}  # validated halfway, as the YAML's own budget is
    assert sorted(fits) == [("sig0_feat0", 0.0, 0.0, budget), ("sig0_feat1", 0.0, 1.0, budget),
                            ("sig1_feat0", 5.0, 0.0, budget), ("sig1_feat1", 5.0, 1.0, budget)]
    saved = json.loads((tmp_path / "table7.json").read_text())
    assert saved["rows"]["sig1_feat1"]["psnr"] == 19.0 and saved["rows"]["sig0_feat0"]["train_seconds"] == 1.5
    assert {"git", "date", "seed", "config"} <= set(saved) and saved == json.loads(json.dumps(result))
    assert "| ✓ | ✓ |" in (tmp_path / "table7.md").read_text()
    assert saved["steps"] == 3 and "`experiments/tokenizer/shapeworld.yaml` at 3 joint steps" in (tmp_path / "table7.md").read_text()


def test_demo_table7_holds_the_row_its_yaml_trains(tmp_path):
    import json

    from arm.tokenizer.table7 import demo_table7

    report = {"psnr": 25.3, "code_usage": 0.48, "zero_shot_acc": {"color": 1.0, "shape": 0.9}, "readout": "head"}
    for weights, name in (("w_sig: 5.0\n  w_feat: 1.0", "sig1_feat1"), ("w_sig: 5.0\n  w_feat: 0.0", "sig1_feat0"),
                          ("w_sig: 0.0\n  w_feat: 1.0", "sig0_feat1")):
        config = tmp_path / "tok.yaml"
        config.write_text(f"model:\n  {weights}\n")
        result = demo_table7(report, config, tmp_path / "table7.json", seed=4)
        assert list(result["rows"]) == [name] and result["rows"][name]["psnr"] == 25.3
        assert json.loads((tmp_path / "table7.json").read_text()) == result
        text = markdown(result)
        assert "95.0 / " in text and text.count("| – | – | – |") == 3  # zero-shot mean(1.0, 0.9); three dashed rows
