"""Random Llama checkpoints of real shapes written to disk, so benchmarks load them through our loader."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from storyloom.demo.tokenizer import build_demo_tokenizer

LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
)
TINY = dict(vocab_size=2048, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)  # fmt: skip


def write_random_llama(folder: Path, shape: dict, device: str, seed: int = 0) -> Path:
    """One shard per layer, fp16, N(0, 0.02): real shapes, meaningless weights (fine for speed)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator(device=device).manual_seed(seed)
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d

    def rand(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=g, device=device, dtype=torch.float16) * 0.02).cpu()

    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_file(tensors, folder / name)
        weight_map.update(dict.fromkeys(tensors, name))

    shard("embed.safetensors", {"model.embed_tokens.weight": rand(v, h)})
    for layer in range(shape["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shard(
            f"layer-{layer:03d}.safetensors",
            {
                p + "self_attn.q_proj.weight": rand(h, h),
                p + "self_attn.k_proj.weight": rand(kv, h),
                p + "self_attn.v_proj.weight": rand(kv, h),
                p + "self_attn.o_proj.weight": rand(h, h),
                p + "mlp.gate_proj.weight": rand(i, h),
                p + "mlp.up_proj.weight": rand(i, h),
                p + "mlp.down_proj.weight": rand(h, i),
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.float16),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.float16),
            },
        )
    shard("head.safetensors", {"model.norm.weight": torch.ones(h, dtype=torch.float16), "lm_head.weight": rand(v, h)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **shape,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": [2, 3],
        "torch_dtype": "float16",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    build_demo_tokenizer(folder)
    return folder
