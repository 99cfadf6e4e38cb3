"""The tiny random Llama-3 checkpoint: a valid HF checkpoint in Meta's on-disk format."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from storyloom.demo.tiny_llama import build_tiny_llama
from storyloom.demo.tokenizer import END_OF_TEXT_TOKEN, EOT_TOKEN


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def _logits(folder, ids):
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_config_is_meta_style_llama3(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "rope_parameters" not in config
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    # transformers reads the legacy keys into the same rope parameters.
    loaded = AutoConfig.from_pretrained(checkpoint)
    assert loaded.rope_parameters["rope_type"] == "llama3"
    assert loaded.rope_parameters["original_max_position_embeddings"] == 256


def test_generation_config_stops_on_both_llama3_end_tokens(checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    expected = tokenizer.convert_tokens_to_ids([END_OF_TEXT_TOKEN, EOT_TOKEN])
    assert generation["eos_token_id"] == expected
    assert generation["bos_token_id"] == tokenizer.bos_token_id
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)


def test_transformers_generates_varied_greedy_text(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    new = out[0, ids.shape[1] :].tolist()
    assert len(new) == 24
    assert len(set(new)) >= 8  # random init scaled so greedy decoding does not collapse onto one token


def test_weights_are_safetensors_only(checkpoint):
    names = {p.name for p in checkpoint.iterdir()}
    assert "model.safetensors" in names
    assert not any(n.endswith((".bin", ".pt", ".ckpt")) for n in names)
    with safe_open(checkpoint / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert "model.layers.0.self_attn.q_proj.weight" in keys
        assert "lm_head.weight" in keys
        assert f.get_tensor("model.layers.1.self_attn.k_proj.weight").shape == (2 * 16, 64)


def test_sharded_checkpoint_has_index_and_same_weights(tmp_path, checkpoint):
    sharded = build_tiny_llama(tmp_path / "sharded", shard=True)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2
    assert all((sharded / s).is_file() for s in shards)
    assert not (sharded / "model.safetensors").exists()
    ids = [1, 2, 3, 500, 900]
    torch.testing.assert_close(_logits(sharded, ids), _logits(checkpoint, ids), rtol=0, atol=0)


def test_seed_decides_the_weights(tmp_path, checkpoint):
    ids = [10, 20, 30]
    same = build_tiny_llama(tmp_path / "same", seed=0)
    other = build_tiny_llama(tmp_path / "other", seed=1)
    torch.testing.assert_close(_logits(same, ids), _logits(checkpoint, ids), rtol=0, atol=0)
    assert not torch.allclose(_logits(other, ids), _logits(checkpoint, ids))


def test_building_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llama(tmp_path / "m")
    torch.testing.assert_close(torch.rand(3), expected)


def test_options_without_rope_scaling_and_with_tied_embeddings(tmp_path):
    folder = build_tiny_llama(tmp_path / "m", rope_scaling=None, tie_word_embeddings=True, hidden_size=32, num_heads=2)
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_scaling"] is None
    assert config["tie_word_embeddings"] is True
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.rope_parameters["rope_type"] == "default"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_unknown_rope_scaling_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rope_scaling"):
        build_tiny_llama(tmp_path / "m", rope_scaling="yarn")
