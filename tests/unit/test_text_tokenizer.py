"""Tests of the text tokenizer: training on world texts, determinism, round-trip, and loading other tokenizers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from arm.data.samples import iter_json, sample_texts
from arm.data.shapeworld.scene import scene_for
from arm.data.text_tokenizer import TextTokenizer, build_text_tokenizer, train_text_tokenizer


def record(split: str, index: int) -> dict:
    """A sample json in the shard schema with texts derived from the scene (images are not needed here)."""
    scene = scene_for(0, split, index)
    o = scene.objects[0]
    names = " and ".join(f"a {x.color} {x.cls}" for x in scene.objects)
    return {
        "key": f"{split}-{index:08d}", "split": split, "index": index, "scene": scene.to_json(), "heldout": [],
        "caption": f"{names} on a {scene.background} background.",
        "geneval": {"prompt": f"a photo of {names}"} if index % 2 else None,
        "wise": {"Prompt": f"Something that rolls, shaped like a {o.cls}"} if index % 3 == 0 else None,
        "vqa": [{"question": f"What color is the {o.cls}?", "answer": o.color, "type": "color"},
                {"question": "How many objects are there?", "answer": len(scene.objects), "type": "count"}],
        "mme": [{"question": f"Is there a {o.color} {o.cls}? Please answer yes or no.", "answer": "yes"},
                {"question": f"Is there a {o.cls} in the top-left corner? Please answer yes or no.", "answer": "no"}],
        "edit": {"type": "color", "instruction": f"Make the {o.cls} {'red' if o.color != 'red' else 'blue'}.",
                 "target_scene": scene.to_json()},
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    for split, shards, per in (("train", 2, 20), ("val", 1, 5)):
        (root / split).mkdir()
        for s in range(shards):
            with wds.TarWriter(str(root / split / f"shard-{s:06d}.tar"), mtime=0, encoder=False) as sink:
                for i in range(s * per, (s + 1) * per):
                    meta = record(split, i)
                    sink.write({"__key__": meta["key"], "json": json.dumps(meta).encode()})
    return root


def world_texts(root: Path, split: str = "train") -> list[str]:
    shards = sorted(str(p) for p in (root / split).glob("*.tar"))
    return [t for _, meta in iter_json(shards) for values in sample_texts(meta).values() for t in values]


def test_build_from_shards_round_trips_world_texts(data_dir, tmp_path):
    out = tmp_path / "tok" / "tokenizer.json"
    summary = build_text_tokenizer(str(data_dir), str(out), vocab_size=400)
    texts = world_texts(data_dir)
    # 20 train samples x (caption, edit, 2 vqa q+a, 2 mme q+a) + geneval on odd + wise on multiples of 3.
    assert summary["num_texts"] == len(texts) == 40 * 10 + 20 + 14
    assert summary["num_captions"] == 40 and summary["path"] == str(out)
    assert 258 < summary["vocab_size"] <= 400 and 1 <= summary["mean_tokens_per_caption"] < 40
    tok = TextTokenizer.from_file(out)
    assert tok.vocab_size == summary["vocab_size"]
    assert (tok.pad_id, tok.eos_id) == (0, 1) and tok.token_to_id("<|endoftext|>") == 1
    for t in texts + world_texts(data_dir, "val") + ["Unseen wörds, ünïcode & émoji 🟥!"]:
        ids = tok.encode(t)
        assert tok.decode(ids) == t and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode_batch(texts[:3]) == [tok.encode(t) for t in texts[:3]]
    assert tok.eos_id not in tok.encode(texts[0])  # encode adds no specials
    assert tok.decode(tok.encode("a red circle") + [tok.eos_id]) == "a red circle<|endoftext|>"
    # Merges learned from the world make its words short.
    assert len(tok.encode("a red circle")) < len("a red circle")


def test_training_is_deterministic_and_atomic(data_dir, tmp_path):
    texts = world_texts(data_dir)
    a = tmp_path / "a"  # a directory: gets tokenizer.json
    b = tmp_path / "b.json"
    train_text_tokenizer(texts, vocab_size=350, out_path=a)
    train_text_tokenizer(list(texts), vocab_size=350, out_path=b)
    assert (a / "tokenizer.json").read_bytes() == b.read_bytes()
    train_text_tokenizer(texts, vocab_size=350, out_path=b)  # overwrite in place
    assert (a / "tokenizer.json").read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a", "b.json"] and os.listdir(a) == ["tokenizer.json"]  # no temp files
    assert train_text_tokenizer(texts, vocab_size=300, out_path=tmp_path / "c.json").vocab_size <= 300
    with pytest.raises(ValueError, match="vocab_size"):
        train_text_tokenizer(texts, vocab_size=100)


def test_training_is_deterministic_across_processes(data_dir, tmp_path):
    # Rust hash maps are seeded per process: a second interpreter is the real test of determinism.
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(world_texts(data_dir)))
    code = ("import json, sys; from arm.data.text_tokenizer import train_text_tokenizer; "
            "train_text_tokenizer(json.load(open(sys.argv[1])), 350, sys.argv[2])")
    src = str(Path(__file__).resolve().parents[2] / "src")
    for name in ("x.json", "y.json"):
        subprocess.run([sys.executable, "-c", code, str(texts), str(tmp_path / name)], check=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=src))
    train_text_tokenizer(json.loads(texts.read_text()), 350, tmp_path / "z.json")
    x, y, z = ((tmp_path / n).read_bytes() for n in ("x.json", "y.json", "z.json"))
    assert x == y == z


def test_unreadable_json_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "train").mkdir()
    with wds.TarWriter(str(tmp_path / "train" / "shard-000000.tar"), mtime=0, encoder=False) as sink:
        sink.write({"__key__": "train-00000000", "json": json.dumps(record("train", 0)).encode()})
        sink.write({"__key__": "train-00000001", "json": b"{not json"})
    with pytest.warns(UserWarning, match="train-00000001"):
        summary = build_text_tokenizer(str(tmp_path), str(tmp_path / "tok.json"), vocab_size=300)
    assert summary["num_captions"] == 1


def test_missing_file_error_is_one_line(tmp_path):
    path = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError) as info:
        TextTokenizer.from_file(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "arm data text-tokenizer" in msg


def _save(tok: Tokenizer, path: Path) -> Path:
    tok.save(str(path))
    return path


def test_loads_a_wordlevel_tokenizer_with_other_specials(tmp_path):
    vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, "a": 3, "red": 4, "circle": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    loaded = TextTokenizer.from_file(_save(tok, tmp_path / "tokenizer.json").parent)  # a directory works too
    assert (loaded.pad_id, loaded.eos_id, loaded.vocab_size) == (0, 2, 6)
    assert loaded.encode("a red circle") == [3, 4, 5] and loaded.encode("a blue circle") == [3, 1, 5]
    assert loaded.decode([3, 4, 5]) == "a red circle"


def test_loads_a_qwen_style_bytelevel_bpe(tmp_path):
    # Qwen2's tokenizer.json: byte-level BPE, no pad token, <|endoftext|> / <|im_start|> / <|im_end|> added.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(["a red circle left of a blue square"] * 5, trainer=trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    loaded = TextTokenizer.from_file(_save(tok, tmp_path / "qwen.json"))
    eot = tok.token_to_id("<|endoftext|>")
    assert loaded.eos_id == eot and loaded.pad_id == eot  # no pad token: pad falls back to end-of-text
    assert loaded.vocab_size == tok.get_vocab_size(with_added_tokens=True)
    t = "a red circle left of a green star"
    assert loaded.decode(loaded.encode(t)) == t
    override = TextTokenizer.from_file(tmp_path / "qwen.json", eos_token="<|im_end|>")
    assert override.eos_id == tok.token_to_id("<|im_end|>")


def test_tokenizer_without_end_token_is_a_clear_error(tmp_path):
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    path = _save(tok, tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="no end-of-text token.*eos_token="):
        TextTokenizer.from_file(path)
    with pytest.raises(ValueError, match="no pad token"):
        TextTokenizer.from_file(path, eos_token="x", pad_token="<nope>")
