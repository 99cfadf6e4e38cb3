"""Random LoRA adapters for a Llama checkpoint, written in PEFT's on-disk format (without importing peft).

The folder holds `adapter_config.json` (PEFT's LoraConfig schema) and `adapter_model.safetensors` with
PEFT's key names, `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in] and
`...lora_B.weight` [out, r]. Unlike a freshly initialised PEFT adapter, lora_B is random and non-zero, so
the adapter visibly changes the model's output.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.lora.adapter import module_shapes, pattern_value
from engine.model_config import LlamaArgs

logger = logging.getLogger(__name__)

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
# Std of lora_B entries; with lora_A ~ N(0, 1/in) the update is comparable to the base weights.
LORA_B_STD = 0.2


def _peft_config(
    base_name: str,
    rank: int,
    alpha: int,
    target_modules: list[str],
    use_rslora: bool,
    layers_to_transform: list[int] | None,
    rank_pattern: dict[str, int],
    alpha_pattern: dict[str, int],
) -> dict:
    return {
        "alpha_pattern": alpha_pattern,
        "auto_mapping": None,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": layers_to_transform,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": rank_pattern,
        "revision": None,
        "target_modules": sorted(target_modules),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": use_rslora,
    }


def build_demo_adapter(
    folder: Path,
    base_folder: Path,
    *,
    rank: int,
    alpha: int,
    target_modules: list[str] | tuple[str, ...],
    use_rslora: bool = False,
    layers_to_transform: list[int] | None = None,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, int] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a random PEFT LoRA adapter for the Llama checkpoint in `base_folder` to `folder`."""
    base_folder = Path(base_folder)
    config = json.loads((base_folder / "config.json").read_text(encoding="utf-8"))
    shapes = module_shapes(LlamaArgs.from_dict(config))
    num_layers = config["num_hidden_layers"]
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown or not target_modules:
        raise ValueError(f"target_modules must be a non-empty subset of {sorted(shapes)}, got {target_modules}")
    if rank < 1 or alpha <= 0:
        raise ValueError(f"rank must be >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
    layers = list(range(num_layers)) if layers_to_transform is None else list(layers_to_transform)
    if not layers or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(f"layers_to_transform must name layers in 0..{num_layers - 1}, got {layers_to_transform}")

    rank_pattern = dict(rank_pattern or {})
    alpha_pattern = dict(alpha_pattern or {})
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        for module in sorted(target_modules):
            block = "self_attn" if module in ATTENTION_MODULES else "mlp"
            path = f"model.layers.{layer}.{block}.{module}"
            r = pattern_value(rank_pattern, path, rank)
            in_features, out_features = shapes[module]
            a = torch.randn(r, in_features, generator=generator) / math.sqrt(in_features)  # [r, in]
            b = torch.randn(out_features, r, generator=generator) * LORA_B_STD  # [out, r]
            tensors[f"base_model.model.{path}.lora_A.weight"] = a.to(dtype).contiguous()
            tensors[f"base_model.model.{path}.lora_B.weight"] = b.to(dtype).contiguous()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_config = _peft_config(
        base_folder.name,
        rank,
        alpha,
        list(target_modules),
        use_rslora,
        layers_to_transform,
        rank_pattern,
        alpha_pattern,
    )
    (folder / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    logger.debug("demo adapter (rank %d, %d tensors) written to %s", rank, len(tensors), folder)
    return folder
