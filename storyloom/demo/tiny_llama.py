"""A tiny random-init Llama-3 checkpoint in the exact on-disk format of the real ones.

`config.json` is written the way Meta's checkpoints have it (`rope_theta` plus a `rope_scaling` dict of
type "llama3"), the weights are safetensors (optionally sharded with an index), the tokenizer is the demo
byte-level BPE with the Llama-3 special tokens and chat template, and `generation_config.json` stops on
both `<|end_of_text|>` and `<|eot_id|>` like Llama-3 Instruct.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from storyloom.demo.tokenizer import BOS_TOKEN, END_OF_TEXT_TOKEN, EOT_TOKEN, build_demo_tokenizer

logger = logging.getLogger(__name__)

ROPE_THETA = 500000.0
# Large enough that greedy decoding of a random model does not collapse onto one token.
INITIALIZER_RANGE = 0.2


def _llama3_rope_scaling(max_position_embeddings: int) -> dict[str, float | int | str]:
    # A short original context so the tiny head dims hit all three llama3 bands (kept, smoothed, scaled).
    return {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": max(max_position_embeddings // 8, 1),
    }


def _write_meta_style_config(folder: Path, rope_scaling: dict | None) -> None:
    """Rewrite config.json with `rope_theta` + `rope_scaling`, as Meta's Llama-3 checkpoints ship it."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("rope_parameters", None)
    config["rope_theta"] = ROPE_THETA
    config["rope_scaling"] = rope_scaling
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_llama(
    folder: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    rope_scaling: Literal["llama3"] | None = "llama3",
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    shard: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random tiny Llama-3 checkpoint (weights, config, tokenizer, generation config) to `folder`."""
    if rope_scaling not in ("llama3", None):
        raise ValueError(f"rope_scaling must be 'llama3' or None, got {rope_scaling!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_demo_tokenizer(folder)
    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    eos_ids = tokenizer.convert_tokens_to_ids([END_OF_TEXT_TOKEN, EOT_TOKEN])
    scaling = _llama3_rope_scaling(max_position_embeddings) if rope_scaling == "llama3" else None
    rope_parameters = {"rope_type": "default", "rope_theta": ROPE_THETA}
    if scaling is not None:
        rope_parameters = {**scaling, "rope_theta": ROPE_THETA}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=INITIALIZER_RANGE,
        rms_norm_eps=1e-5,
        bos_token_id=bos_id,
        eos_token_id=eos_ids,
        tie_word_embeddings=tie_word_embeddings,
        rope_parameters=rope_parameters,
        architectures=["LlamaForCausalLM"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_ids, do_sample=True, temperature=0.6, top_p=0.9
    )
    # Small shards so that even a tiny model is split and gets a model.safetensors.index.json.
    shard_bytes = max(sum(p.numel() * p.element_size() for p in model.parameters()) // 3, 1)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard_bytes if shard else "10GB")
    _write_meta_style_config(folder, scaling)
    logger.debug("tiny llama written to %s", folder)
    return folder
