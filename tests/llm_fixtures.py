"""Tiny Llama-3 checkpoints and PEFT adapters written in the test, plus the transformers/PEFT oracles."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BitsAndBytesConfig, LlamaForCausalLM

from storyloom.demo.tiny_llama import build_tiny_llama

ADAPTER_SPECS = {
    "r4-qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "r16-all-rslora": dict(
        r=16,
        lora_alpha=32,
        use_rslora=True,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "r8-mlp-layer1": dict(
        r=8, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"], layers_to_transform=[1]
    ),
    "r64-patterns": dict(
        r=64,
        lora_alpha=16,
        target_modules=["k_proj", "o_proj", "down_proj"],
        rank_pattern={"o_proj": 8},
        alpha_pattern={"down_proj": 64},
    ),
}


def make_llama(folder: Path, **kwargs) -> Path:
    return build_tiny_llama(folder, **kwargs)


def reference_model(folder: Path, nf4: bool = False) -> LlamaForCausalLM:
    quant = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        if nf4
        else None
    )
    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=quant).eval()


def make_peft_adapter(base: Path, folder: Path, seed: int, **lora) -> Path:
    """A random (non-zero B) LoRA adapter written by PEFT itself. Values are fp16-representable, so our fp16
    adapter storage is lossless and parity checks compare the math alone."""
    torch.manual_seed(seed)
    model = get_peft_model(reference_model(base), LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_((p * 3.0).half().float())
    model.save_pretrained(folder)
    return folder


def peft_reference(base: Path, adapters: dict[str, Path], nf4: bool = False) -> PeftModel:
    names = list(adapters)
    model = PeftModel.from_pretrained(reference_model(base, nf4), adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    return model.eval()
