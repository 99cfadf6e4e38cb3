"""Continuous batching, seeds, cancellation, streaming, stop conditions."""

from __future__ import annotations

import threading

import pytest

from engine import Engine, EngineConfig, SamplingParams
from engine.tokenizer import IncrementalDetokenizer
from tests.llm_fixtures import make_llama, reference_model

GREEDY = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
PROMPTS = ["Once upon a time", "The knight rode north through the snow and the", "Hi", "A café in Paris"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture
def engine(checkpoint):
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_batch_size=4, max_seq_len=256)) as eng:
        yield eng


def test_output_is_the_same_alone_batched_and_joining_mid_flight(engine):
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    batched = [r.token_ids for r in engine.generate(PROMPTS, GREEDY)]
    assert batched == alone
    long_run = engine.submit(PROMPTS[1], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    stream = iter(long_run)
    next(stream)  # the first request is decoding ...
    joined = engine.submit(PROMPTS[0], GREEDY)  # ... when this one joins the running batch
    assert joined.result().token_ids == alone[0]
    assert long_run.result().token_ids[:30] == alone[1]
    shared = engine.stats().shared_decode_steps(long_run.request_id, joined.request_id)
    assert shared > 0


def test_seed_gives_the_same_sample_whatever_else_is_in_the_batch(engine):
    seeded = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=1234, max_tokens=25, ignore_eos=True)
    alone = engine.generate([PROMPTS[0]], seeded)[0]
    mixed = engine.generate(
        [PROMPTS[1], PROMPTS[0], PROMPTS[2]],
        [SamplingParams(temperature=0.7, seed=5, max_tokens=40), seeded, GREEDY],
    )[1]
    assert mixed.token_ids == alone.token_ids
    other = engine.generate([PROMPTS[0]], SamplingParams(temperature=1.0, seed=4321, max_tokens=25, ignore_eos=True))
    assert other[0].token_ids != alone.token_ids


def test_cancel_frees_the_slot(checkpoint):
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_batch_size=1, max_seq_len=512)) as eng:
        long_run = eng.submit("Tell me", SamplingParams(temperature=0, max_tokens=500, ignore_eos=True))
        next(iter(long_run))
        waiting = eng.submit("Hi", GREEDY)  # no free slot until the first is cancelled
        long_run.cancel()
        assert long_run.result(timeout=60).finish_reason == "cancelled"
        assert waiting.result(timeout=60).finish_reason == "length"
        queued = eng.submit("Hi", SamplingParams(max_tokens=500, ignore_eos=True))
        queued.cancel()
        assert queued.result(timeout=60).finish_reason == "cancelled"


def test_streaming_deltas_join_to_the_final_text(engine):
    for seed in range(6):
        handle = engine.submit("日本 café 🙂", SamplingParams(temperature=1.3, seed=seed, max_tokens=40))
        deltas = list(handle)
        result = handle.result()
        assert "".join(deltas) == result.text
        assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_multibyte_characters_are_never_split(engine):
    text = "Ein Drache 🐉 trank café au lait in 日本語のお茶屋 — naïve ✨"
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(engine.tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_strings_and_stop_tokens(engine):
    free = engine.generate([PROMPTS[0]], GREEDY)[0]
    stop = free.text[10:14]
    cut = engine.submit(PROMPTS[0], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]))
    deltas = list(cut)
    result = cut.result()
    assert result.finish_reason == "stop"
    assert result.text == free.text[: free.text.find(stop)]
    assert "".join(deltas) == result.text
    token = free.token_ids[5]
    by_id = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[token]))[0]
    assert by_id.finish_reason == "stop"
    assert by_id.token_ids == free.token_ids[: free.token_ids.index(token) + 1]


def test_eos_ids_include_eot_and_end_of_text(engine):
    tok = engine.tokenizer
    assert {
        tok.convert_tokens_to_ids("<|eot_id|>"),
        tok.convert_tokens_to_ids("<|end_of_text|>"),
    } <= engine.encoder.eos_ids


def test_prompt_forms(engine):
    text_ids = engine.encoder.encode("Hello there")
    assert text_ids[0] == engine.tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    chat_ids = engine.encoder.encode(chat)
    rendered = engine.tokenizer.decode(chat_ids)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    by_ids = engine.generate([text_ids], GREEDY)[0]
    assert by_ids.token_ids == engine.generate(["Hello there"], GREEDY)[0].token_ids
    assert engine.generate([chat], GREEDY)[0].num_prompt_tokens == len(chat_ids)


def test_submit_is_safe_from_many_threads(engine):
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = engine.submit(PROMPTS[i % 4], GREEDY).result(timeout=120).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    assert all(results[i] == alone[i % 4] for i in range(8))


def test_jobs_on_the_engine_thread_keep_requests_moving(engine):
    alone = engine.generate([PROMPTS[0]], GREEDY)[0].token_ids
    handle = engine.submit(PROMPTS[0], GREEDY)

    def long_job() -> int:  # e.g. a render: calls step_between after each of its own steps
        for step in range(1000):
            engine.step_between()
            if handle.done:
                return step
        return -1

    steps = engine.run_on_engine_thread(long_job).result(timeout=120)
    assert 0 <= steps < 1000
    assert handle.result().token_ids == alone
    with pytest.raises(AssertionError):
        engine.step_between()  # only the engine thread may step


def test_footprint_counts_weights_cache_and_adapter_slots(engine, checkpoint):
    fp = engine.footprint()
    params = sum(p.numel() for p in reference_model(checkpoint).parameters())
    assert fp.weights_bytes == params * 4  # fp32 on the CPU: exactly the checkpoint's parameters
    assert fp.kv_cache_bytes == engine.cache.nbytes() > 0
    assert fp.lora_slots_bytes == 0
    assert engine.generate([], GREEDY) == []


def test_prefill_groups_keep_a_token_budget_in_admission_order_whatever_the_adapters(monkeypatch):
    from types import SimpleNamespace

    from engine import engine as engine_module

    monkeypatch.setattr(engine_module, "PREFILL_BATCH_TOKENS", 10)
    seqs = [SimpleNamespace(name=n, lora_slot=slot, prompt_ids=[0] * length)
            for n, slot, length in [("a", -1, 4), ("b", 0, 3), ("c", -1, 5), ("d", 1, 2), ("e", 0, 12), ("f", 0, 1)]]  # fmt: skip
    groups = [[s.name for s in g] for g in engine_module.prefill_groups(seqs)]
    assert groups == [["a", "b"], ["c", "d"], ["e"], ["f"]]


def test_prompts_admitted_together_are_prefilled_in_one_forward(engine, monkeypatch):
    calls = []
    real = engine.runner.prefill
    monkeypatch.setattr(engine.runner, "prefill", lambda seqs: calls.append(len(seqs)) or real(seqs))
    alone = [engine.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    calls.clear()
    assert [r.token_ids for r in engine.generate(PROMPTS, GREEDY)] == alone
    assert calls == [4]


def test_a_prompt_that_breaks_a_batched_prefill_fails_alone(engine, monkeypatch):
    bad_token = 7
    real = engine.runner.prefill

    def prefill(seqs):
        if any(s.prompt_ids[-1] == bad_token for s in seqs):
            raise RuntimeError("simulated kernel failure")
        return real(seqs)

    monkeypatch.setattr(engine.runner, "prefill", prefill)
    alone = engine.generate([PROMPTS[0]], GREEDY)[0].token_ids
    results = engine.generate([PROMPTS[0], [1, 2, bad_token], PROMPTS[0]], GREEDY)
    assert [r.finish_reason for r in results] == ["length", "error", "length"]
    assert "simulated kernel failure" in results[1].error
    assert results[0].token_ids == results[2].token_ids == alone
