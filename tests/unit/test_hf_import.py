"""Hugging Face Qwen2 / Llama import: logits parity with transformers, sharded checkpoints, vocabulary extension,
and one-line errors. ``transformers`` is a test-only dependency, built here from tiny random configs."""

from __future__ import annotations

import json
import os

import pytest
import torch

from arm.ar.hf_import import WEIGHT_MAP, config_from_hf, from_hf, map_key

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000)


def _save(tmp_path, kind: str, tie: bool, **save_kwargs):
    torch.manual_seed(0)
    if kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**TINY, tie_word_embeddings=tie))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY, tie_word_embeddings=tie))
    with torch.no_grad():  # HF zero-inits nothing we rely on, but make the biases non-trivial for the test
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / f"{kind}-{tie}"
    model.save_pretrained(str(folder), safe_serialization=True, **save_kwargs)
    return model.eval(), str(folder)


def _compare(hf_model, ours, mask=None):
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = hf_model(input_ids=ids).logits
        got = ours.text_logits(ours(input_ids=ids))[..., :128]
    assert (ref - got).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind,tie", [("qwen2", True), ("qwen2", False), ("llama", False), ("llama", True)])
def test_logits_match_transformers(tmp_path, kind, tie):
    hf_model, folder = _save(tmp_path, kind, tie)
    ours = from_hf(folder).eval()
    assert ours.config.qkv_bias == (kind == "qwen2") and ours.config.tie_embeddings == tie
    _compare(hf_model, ours)


def test_sharded_checkpoint(tmp_path):
    hf_model, folder = _save(tmp_path, "qwen2", False, max_shard_size="40KB")
    assert os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 1
    _compare(hf_model, from_hf(folder).eval())


def test_rotary_convention_matches():
    """HF's cos/sin tables equal ours: same rotate-half layout and frequencies."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    from arm.nn import RotaryEmbedding

    config = transformers.Qwen2Config(**TINY)
    hf_rope = Qwen2RotaryEmbedding(config)
    x = torch.zeros(1, 10, 64)
    cos, sin = hf_rope(x, torch.arange(10)[None])
    ours = RotaryEmbedding(16, 10000.0)
    our_cos, our_sin = ours(10)
    torch.testing.assert_close(cos[0], our_cos)
    torch.testing.assert_close(sin[0], our_sin)


def test_vocabulary_extension(tmp_path):
    hf_model, folder = _save(tmp_path, "qwen2", False)
    ours = from_hf(folder, num_image_codes=50, num_special_tokens=3).eval()
    c = ours.config
    assert c.text_vocab_size == 128 and c.image_token_offset == 131 and c.vocab_size == 181
    old = hf_model.model.embed_tokens.weight
    torch.testing.assert_close(ours.embed.weight[:128], old)
    new = ours.embed.weight[128:]
    # New rows sit near the mean of the pretrained rows, and differ from each other.
    assert (new - old.mean(0)).norm(dim=1).max() < 0.5 * (old - old.mean(0)).norm(dim=1).mean()
    assert not torch.allclose(new[0], new[1])
    assert ours.text_head.weight.shape == (131, 64) and ours.image_head.weight.shape == (50, 64)
    assert torch.isfinite(ours.image_head.weight).all() and ours.image_head.weight.std() > 0
    # The image head (new, 50 x 64) is drawn at the checkpoint's initializer_range, which the config records.
    assert c.initializer_range == hf_model.config.initializer_range
    assert abs(ours.image_head.weight.std().item() / c.initializer_range - 1) < 0.1
    _compare(hf_model, ours)  # text logits over the old vocabulary are unchanged
    again = from_hf(folder, num_image_codes=50, num_special_tokens=3)
    torch.testing.assert_close(again.embed.weight, ours.embed.weight)  # seeded


def test_key_map():
    assert map_key("model.layers.11.self_attn.q_proj.bias") == "body.blocks.11.attn.q.bias"
    assert map_key("model.layers.0.self_attn.rotary_emb.inv_freq") is None
    with pytest.raises(KeyError):
        map_key("model.vision_tower.weight")
    assert all(v is None or v.count("{}") == k.count("{}") for k, v in WEIGHT_MAP.items())


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Hugging Face checkpoint folder"):
        from_hf(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "qwen2", **TINY}))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_hf(str(empty))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        config_from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope scaling 'llama3'"):
        config_from_hf({"model_type": "llama", **TINY, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


def test_missing_and_unexpected_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = _save(tmp_path, "qwen2", True)
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    extra = dict(state, **{"model.layers.0.self_attn.extra.weight": torch.zeros(1)})
    save_file(extra, path)
    with pytest.raises(ValueError, match="unexpected key 'model.layers.0.self_attn.extra.weight'"):
        from_hf(folder)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, path)
    with pytest.raises(ValueError, match="missing key.*body.blocks.1.mlp.up.weight"):
        from_hf(folder)
