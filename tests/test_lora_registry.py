"""Adapter registry: runtime load/unload, LRU over slots, and every bad adapter refused with all its problems."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from engine import AdapterError, AdapterNotFoundError, Engine, EngineConfig, InvalidRequestError, SamplingParams
from engine.lora.adapter import family_warnings
from tests.llm_fixtures import ADAPTER_SPECS, make_llama, make_peft_adapter

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    base = make_llama(root / "base")
    adapters = {
        name: make_peft_adapter(base, root / name, seed=i, **spec)
        for i, (name, spec) in enumerate(ADAPTER_SPECS.items())
    }
    other_size = make_llama(root / "wide", hidden_size=96, num_heads=4, num_kv_heads=2)
    wrong = make_peft_adapter(other_size, root / "for-wider-model", seed=9, r=4, target_modules=["q_proj"])
    return base, adapters, wrong


def test_adapter_info(setup):
    base, adapters, _ = setup
    with Engine(EngineConfig(model=base, quantization="none", max_loras=2)) as eng:
        info = eng.adapters.load("p", adapters["r64-patterns"])
        assert info.ranks == {"k_proj": 64, "o_proj": 8, "down_proj": 64}
        assert info.rank == 64
        assert info.target_modules == ("k_proj", "o_proj", "down_proj")
        assert len(info.sha256) == 64 and info.size_bytes > 0
        assert info.state == "cpu"
        eng.generate(["Hi"], GREEDY, adapters=["p"])
        assert eng.adapters.get("p").state == "gpu"
        assert [a.name for a in eng.adapters.list()] == ["p"]


def test_more_adapters_than_slots_uses_lru_and_never_overfills_a_batch(setup):
    base, adapters, _ = setup
    names = list(adapters)
    prompts = ["Once upon a time", "The dragon", "A café", "In the north"]
    with Engine(EngineConfig(model=base, quantization="none", max_batch_size=4, max_loras=4)) as roomy:
        for name, path in adapters.items():
            roomy.adapters.load(name, path)
        expected = [r.token_ids for r in roomy.generate(prompts, GREEDY, adapters=names)]
    with Engine(EngineConfig(model=base, quantization="none", max_batch_size=4, max_loras=2)) as tight:
        for name, path in adapters.items():
            tight.adapters.load(name, path)
        handles = [tight.submit(p, GREEDY, adapter=n) for p, n in zip(prompts, names, strict=True)]
        assert [h.result().token_ids for h in handles] == expected
        stats = tight.stats()
        assert stats.max_adapters_in_step <= 2
        assert sum(a.state == "gpu" for a in tight.adapters.list()) == 2


def test_load_and_unload_while_requests_run(setup):
    base, adapters, _ = setup
    with Engine(EngineConfig(model=base, quantization="none", max_batch_size=4, max_loras=2)) as eng:
        running = eng.submit("Tell me", SamplingParams(temperature=0, max_tokens=300, ignore_eos=True))
        next(iter(running))
        eng.adapters.load("a", adapters["r4-qv"])
        with_a = eng.submit("Tell me", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), adapter="a")
        next(iter(with_a))
        eng.adapters.unload("a")  # waits for with_a to finish
        assert with_a.done and with_a.result().finish_reason == "length"
        with pytest.raises(AdapterNotFoundError, match="unknown adapter 'a'"):
            eng.submit("Hi", adapter="a")
        assert eng.adapters.list() == []
        assert running.result().finish_reason == "length"


def test_unloading_adapter_refuses_new_requests(setup):
    base, adapters, _ = setup
    with Engine(EngineConfig(model=base, quantization="none", max_batch_size=2)) as eng:
        eng.adapters.load("a", adapters["r4-qv"])
        busy = eng.submit("Hi", SamplingParams(max_tokens=400, ignore_eos=True), adapter="a")
        next(iter(busy))
        with pytest.raises(TimeoutError):
            eng.adapters.unload("a", timeout=0.01)
        assert eng.generate(["Hi"], GREEDY, adapters=["a"])[0].finish_reason == "length"
        busy.cancel()
        eng.adapters.unload("a")
        with pytest.raises(InvalidRequestError):
            eng.submit("Hi", adapter="a")


def _broken(src, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_every_bad_adapter_is_refused_and_the_registry_is_unchanged(setup, tmp_path):
    base, adapters, wrong_size = setup
    good = adapters["r16-all-rslora"]
    cases = {}
    f = _broken(good, tmp_path, "no-config")
    (f / "adapter_config.json").unlink()
    cases[f] = "adapter_config.json is missing"
    f = _broken(good, tmp_path, "bad-json")
    (f / "adapter_config.json").write_text("{oops")
    cases[f] = "not valid JSON"
    f = _broken(good, tmp_path, "pickle")
    (f / "adapter_model.safetensors").rename(f / "adapter_model.bin")
    cases[f] = "pickle format"
    f = _broken(good, tmp_path, "truncated")
    w = f / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:200])
    cases[f] = "corrupt or truncated"
    f = _broken(good, tmp_path, "modules-to-save")
    _edit_config(f, modules_to_save=["lm_head"])
    cases[f] = "modules_to_save"
    f = _broken(good, tmp_path, "dora")
    _edit_config(f, use_dora=True)
    cases[f] = "DoRA"
    f = _broken(good, tmp_path, "bias")
    _edit_config(f, bias="all")
    cases[f] = "bias 'all'"
    cases[wrong_size] = "another model size"
    cases[adapters["r64-patterns"]] = "above the configured maximum of 32"
    f = _broken(good, tmp_path, "unknown-target")
    _edit_config(f, target_modules=["q_proj", "embed_tokens"])
    cases[f] = "unknown target module"
    with Engine(EngineConfig(model=base, quantization="none", max_lora_rank=32)) as eng:
        eng.adapters.load("keep", adapters["r4-qv"])
        before = eng.adapters.list()
        for folder, reason in cases.items():
            with pytest.raises(AdapterError, match=reason):
                eng.adapters.load("bad", folder)
            assert eng.adapters.list() == before
        with pytest.raises(AdapterError, match="already loaded"):
            eng.adapters.load("keep", adapters["r4-qv"])
        assert eng.generate(["Hi"], GREEDY, adapters=["keep"])[0].finish_reason == "length"


def test_one_error_lists_every_problem(setup, tmp_path):
    base, adapters, _ = setup
    f = _broken(adapters["r16-all-rslora"], tmp_path, "many")
    _edit_config(f, use_dora=True, bias="lora_only", modules_to_save=["embed_tokens"])
    with Engine(EngineConfig(model=base, quantization="none")) as eng, pytest.raises(AdapterError) as err:
        eng.adapters.load("many", f)
    assert len(err.value.problems) == 3
    assert all(word in str(err.value) for word in ("DoRA", "bias", "modules_to_save"))


def test_other_family_is_a_warning_and_weights_become_fp16(setup, tmp_path):
    base, adapters, _ = setup
    f = _broken(adapters["r4-qv"], tmp_path, "mistral")
    _edit_config(f, base_model_name_or_path="mistralai/Mistral-7B-v0.1")
    tensors = {k: v.bfloat16() for k, v in load_file(f / "adapter_model.safetensors").items()}
    save_file(tensors, f / "adapter_model.safetensors")
    with Engine(EngineConfig(model=base, quantization="none")) as eng:
        info = eng.adapters.load("m", f)
        assert info.warnings and "different model family" in info.warnings[0]
        assert eng.generate(["Hi"], GREEDY, adapters=["m"])[0].finish_reason == "length"


def test_fan_out_over_more_adapters_than_slots_completes(setup):
    base, adapters, _ = setup
    with Engine(EngineConfig(model=base, quantization="none", max_batch_size=8, max_loras=2)) as eng:
        for name, path in adapters.items():
            eng.adapters.load(name, path)
        names = [None, *adapters]
        results = eng.fan_out("Once upon a time", GREEDY, adapters=names)
        assert [r.adapter for r in results] == names
        assert all(r.finish_reason == "length" for r in results)
        assert eng.stats().max_adapters_in_step <= 2


@pytest.mark.parametrize(
    ("base", "warned"),
    [
        ("mistralai/Mistral-7B-v0.1", True),
        ("Qwen/Qwen2-7B", True),
        ("microsoft/phi-2", True),
        ("C:\\models\\Phi-3-mini", True),
        ("meta-llama/Meta-Llama-3-8B-Instruct", False),
        ("/home/philip/models/llama3", False),  # "phi" inside a folder name is no family
        ("/tmp/tmphi7ux752/base", False),
        ("", False),
        (None, False),
    ],
)
def test_family_warning_reads_the_model_name_only(base, warned):
    assert bool(family_warnings(base)) is warned


def test_graphs_are_redone_when_any_stacks_rank_grows(setup, tmp_path):
    # the decode kernels read each stack's ranks up to its largest resident one, a bound the CUDA graphs bake in
    base, _, _ = setup
    specs = {"q8": (8, ["q_proj"]), "o4": (4, ["o_proj"]), "o8": (8, ["o_proj"])}
    paths = {name: make_peft_adapter(base, tmp_path / name, seed=20 + i, r=r, target_modules=targets)
             for i, (name, (r, targets)) in enumerate(specs.items())}  # fmt: skip
    with Engine(EngineConfig(model=base, quantization="none", max_loras=3)) as eng:
        versions = []
        for name, path in paths.items():
            eng.adapters.load(name, path)
            eng.generate(["Hi"], GREEDY, adapters=[name])  # writes its GPU slot
            versions.append(eng.adapters.version())
        assert versions[0] < versions[1] < versions[2]  # o's rank 4 -> 8 while the largest overall stays 8
        eng.generate(["Hi"], GREEDY, adapters=["o4"])
        assert eng.adapters.version() == versions[2]  # using resident adapters changes nothing
