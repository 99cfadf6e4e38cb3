"""Parking the LLM in CPU RAM while drawing (the "swap llm while drawing" VRAM plan) and bringing it back."""

from __future__ import annotations

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams, parking
from engine.parking import ParkedTensors
from tests.llm_fixtures import ADAPTER_SPECS, make_llama, make_peft_adapter

GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
PROMPT = "The knight rode north through the snow and the"


def test_parked_tensors_keep_their_objects_and_values_and_count_a_shared_tensor_once() -> None:
    a, b = torch.randn(3, 4), torch.arange(5, dtype=torch.int32)
    values = (a.clone(), b.clone())
    pointers = (a.data_ptr(), b.data_ptr())
    parked = ParkedTensors([a, b, a])  # a tied lm_head is the embedding itself
    assert parked.nbytes == a.numel() * 4 + b.numel() * 4
    assert (a.data_ptr(), b.data_ptr()) != pointers  # new storage, same Python objects
    parked.restore()
    assert torch.equal(a, values[0]) and torch.equal(b, values[1])
    with pytest.raises(AssertionError, match="once"):
        parked.restore()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    base = make_llama(tmp_path_factory.mktemp("llama"), tie_word_embeddings=True)
    adapter = make_peft_adapter(base, tmp_path_factory.mktemp("adapter"), seed=3, **ADAPTER_SPECS["r16-all-rslora"])
    with Engine(EngineConfig(model=base, quantization="nf4", max_batch_size=4, max_seq_len=256)) as eng:
        eng.adapters.load("writer", adapter)
        yield eng


def _reachable_tensors(*roots: object) -> list[torch.Tensor]:
    """Every tensor reachable from roots through containers and engine/torch/bitsandbytes objects' attributes:
    what the park must move, found without asking the code under test."""
    seen, found, todo = set(), {}, list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found[id(obj)] = obj
        elif isinstance(obj, (list, tuple, set)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("engine", "torch", "bitsandbytes"):
            todo.extend(vars(obj).values())
    return list(found.values())


def _held(eng: Engine) -> list[torch.Tensor]:
    return _reachable_tensors(eng.model, eng.cache)


def test_a_park_moves_every_held_tensor_and_generation_is_unchanged_after(engine):
    before = [r.token_ids for r in engine.generate([PROMPT, PROMPT], GREEDY, adapters=[None, "writer"])]
    assert before[0] != before[1], "the adapter must change the output"

    def park() -> list[bool]:
        # the addresses just before this park: a later park may reuse the ones an earlier park freed
        pointers = [t.data_ptr() for t in _held(engine)]
        with engine.parked():
            moved = [t.data_ptr() != p for t, p in zip(_held(engine), pointers, strict=True)]
        return moved

    for _ in range(2):  # on CUDA the second return re-captures decode graphs after all of them were dropped
        moved = engine.run_on_engine_thread(park).result(timeout=60)
        assert len(moved) > 20 and all(moved)
        after = [r.token_ids for r in engine.generate([PROMPT, PROMPT], GREEDY, adapters=[None, "writer"])]
        assert after == before


def test_a_running_request_waits_while_parked_and_finishes_as_if_never_parked(engine):
    alone = engine.generate([PROMPT], GREEDY, adapters=["writer"])[0].token_ids
    handle = engine.submit(PROMPT, GREEDY, adapter="writer")
    stream = iter(handle)
    next(stream)  # decoding now

    def park_and_try_to_step() -> tuple[int, int]:
        running = list(engine.scheduler.running.values())
        with engine.parked():
            done = sum(len(s.output_ids) for s in running)
            engine.step_between()  # a render's between-steps hook: no LLM step while parked
            return done, sum(len(s.output_ids) for s in running)

    done_before, done_after = engine.run_on_engine_thread(park_and_try_to_step).result(timeout=60)
    assert done_before == done_after
    assert handle.result(timeout=60).token_ids == alone


def test_parking_twice_or_off_the_engine_thread_is_refused(engine):
    with pytest.raises(AssertionError, match="engine thread"), engine.parked():
        pass

    def nested() -> None:
        with engine.parked(), engine.parked():
            pass

    with pytest.raises(AssertionError, match="parked already"):
        engine.run_on_engine_thread(nested).result(timeout=60)
    assert engine.generate([PROMPT], GREEDY)[0].finish_reason == "length"


def _flaky_copies(monkeypatch, failures: int) -> list[int]:
    """From now on the first `failures` copies back run out of memory."""
    real, left = parking.copied_to, [failures]

    def copied_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if left[0]:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(t, device)

    monkeypatch.setattr(parking, "copied_to", copied_to)
    return left


@pytest.mark.parametrize("failures", [1, 2], ids=["fits-after-freeing-the-cache", "does-not-fit-yet"])
def test_an_llm_that_does_not_fit_back_waits_and_returns_before_the_next_step(engine, monkeypatch, failures):
    before = engine.generate([PROMPT], GREEDY, adapters=["writer"])[0].token_ids

    def draw_while_memory_is_short() -> tuple[bool, list[int]]:
        with engine.parked():
            left = _flaky_copies(monkeypatch, failures)
        return engine.llm_parked, left

    still_parked, left = engine.run_on_engine_thread(draw_while_memory_is_short).result(timeout=60)
    assert still_parked is (failures == 2) and left == [0]
    assert engine.generate([PROMPT], GREEDY, adapters=["writer"])[0].token_ids == before
    assert not engine.llm_parked


def test_a_park_that_runs_out_of_ram_half_way_puts_everything_back(monkeypatch):
    tensors = [torch.randn(4) for _ in range(5)]
    values = [t.clone() for t in tensors]
    real, calls = parking.copied_to, [0]

    def copied_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 3:
            raise MemoryError("simulated: CPU RAM is full")
        return real(t, device)

    monkeypatch.setattr(parking, "copied_to", copied_to)
    with pytest.raises(MemoryError, match="CPU RAM"):
        ParkedTensors(tensors)
    assert calls[0] == 5  # two moved out, the third failed, the two went back
    assert all(torch.equal(t, v) for t, v in zip(tensors, values, strict=True))
