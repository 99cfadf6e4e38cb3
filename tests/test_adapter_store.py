"""Adapter manifests and the adapter store: built-ins, imports, removal, enable flags, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

import adapters.store as store_module
from adapters import AdapterManifest, AdapterStore, ManifestError, builtin_manifests
from assets import ASSETS_DIR
from engine.errors import AdapterError, AdapterNotFoundError
from storyloom.demo.demo_adapters import build_demo_adapter
from storyloom.demo.tiny_llama import build_tiny_llama

BUILTINS = ["sdxl-prompter", "story-writer"]


@pytest.fixture(scope="module")
def peft_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peft")
    base = build_tiny_llama(root / "base")
    return build_demo_adapter(root / "lora", base, rank=4, alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture
def src(tmp_path, peft_source) -> Path:
    """A fresh copy of a valid PEFT folder that a test may damage."""
    return Path(shutil.copytree(peft_source, tmp_path / "src"))


@pytest.fixture
def store(tmp_path) -> AdapterStore:
    return AdapterStore(tmp_path / "data")


def _leftovers(store: AdapterStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir()) if store.root.exists() else []


# --- manifests --------------------------------------------------------------------------------------------
def test_builtin_manifests():
    manifests = builtin_manifests()
    assert sorted(manifests) == BUILTINS
    assert manifests["story-writer"].role == "story"
    assert manifests["sdxl-prompter"].role == "image_prompt"
    for manifest in manifests.values():
        assert manifest.base_model_family == "llama-3"
        assert "{concept}" in manifest.prompt_template
        assert manifest.sampling["max_tokens"] > 0


def test_manifest_messages_fill_the_template():
    manifest = builtin_manifests()["story-writer"]
    messages = manifest.messages(concept="  A fox sleeps in the clock tower.\n", idea="fox")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == manifest.system_prompt
    assert "A fox sleeps in the clock tower." in messages[1]["content"]
    assert "{concept}" not in messages[1]["content"]


def test_sdxl_prompter_example_fits_the_clip_window():
    prompt = builtin_manifests()["sdxl-prompter"].system_prompt
    example = prompt.split("Example of the format:\n")[1].splitlines()
    assert len(example) == 2 and example[1].startswith("Negative:")
    tokenizer = CLIPTokenizer.from_pretrained(ASSETS_DIR / "sdxl" / "tokenizer")
    assert all(len(tokenizer(line).input_ids) <= 77 for line in example)


def _manifest_fields(**changes):
    return {
        "name": "mine",
        "role": "story",
        "description": "d",
        "system_prompt": "s",
        "prompt_template": "Idea: {idea}",
        **changes,
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"role": "Story!"}, "role"),
        ({"description": " "}, "description"),
        ({"prompt_template": "no placeholder"}, "must contain {concept} or {idea}"),
        ({"prompt_template": "{concept} {plot}"}, "unknown placeholder {plot}"),
        ({"prompt_template": "{concept"}, "literal braces"),
        ({"sampling": {"temperature": "hot"}}, "sampling.temperature"),
        ({"sampling": {"beam_width": 3}}, "sampling.beam_width: unknown"),
    ],
)
def test_bad_manifest_values(changes, expected):
    with pytest.raises(ManifestError, match=expected.replace("{", r"\{").replace("}", r"\}")):
        AdapterManifest(**_manifest_fields(**changes))


def test_manifest_file_problems_are_listed_with_the_file(tmp_path):
    file = tmp_path / "manifest.toml"
    file.write_text('name = "x"\nrole = "story"\nflavour = "sweet"\n')
    with pytest.raises(ManifestError) as info:
        AdapterManifest.load(file)
    assert str(file) in str(info.value)
    assert "flavour: unknown field" in info.value.problems
    assert {"description: missing", "system_prompt: missing", "prompt_template: missing"} <= set(info.value.problems)
    file.write_text("name = ")
    with pytest.raises(ManifestError, match="cannot be read"):
        AdapterManifest.load(file)
    file.write_text('name="x"\nrole="story"\ndescription="d"\nsystem_prompt="s"\nprompt_template="{nope}"\n')
    with pytest.raises(ManifestError, match=r"unknown placeholder") as info:
        AdapterManifest.load(file)
    assert info.value.path == file


# --- listing and importing --------------------------------------------------------------------------------
def test_fresh_store_lists_builtins_not_installed(store):
    listed = store.list()
    assert [a.name for a in listed] == BUILTINS
    assert all(a.builtin and a.enabled and not a.installed for a in listed)
    assert listed[1].manifest == builtin_manifests()["story-writer"]
    assert store.sha256("story-writer") == ""
    with pytest.raises(AdapterError, match="not installed"):
        store.weights_path("story-writer")
    assert not store.root.exists()  # listing creates nothing


def test_import_copies_the_peft_folder(store, src):
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    adapter = store.import_adapter(src, "noir-1.0_b", role="story", description='Dark "noir" tales 🕵️\n')
    assert adapter.path == store.root / "noir-1.0_b"
    assert (adapter.installed, adapter.builtin, adapter.enabled) == (True, False, True)
    assert (adapter.role, adapter.description) == ("story", 'Dark "noir" tales 🕵️\n')
    assert adapter.ranks == (4,) and adapter.target_modules == ("q_proj", "v_proj") and adapter.alpha == 8
    weights = (src / "adapter_model.safetensors").read_bytes()
    assert adapter.size_bytes == len(weights)
    assert store.sha256("noir-1.0_b") == hashlib.sha256(weights).hexdigest()
    assert store.weights_path("noir-1.0_b") == adapter.path
    assert sorted(p.name for p in adapter.path.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "storyloom.toml",
    ]
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the source is untouched
    assert [a.name for a in AdapterStore(store.root.parent).list()] == [*BUILTINS, "noir-1.0_b"]
    assert AdapterStore(store.root.parent).get("noir-1.0_b") == adapter
    assert _leftovers(store) == ["noir-1.0_b"]


def test_rank_pattern_ranks_are_reported(store, src):
    config = json.loads((src / "adapter_config.json").read_text())
    config["rank_pattern"] = {"v_proj": 16}
    (src / "adapter_config.json").write_text(json.dumps(config))
    assert store.import_adapter(src, "mixed").ranks == (4, 16)


def _damage(src: Path, how: str) -> Path:
    config_file, weights = src / "adapter_config.json", src / "adapter_model.safetensors"
    config = json.loads(config_file.read_text())
    if how == "missing folder":
        return src / "nope"
    if how == "a file":
        return weights
    if how == "no config":
        config_file.unlink()
    elif how == "config not json":
        config_file.write_text("{oops")
    elif how == "config not object":
        config_file.write_text("[1, 2]")
    elif how == "not lora":
        config_file.write_text(json.dumps({**config, "peft_type": "IA3"}))
    elif how == "bad rank":
        config_file.write_text(json.dumps({**config, "r": 0, "lora_alpha": -1, "target_modules": []}))
    elif how == "dora":
        config_file.write_text(json.dumps({**config, "use_dora": True}))
    elif how == "no weights":
        weights.unlink()
    elif how == "pickle weights":
        weights.rename(src / "adapter_model.bin")
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif how == "not safetensors":
        weights.write_bytes(b"\x00" * 4)
    elif how == "garbage header":
        weights.write_bytes((8).to_bytes(8, "little") + b"notjson!")
    elif how == "no lora tensors":
        header = json.dumps({"w": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
        weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00\x00")
    return src


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("missing folder", "does not exist"),
        ("a file", "is not a folder"),
        ("no config", "adapter_config.json is missing"),
        ("config not json", "cannot be read as JSON"),
        ("config not object", "must hold a JSON object"),
        ("not lora", "only LoRA"),
        ("bad rank", "r must be a positive integer"),
        ("dora", "DoRA"),
        ("no weights", "adapter_model.safetensors is missing"),
        ("pickle weights", "pickle weights are refused"),
        ("truncated", "truncated or damaged"),
        ("not safetensors", "too short"),
        ("garbage header", "header is not JSON"),
        ("no lora tensors", "no LoRA tensors"),
    ],
)
def test_every_bad_folder_is_refused_and_nothing_is_left(store, src, how, expected):
    with pytest.raises(AdapterError) as info:
        store.import_adapter(_damage(src, how), "bad")
    assert info.value.name == "bad"
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert _leftovers(store) == []
    assert [a.name for a in store.list()] == BUILTINS


def test_all_problems_are_reported_at_once(store, src):
    (src / "adapter_model.safetensors").unlink()
    (src / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": -2}))
    with pytest.raises(AdapterError) as info:
        store.import_adapter(src, "../Evil", role="Bad Role")
    problems = info.value.problems
    assert len(problems) == 6, problems  # name, role, r, lora_alpha, target_modules, weights
    assert "../Evil" in str(info.value)


@pytest.mark.parametrize(
    "name", ["", "../x", "a/b", "a\\b", ".hidden", "Upper", "sp ace", "x" * 65, "con", "nul.txt", "a..b", 7]
)
def test_bad_names_are_refused(store, src, name):
    with pytest.raises(AdapterError, match="name"):
        store.import_adapter(src, name)
    assert _leftovers(store) == []


def test_names_must_be_unique_and_not_builtin(store, src):
    store.import_adapter(src, "mine")
    with pytest.raises(AdapterError, match="already imported"):
        store.import_adapter(src, "mine")
    with pytest.raises(AdapterError, match="built-in"):
        store.import_adapter(src, "story-writer")
    assert _leftovers(store) == ["mine"]


def test_failure_while_copying_leaves_nothing(store, src, monkeypatch):
    calls = []

    def failing_copy(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise OSError("disk full")
        shutil.copyfile(a, b)

    monkeypatch.setattr(store_module, "_copy_durably", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        store.import_adapter(src, "mine")
    assert _leftovers(store) == []


# --- removing, enabling, built-in weights -----------------------------------------------------------------
def test_remove_user_adapter(store, src):
    store.import_adapter(src, "mine")
    store.remove("mine")
    assert _leftovers(store) == []
    with pytest.raises(AdapterNotFoundError) as info:
        store.get("mine")
    assert info.value.known == BUILTINS
    with pytest.raises(AdapterNotFoundError):
        store.remove("mine")


def test_remove_builtin_deletes_only_its_weights(store, src):
    store.install_builtin_weights("story-writer", src)
    store.set_enabled("story-writer", False)
    store.remove("story-writer")
    adapter = store.get("story-writer")
    assert adapter.builtin and not adapter.installed and not adapter.enabled
    assert [a.name for a in store.list()] == BUILTINS


def test_enabled_flag_persists(store, src):
    store.import_adapter(src, "mine", role="story", description="mine")
    assert not store.set_enabled("mine", False).enabled
    again = AdapterStore(store.root.parent)
    assert not again.get("mine").enabled
    assert (again.get("mine").role, again.get("mine").description) == ("story", "mine")
    assert again.set_enabled("mine", True).enabled
    # Built-in adapters keep their flag even before their weights are installed.
    assert not store.set_enabled("sdxl-prompter", False).enabled
    assert not AdapterStore(store.root.parent).get("sdxl-prompter").installed
    assert not AdapterStore(store.root.parent).get("sdxl-prompter").enabled


def test_install_builtin_weights_replaces_and_keeps_the_flag(store, src, tmp_path, peft_source):
    store.set_enabled("sdxl-prompter", False)
    first = store.install_builtin_weights("sdxl-prompter", src)
    assert first.installed and not first.enabled and first.role == "image_prompt"
    other = build_demo_adapter(
        tmp_path / "other", peft_source.parent / "base", rank=2, alpha=4, target_modules=["o_proj"], seed=5
    )
    second = store.install_builtin_weights("sdxl-prompter", other)
    assert second.ranks == (2,) and not second.enabled
    assert (
        store.sha256("sdxl-prompter") == hashlib.sha256((other / "adapter_model.safetensors").read_bytes()).hexdigest()
    )
    assert _leftovers(store) == ["sdxl-prompter"]


def test_install_builtin_weights_refuses_bad_input_and_keeps_the_old_weights(store, src, tmp_path):
    store.install_builtin_weights("story-writer", src)
    before = store.sha256("story-writer")
    with pytest.raises(AdapterError, match="not a built-in adapter"):
        store.install_builtin_weights("mine", src)
    (src / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="missing"):
        store.install_builtin_weights("story-writer", src)
    assert store.sha256("story-writer") == before
    assert _leftovers(store) == ["story-writer"]


def test_interrupted_replace_puts_the_old_weights_back(store, src, monkeypatch, peft_source):
    store.install_builtin_weights("story-writer", src)
    before = store.sha256("story-writer")
    real_rename = os.rename
    calls = []

    def rename(a, b):
        calls.append(a)
        if len(calls) == 2:  # the old folder went aside; the new one fails to land
            raise OSError("power cut")
        real_rename(a, b)

    monkeypatch.setattr(store_module.os, "rename", rename)
    with pytest.raises(OSError, match="power cut"):
        store.install_builtin_weights("story-writer", peft_source)
    monkeypatch.undo()
    assert store.sha256("story-writer") == before
    assert _leftovers(store) == ["story-writer"]


def test_opening_the_store_recovers_from_a_crash(tmp_path, src):
    root = tmp_path / "data" / "adapters"
    root.mkdir(parents=True)
    shutil.copytree(src, root / ".trash-story-writer-0123abcd")  # replaced, the new one never landed
    shutil.copytree(src, root / ".staging-mine-xyz")
    shutil.copytree(src, root / ".removing-old-0123abcd")
    store = AdapterStore(tmp_path / "data")
    assert _leftovers(store) == ["story-writer"]
    assert store.get("story-writer").installed


def test_stray_folders_are_not_adapters(store, src):
    store.import_adapter(src, "mine")
    (store.root / "empty").mkdir()
    shutil.copytree(src, store.root / "Bad Name")
    assert [a.name for a in store.list()] == [*BUILTINS, "mine"]
    with pytest.raises(AdapterNotFoundError):
        store.get("empty")
    with pytest.raises(AdapterNotFoundError):
        store.get("Bad Name")
