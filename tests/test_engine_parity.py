"""Our model code against transformers' LlamaForCausalLM on the same tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.kv_cache import KVCache
from engine.loader import load_model
from engine.model import ForwardMeta
from tests.llm_fixtures import make_llama, reference_model

# NF4: both sides quantize the same fp32 weights with the same bitsandbytes function (blocksize 64, fp32 absmax,
# no nesting) and multiply in fp32, so only summation order differs: 1e-4 relative is ~100x that rounding noise,
# while one wrong block scale or nibble order moves the logits by >1e-2.
TOLERANCE = {"none": 1e-4, "nf4": 1e-4}


@pytest.fixture(
    scope="module", params=[{"rope_scaling": "llama3"}, {"rope_scaling": None, "tie_word_embeddings": True}]
)
def checkpoint(request, tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("llama"), **request.param)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _ours_and_reference(checkpoint, quantization: str) -> tuple:
    """Our model on the CPU in fp32 with a 3-slot cache of 128 positions, and transformers' model of it."""
    model = load_model(checkpoint, torch.device("cpu"), torch.float32, quantization, 128, triton_rows=range(0))
    a = model.args
    cache = KVCache(a.num_layers, 3, a.num_kv_heads, 128, a.head_dim, "cpu", torch.float32)
    return model, reference_model(checkpoint, nf4=quantization == "nf4"), cache


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_prefill_and_decode_logits_match_transformers(checkpoint, quantization):
    model, ref, cache = _ours_and_reference(checkpoint, quantization)
    a = model.args
    torch.manual_seed(0)
    ids = torch.randint(0, a.vocab_size, (50,))
    with torch.no_grad():
        ours = model(ids[:49], ForwardMeta.prefill([2], [49], "cpu"), cache, last_only=False)
        expected = ref(ids[None]).logits[0]
        assert _rel(ours, expected[:49]) < TOLERANCE[quantization]
        # one decode step for slot 2 beside two idle rows
        positions = torch.tensor([0, 0, 49])
        step = model(torch.tensor([0, 0, int(ids[49])]), ForwardMeta(positions, kv_len=64), cache, False)
    assert _rel(step[2], expected[49]) < TOLERANCE[quantization]


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_prompts_prefilled_in_one_forward_match_transformers_one_by_one(checkpoint, quantization):
    model, ref, cache = _ours_and_reference(checkpoint, quantization)
    a = model.args
    torch.manual_seed(1)
    lengths, slots = [7, 19, 12], [2, 0, 1]
    prompts = [torch.randint(0, a.vocab_size, (n + 1,)) for n in lengths]  # + the token of one decode step
    tokens = torch.cat([p[:n] for p, n in zip(prompts, lengths, strict=True)])
    with torch.no_grad():
        expected = [ref(p[None]).logits[0] for p in prompts]
        ours = model(tokens, ForwardMeta.prefill(slots, lengths, "cpu"), cache, last_only=False)
        for rows, want, n in zip(ours.split(lengths), expected, lengths, strict=True):
            assert _rel(rows, want[:n]) < TOLERANCE[quantization]
        last = model(tokens, ForwardMeta.prefill(slots, lengths, "cpu"), cache, last_only=True)  # [3, V]
        assert _rel(last, ours[[6, 25, 37]]) < 1e-5
        # one decode step per slot reads what the batched prefill wrote to that slot's cache
        positions, step_tokens = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
        for slot, p, n in zip(slots, prompts, lengths, strict=True):
            positions[slot], step_tokens[slot] = n, p[n]
        step = model(step_tokens, ForwardMeta(positions, kv_len=64), cache, False)
    for slot, want, n in zip(slots, expected, lengths, strict=True):
        assert _rel(step[slot], want[n]) < TOLERANCE[quantization]


def test_sharded_checkpoint_loads_the_same_model(tmp_path):
    single = make_llama(tmp_path / "single")
    sharded = make_llama(tmp_path / "sharded", shard=True)
    assert (sharded / "model.safetensors.index.json").is_file()
    ids = torch.arange(20)
    out = []
    for folder in (single, sharded):
        model = load_model(folder, torch.device("cpu"), torch.float32, "none", 64, triton_rows=range(0))
        a = model.args
        cache = KVCache(a.num_layers, 1, a.num_kv_heads, 64, a.head_dim, "cpu", torch.float32)
        with torch.no_grad():
            out.append(model(ids, ForwardMeta.prefill([0], [20], "cpu"), cache, last_only=True))
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_greedy_tokens_equal_transformers_generate(checkpoint, quantization):
    ref = reference_model(checkpoint, nf4=quantization == "nf4")
    prompts = ["Once upon a time", "The dragon slept under the old bridge while", "A café"]
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with Engine(EngineConfig(model=checkpoint, quantization=quantization, max_batch_size=4, max_seq_len=128)) as eng:
        results = eng.generate(prompts, greedy)
        for prompt, result in zip(prompts, results, strict=True):
            ids = eng.encoder.encode(prompt)
            with torch.no_grad():
                out = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None)
            assert result.token_ids == out[0, len(ids) :].tolist()
            assert result.finish_reason == "length"


def test_repetition_penalty_matches_transformers(checkpoint):
    ref = reference_model(checkpoint)
    prompt = "The dragon slept and the dragon dreamed of"
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, repetition_penalty=1.8)
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_seq_len=128)) as eng:
        result = eng.generate([prompt], params)[0]
        ids = eng.encoder.encode(prompt)
    with torch.no_grad():
        out = ref.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, repetition_penalty=1.8
        )
    assert result.token_ids == out[0, len(ids) :].tolist()
