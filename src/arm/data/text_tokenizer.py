"""Text tokenizer: train a small byte-level BPE on ShapeWorld's texts, and load any HF ``tokenizer.json``.

``train_text_tokenizer`` trains a byte-level BPE with HF ``tokenizers`` (ByteLevel pre-tokenizer and decoder,
the 256-byte alphabet always in the vocabulary, specials ``<|pad|>`` and ``<|endoftext|>``) and writes
``tokenizer.json`` atomically. Training is deterministic: the same texts in the same order give the same bytes.
``build_text_tokenizer`` is what ``arm data text-tokenizer --data DIR --out FILE --vocab-size N`` runs: it reads
every text field of the train shards' json and trains on them.

``TextTokenizer`` wraps a ``tokenizers.Tokenizer`` loaded from any local ``tokenizer.json`` (ours, or a real one
such as Qwen2's), and finds its pad and end-of-text ids by trying common token names.

Deliberate simplifications:
- ``encode`` never adds special tokens (no BOS/EOS, whatever the file's post-processor says); the sequence
  builders add ``eos_id`` themselves, so every tokenizer behaves the same way.
- A tokenizer without a pad token uses its end-of-text token as pad (as GPT-2-style models do).
- Only train-split texts are used, so val/test wording never leaks into the vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from arm.io import write_atomic

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN)
"""Specials of the tokenizers we train, in id order (pad is 0, end-of-text is 1)."""

PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>",
                  "[SEP]", "<|end|>")
"""Token names tried, in order, for the pad and end-of-text ids of a loaded tokenizer."""

CREATE_COMMAND = "arm data text-tokenizer --data DIR --out FILE --vocab-size N"
BYTE_ALPHABET_SIZE = 256


class TextTokenizer:
    """A loaded ``tokenizer.json`` with the few operations the suite needs.

    ``pad_token`` / ``eos_token`` override the name search when a tokenizer uses unusual names.
    """

    def __init__(self, tokenizer: Tokenizer, pad_token: str | None = None, eos_token: str | None = None,
                 source: str = "<memory>") -> None:
        self.tokenizer = tokenizer
        self.source = source
        self.eos_id = self._find_id((eos_token,) if eos_token else EOS_CANDIDATES, "end-of-text", "eos_token")
        try:
            self.pad_id = self._find_id((pad_token,) if pad_token else PAD_CANDIDATES, "pad", "pad_token")
        except ValueError:
            if pad_token:
                raise
            self.pad_id = self.eos_id

    @classmethod
    def from_file(cls, path: str | os.PathLike, pad_token: str | None = None,
                  eos_token: str | None = None) -> TextTokenizer:
        """Load a ``tokenizer.json`` (or a directory holding one) from a local path."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"text tokenizer {path!r} does not exist; create one with `{CREATE_COMMAND}` "
                                    f"or point to a Hugging Face tokenizer.json")
        return cls(Tokenizer.from_file(path), pad_token, eos_token, source=path)

    def _find_id(self, names: Sequence[str], role: str, argument: str) -> int:
        for name in names:
            tid = self.tokenizer.token_to_id(name)
            if tid is not None:
                return tid
        raise ValueError(f"tokenizer {self.source!r} has no {role} token; tried {list(names)}; "
                         f"pass {argument}= with the name it uses")

    @property
    def vocab_size(self) -> int:
        """Number of ids, added (special) tokens included: embedding tables need at least this many rows."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, tid: int) -> str | None:
        return self.tokenizer.id_to_token(int(tid))

    def __repr__(self) -> str:
        return f"TextTokenizer({self.source!r}, vocab_size={self.vocab_size}, pad={self.pad_id}, eos={self.eos_id})"


def _tokenizer_path(out_path: str | os.PathLike) -> str:
    out = os.fspath(out_path)
    return out if out.endswith(".json") else os.path.join(out, "tokenizer.json")


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 1024,
                         out_path: str | os.PathLike | None = None) -> TextTokenizer:
    """Train a byte-level BPE on ``texts``; write it to ``out_path`` when given.

    ``out_path`` ending in ``.json`` is the file; anything else is a directory that gets ``tokenizer.json``.
    The vocabulary can end up smaller than ``vocab_size`` when the texts have fewer distinct merges.
    """
    minimum = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is below {minimum} (256 bytes + {len(SPECIAL_TOKENS)} specials)")
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(t)) == t exactly.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    source = "<memory>"
    if out_path is not None:
        source = _tokenizer_path(out_path)
        write_atomic(source, tokenizer.to_str(pretty=True).encode("utf-8"))
    return TextTokenizer(tokenizer, PAD_TOKEN, EOS_TOKEN, source=source)


def shard_texts(data_dir: str | os.PathLike, split: str = "train") -> tuple[list[str], list[str]]:
    """All texts of a split's shards, in shard and sample order, and the captions among them."""
    from arm.data.samples import expand_shards, iter_json, sample_texts

    root = os.fspath(data_dir)
    split_dir = os.path.join(root, split)
    shards = expand_shards(split_dir if os.path.isdir(split_dir) else root)
    texts: list[str] = []
    captions: list[str] = []
    for _key, meta in iter_json(shards):
        fields = sample_texts(meta)
        captions.extend(fields["caption"])
        for values in fields.values():
            texts.extend(values)
    return texts, captions


def build_text_tokenizer(data_dir: str, out: str, vocab_size: int = 1024) -> dict:
    """Train the text tokenizer on every text of ``data_dir``'s train shards and write it to ``out``.

    ``data_dir`` is the ShapeWorld root (its ``train/`` is read) or a directory of train shards. Returns a summary:
    path, vocab_size, num_texts, num_captions, mean_tokens_per_caption.
    """
    texts, captions = shard_texts(data_dir, "train")
    if not texts:
        raise ValueError(f"the train shards under {data_dir!r} hold no texts")
    tok = train_text_tokenizer(texts, vocab_size=vocab_size, out_path=out)
    lengths = [len(ids) for ids in tok.encode_batch(captions)] if captions else [0]
    return {
        "path": tok.source,
        "vocab_size": tok.vocab_size,
        "num_texts": len(texts),
        "num_captions": len(captions),
        "mean_tokens_per_caption": sum(lengths) / len(lengths),
    }
