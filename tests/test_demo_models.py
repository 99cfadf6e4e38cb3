"""ensure_demo_models: builds the whole demo set once, atomically, as real checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import storyloom.demo as demo
from storyloom.demo import DemoModels, ensure_demo_models, is_demo_model


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> DemoModels:
    return ensure_demo_models(tmp_path_factory.mktemp("data"))


def test_layout_and_marker(built):
    data_dir = built.root.parent
    assert built.root == data_dir / "demo-models"
    assert sorted(p.name for p in data_dir.iterdir()) == ["demo-models"]  # no staging leftovers
    assert "RANDOM weights" in (built.root / "DEMO.txt").read_text()
    assert (built.llm / "config.json").is_file() and (built.llm / "tokenizer.json").is_file()
    assert (built.sdxl / "model_index.json").is_file()
    assert not list(built.root.rglob("*.bin"))
    assert sorted(built.adapters) == ["sdxl-prompter", "story-writer"]


def test_llm_is_a_llama3_that_transformers_runs(built):
    config = json.loads((built.llm / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_scaling"]["rope_type"] == "llama3"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 4)
    model = AutoModelForCausalLM.from_pretrained(built.llm)
    tokenizer = AutoTokenizer.from_pretrained(built.llm)
    chat = [{"role": "user", "content": "A fox in a clock tower."}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape[1] > ids.shape[1]


def test_adapters_are_peft_folders_that_differ(built):
    configs = {n: json.loads((p / "adapter_config.json").read_text()) for n, p in built.adapters.items()}
    assert configs["story-writer"]["r"] != configs["sdxl-prompter"]["r"]
    assert configs["story-writer"]["target_modules"] != configs["sdxl-prompter"]["target_modules"]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(built.llm)(ids).logits
        outputs = [
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(built.llm), path)(ids).logits
            for path in built.adapters.values()
        ]
    assert not torch.allclose(outputs[0], plain)
    assert not torch.allclose(outputs[1], plain)
    assert not torch.allclose(outputs[0], outputs[1])


def test_second_call_reuses_the_set(built, monkeypatch):
    def no_rebuild(root):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(demo, "_build", no_rebuild)
    assert ensure_demo_models(built.root.parent) == built


def test_is_demo_model(built, tmp_path):
    assert is_demo_model(built.llm)
    assert is_demo_model(built.adapters["story-writer"])
    assert not is_demo_model(tmp_path)


def test_failed_build_leaves_nothing_and_can_be_retried(tmp_path, monkeypatch):
    def broken(root):
        (root / "llm").mkdir()
        raise RuntimeError("out of disk")

    monkeypatch.setattr(demo, "_build", broken)
    with pytest.raises(RuntimeError, match="out of disk"):
        ensure_demo_models(tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert (ensure_demo_models(tmp_path).root / "DEMO.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-models"]


def test_outdated_or_incomplete_set_is_rebuilt(tmp_path, monkeypatch):
    root = tmp_path / "demo-models"
    root.mkdir()
    (root / "DEMO.txt").write_text("demo_version = 0\n")
    (root / "stale.txt").write_text("old")
    built = []

    def fake_build(staging):
        built.append(staging)
        (staging / "DEMO.txt").write_text(demo.MARKER_TEXT.format(version=demo.DEMO_VERSION))

    monkeypatch.setattr(demo, "_build", fake_build)
    ensure_demo_models(tmp_path)
    assert len(built) == 1
    assert not (root / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-models"]


def test_another_process_finishing_first_is_fine(tmp_path, monkeypatch):
    def racing_build(staging):
        for folder in (staging, tmp_path / "demo-models"):  # the other process lands its set first
            folder.mkdir(exist_ok=True)
            (folder / "DEMO.txt").write_text(demo.MARKER_TEXT.format(version=demo.DEMO_VERSION))
            (folder / "x").write_text(folder.name)

    monkeypatch.setattr(demo, "_build", racing_build)
    models = ensure_demo_models(tmp_path)
    assert (models.root / "x").read_text() == "demo-models"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-models"]


def test_building_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    ensure_demo_models(tmp_path)
    torch.testing.assert_close(torch.rand(2), expected)


def test_importing_the_package_loads_no_torch():
    code = "import sys, storyloom.demo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
