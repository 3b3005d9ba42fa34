"""An AR export behind the eval harness: ``arm eval all --ckpt <export>`` end to end, determinism, the prompt
formats of ``answer`` / ``loglikelihood`` / ``describe``, one-line errors, and ``arm figures cfg-grid``.

The export is the randomly initialised tiny one of ``test_rl_fit`` (nothing is trained; see ``export`` for its
pixel decoder); the bench is a 4-scene
test split with its bench files, written here from the same world generator as the session's ``tiny_world``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arm.ar.commands import MAX_CAPTION_TOKENS, _text_prefix, answer_questions, fit_text, normalize_answer
from arm.ar.eval_model import MAX_ANSWER_TOKENS
from arm.ar.module import ARModule, load_ar_bundle, save_ar, validation_sampling
from arm.cli import main as arm
from arm.data.shapeworld.render import decode_png
from arm.data.shapeworld.text import caption_objects
from arm.data.shapeworld.writer import write_world
from arm.eval.understanding import CAPTION_OBJECT_KEYS, CAPTION_QUESTION, caption_object_scores
from arm.tokenizer.model import load_tokenizer, save_tokenizer
from tests.integration.test_rl_fit import sft_export  # noqa: F401  (the tiny export fixture)

PROTOCOL_LAYOUT = {  # protocol -> files `arm eval all --limit 3 --n 1` must write under OUT/<protocol>
    "geneval": [f"{i:05d}/{f}" for i in range(3) for f in ("metadata.jsonl", "samples/0000.png")],
    "vqa": [], "mme": [], "pope": ["answers.jsonl"], "caption": [],
}


@pytest.fixture(scope="module")
def export(sft_export, tmp_path_factory):  # noqa: F811
    """``sft_export`` with its pixel decoder's zero-initialised weights (adaLN-Zero gates, final linear) drawn at
    random: a fresh decoder paints flat grey whatever the codes and the noise, which would make every image
    comparison below vacuous."""
    root = tmp_path_factory.mktemp("ar_eval_export")
    bundle = load_ar_bundle(str(sft_export), image_tokenizer=False)
    tokenizer, meta = load_tokenizer(bundle.meta["tokenizer_export"])
    torch.manual_seed(0)
    with torch.no_grad():
        for param in tokenizer.parameters():
            if not param.any():
                param.normal_(0.0, 0.5)
    save_tokenizer(tokenizer, str(root / "tokenizer"), meta["teacher_dir"], meta["lm_dir"])
    save_ar(bundle.model.state_dict(), bundle.model.config, tuple(bundle.meta["grid"]), str(root / "ar"),
            str(sft_export / "tokenizer.json"), str(root / "tokenizer"))
    return root / "ar"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("ar_eval") / "world"
    write_world(str(root), num_train=0, num_val=0, num_test=4, seed=0, shard_size=4, workers=1, bench=True,
                progress=False)
    return root / "bench"


def _eval(export, bench, out, *extra: str) -> dict:
    assert arm(["eval", "all", "--ckpt", str(export), "--data", str(bench), "--out", str(out), "--limit", "3",
                "--n", "1", "--no-progress", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def _images(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_eval_all_layouts_stamps_and_determinism(export, bench, tiny_world, tmp_path, capsys):
    first = _eval(export, bench, tmp_path / "a")
    sha = hashlib.sha256((export / "model.safetensors").read_bytes()).hexdigest()
    assert first["checkpoint_sha256"] == sha
    # This export holds no sampling settings, so they are the validation's of an ARModule built with defaults.
    module = ARModule(str(tiny_world / "tokenizer.json"), num_image_codes=32, image_grid=8, preset="tiny")
    settings = first["config"]["model_settings"]
    assert {k: settings[k] for k in validation_sampling(module.hparams)} == validation_sampling(module.hparams)
    assert settings["text_cfg"] == settings["cfg"] == 2.0  # no val_edit_text_cfg: edits take the text-to-image scale
    own = validation_sampling({**module.hparams, "val_cfg": 6.0, "val_edit_text_cfg": 2.5})
    assert (own["cfg"], own["text_cfg"], own["image_cfg"]) == (6.0, 2.5, 1.25)
    old = {k: v for k, v in module.hparams.items() if k != "val_edit_text_cfg"}  # a run saved before the option
    assert validation_sampling({**old, "val_cfg": 3.0})["text_cfg"] == 3.0
    assert settings["source"].startswith("ARModule defaults") and settings["answer"] == "greedy"
    for protocol in ("geneval", "wise", "gedit", "vqa", "mme", "pope", "caption"):
        assert "skipped" not in first[protocol], protocol
        summary = json.loads((tmp_path / "a" / protocol / "summary.json").read_text())
        assert summary["checkpoint_sha256"] == sha and summary["config"]["model_settings"] == settings
        pope = tmp_path / "a" / "pope" / "data" / "pope.jsonl"  # the bench's `exists` questions, maybe fewer
        assert summary["records"] == (min(3, len(pope.read_text().splitlines())) if protocol == "pope" else 3)
        for name in PROTOCOL_LAYOUT.get(protocol, []):
            assert (tmp_path / "a" / protocol / name).is_file(), (protocol, name)
    wise = [json.loads(line) for line in (bench / "wise.jsonl").read_text().splitlines()[:3]]
    assert sorted(p.name for p in (tmp_path / "a" / "wise").glob("*.png")) == sorted(
        f"{r['prompt_id']}.png" for r in wise)
    gedit = [json.loads(line) for line in (bench / "gedit.jsonl").read_text().splitlines()[:3]]
    for r in gedit:
        folder = tmp_path / "a" / "gedit" / "fullset" / r["task_type"] / "en"
        assert (folder / f"{r['key']}.png").is_file() and (folder / f"{r['key']}_SRCIMG.png").is_file()
    # Outputs come at the tokenizer's side (64 px), as RGB.
    assert decode_png((tmp_path / "a" / "geneval" / "00000" / "samples" / "0000.png").read_bytes()).shape == \
        (64, 64, 3)
    replies = [json.loads(line)["answer"] for line in (tmp_path / "a" / "vqa" / "results.jsonl").read_text().split(
        "\n") if line]
    assert len(replies) == 3 and all(r == r.strip().lower().rstrip(".").strip() for r in replies)
    captions = [json.loads(line) for line in (tmp_path / "a" / "caption" / "results.jsonl").read_text().splitlines()]
    assert all(np.isfinite(c["loglikelihood"]) and c["loglikelihood"] < 0 for c in captions)
    # The bench's captions carry their scenes, so the model's own captions are scored against them.
    records = [json.loads(line) for line in (tmp_path / "a" / "caption" / "data" / "captions.jsonl").read_text(
        ).splitlines()[:3]]
    for row, record in zip(captions, records):
        claimed = [(c, k) for _, c, k in caption_objects(row["generated"])]
        present = [(o["color"], o["class"]) for o in record["scene"]["objects"]]
        assert {k: row[k] for k in CAPTION_OBJECT_KEYS} == caption_object_scores(claimed, present)
    assert first["caption"]["object_f1"]["value"] == pytest.approx(np.mean([c["object_f1"] for c in captions]))

    # The same seed draws byte-identical images (generated, edited); another seed draws other ones.
    _eval(export, bench, tmp_path / "b")
    drawn = ("geneval", "wise", "gedit")
    images = {p: _images(tmp_path / "a" / p) for p in drawn}
    assert images == {p: _images(tmp_path / "b" / p) for p in drawn}
    assert [len(images[p]) for p in drawn] == [3, 3, 2 * 3]  # GEdit: each edit beside its source
    assert arm(["eval", "geneval", "--ckpt", str(export), "--data", str(bench / "geneval.jsonl"), "--out",
                str(tmp_path / "c"), "--limit", "3", "--n", "1", "--seed", "7", "--no-progress"]) == 0
    assert _images(tmp_path / "c") != images["geneval"]
    capsys.readouterr()


def _sequence_logprob(model, ids: list[int], start: int) -> float:
    """Summed log p of ``ids[start:]`` by one plain forward over the whole sequence, text head only."""
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]))[0, start - 1: len(ids) - 1]
        logp = model.text_logits(hidden).float().log_softmax(-1)
    return float(logp[torch.arange(len(ids) - start), torch.tensor(ids[start:])].sum())


def test_formats_settings_and_errors(export, bench, tmp_path):
    from arm.ar.commands import load_for_eval

    model = load_for_eval(str(export), cfg=3.0, top_k=5, batch_size=2)
    assert (model.settings["cfg"], model.settings["top_k"], model.settings["batch_size"]) == (3.0, 5, 2)
    image = decode_png((bench / json.loads((bench / "vqa.jsonl").read_text().splitlines()[0])["image"]).read_bytes())
    small = np.asarray(image[::2, ::2])  # 32 x 32: resized to the tokenizer's 64 px
    codes = model.encode_images([image, small])
    assert [len(c) for c in codes] == [64, 64]
    # log-likelihoods are those of the training sequences' scored part (answer + <eos>, caption + <eos>).
    builder, decoder = model.bundle.builder, model.bundle.model
    ll = model.loglikelihood([image, image], ["What shape is it?", CAPTION_QUESTION], ["a red circle", "two stars"])
    vqa = builder.understanding(codes[0], "What shape is it?", "a red circle")
    caption = builder.caption(codes[0], "two stars")
    expected = [_sequence_logprob(decoder, ex.ids, ex.prompt_len) for ex in (vqa, caption)]
    assert ll == pytest.approx(expected, abs=1e-4)
    # describe: the greedy <caption> sequence (KV cache), re-derived token by token by plain full forwards.
    ids = prompt = builder.caption_prompt(codes[0])
    for _ in range(min(MAX_CAPTION_TOKENS, decoder.config.max_seq_len - len(prompt))):
        with torch.no_grad():
            token = int(decoder.text_logits(decoder(input_ids=torch.tensor([ids]))[0, -1]).argmax())
        if token == builder.eos:
            break
        ids = [*ids, token]
    assert model.describe([image]) == [builder.tokenizer.decode(_text_prefix(ids[len(prompt):],
                                                                             builder.tokenizer.vocab_size)).strip()]
    # think=1: the same caption, then the question after it, answered greedily: re-derived by full forwards.
    thinking = load_for_eval(str(export), think=1)
    caption_text = model.describe([image])[0]
    # A caption longer than the context leaves for the question and the answer is cut to fit.
    room = decoder.config.max_seq_len - MAX_ANSWER_TOKENS - len(builder.vqa_prompt(codes[0], "What shape is it?")) - 2
    caption_text = fit_text(builder.tokenizer, caption_text, room)
    ids = prompt = builder.vqa_prompt(codes[0], "What shape is it?", caption_text)
    assert len(prompt) + MAX_ANSWER_TOKENS <= decoder.config.max_seq_len
    for _ in range(MAX_ANSWER_TOKENS):
        with torch.no_grad():
            token = int(decoder.text_logits(decoder(input_ids=torch.tensor([ids]))[0, -1]).argmax())
        if token == builder.eos:
            break
        ids = [*ids, token]
    reply = builder.tokenizer.decode(_text_prefix(ids[len(prompt):], builder.tokenizer.vocab_size))
    assert thinking.answer([image], ["What shape is it?"]) == [normalize_answer(reply)]
    assert thinking.settings["think"] == 1 and model.settings["think"] == 0
    with pytest.raises(ValueError, match="think is 0"):
        load_for_eval(str(export), think=2)
    # A thought far longer than the context is cut to fit, never an error.
    thought = "a small red circle and " * 200
    long = answer_questions(decoder, builder, codes[:1], ["What shape is it?"], MAX_ANSWER_TOKENS, think=True,
                            thoughts=[thought])
    assert len(long) == 1 and isinstance(long[0], str)
    for room in (0, 1, 17, 40):
        assert len(builder.tokenizer.encode(fit_text(builder.tokenizer, thought, room))) <= room
    assert fit_text(builder.tokenizer, "a small red circle", 40) == "a small red circle"
    # n images per prompt, prompt-major; batch_size 2 splits the 4 rows into two sampler calls.
    drawn = model.generate(["a red circle", "a blue star"], 2, seed=1)
    assert [len(x) for x in drawn] == [2, 2] and drawn[0][0].dtype == np.uint8 and drawn[0][0].shape == (64, 64, 3)
    again = model.generate(["a red circle", "a blue star"], 2, seed=1)
    assert all(np.array_equal(x, y) for xs, ys in zip(drawn, again) for x, y in zip(xs, ys))
    assert not np.array_equal(drawn[0][0], drawn[0][1])  # two draws of one prompt: the generator moved on
    assert len(model.edit([image], ["make it blue"], seed=0)) == 1
    # An export that stores its validation's settings is sampled with them.
    bundle = load_ar_bundle(str(export), image_tokenizer=False)
    stored = {**validation_sampling(), "cfg": 1.5, "decoder_steps": 3}
    save_ar(bundle.model.state_dict(), bundle.model.config, (8, 8), str(tmp_path / "ar"),
            str(export / "tokenizer.json"), bundle.meta["tokenizer_export"], stored)
    settings = load_for_eval(str(tmp_path / "ar")).settings
    assert settings["source"] == "export" and {k: settings[k] for k in stored} == stored
    # Bad input: one line each.
    for bad, match in (([image[:, :40]], "is 40x64 pixels"), ([image.astype(np.float32)], "uint8 RGB")):
        with pytest.raises(ValueError, match=match) as info:
            model.answer(bad, ["?"])
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown sampling setting"):
        load_for_eval(str(export), guidance=2.0)


def test_export_records_its_edit_layout(export, tmp_path):
    """The export's config.json names the edit layout its model was trained on and every loader's builder uses it;
    an export that records none (written before the option) is source first."""
    import json

    from arm.io import CONFIG_FILE

    bundle = load_ar_bundle(str(export), image_tokenizer=False)
    codes = [i % bundle.model.config.num_image_codes for i in range(64)]
    for layout in ("instruction_first", "source_first"):
        save_ar(bundle.model.state_dict(), bundle.model.config, (8, 8), str(tmp_path / layout),
                str(export / "tokenizer.json"), None, edit_layout=layout)
        loaded = load_ar_bundle(str(tmp_path / layout), image_tokenizer=False).builder
        assert loaded.edit_layout == layout
        prompt = loaded.edit_prompt(codes, "make it blue")
        source_at = prompt.index(loaded.layout.image_ids(codes)[0])
        instruction = loaded.tokenizer.encode("make it blue")
        text_at = next(i for i in range(len(prompt)) if prompt[i: i + len(instruction)] == instruction)
        assert (text_at < source_at) == (layout == "instruction_first")
    config = tmp_path / "instruction_first" / CONFIG_FILE
    meta = json.loads(config.read_text())
    del meta["edit_layout"]
    config.write_text(json.dumps(meta))
    assert load_ar_bundle(str(config.parent), image_tokenizer=False).builder.edit_layout == "source_first"


def _generate_then_edit(model, seen: list) -> list:
    """What ``seen`` records over one text-to-image call and one edit call of ``model``."""
    seen.clear()
    model.generate(["a red circle"], 1, seed=0)
    model.edit([np.zeros((64, 64, 3), np.uint8)], ["make it blue"], seed=0)
    return list(seen)


def _save_with_sampling(export, root, samplings: dict) -> None:
    """``export``'s weights re-saved under ``root / name`` with each named sampling record."""
    bundle = load_ar_bundle(str(export), image_tokenizer=False)
    for name, stored in samplings.items():
        save_ar(bundle.model.state_dict(), bundle.model.config, (8, 8), str(root / name),
                str(export / "tokenizer.json"), bundle.meta["tokenizer_export"], stored)


def test_edit_temperature_is_the_edits_own(export, tmp_path, monkeypatch):
    """Edits sample at ``edit_temperature`` and text-to-image at ``temperature``; an export that stores no
    ``edit_temperature`` (written before it existed) edits at its ``temperature``, as it did."""
    import arm.ar.eval_model as eval_model
    from arm.ar.commands import load_for_eval

    seen = []
    real_generate, real_edit = eval_model.generate_codes, eval_model.edit_codes
    monkeypatch.setattr(eval_model, "generate_codes", lambda *a: seen.append(("t2i", a[3].temperature))
                        or real_generate(*a))
    monkeypatch.setattr(eval_model, "edit_codes", lambda *a: seen.append(("edit", a[4].temperature)) or real_edit(*a))
    temperature, edit_temperature = np.random.default_rng().uniform(0.2, 1.5, 2).round(3)

    def run(model) -> list:
        return _generate_then_edit(model, seen)

    _save_with_sampling(export, tmp_path, {
        "new": {**validation_sampling(), "edit_temperature": float(edit_temperature)},
        "old": {k: v for k, v in validation_sampling().items() if k != "edit_temperature"}})
    assert run(load_for_eval(str(tmp_path / "new"))) == [("t2i", 1.0), ("edit", float(edit_temperature))]
    assert run(load_for_eval(str(tmp_path / "new"), temperature=float(temperature))) == [
        ("t2i", float(temperature)), ("edit", float(edit_temperature))]
    assert run(load_for_eval(str(tmp_path / "old"), temperature=float(temperature))) == [
        ("t2i", float(temperature)), ("edit", float(temperature))]
    assert run(load_for_eval(str(tmp_path / "old"), edit_temperature=0.0))[1] == ("edit", 0.0)  # 0 = greedy edits
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        load_for_eval(str(tmp_path / "new"), edit_temperature=-1.0)
    # A run's hparams: the option, or 1 for runs saved before it.
    assert validation_sampling({**_defaults(), "val_edit_temperature": 0.4})["edit_temperature"] == 0.4
    assert validation_sampling({k: v for k, v in _defaults().items() if k != "val_edit_temperature"})[
        "edit_temperature"] == 1.0


def test_edit_decoder_cfg_is_the_edits_own(export, tmp_path, monkeypatch):
    """Edits decode at ``edit_decoder_cfg`` and text-to-image at ``decoder_cfg``; an export that stores no
    ``edit_decoder_cfg`` (written before it existed) decodes its edits at its ``decoder_cfg``, as it did."""
    import arm.ar.eval_model as eval_model
    from arm.ar.commands import load_for_eval

    seen = []
    real_decode = eval_model.AREvalModel._decode
    monkeypatch.setattr(eval_model.AREvalModel, "_decode",
                        lambda self, codes, gen, scale: seen.append(scale) or real_decode(self, codes, gen, scale))
    t2i_scale, edit_scale = np.random.default_rng().uniform(1.1, 4.0, 2).round(3)

    def run(model) -> list:
        return _generate_then_edit(model, seen)

    new = {**validation_sampling(), "decoder_cfg": float(t2i_scale), "edit_decoder_cfg": float(edit_scale)}
    old = {k: v for k, v in new.items() if k != "edit_decoder_cfg"}  # an export written before the setting
    _save_with_sampling(export, tmp_path, {"new": new, "old": old})
    assert run(load_for_eval(str(tmp_path / "new"))) == [float(t2i_scale), float(edit_scale)]
    assert run(load_for_eval(str(tmp_path / "new"), decoder_cfg=1.0)) == [1.0, float(edit_scale)]
    assert run(load_for_eval(str(tmp_path / "old"))) == [float(t2i_scale), float(t2i_scale)]
    assert run(load_for_eval(str(tmp_path / "old"), edit_decoder_cfg=1.0)) == [float(t2i_scale), 1.0]
    # A run's hparams: the options, or 1 for runs saved before them.
    hp = {**_defaults(), "val_decoder_cfg": float(t2i_scale), "val_edit_decoder_cfg": float(edit_scale)}
    assert (validation_sampling(hp)["decoder_cfg"], validation_sampling(hp)["edit_decoder_cfg"]) == (
        float(t2i_scale), float(edit_scale))
    older = {k: v for k, v in _defaults().items() if k not in ("val_decoder_cfg", "val_edit_decoder_cfg")}
    assert (validation_sampling(older)["decoder_cfg"], validation_sampling(older)["edit_decoder_cfg"]) == (1.0, 1.0)


def test_the_validation_grids_decode_text_to_image_and_edits_at_their_own_decoder_cfg(export):
    """``sample_grids``: the t2i grid's images (drawn and ground truth) decode at ``decoder_cfg``, the edit grid's
    (source, edited, target) at ``edit_decoder_cfg``."""
    from arm.ar.commands import sample_grids

    bundle = load_ar_bundle(str(export), image_tokenizer=False)
    seen = []

    class Recorder:  # stands in for the image tokenizer: records each decode call's scale and row count
        def decode(self, codes, steps, scale, generator=None):
            seen.append((scale, codes.shape[0]))
            return torch.zeros(codes.shape[0], 3, 8, 8)

    rng = np.random.default_rng()
    t2i_scale, edit_scale = rng.uniform(1.1, 4.0, 2).round(3)
    codes = [rng.integers(0, bundle.model.config.num_image_codes, 64) for _ in range(3)]
    samples = [{"meta": {"caption": "a red circle"}, "codes": codes[0], "edit_codes": None},
               {"meta": {"caption": "a blue square", "edit": {"instruction": "make it green"}}, "codes": codes[1],
                "edit_codes": codes[2]}]
    grids = sample_grids(bundle.model, bundle.builder, Recorder(), samples, cfg=1.0, image_cfg=1.0, top_k=5,
                         decode_steps=1, generator=torch.Generator().manual_seed(0), decoder_cfg=float(t2i_scale),
                         edit_decoder_cfg=float(edit_scale))
    assert set(grids) == {"t2i", "edit"}
    assert seen == [(float(t2i_scale), 2)] * 2 + [(float(edit_scale), 1)] * 3


def _defaults() -> dict:
    import inspect

    return {n: p.default for n, p in inspect.signature(ARModule.__init__).parameters.items()}


def test_bf16_precision_samples_and_decodes_under_autocast(export, monkeypatch):
    """``precision=bf16``: the sampler packs bf16 matrices and the pixel decoder runs under bf16 autocast, for
    generate and edit alike; images stay uint8 and deterministic; answers stay fp32 (no autocast)."""
    import arm.ar.sampling as sampling
    from arm.ar.commands import load_for_eval

    packed, autocast_seen = [], []
    real_packed = sampling.PackedDecoder

    def spy(body, dtype=torch.float32, *args):
        packed.append(dtype)
        return real_packed(body, dtype, *args)

    monkeypatch.setattr(sampling, "PackedDecoder", spy)
    model = load_for_eval(str(export), precision="bf16", batch_size=4)
    assert model.settings["precision"] == "bf16"
    decoder = model.bundle.image_tokenizer.tokenizer.decoder
    decoder.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    drawn = model.generate(["a red circle", "a blue star"], 1, seed=3)
    again = model.generate(["a red circle", "a blue star"], 1, seed=3)
    assert all(np.array_equal(x[0], y[0]) and x[0].dtype == np.uint8 for x, y in zip(drawn, again))
    model.edit([drawn[0][0]], ["make it blue"], seed=0)
    assert packed == [torch.bfloat16] * 3 and autocast_seen and all(autocast_seen)
    model.answer([drawn[0][0]], ["What shape is it?"])
    assert packed[-1] == torch.float32  # the answer's text sampler: parameters' dtype, no autocast
    fp32 = load_for_eval(str(export))
    assert fp32.settings["precision"] == "fp32"
    packed.clear()
    fp32.generate(["a red circle"], 1, seed=3)
    assert packed == [torch.float32]
    with pytest.raises(ValueError, match="precision must be one of") as info:
        load_for_eval(str(export), precision="fp16")
    assert "\n" not in str(info.value)


def test_eval_sampling_overrides(export, bench, tmp_path, capsys):
    vqa = ["eval", "vqa", "--ckpt", str(export), "--data", str(bench / "vqa.jsonl"), "--limit", "1", "--no-progress"]
    assert arm([*vqa, "--out", str(tmp_path / "v"), "--sampling", "cfg=3", "--sampling", "max_new_tokens=2"]) == 0
    settings = json.loads((tmp_path / "v" / "summary.json").read_text())["config"]["model_settings"]
    assert (settings["cfg"], settings["max_new_tokens"], settings["text_cfg"]) == (3.0, 2, 2.0)
    capsys.readouterr()
    for bad, message in (("guidance=2", "unknown sampling setting"), ("cfg", "--sampling takes KEY=VALUE")):
        assert arm([*vqa, "--out", str(tmp_path / "w"), "--sampling", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_cfg_grid_command(export, bench, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    args = ["figures", "cfg-grid", "--ckpt", str(export), "--prompts", str(prompts), "--out", str(tmp_path / "g"),
            "--ar-scales", "1,3", "--dec-scales", "1,2"]
    assert arm(args) == 0
    root = tmp_path / "g" / "cfg_grid"
    for setting in ("ar1_dec1", "ar1_dec2", "ar3_dec1", "ar3_dec2"):
        assert sorted(p.name for p in (root / setting).glob("*.png")) == ["000.png", "001.png"]
    assert json.loads((root / "prompts.json").read_text())["prompts"] == ["a red circle", "a blue square"]
    assert (tmp_path / "g" / "cfg_000.png").is_file() and (tmp_path / "g" / "cfg_001.png").is_file()
    # The same folder with another seed would mix two samplings: refused in one line.
    capsys.readouterr()
    assert arm([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and err.count("\n") == 1
    assert arm(["figures", "cfg-grid", "--ckpt", str(export), "--bench", str(bench), "--num-prompts", "1",
                "--out", str(tmp_path / "h"), "--ar-scales", "2", "--dec-scales", "1"]) == 0
    first_tag = json.loads((bench / "geneval.jsonl").read_text().splitlines()[0])["prompt"]
    assert json.loads((tmp_path / "h" / "cfg_grid" / "prompts.json").read_text())["prompts"] == [first_tag]
    assert arm(["figures", "cfg-grid", "--ckpt", str(export), "--prompts", str(prompts), "--out",
                str(tmp_path / "x"), "--ar-scales", "1,big"]) == 2
    assert "--ar-scales takes comma-separated numbers" in capsys.readouterr().err
