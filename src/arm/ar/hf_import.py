"""Load a local Hugging Face Qwen2 / Llama checkpoint into ``ARDecoder`` and extend its vocabulary (ARM §2).

ARM initialises its AR model from Qwen2.5 and adds image codes to the vocabulary plus a separate image head.
``from_hf(folder, num_image_codes, num_special_tokens)`` does exactly that from a local folder holding
``config.json`` and ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``):

1. ``config_from_hf`` turns the HF config into an ``ARConfig`` (Qwen2: q/k/v bias; Llama: none);
2. the model is built on the meta device and materialised empty, so a 7B import never pays for a random init;
3. ``load_hf_weights`` copies every tensor through ``WEIGHT_MAP`` (a litgpt/torchtitan-style key map),
   streaming one tensor at a time from the safetensors files; a missing or unexpected key is an error naming it;
4. the new rows (specials, image codes) of the embedding table and of an untied text head are set to the mean of
   the pretrained rows plus small noise, so new tokens start "average" yet distinguishable; the image head is
   drawn from normal(0, initializer_range).

The rotary convention needs no conversion: HF Qwen2/Llama use the rotate-half layout with
``inv_freq = theta^(-2i/d)``, computed in fp32, exactly as ``arm.nn.rope`` does (checked by the parity test).

Deliberate simplifications / refusals (each a one-line ``ValueError``): rope scaling other than the default
(Llama 3.1 "llama3", YaRN ...), sliding-window attention, a ``head_dim`` different from hidden/heads, bias on the
attention output or MLP, activations other than SiLU. ``.bin`` (pickle) checkpoints are not read at all.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open

from arm.ar.model import ARConfig, ARDecoder
from arm.nn import RotaryEmbedding

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")

WEIGHT_MAP: dict[str, str | None] = {
    "model.embed_tokens.weight": "embed.weight",
    "model.layers.{}.input_layernorm.weight": "body.blocks.{}.attn_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "body.blocks.{}.attn.q.weight",
    "model.layers.{}.self_attn.q_proj.bias": "body.blocks.{}.attn.q.bias",
    "model.layers.{}.self_attn.k_proj.weight": "body.blocks.{}.attn.k.weight",
    "model.layers.{}.self_attn.k_proj.bias": "body.blocks.{}.attn.k.bias",
    "model.layers.{}.self_attn.v_proj.weight": "body.blocks.{}.attn.v.weight",
    "model.layers.{}.self_attn.v_proj.bias": "body.blocks.{}.attn.v.bias",
    "model.layers.{}.self_attn.o_proj.weight": "body.blocks.{}.attn.out.weight",
    "model.layers.{}.post_attention_layernorm.weight": "body.blocks.{}.mlp_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "body.blocks.{}.mlp.gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "body.blocks.{}.mlp.up.weight",
    "model.layers.{}.mlp.down_proj.weight": "body.blocks.{}.mlp.down.weight",
    "model.norm.weight": "body.norm.weight",
    "lm_head.weight": "text_head.weight",
    # Old checkpoints saved the rotary frequencies; ours are recomputed from (head_dim, theta).
    "model.layers.{}.self_attn.rotary_emb.inv_freq": None,
}
"""HF key (``{}`` = layer index) -> our key; ``None`` = known and ignored."""

_VOCAB_ROWS = ("embed.weight", "text_head.weight")
"""Our tensors whose HF rows are the first rows of a larger (extended-vocabulary) matrix."""


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not supported (only the default rotary embedding)")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    return float(theta if theta is not None else 10000.0)


def config_from_hf(hf_config: dict, num_image_codes: int = 0, num_special_tokens: int = 0) -> ARConfig:
    """An ``ARConfig`` for a Hugging Face Qwen2 / Llama ``config.json`` dict, with the extra vocabulary added."""
    kind = hf_config.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {kind!r}; supported: {list(SUPPORTED_MODEL_TYPES)}")
    dim, heads = int(hf_config["hidden_size"]), int(hf_config["num_attention_heads"])
    if hf_config.get("head_dim") not in (None, dim // heads):
        raise ValueError(f"head_dim {hf_config['head_dim']} != hidden_size / num_attention_heads = {dim // heads}")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config['hidden_act']!r} is not supported (only silu / SwiGLU)")
    if hf_config.get("use_sliding_window"):
        raise ValueError("sliding-window attention (use_sliding_window=true) is not supported")
    if hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
        raise ValueError("Llama attention_bias / mlp_bias (bias on o_proj or the MLP) is not supported")
    return ARConfig(
        text_vocab_size=int(hf_config["vocab_size"]),
        num_image_codes=num_image_codes,
        num_special_tokens=num_special_tokens,
        dim=dim,
        num_layers=int(hf_config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        mlp_hidden=int(hf_config["intermediate_size"]),
        qkv_bias=kind == "qwen2",  # Qwen2 always has q/k/v bias; Llama has none (attention_bias refused above)
        rope_theta=_rope_theta(hf_config),
        norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        max_seq_len=int(hf_config.get("max_position_embeddings", 2048)),
        initializer_range=float(hf_config.get("initializer_range", 0.02)),
    )


def read_hf_config(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no Hugging Face checkpoint folder {folder!r}")
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no config.json")
    with open(path) as f:
        return json.load(f)


def safetensors_files(folder: str) -> list[str]:
    """The checkpoint's safetensors files: the shards of the index, or the single ``model.safetensors``."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(folder, n) for n in names]
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard {path!r} listed in model.safetensors.index.json is missing")
        return files
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"{folder!r} has no model.safetensors or model.safetensors.index.json "
                            f"(only safetensors checkpoints are read)")


def map_key(hf_key: str) -> str | None:
    """Our parameter name for an HF key; ``None`` for a known-ignored key; ``KeyError`` for an unknown one."""
    numbers = re.findall(r"\.(\d+)\.", hf_key)
    pattern = re.sub(r"\.(\d+)\.", ".{}.", hf_key)
    if pattern not in WEIGHT_MAP:
        raise KeyError(hf_key)
    target = WEIGHT_MAP[pattern]
    return None if target is None else target.format(*numbers)


@torch.no_grad()
def load_hf_weights(model: ARDecoder, folder: str) -> set[str]:
    """Copy an HF checkpoint's tensors into ``model``; returns the names of our tensors that were filled.

    Embedding (and untied head) rows are copied into the first ``text_vocab_size`` rows; the remaining rows and
    the image head are left for the caller (``from_hf`` initialises them).
    """
    params = dict(model.named_parameters())
    tied = model.config.tie_embeddings
    loaded: set[str] = set()
    for path in safetensors_files(folder):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                try:
                    name = map_key(key)
                except KeyError:
                    raise ValueError(f"unexpected key {key!r} in {os.path.basename(path)}: not in WEIGHT_MAP") from None
                if name is None or (tied and name == "text_head.weight"):
                    continue  # a tied checkpoint may still store lm_head; ours reads the embedding instead
                if name not in params:
                    raise ValueError(f"unexpected key {key!r}: the model has no {name!r} (check qkv_bias / tying)")
                tensor, target = f.get_tensor(key), params[name]
                if name in _VOCAB_ROWS:
                    target = target[: tensor.shape[0]]
                if tensor.shape != target.shape:
                    raise ValueError(f"shape mismatch for {key!r}: checkpoint {tuple(tensor.shape)}, "
                                     f"model {name!r} {tuple(target.shape)}")
                target.copy_(tensor.to(target.dtype))
                loaded.add(name)
    expected = {n for n in params if n != "image_head.weight"}
    missing = sorted(expected - loaded)
    if missing:
        raise ValueError(f"missing key: the checkpoint has nothing for {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return loaded


@torch.no_grad()
def _init_new_rows(weight: torch.Tensor, start: int, generator: torch.Generator, noise: float) -> None:
    """Rows ``start:`` of ``weight`` := mean of rows ``:start`` + noise * (their std) * N(0, 1)."""
    if start >= weight.shape[0]:
        return
    old = weight[:start].float()
    fresh = torch.randn(weight.shape[0] - start, weight.shape[1], generator=generator)
    weight[start:] = (old.mean(0) + noise * old.std() * fresh).to(weight.dtype)


def from_hf(folder: str, num_image_codes: int = 0, num_special_tokens: int = 0, dtype: torch.dtype = torch.float32,
            noise: float = 0.1, seed: int = 0) -> ARDecoder:
    """An ``ARDecoder`` initialised from the local HF checkpoint in ``folder``, vocabulary extended (ARM §2).

    ``noise`` scales the perturbation of new embedding rows relative to the pretrained rows' std; ``seed`` makes
    the new rows and the image head reproducible.
    """
    hf = read_hf_config(folder)
    config = config_from_hf(hf, num_image_codes, num_special_tokens)
    safetensors_files(folder)  # fail on a weightless folder before allocating anything
    with torch.device("meta"):
        model = ARDecoder(config)
    model = model.to_empty(device="cpu").to(dtype)
    # to_empty leaves buffers uninitialised: rebuild the (non-persistent) rotary tables.
    model.body.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.transformer_config().max_positions)
    load_hf_weights(model, folder)
    generator = torch.Generator().manual_seed(seed)
    hf_rows = int(hf["vocab_size"])
    _init_new_rows(model.embed.weight.data, hf_rows, generator, noise)
    if model.text_head is not None:
        _init_new_rows(model.text_head.weight.data, hf_rows, generator, noise)
    if model.image_head is not None:
        std = config.initializer_range
        model.image_head.weight.data.copy_(torch.randn(model.image_head.weight.shape, generator=generator) * std)
    return model
