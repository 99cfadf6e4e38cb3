"""Demo LoRA adapters are real PEFT folders: PEFT loads them and they change the model's output."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from storyloom.demo.demo_adapters import build_demo_adapter
from storyloom.demo.tiny_llama import build_tiny_llama

IDS = torch.tensor([[1536, 40, 300, 12, 999, 7, 1200]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("base"))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _merged_reference(base_folder, adapter_folder) -> torch.Tensor:
    """Logits of the base model with W += scaling * B @ A applied by hand (independent of PEFT)."""
    model = AutoModelForCausalLM.from_pretrained(base_folder)
    config = json.loads((adapter_folder / "adapter_config.json").read_text())
    tensors = load_file(adapter_folder / "adapter_model.safetensors")
    params = dict(model.named_parameters())
    for key, a in tensors.items():
        if not key.endswith("lora_A.weight"):
            continue
        path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = tensors[key.replace("lora_A", "lora_B")]
        r = a.shape[0]
        alpha = next((v for k, v in config["alpha_pattern"].items() if path.endswith(k)), config["lora_alpha"])
        scaling = alpha / (math.sqrt(r) if config["use_rslora"] else r)
        with torch.no_grad():
            params[f"{path}.weight"] += scaling * (b.float() @ a.float())
    return _logits(model)


def test_peft_config_schema(tmp_path, base):
    folder = build_demo_adapter(tmp_path / "a", base, rank=4, alpha=8, target_modules=["v_proj", "q_proj"])
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    assert config["task_type"] == "CAUSAL_LM"
    assert config["bias"] == "none"
    assert config["base_model_name_or_path"] == base.name
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_tensor_names_shapes_and_dtype(tmp_path, base):
    folder = build_demo_adapter(tmp_path / "a", base, rank=4, alpha=8, target_modules=["k_proj", "down_proj"], seed=3)
    tensors = load_file(folder / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * 2  # layers x modules x (A, B)
    k_a = tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"]
    k_b = tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"]
    d_a = tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"]
    d_b = tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]
    assert (k_a.shape, k_b.shape) == ((4, 64), (32, 4))  # 2 kv heads x head_dim 16
    assert (d_a.shape, d_b.shape) == ((4, 128), (64, 4))
    assert all(t.dtype == torch.float16 for t in tensors.values())
    assert all(t.abs().sum() > 0 for t in tensors.values())  # lora_B is non-zero, unlike a fresh PEFT init


def test_peft_loads_the_adapter_and_it_changes_logits(tmp_path, base):
    folder = build_demo_adapter(
        tmp_path / "a", base, rank=8, alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"]
    )
    plain = _logits(AutoModelForCausalLM.from_pretrained(base))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
    adapted = _logits(peft_model)
    assert (adapted - plain).abs().max() > 0.5 * plain.std()
    torch.testing.assert_close(adapted, _merged_reference(base, folder), rtol=1e-4, atol=1e-4)


def test_rslora_layers_and_patterns_mean_what_peft_reads(tmp_path, base):
    folder = build_demo_adapter(
        tmp_path / "a",
        base,
        rank=8,
        alpha=16,
        target_modules=["q_proj", "v_proj", "gate_proj"],
        use_rslora=True,
        layers_to_transform=[1],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"gate_proj": 4},
        seed=7,
    )
    tensors = load_file(folder / "adapter_model.safetensors")
    assert not any(".layers.0." in k for k in tensors)
    assert tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].shape[0] == 2
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape[0] == 8
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
    torch.testing.assert_close(_logits(peft_model), _merged_reference(base, folder), rtol=1e-4, atol=1e-4)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, base):
    kwargs = {"rank": 4, "alpha": 8, "target_modules": ["q_proj"]}
    a = load_file(build_demo_adapter(tmp_path / "a", base, seed=1, **kwargs) / "adapter_model.safetensors")
    b = load_file(build_demo_adapter(tmp_path / "b", base, seed=1, **kwargs) / "adapter_model.safetensors")
    c = load_file(build_demo_adapter(tmp_path / "c", base, seed=2, **kwargs) / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_modules": ["embed_tokens"]}, "target_modules"),
        ({"target_modules": []}, "target_modules"),
        ({"rank": 0}, "rank"),
        ({"layers_to_transform": [5]}, "layers_to_transform"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, base, kwargs, match):
    args = {"rank": 4, "alpha": 8, "target_modules": ["q_proj"], **kwargs}
    with pytest.raises(ValueError, match=match):
        build_demo_adapter(tmp_path / "a", base, **args)
    assert not (tmp_path / "a").exists()
