"""Per-row multi-LoRA against transformers + PEFT (mixed `adapter_names=` batches), full precision and NF4."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.kv_cache import KVCache
from engine.loader import load_model
from engine.lora.context import LoraRouting, set_routing
from engine.lora.registry import AdapterRegistry
from engine.model import ForwardMeta
from tests.llm_fixtures import ADAPTER_SPECS, make_llama, make_peft_adapter, peft_reference

TOLERANCE = 1e-4  # same math as the base parity test; a wrong scale or rank slice moves logits by > 1e-2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    base = make_llama(root / "base")
    adapters = {
        name: make_peft_adapter(base, root / name, seed=i, **spec)
        for i, (name, spec) in enumerate(ADAPTER_SPECS.items())
    }
    return base, adapters


def _done(fn) -> Future:
    f: Future = Future()
    f.set_result(fn())
    return f


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_mixed_batch_logits_match_peft_per_row(setup, quantization):
    base, adapters = setup
    config = EngineConfig(model=base, quantization=quantization, max_loras=4, max_lora_rank=64)
    # one row through our NF4 matmul (its CPU reference, with the LoRA epilogue), more rows through bitsandbytes
    model = load_model(base, torch.device("cpu"), torch.float32, quantization, 64, triton_rows=range(1, 2))
    registry = AdapterRegistry(model, config, torch.device("cpu"), torch.float32, _done)
    for name, path in adapters.items():
        registry.load(name, path)
    names = [*adapters, None]
    slots = registry.acquire(names)
    assert sorted(s for s in slots if s >= 0) == [0, 1, 2, 3]
    ref = peft_reference(base, adapters, nf4=quantization == "nf4")
    torch.manual_seed(1)
    a = model.args
    ids = torch.randint(0, a.vocab_size, (len(names), 12))
    with torch.no_grad():
        expected = ref(ids, adapter_names=[n or "__base__" for n in names]).logits  # [B, T, V]
        cache = KVCache(a.num_layers, len(names), a.num_kv_heads, 64, a.head_dim, "cpu", torch.float32)
        # every row's prompt in one forward, each with its adapter (runs of tokens on one slot)
        rows = list(range(len(names)))
        set_routing(LoraRouting.of_runs(slots, [11] * len(names)))
        out = model(ids[:, :11].reshape(-1), ForwardMeta.prefill(rows, [11] * len(names), "cpu"), cache, False)
        for row in rows:
            got, want = out[row * 11 : (row + 1) * 11], expected[row, :11]
            assert ((got - want).norm() / want.norm()) < TOLERANCE, row
        # then one decode step for all rows together, each with its own adapter (per-token routing)
        set_routing(LoraRouting(token_slots=torch.tensor(slots, dtype=torch.int32)))
        positions = torch.full((len(names),), 11)
        step = model(ids[:, 11], ForwardMeta(positions, kv_len=64), cache, last_only=False)
        # a decode step of one row alone (all seven projections adapted): o's expand goes to the matmul's epilogue
        alone = KVCache(a.num_layers, 1, a.num_kv_heads, 64, a.head_dim, "cpu", torch.float32)
        set_routing(LoraRouting.of_runs([slots[1]], [11]))
        model(ids[1, :11], ForwardMeta.prefill([0], [11], "cpu"), alone, False)
        set_routing(LoraRouting(token_slots=torch.tensor(slots[1:2], dtype=torch.int32)))
        one_row = model(ids[1:2, 11], ForwardMeta(positions[:1], kv_len=64), alone, last_only=False)
        set_routing(None)
    rel = (step - expected[:, 11]).norm(dim=-1) / expected[:, 11].norm(dim=-1)
    assert (rel < TOLERANCE).all(), rel
    assert ((one_row[0] - expected[1, 11]).norm() / expected[1, 11].norm()) < TOLERANCE
    base_logits = expected[-1, 11]
    assert all((expected[i, 11] - base_logits).abs().max() > 1e-2 for i in range(4)), "adapters must change logits"


def test_greedy_mixed_batch_equals_peft_and_base_row_equals_base(setup):
    base, adapters = setup
    ref = peft_reference(base, adapters)
    prompt = "Once upon a time in a quiet village"
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    with Engine(EngineConfig(model=base, quantization="none", max_batch_size=8, max_loras=4)) as eng:
        for name, path in adapters.items():
            eng.adapters.load(name, path)
        names = [None, *adapters]
        forwards = []
        real = eng.runner.prefill
        eng.runner.prefill = lambda seqs: forwards.append(len(seqs)) or real(seqs)
        results = eng.fan_out(prompt, greedy, adapters=names)
        assert forwards == [len(names)]  # every prompt in one prefill forward, whatever its adapter
        ids = eng.encoder.encode(prompt)
        base_alone = eng.generate([prompt], greedy)[0].token_ids
        stats = eng.stats()
    assert results[0].token_ids == base_alone
    assert stats.max_adapters_in_step == 4
    for name, result in zip(names, results, strict=True):
        with torch.no_grad():
            if name is None:
                with ref.disable_adapter():
                    out = ref.generate(
                        input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None
                    )
            else:
                ref.set_adapter(name)
                out = ref.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None)
        assert result.token_ids == out[0, len(ids) :].tolist(), name
        assert result.adapter == name
